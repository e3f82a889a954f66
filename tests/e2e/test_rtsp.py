"""RTSP over TCP through a real rtmpmate: ffmpeg publishes (H.264/H.265 + AAC) and plays;
what came out is read back over RTMP, HTTP-FLV, HLS and RTSP and checked frame by frame."""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import av
import pytest

from tests.e2e.harness import (
    FFMPEG,
    FlvReport,
    cleanup,
    ffmpeg_record,
    finish,
    kill,
    media_report,
    publish,
    start_server,
    wait_until,
)
from tests.e2e.test_hls import playlist_url, read_hls

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server

FPS = 30
WATCH_S = 5  # how long each player watches


def rtsp_publish(server: Server, media: Path, name: str = "cam", *, transport: str = "tcp",
                 extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(media), "-c", "copy",
           *extra, "-f", "rtsp", "-rtsp_transport", transport, server.rtsp(name)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Decoded:
    """What an ffmpeg RTSP player decoded: frames per track and their times in seconds."""

    codecs: str  # ffmpeg's description of the input streams
    video: list[float] = field(default_factory=list)  # presentation times, in output order
    audio: list[float] = field(default_factory=list)

    def check(self, seconds: float, what: str, *, audio: bool = True) -> None:
        """At least 95 % of the frames, in order, the tracks starting together."""
        assert len(self.video) >= 0.95 * seconds * FPS, f"{what}: {len(self.video)} frames"
        assert all(a < b for a, b in itertools.pairwise(self.video)), f"{what}: video order"
        if audio:
            assert len(self.audio) >= 0.95 * seconds * 44100 / 1024, f"{what}: audio"
            assert abs(self.audio[0] - self.video[0]) <= 0.1, (
                f"{what}: audio starts at {self.audio[0]} s, video at {self.video[0]} s")


def rtsp_play(url: str, seconds: float) -> subprocess.Popen[bytes]:
    """ffmpeg as an RTSP player over TCP, decoding everything (`-f framecrc`: a line per
    decoded frame). A player, not a recorder: ffmpeg's RTSP demuxer gives the first
    video packet no timestamps, which `-c copy` into FLV refuses, whatever the server."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "info", "-rtsp_transport", "tcp", "-i", url,
           "-t", str(seconds), "-f", "framecrc", "-"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def decoded(proc: subprocess.Popen[bytes], timeout_s: float) -> Decoded:
    out, err = proc.communicate(timeout=timeout_s)
    text = err.decode(errors="replace")
    assert proc.returncode == 0, f"RTSP player exited with {proc.returncode}: {text[-2000:]}"
    bases: dict[str, float] = {}
    got = Decoded(" ".join(line.strip() for line in text.splitlines() if "Stream #" in line))
    for line in out.decode().splitlines():
        if line.startswith("#tb "):
            index, _, base = line[4:].partition(": ")
            num, _, den = base.partition("/")
            bases[index] = int(num) / int(den)
        elif line and not line.startswith("#"):
            index, _, pts, *_ = (f.strip() for f in line.split(","))
            (got.video if index == "0" else got.audio).append(int(pts) * bases[index])
    return got


def check_played(report: FlvReport, seconds: float, what: str, *, audio: bool = True) -> None:
    """At least 95 % of the frames, players' timing rules, tracks starting together."""
    report.check_timing()
    assert len(report.video) >= 0.95 * seconds * FPS, f"{what}: {len(report.video)} frames"
    if audio:
        assert len(report.audio) >= 0.95 * seconds * 44100 / 1024, f"{what}: audio"
        # First audio within 100 ms of the first video frame's presentation.
        assert abs(report.audio[0] - report.video[0][1]) <= 100, (
            f"{what}: audio starts at {report.audio[0]} ms, video at {report.video[0][1]} ms")


def test_ffmpeg_publishes_h264_aac_and_every_output_plays_it(
        server: Server, av_media: Path, tmp_path: Path) -> None:
    publisher = rtsp_publish(server, av_media)
    try:
        status = wait_until(lambda: server.stream_status("live/_definst_/cam"), 10,
                            "the RTSP stream")
        assert status["protocol"] == "rtsp"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # HLS first: its presentation starts on demand, the slowest start of all.
            hls = pool.submit(read_hls, playlist_url(server, stream="cam"), WATCH_S - 1)
            players = {
                "rtmp": ffmpeg_record(server.rtmp("cam"), tmp_path / "rtmp.flv",
                                      seconds=WATCH_S),
                "http": ffmpeg_record(server.http("/live/cam.flv"), tmp_path / "http.flv",
                                      seconds=WATCH_S),
            }
            rtsp = rtsp_play(server.rtsp("cam"), WATCH_S)
            for proc in players.values():
                finish(proc, 30)
            played = decoded(rtsp, 30)
            got = hls.result(timeout=60)
        assert finish(publisher, 30) == ""
    finally:
        if publisher.poll() is None:
            kill(publisher)
    for name in players:
        report = media_report(tmp_path / f"{name}.flv")
        assert report.video_codec == "avc1.640014", name
        check_played(report, WATCH_S, name)
    assert "Video: h264 (High)" in played.codecs
    assert "Audio: aac" in played.codecs
    played.check(WATCH_S, "rtsp")
    assert got["codecs"] == {"video": "h264", "audio": "aac"}
    assert len(got["video"]) >= 0.95 * (WATCH_S - 1) * FPS
    assert all(a[0] < b[0] for a, b in itertools.pairwise(got["video"]))
    log = server.log()
    assert "[rtsp" in log
    assert "publish live/_definst_/cam" in log


@pytest.fixture(scope="module")
def hevc_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of H.265 (x265 with B-frames) and AAC, in MP4, as the issue's `in.mp4`."""
    path = tmp_path_factory.mktemp("hevc") / "in.mp4"
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "6",
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error:bframes=3",
        "-g", str(2 * FPS), "-pix_fmt", "yuv420p", "-tag:v", "hvc1",
        "-c:a", "aac", "-b:a", "128k", str(path)], check=True, timeout=120)
    return path


