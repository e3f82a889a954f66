"""HLS from a real rtmpmate: ffmpeg/PyAV and a playlist watcher on the live LL-HLS playlists,
a recording read back whole as VOD, and a publisher that reconnects."""

from __future__ import annotations

import itertools
import re
import time
from typing import TYPE_CHECKING, Any

import av
import httpx
import pytest

from egress.fmp4.segmenter import SegmentPlan
from tests.e2e.harness import (
    cleanup,
    dvr_entry,
    finish,
    kill,
    make_media,
    media_report,
    publish,
    publish_again,
    start_server,
    wait_until,
)
from tests.e2e.test_dash import ffmpeg_packets
from tests.egress.test_segmenter import check_playlist, extinfs

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server

PLAN = SegmentPlan()  # the default config's DVR_FMP4 entry: 2 s segments, 0.25 s parts
HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="v-p(\d+)\.m4s"')


def playlist_url(server: Server, name: str = "index.m3u8", stream: str = "sample") -> str:
    return server.http(f"/live/{stream}/{name}")


def read_hls(url: str, seconds: float) -> dict[str, Any]:
    """PyAV (libavformat's HLS demuxer) reads `seconds` of media time, or to the end."""
    video: list[tuple[int, int]] = []
    audio_samples = 0
    codecs = {}
    with av.open(url, timeout=30) as container:
        for s in container.streams:
            codecs[s.type] = s.codec_context.name
        # An audio-only stream ends the read by its samples (there is no video clock).
        audio_rate = (container.streams.audio[0].codec_context.sample_rate
                      if "video" not in codecs and container.streams.audio else 0)
        for packet in container.demux():
            if packet.dts is None or packet.size == 0:
                continue
            if packet.stream.type == "video":
                video.append((packet.dts, packet.pts if packet.pts is not None else -1))
                base = packet.stream.time_base
                assert base is not None
                if (video[-1][0] - video[0][0]) * base > seconds:
                    break
            for frame in packet.decode():
                if isinstance(frame, av.AudioFrame):
                    audio_samples += frame.samples
            if audio_rate and audio_samples > seconds * audio_rate:
                break
    return {"video": video, "audio_samples": audio_samples, "codecs": codecs}


def test_pyav_plays_live_hls(server: Server, long_av_media: Path) -> None:
    publisher = publish(server, long_av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        got = read_hls(playlist_url(server), 6)
    finally:
        kill(publisher)
    assert got["codecs"] == {"video": "h264", "audio": "aac"}
    video = got["video"]
    assert len(video) >= 5 * 30
    assert all(a[0] < b[0] for a, b in itertools.pairwise(video)), "DTS must increase"
    assert all(p >= d for d, p in video), "PTS < DTS"
    assert got["audio_samples"] >= 5 * 44100


def test_playlists_keep_the_rules_and_blocking_reload_waits_for_the_part(
        one_egress: Server, long_av_media: Path) -> None:
    server = one_egress
    publisher = publish(server, long_av_media)
    url = playlist_url(server, "v.m3u8")
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        assert httpx.get(playlist_url(server), timeout=15).status_code == 200
        sequences: list[int] = []
        waits: list[float] = []
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=15) as client:
            while time.monotonic() < deadline:
                text = client.get(url).text
                tags = check_playlist(text, PLAN)
                sequences.append(int(tags["MEDIA-SEQUENCE"][0]))
                # Ask for the hinted part: the answer comes when it exists, within a part.
                msn = int(tags["MEDIA-SEQUENCE"][0]) + len(extinfs(text))
                parts_now = text.rsplit("#EXTINF", 1)[-1].count("#EXT-X-PART:")
                hint = HINT.search(text)
                assert hint is not None
                started = time.monotonic()
                blocked = client.get(url, params={"_HLS_msn": msn, "_HLS_part": parts_now})
                waits.append(time.monotonic() - started)
                assert blocked.status_code == 200
                assert f'URI="v-p{hint[1]}.m4s"' in blocked.text  # the part it waited for
                part = client.get(server.http(f"/live/sample/v-p{hint[1]}.m4s"))
                assert part.status_code == 200
                assert part.content[4:8] == b"moof"
                time.sleep(0.5)
            bad = client.get(url, params={"_HLS_part": "1"})
            assert bad.status_code == 400
            far = client.get(url, params={"_HLS_msn": msn + 10})
            assert far.status_code == 400
    finally:
        kill(publisher)
    assert sequences == sorted(sequences)
    assert sequences[-1] > sequences[0]  # the window slid
    # A part comes every 0.25 s at most: no wait is much longer (margin for a loaded machine).
    assert max(waits) < 2 * PLAN.part_target_s + 0.25, waits


