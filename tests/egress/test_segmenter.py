"""CmafRecorder and the HLS playlists: segments, parts, windows and the playlist rules, checked
on synthetic streams, and a real ffmpeg stream read back by ffmpeg through index.m3u8."""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from broker.packet import MediaPacket, TrackKind
from egress.fmp4.segmenter import CmafRecorder, RemoveFile, SegmentPlan, WriteFile
from egress.hls.playlist import media_playlist, multivariant_playlist
from tests.egress.media import ffmpeg_exe
from tests.egress.test_fragmenter import (
    ASC_44K_STEREO,
    AVCC_720P,
    audio,
    config,
    video,
)
from tests.mp4_parse import parse_fragment

if TYPE_CHECKING:
    from pathlib import Path

    from egress.fmp4.segmenter import Action


@dataclass
class Disk:
    """What the shell would have on disk, and every playlist as it was after each packet."""

    files: dict[str, bytes] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    playlists: dict[str, list[str]] = field(default_factory=dict)

    def apply(self, actions: list[Action], recorder: CmafRecorder) -> None:
        for action in actions:
            if isinstance(action, WriteFile):
                self.files[action.name] = action.data
            else:
                assert isinstance(action, RemoveFile)
                assert action.name in self.files
                del self.files[action.name]
                self.removed.append(action.name)
        if actions:
            for timeline in recorder.timelines:
                others = tuple(t for t in recorder.timelines if t is not timeline)
                text = media_playlist(timeline, others)
                self.playlists.setdefault(timeline.playlist_name, []).append(text)
                self.files[timeline.playlist_name] = text.encode()
            if (top := multivariant_playlist(recorder)) is not None:
                self.files["index.m3u8"] = top.encode()


def stream(seconds: float, *, gop_s: float = 2.0, fps: int = 30, with_audio: bool = True,
           with_video: bool = True, start_ms: int = 0) -> list[MediaPacket]:
    """Packets in arrival order: configs, then video frames and AAC frames interleaved."""
    packets = []
    if with_video:
        packets.append(config(TrackKind.VIDEO, AVCC_720P))
    if with_audio:
        packets.append(config(TrackKind.AUDIO, ASC_44K_STEREO))
    frames = [(round(i * 1000 / fps), "v", i)
              for i in range(int(seconds * fps))] if with_video else []
    frames += [(round(i * 1024 * 1000 / 44100), "a", i)
               for i in range(int(seconds * 44100 / 1024))] if with_audio else []
    gop = round(gop_s * fps)
    for ms, kind, i in sorted(frames):
        packets.append(video(start_ms + ms, bytes(100 + i % 7), key=i % gop == 0) if kind == "v"
                       else audio(start_ms + ms, bytes(10)))
    return packets


def record(packets: list[MediaPacket], plan: SegmentPlan, *, video_on: bool = True,
           audio_on: bool = True, end: bool = True, wall0: float = 1_700_000_000.0,
           disk: Disk | None = None, recorder: CmafRecorder | None = None,
           ) -> tuple[CmafRecorder, Disk]:
    recorder = recorder or CmafRecorder(plan, video=video_on, audio=audio_on)
    disk = disk or Disk()
    for pkt in packets:
        now = wall0 + pkt.dts / pkt.timescale
        disk.apply(recorder.add(pkt, now) + recorder.expire(now), recorder)
    if end:
        disk.apply(recorder.end(wall0 + packets[-1].dts / 1000), recorder)
    return recorder, disk


TAG = re.compile(r"#EXT-X-([A-Z-]+)(?::(.*))?$")