def test_ffmpeg_publishes_h265_and_every_output_plays_it(
        server: Server, hevc_media: Path, tmp_path: Path) -> None:
    publisher = rtsp_publish(server, hevc_media)
    seconds = 3
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the RTSP stream")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hls = pool.submit(read_hls, playlist_url(server, stream="cam"), seconds - 1)
            rtsp = rtsp_play(server.rtsp("cam"), seconds)
            recorders = [ffmpeg_record(server.http("/live/cam.flv"), tmp_path / "http.flv",
                                       seconds=seconds),
                         ffmpeg_record(server.rtmp("cam"), tmp_path / "rtmp.flv",
                                       seconds=seconds)]
            played = decoded(rtsp, 30)
            for proc in recorders:
                finish(proc, 30)
            got = hls.result(timeout=60)
        finish(publisher, 30)
    finally:
        if publisher.poll() is None:
            kill(publisher)
    assert "Video: hevc (Main)" in played.codecs, played.codecs
    played.check(seconds, "rtsp")
    for name in ("http", "rtmp"):
        with av.open(str(tmp_path / f"{name}.flv")) as container:
            video = container.streams.video[0]
            assert video.codec_context.name == "hevc", name
            assert video.codec_context.width == 320
            times = [(p.dts, p.pts) for p in container.demux(video)
                     if p.size and p.dts is not None and p.pts is not None]
        assert len(times) >= 0.95 * seconds * FPS, f"{name}: {len(times)} frames"
        assert all(a[0] < b[0] for a, b in itertools.pairwise(times)), name
        assert all(pts >= dts for dts, pts in times), name
    assert got["codecs"] == {"video": "hevc", "audio": "aac"}
    assert len(got["video"]) >= 0.95 * (seconds - 1) * FPS
    assert all(a[0] < b[0] for a, b in itertools.pairwise(got["video"]))