def test_recording_is_a_complete_vod_playlist(long_av_media: Path, av_media: Path) -> None:
    server = start_server(ingest=1, egress=1, tweak=dvr_entry("DVR_FMP4", mode="all"))
    try:
        sent = media_report(av_media)
        finish(publish(server, av_media), 40)
        url = playlist_url(server)
        # The publisher may come back for a while; then the playlists end.
        wait_until(lambda: "#EXT-X-ENDLIST" in httpx.get(playlist_url(server, "v.m3u8"),
                                                         timeout=10).text, 30, "ENDLIST")
        text = httpx.get(playlist_url(server, "v.m3u8"), timeout=10).text
        tags = check_playlist(text, PLAN)
        assert tags["PLAYLIST-TYPE"] == ["VOD"]
        assert sum(extinfs(text)) == pytest.approx(len(sent.video) / 30, abs=0.1)
        got = read_hls(url, 1e9)
    finally:
        cleanup(server)
    assert len(got["video"]) == len(sent.video)  # every frame the publisher sent
    aac_frames = len([a for a in sent.audio if a])
    assert abs(got["audio_samples"] - 1024 * aac_frames) <= 1024


def test_reconnecting_publisher_gives_a_discontinuity(one_egress: Server,
                                                      av_media: Path) -> None:
    server = one_egress
    url = playlist_url(server, "v.m3u8")
    second = publish_again(server, av_media, playlist_url(server))
    try:
        wait_until(lambda: "#EXT-X-DISCONTINUITY\n" in httpx.get(url, timeout=10).text
                   and "v-init-1.m4s" in httpx.get(url, timeout=10).text, 15,
                   "a discontinuity and the second init segment")
        text = httpx.get(url, timeout=10).text
        check_playlist(text, PLAN)
        got = read_hls(playlist_url(server), 3)
    finally:
        kill(second)
    assert len(got["video"]) >= 60


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_single_track_streams_play_over_hls_and_dash(server: Server, kind: str,
                                                    media_dir: Path) -> None:
    media = make_media(media_dir / f"{kind}-12s.flv", seconds=12, video=kind == "video",
                       audio=kind == "audio")
    publisher = publish(server, media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        top = httpx.get(playlist_url(server), timeout=15).text
        assert "EXT-X-MEDIA" not in top
        assert top.rstrip().endswith("a.m3u8" if kind == "audio" else "v.m3u8")
        got = read_hls(playlist_url(server), 3)
        dash = ffmpeg_packets(server.http("/live/sample/index.mpd"), 3)
    finally:
        kill(publisher)
    assert list(got["codecs"]) == [kind]
    assert list(dash) == [0]  # DASH too: one AdaptationSet
    assert len(dash[0]) >= (60 if kind == "video" else 100)
    if kind == "video":
        assert len(got["video"]) >= 60
    else:
        assert got["audio_samples"] >= 2 * 44100


def test_hls_and_dash_need_a_dvr_fmp4_entry(long_av_media: Path) -> None:
    def no_fmp4(doc: dict[str, Any]) -> None:
        loc = doc["rtmp"]["location"][0]
        loc["dvr"] = [d for d in loc["dvr"] if d["name"] != "DVR_FMP4"]

    server = start_server(ingest=1, egress=1, tweak=no_fmp4)
    try:
        for name in ("index.m3u8", "index.mpd"):
            answer = httpx.get(playlist_url(server, name), timeout=10)
            assert answer.status_code == 404
            assert "no DVR_FMP4 entry" in answer.text
    finally:
        cleanup(server)