def check_playlist(text: str, plan: SegmentPlan) -> dict[str, list[str]]:
    """The RFC 8216 / LL-HLS rules one playlist must hold on its own; returns its tags."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    tags: dict[str, list[str]] = {}
    for line in lines:
        if m := TAG.match(line):
            tags.setdefault(m[1], []).append(m[2] or "")
    target = int(tags["TARGETDURATION"][0])
    assert target == plan.target_duration
    for value in tags.get("INF", []):
        assert round(float(value.rstrip(","))) <= target  # 6.2.1-M1... EXTINF
    for value in (line[len("#EXTINF:"):] for line in lines if line.startswith("#EXTINF:")):
        assert round(float(value.rstrip(","))) <= target
    for value in tags.get("PART", []):
        assert float(value.split(",")[0].split("=")[1]) <= plan.part_target_s + 1e-9
    if "ENDLIST" not in tags:
        assert "CAN-BLOCK-RELOAD=YES" in tags["SERVER-CONTROL"][0]
        assert len(tags["PRELOAD-HINT"]) == 1
    else:
        assert "SERVER-CONTROL" not in tags
        assert "PART" not in tags
    return tags


def extinfs(text: str) -> list[float]:
    return [float(line[8:].rstrip(",")) for line in text.splitlines()
            if line.startswith("#EXTINF:")]


def test_segments_cut_at_keyframes_and_tracks_align() -> None:
    plan = SegmentPlan(keep=True)
    recorder, disk = record(stream(21), plan)
    video, audio_t = recorder.video, recorder.audio
    assert video is not None
    assert audio_t is not None
    assert [s.msn for s in video.segments] == list(range(11))
    assert all(s.independent for s in video.segments)
    assert [round(s.duration, 3) for s in video.segments[:-1]] == [2.0] * 10
    for v, a in zip(video.segments, audio_t.segments, strict=True):
        assert abs(v.start / 90000 - a.start / 44100) < 1024 / 44100  # one AAC frame
    for timeline in recorder.timelines:
        for seg in timeline.segments:
            whole = disk.files[timeline.segment_name(seg.msn)]
            assert whole == b"".join(disk.files[timeline.part_name(p.number)]
                                     for p in seg.parts)
            assert [p.index for p in seg.parts] == list(range(len(seg.parts)))
            assert seg.parts[0].independent
            pos, count = 0, 0
            while pos < len(whole):
                _, runs, pos = parse_fragment(whole, pos)
                count += len(runs[0].samples)
            assert count == round(seg.duration * (30 if timeline is video else 44100 / 1024))
    # Parts: capped at the target; 7 frames of 30 fps fit in 0.25 s.
    assert {len(p) for p in [video.segments[1].parts]} == {9}
    assert max(p.duration for s in video.segments for p in s.parts) <= plan.part_target_s


def test_every_playlist_keeps_the_rules() -> None:
    plan = SegmentPlan()
    _, disk = record(stream(40), plan)
    for name in ("v.m3u8", "a.m3u8"):
        history = disk.playlists[name]
        sequences, last_hint = [], None
        for text in history:
            tags = check_playlist(text, plan)
            sequences.append(int(tags["MEDIA-SEQUENCE"][0]))
            if "PRELOAD-HINT" in tags:
                hint = tags["PRELOAD-HINT"][0]
                if last_hint is not None and hint != last_hint:
                    assert f'URI="{last_hint}"' in text  # the hinted part came, as hinted
                last_hint = re.search(r'URI="([^"]+)"', hint)[1]  # type: ignore[index]
            if "ENDLIST" not in tags and len(extinfs(text)) > 5:
                assert sum(extinfs(text)) >= 3 * plan.target_duration  # 6.2.2-M6
        assert sequences == sorted(sequences)
        assert sequences[-1] > 0
    top = disk.files["index.m3u8"].decode()
    assert 'CODECS="avc1.64001f,mp4a.40.2"' in top
    assert "RESOLUTION=1280x720" in top
    assert 'URI="a.m3u8"' in top
    assert top.rstrip().endswith("v.m3u8")


def test_live_window_removes_old_files_after_a_delay() -> None:
    plan = SegmentPlan()
    recorder, disk = record(stream(60), plan, end=False)
    video = recorder.video
    assert video is not None
    listed = sum(s.duration for s in video.complete_segments())
    assert plan.window_s <= listed < plan.window_s + 2.5
    assert video.first_msn > 0
    # Files left the playlist, and were deleted a window later; the listed ones are all there.
    assert "v-0.m4s" in disk.removed
    assert "v-p0.m4s" in disk.removed
    for seg in video.segments:
        assert video.segment_name(seg.msn) in disk.files or not seg.complete
        assert all(video.part_name(p.number) in disk.files for p in seg.parts)
    kept = [n for n in disk.files if re.fullmatch(r"v-\d+\.m4s", n)]
    assert len(kept) <= len(video.segments) + math.ceil(plan.window_s / 2) + 1


def test_recording_keeps_everything_and_ends_as_vod() -> None:
    plan = SegmentPlan(keep=True)
    _recorder, disk = record(stream(30), plan)
    assert not disk.removed
    text = disk.files["v.m3u8"].decode()
    tags = check_playlist(text, plan)
    assert tags["PLAYLIST-TYPE"] == ["VOD"]
    assert "ENDLIST" in tags
    assert sum(extinfs(text)) == pytest.approx(30, abs=0.05)
    assert len(extinfs(text)) == 15


def test_long_gop_is_cut_at_the_target_duration() -> None:
    plan = SegmentPlan(segment_s=2.0, keep=True)  # target 3
    recorder, disk = record(stream(30, gop_s=10), plan)
    video = recorder.video
    assert video is not None
    durations = [s.duration for s in video.segments]
    assert max(durations) <= plan.target_duration + 0.05
    assert [s.independent for s in video.segments[:5]] == [True, False, False, False, True]
    assert [round(s.duration, 3) for s in video.segments[:5]] == [3.0, 3.0, 3.0, 1.0, 3.0]
    check_playlist(disk.files["v.m3u8"].decode(), plan)


def test_limits_cut_segments_at_the_next_keyframe() -> None:
    plan = SegmentPlan(segment_s=10.0, max_frames=60)
    recorder, _ = record(stream(20, gop_s=1), plan)
    assert recorder.video is not None
    durations = [s.duration for s in recorder.video.segments]
    assert [round(d, 3) for d in durations[:-1]] == [2.0] * 9
    assert durations[-1] == pytest.approx(2.0, abs=0.002)  # its last frame's length guessed


@pytest.mark.parametrize(("video_on", "audio_on"), [(True, False), (False, True)])
def test_single_track_streams(video_on: bool, audio_on: bool) -> None:
    plan = SegmentPlan()
    recorder, disk = record(stream(12, with_audio=audio_on, with_video=video_on), plan,
                            video_on=video_on, audio_on=audio_on)
    (timeline,) = recorder.timelines
    assert len(timeline.segments) == 6
    assert all(abs(s.duration - 2.0) < 0.05 for s in timeline.segments[:-1])
    top = disk.files["index.m3u8"].decode()
    assert "EXT-X-MEDIA" not in top
    assert top.rstrip().endswith(timeline.playlist_name)


def test_new_session_marks_a_discontinuity_and_a_new_init() -> None:
    plan = SegmentPlan()
    recorder, disk = record(stream(7), plan, end=False)
    disk.apply(recorder.new_session(1_700_000_007.0), recorder)
    record(stream(7, start_ms=7040), plan, recorder=recorder, disk=disk, end=False)
    text = disk.files["v.m3u8"].decode()
    tags = check_playlist(text, plan)
    assert tags["MAP"] == ['URI="v-init-0.m4s"', 'URI="v-init-1.m4s"']
    assert text.index("#EXT-X-DISCONTINUITY\n") < text.index('URI="v-init-1.m4s"')
    assert "v-init-1.m4s" in disk.files


def test_real_stream_plays_through_the_playlist(tmp_path: Path, real_flv: dict[
        str, list[MediaPacket]]) -> None:
    packets = real_flv["aac"]
    plan = SegmentPlan(segment_s=1.0, keep=True)
    _recorder, disk = record(packets, plan)
    for name, data in disk.files.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(tmp_path / "index.m3u8"),
         "-map", "0:v", "-f", "framemd5", "-", "-map", "0:a", "-f", "null", "-"],
        capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    frames = [line for line in proc.stdout.decode().splitlines() if not line.startswith("#")]
    assert len(frames) == sum(1 for p in packets if p.kind is TrackKind.VIDEO and not p.is_config)