def test_rtmp_publish_plays_over_rtsp(server: Server, av_media: Path) -> None:
    publisher = publish(server, av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        played = decoded(rtsp_play(server.rtsp("sample"), WATCH_S), 30)
    finally:
        kill(publisher)
    assert "Video: h264 (High)" in played.codecs
    assert "Audio: aac" in played.codecs
    played.check(WATCH_S, "rtsp")


def test_udp_transport_is_refused_with_461(server: Server, short_av_media: Path) -> None:
    publisher = rtsp_publish(server, short_av_media, transport="udp")
    try:
        _, err = publisher.communicate(timeout=30)
    finally:
        if publisher.poll() is None:
            kill(publisher)
    assert publisher.returncode != 0
    assert b"461" in err
    # ANNOUNCE claimed the name; the publisher's hang-up releases it.
    wait_until(lambda: server.stream_status("live/_definst_/cam") is None, 10,
               "the refused publisher's stream to end")


def _exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, return what comes back until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and not data.startswith(b"$"):
                sock.settimeout(0.5)  # an answer came: wait a little for a close
        return out


@pytest.mark.parametrize(("data", "expect"), [
    (b"GARBAGE\r\n\r\n", b"RTSP/1.0 400"),
    (b"OPTIONS rtsp://x/live/a RTSP/1.0\r\nCSeq: 1\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n",
     b"RTSP/1.0 400"),
    (b"ANNOUNCE rtsp://x/live/a RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\n"
     b"Content-Length: 2147483648\r\n\r\n", b"RTSP/1.0 413"),
    (b"ANNOUNCE rtsp://x/live/a RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\n"
     b"Content-Length: 5\r\n\r\nv=0\r\n", b"RTSP/1.0 400"),
    (b"$\x07\x00\x04abcd", b""),
])
def test_bad_input_gets_an_answer_or_a_close_and_the_worker_goes_on(
        server: Server, data: bytes, expect: bytes) -> None:
    got = _exchange(server.rtsp_port, data)
    assert got.startswith(expect)
    answer = _exchange(server.rtsp_port, b"OPTIONS rtsp://x/live/a RTSP/1.0\r\nCSeq: 2\r\n\r\n")
    assert answer.startswith(b"RTSP/1.0 200 OK\r\nCSeq: 2\r\n")
    assert "internal error" not in server.log()


@pytest.mark.interop
def test_gstreamer_rtspsrc_plays_an_rtmp_publish(server: Server, av_media: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "gst.mkv"
    publisher = publish(server, av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        player = subprocess.Popen([
            "gst-launch-1.0", "-q", "-e",
            "rtspsrc", f"location={server.rtsp('sample')}", "protocols=tcp", "latency=200",
            "name=src",
            "src.", "!", "rtph264depay", "!", "h264parse", "!", "matroskamux", "name=mux",
            "!", "filesink", f"location={out}",
            "src.", "!", "rtpmp4gdepay", "!", "aacparse", "!", "mux."],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(WATCH_S)
        player.send_signal(signal.SIGINT)  # -e: EOS first, so the file is whole
        finish(player, 20)
    finally:
        kill(publisher)
    with av.open(str(out)) as container:
        kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds == {"video": "h264", "audio": "aac"}
        video = [p for p in container.demux(container.streams.video[0]) if p.size]
    assert len(video) >= 0.95 * (WATCH_S - 1.5) * FPS, f"{len(video)} frames"


def test_opus_audio_goes_through(server: Server, tmp_path: Path) -> None:
    """H.264 with Opus published over RTSP plays over RTSP (RFC 7587 both ways)."""
    media = tmp_path / "opus.mkv"
    subprocess.run([
        FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "6",
        "-c:v", "libx264", "-bf", "0", "-g", str(2 * FPS), "-pix_fmt", "yuv420p",
        "-c:a", "libopus", "-ac", "2", str(media)], check=True, timeout=120)
    publisher = rtsp_publish(server, media)
    seconds = 3
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the RTSP stream")
        played = decoded(rtsp_play(server.rtsp("cam"), seconds), 30)
    finally:
        kill(publisher)
    assert "Audio: opus" in played.codecs, played.codecs
    assert len(played.video) >= 0.95 * seconds * FPS
    assert len(played.audio) >= 0.95 * seconds * 50  # 20 ms frames
    assert abs(played.audio[0] - played.video[0]) <= 0.1


def test_latm_aac_is_taken(server: Server, short_av_media: Path) -> None:
    """AAC sent as MP4A-LATM (ffmpeg's -rtpflags latm; some cameras) plays on as AAC."""
    publisher = rtsp_publish(server, short_av_media, extra=("-rtpflags", "latm"))
    seconds = 2
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the RTSP stream")
        played = decoded(rtsp_play(server.rtsp("cam"), seconds), 30)
    finally:
        kill(publisher)
    assert "Audio: aac (LC), 44100 Hz, stereo" in played.codecs, played.codecs
    played.check(seconds, "rtsp")


def test_a_silent_session_is_closed_after_the_timeout() -> None:
    server = start_server(egress=1, tweak=lambda doc: doc["rtsp"].update(timeout=1))
    try:
        with socket.create_connection(("127.0.0.1", server.rtsp_port), timeout=10) as sock:
            sock.sendall(b"OPTIONS rtsp://x/live/a RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            started = time.monotonic()
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            waited = time.monotonic() - started
        assert data.startswith(b"RTSP/1.0 200 OK")
        assert 0.8 <= waited <= 5, waited
        assert "timed out" in server.log()
    finally:
        cleanup(server)
