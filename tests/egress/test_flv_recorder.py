"""FlvRecorder: what each mode keeps, where limits cut files, and the finished onMetaData with
its keyframes index, checked by parsing the files back and by ffmpeg decoding and seeking."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from broker.flvpacket import metadata_packet
from broker.packet import MediaPacket, TrackKind
from egress.dvr.flv_recorder import (
    FileBytes,
    FileFinished,
    FileStarted,
    FlvLimits,
    FlvRecorder,
)
from egress.dvr.flv_writer import rebuild
from media import amf0
from media.flv import NEED_DATA, FlvDecoder, FlvHeader, FlvTag, parse_video_body
from tests.egress.media import KEY, ffmpeg_exe
from tests.egress.test_segmenter import stream

if TYPE_CHECKING:
    from pathlib import Path

META = metadata_packet(KEY, amf0.encode(["onMetaData", amf0.EcmaArray(
    {"width": 1280.0, "height": 720.0, "framerate": 30.0, "audiosamplerate": 44100.0,
     "encoder": "test"})]))


def record(packets: list[MediaPacket], mode: str = "all", limits: FlvLimits | None = None,
           *, audio: bool = True, video: bool = True) -> list[bytes]:
    """Every finished file, its head replaced as the shell does."""
    recorder = FlvRecorder(mode, limits or FlvLimits(), audio=audio, video=video)
    files: list[bytes] = []
    current = bytearray()
    events = [e for p in [META, *packets] for e in recorder.add(p)] + recorder.finish()
    for event in events:
        if isinstance(event, FileStarted):
            assert event.number == len(files)
            current = bytearray()
        elif isinstance(event, FileBytes):
            current += event.data
        else:
            assert isinstance(event, FileFinished)
            assert event.file.size == len(current)
            head, old = event.file.finished_head()
            files.append(head + bytes(current[old:]))
    return files


def parse(data: bytes) -> tuple[FlvHeader, list[FlvTag], list[int]]:
    """Header, tags and each tag's offset in the file."""
    decoder = FlvDecoder()
    decoder.receive_data(data)
    header, tags = None, []
    while (event := decoder.next_event()) is not NEED_DATA:
        if isinstance(event, FlvHeader):
            header = event
        else:
            assert isinstance(event, FlvTag)
            tags.append(event)
    assert header is not None
    offsets, pos = [], 13
    for tag in tags:
        offsets.append(pos)
        pos += 11 + len(tag.body) + 4
    assert pos == len(data)
    return header, tags, offsets


def metadata(tag: FlvTag) -> dict[str, amf0.Value]:
    name, values = amf0.decode(tag.body)
    assert name == "onMetaData"
    assert isinstance(values, dict)
    return dict(values)


def test_all_mode_writes_one_complete_file() -> None:
    packets = stream(10)
    (data,) = record(packets)
    header, tags, offsets = parse(data)
    assert (header.audio, header.video) == (True, True)
    assert [t.tag_type for t in tags[:3]] == [18, 9, 8]  # metadata, then the two configs
    meta = metadata(tags[0])
    assert meta["encoder"] == "test"
    assert meta["videocodecid"] == 7.0
    assert meta["audiocodecid"] == 10.0
    assert meta["filesize"] == float(len(data))
    video = [t for t in tags[3:] if t.tag_type == 9]
    audio = [t for t in tags[3:] if t.tag_type == 8]
    assert len(video) == 300
    # Audio before the first keyframe is not kept: the file starts with the keyframe.
    sent_audio = [p for p in packets if p.kind is TrackKind.AUDIO and not p.is_config]
    assert len(audio) == len(sent_audio) - 1
    first = parse_video_body(video[0].body)
    assert first is not None
    assert first.keyframe
    assert tags[3].timestamp_ms == 0
    assert meta["duration"] == pytest.approx(9.967, abs=0.05)
    # The keyframes index points at the keyframe tags, with their times.
    index = meta["keyframes"]
    assert isinstance(index, dict)
    keyed = [(o, t.timestamp_ms) for o, t in zip(offsets, tags, strict=True)
             if t.tag_type == 9 and (b := parse_video_body(t.body)) is not None
             and b.keyframe and b.kind == "frame"]
    assert index["filepositions"] == [float(o) for o, _ in keyed]
    assert index["times"] == [ms / 1000 for _, ms in keyed]
    assert len(keyed) == 5


