"""Real publishers and players through a real rtmpmate: RTMP in; RTMP, HTTP-FLV, WS-FLV out."""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

import av
import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.e2e.harness import (
    FlvReport,
    analyze_flv,
    ffmpeg_record,
    finish,
    kill,
    media_report,
    publish,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server

PLAYER_TIMEOUT_S = 40


class WsRecorder(threading.Thread):
    """A WebSocket-FLV player: every binary message appended, until the server closes."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.data = bytearray()
        self.messages = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ws_connect(self.url, open_timeout=10, max_size=None) as ws:
                while True:
                    try:
                        msg = ws.recv(timeout=PLAYER_TIMEOUT_S)
                    except ConnectionClosed:
                        return
                    assert isinstance(msg, bytes)
                    self.data += msg
                    self.messages += 1
        except BaseException as exc:
            self.error = exc


class PyAvPlayer(threading.Thread):
    """PyAV (libavformat's own RTMP client) demuxing the stream packet by packet."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.video: list[tuple[int, int, bool]] = []
        self.audio = 0
        self.codecs: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with av.open(self.url, timeout=PLAYER_TIMEOUT_S) as container:
                for v in container.streams.video:
                    self.codecs["video"] = v.codec_context.name
                    self.codecs["size"] = (v.codec_context.width, v.codec_context.height)
                for a in container.streams.audio:
                    self.codecs["audio"] = a.codec_context.name
                for packet in container.demux():
                    if packet.size == 0 or packet.dts is None:
                        continue
                    if packet.stream.type == "video":
                        self.video.append((packet.dts, packet.pts or 0, packet.is_keyframe))
                    elif packet.stream.type == "audio":
                        self.audio += 1
        except BaseException as exc:
            self.error = exc


def assert_complete(got: FlvReport, sent: FlvReport, who: str) -> None:
    got.check_timing()
    assert len(got.video) >= 0.95 * len(sent.video), (who, len(got.video), len(sent.video))
    assert len(got.audio) >= 0.95 * len(sent.audio), (who, len(got.audio), len(sent.audio))
    assert (got.video_codec, got.width, got.height) == (
        sent.video_codec, sent.width, sent.height), who
    assert got.audio_config == sent.audio_config, who
    assert got.audio_flag, who
    assert got.video_flag, who


def test_every_player_gets_every_frame(server: Server, av_media: Path, tmp_path: Path) -> None:
    sent = media_report(av_media)
    assert len(sent.video) == 300
    rtmp_out, http_out = tmp_path / "rtmp.flv", tmp_path / "http.flv"
    players = [ffmpeg_record(server.rtmp(), rtmp_out),
               ffmpeg_record(server.http("/live/sample.flv"), http_out)]
    ws = WsRecorder(server.ws("/live/sample.flv"))
    pyav = PyAvPlayer(server.rtmp())
    ws.start()
    pyav.start()
    time.sleep(1.0)  # players connect first and wait for the publisher
    publisher = publish(server, av_media)

    st = wait_until(lambda: (s := server.stream_status()) and sum(s["viewers"].values()) >= 4
                    and s["bitrate"] > 0 and s, 10, "status with 4 viewers")
    assert st["codecs"] == {"video": sent.video_codec, "audio": "mp4a.40.2"}
    assert (st["width"], st["height"]) == (sent.width, sent.height)
    assert st["viewers"] == {"rtmp": 2, "http-flv": 1, "ws-flv": 1}
    assert st["peer"].startswith("127.0.0.1:")

    finish(publisher, 30)
    for p in players:
        finish(p, 15)
    ws.join(15)
    pyav.join(15)
    for thread in (ws, pyav):
        assert not thread.is_alive()
        assert thread.error is None, thread.error

    assert_complete(media_report(rtmp_out), sent, "ffmpeg rtmp")
    assert_complete(media_report(http_out), sent, "ffmpeg http-flv")
    ws_report = analyze_flv(bytes(ws.data))
    assert_complete(ws_report, sent, "ws-flv")
    assert ws_report.metadata >= 1
    assert len(pyav.video) >= 0.95 * len(sent.video)
    assert pyav.audio >= 0.95 * len(sent.audio)
    assert pyav.video[0][2], "PyAV: first video packet is not a keyframe"
    assert pyav.codecs == {"video": "h264", "audio": "aac", "size": (sent.width, sent.height)}
    dts = [d for d, _, _ in pyav.video]
    assert all(a < b for a, b in itertools.pairwise(dts))


def test_late_joiner_starts_on_a_keyframe_at_once(server: Server, av_media: Path,
                                                   tmp_path: Path) -> None:
    publisher = publish(server, av_media)
    wait_until(lambda: server.stream_status(), 10, "the stream to be live")
    time.sleep(3.0)  # join mid-GOP (keyframes every 2 s)
    started = time.monotonic()
    out = tmp_path / "late.flv"
    player = ffmpeg_record(server.http("/live/sample.flv"), out, seconds=2)
    finish(player, 20)
    report = media_report(out)
    report.check_timing()
    assert report.video
    assert report.audio
    # Two seconds of media arrived well before two seconds of real time: the GOP came at once.
    assert time.monotonic() - started < 4.0
    kill(publisher)


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_single_track_streams_play_everywhere(server: Server, audio_media: Path,
                                              video_media: Path, tmp_path: Path,
                                              kind: str) -> None:
    media = audio_media if kind == "audio" else video_media
    sent = media_report(media)
    outs = [tmp_path / "rtmp.flv", tmp_path / "http.flv"]
    players = [ffmpeg_record(server.rtmp(), outs[0]),
               ffmpeg_record(server.http("/live/sample.flv"), outs[1])]
    ws = WsRecorder(server.ws("/live/sample.flv"))
    ws.start()
    time.sleep(1.0)
    publisher = publish(server, media)
    finish(publisher, 30)
    for p in players:
        finish(p, 15)
    ws.join(15)
    assert ws.error is None
    reports = [media_report(o) for o in outs] + [analyze_flv(bytes(ws.data))]
    for who, got in zip(("rtmp", "http-flv", "ws-flv"), reports, strict=True):
        got.check_timing()
        if kind == "audio":
            assert not got.video, who
            assert len(got.audio) >= 0.95 * len(sent.audio), who
        else:
            assert not got.audio, who
            assert len(got.video) >= 0.95 * len(sent.video), who
    # Our own header must announce exactly the tracks present (mpegts.js waits otherwise).
    ws_report = reports[2]
    assert (ws_report.audio_flag, ws_report.video_flag) == (kind == "audio", kind == "video")


def test_unknown_stream_is_404_after_a_short_wait(server: Server) -> None:
    started = time.monotonic()
    r = httpx.get(server.http("/live/nothing.flv"), timeout=10)
    assert r.status_code == 404
    assert "not published" in r.text
    assert 2.0 < time.monotonic() - started < 6.0
    assert httpx.get(server.http("/nope.txt"), timeout=10).status_code == 404


def _mp4_report(path: Path) -> tuple[list[tuple[int, int, bool]], int, dict[str, Any]]:
    """Video (dts, pts, keyframe) in 90 kHz ticks, audio packet count, codecs: via PyAV."""
    video: list[tuple[int, int, bool]] = []
    audio = 0
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        codecs = {"video": v.codec_context.name,
                  "audio": container.streams.audio[0].codec_context.name,
                  "size": (v.codec_context.width, v.codec_context.height)}
        for packet in container.demux():
            if packet.size == 0 or packet.dts is None:
                continue
            if packet.stream.type == "video":
                video.append((packet.dts, packet.pts or 0, packet.is_keyframe))
            else:
                audio += 1
    return video, audio, codecs


def test_live_fmp4_over_http_and_websocket(server: Server, av_media: Path,
                                           tmp_path: Path) -> None:
    sent = media_report(av_media)
    http_out = tmp_path / "http.mp4"
    ws = WsRecorder(server.ws("/live/sample.mp4"))
    ws.start()
    time.sleep(1.0)
    publisher = publish(server, av_media)
    with httpx.stream("GET", server.http("/live/sample.mp4"), timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "video/mp4"
        with open(http_out, "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    finish(publisher, 30)
    ws.join(15)
    assert ws.error is None
    ws_out = tmp_path / "ws.mp4"
    ws_out.write_bytes(bytes(ws.data))
    for who, path in (("http-fmp4", http_out), ("ws-fmp4", ws_out)):
        video, audio, codecs = _mp4_report(path)
        assert codecs == {"video": "h264", "audio": "aac", "size": (sent.width, sent.height)}, who
        assert video[0][2], f"{who}: does not start on a keyframe"
        assert all(a[0] < b[0] for a, b in itertools.pairwise(video)), f"{who}: DTS"
        assert all(p >= d for d, p, _ in video), f"{who}: PTS < DTS"
        # The HTTP player joined after the publisher started: it starts on the cached GOP.
        need = 0.95 if who == "ws-fmp4" else 0.5
        assert len(video) >= need * len(sent.video), (who, len(video))
        assert audio >= need * len(sent.audio), (who, audio)