@pytest.mark.parametrize(("limits", "files"), [
    (FlvLimits(max_frames=60), 5),
    (FlvLimits(max_time_ms=3000), 3),  # cut at the keyframe after 3 s: 4 s files
    (FlvLimits(max_size=5_000), 5),  # past 5 kB within a GOP (9 kB here): one GOP per file
])
def test_limits_cut_files_at_keyframes(limits: FlvLimits, files: int) -> None:
    out = record(stream(10), limits=limits)
    assert len(out) == files
    total = 0
    for data in out:
        _, tags, _ = parse(data)
        assert [t.tag_type for t in tags[:3]] == [18, 9, 8]  # each file plays on its own
        video = [t for t in tags[3:] if t.tag_type == 9]
        body = parse_video_body(video[0].body)
        assert body is not None
        assert body.keyframe
        assert tags[3].timestamp_ms == 0
        total += len(video)
    assert total == 300


@pytest.mark.parametrize(("mode", "kinds", "flags"), [
    ("audio", {8}, (True, False)), ("video", {9}, (False, True)), ("keyframe", {9}, (False, True)),
])
def test_modes_keep_their_tracks(mode: str, kinds: set[int], flags: tuple[bool, bool]) -> None:
    (data,) = record(stream(10), mode)
    header, tags, _ = parse(data)
    assert (header.audio, header.video) == flags
    assert {t.tag_type for t in tags[1:]} == kinds
    meta = metadata(tags[0])
    assert ("width" in meta) == flags[1]
    assert ("audiosamplerate" in meta) == flags[0]
    if mode == "keyframe":
        frames = [parse_video_body(t.body) for t in tags[2:]]
        assert len(frames) == 5
        assert all(f is not None and f.keyframe for f in frames)


def test_modes_that_record_nothing() -> None:
    with pytest.raises(ValueError, match="records nothing"):
        FlvRecorder("off", FlvLimits(), audio=True, video=True)
    with pytest.raises(ValueError, match="keeps no track"):
        FlvRecorder("video", FlvLimits(), audio=True, video=False)


def test_audio_only_stream() -> None:
    (data,) = record(stream(5, with_video=False), video=False)
    header, tags, _ = parse(data)
    assert (header.audio, header.video) == (True, False)
    assert metadata(tags[0])["keyframes"] == {"filepositions": [], "times": []}


def test_ffmpeg_reads_and_seeks_a_recording(tmp_path: Path,
                                            real_flv: dict[str, list[MediaPacket]]) -> None:
    (data,) = record(real_flv["aac"])
    path = tmp_path / "rec.flv"
    path.write_bytes(data)
    ffmpeg = ffmpeg_exe()
    done = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "null",
                           "-"], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stderr == b""
    # Seek to 3.5 s: libavformat's FLV demuxer seeks with the keyframes index, landing on
    # the keyframe before (2 s, as the real media has one every 2 s).
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        stream_ = container.streams.video[0]
        container.seek(3_500_000, any_frame=False)  # AV_TIME_BASE microseconds
        frame = next(container.decode(stream_))
        assert frame.time == pytest.approx(2.0, abs=0.07)


def test_a_torn_file_is_rebuilt_up_to_its_last_tag(tmp_path: Path) -> None:
    """A recording cut by a crash: no final head, a torn last tag. rebuild() indexes it."""
    recorder = FlvRecorder("all", FlvLimits(), audio=True, video=True)
    growing = b"".join(e.data for p in [META, *stream(5)] for e in recorder.add(p)
                       if isinstance(e, FileBytes))
    path = tmp_path / "torn.flv"
    for cut in (len(growing) - 7, len(growing) - 2):  # inside the last tag; in its trailer
        path.write_bytes(growing[:cut])
        rebuild(path)
        header, tags, offsets = parse(path.read_bytes())  # parses to the very end
        meta = metadata(tags[0])
        assert meta["filesize"] == float(path.stat().st_size)
        keyed = [o for o, t in zip(offsets, tags, strict=True) if t.tag_type == 9
                 and (b := parse_video_body(t.body)) is not None and b.keyframe
                 and b.kind == "frame"]
        index = meta["keyframes"]
        assert isinstance(index, dict)
        assert index["filepositions"] == [float(o) for o in keyed]
        assert (header.audio, header.video) == (True, True)


def test_resume_continues_the_timestamps() -> None:
    recorder = FlvRecorder("all", FlvLimits(), audio=True, video=True)
    recorder.resume(5000)
    events = [e for p in [META, *stream(2)] for e in recorder.add(p)] + recorder.finish()
    data = b"".join(e.data for e in events if isinstance(e, FileBytes))
    assert not data.startswith(b"FLV")  # no head: it goes after the file's own
    finished = [e for e in events if isinstance(e, FileFinished)]
    assert finished[0].file.appended
    first_frame_ts = int.from_bytes(data[4:7], "big")  # the video config tag
    assert first_frame_ts == 5040
