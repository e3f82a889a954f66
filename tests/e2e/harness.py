"""End-to-end test harness: a real rtmpmate on free loopback ports, real ffmpeg, FLV analysis."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio_ffmpeg
import tomli_w

from bench.servers import free_port as free_port  # loopback ports for servers and hooks
from broker import flvpacket
from broker.packet import StreamKey, TrackKind
from control import ctlsock
from control.config import default_document
from media import flv
from media.codecs import avc

if TYPE_CHECKING:
    from collections.abc import Iterator

FFMPEG: str = imageio_ffmpeg.get_ffmpeg_exe()
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 120

# Servers running, and the log tails of those the running test cleaned up: a failing test's
# report shows them (conftest.py), since cleanup removes the run directory.
STARTED: list[Server] = []
CLEANED_LOGS: dict[str, str] = {}


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Server:
    """A running rtmpmate (supervisor and workers) in its own temporary run directory."""

    workdir: Path
    rtmp_port: int
    http_port: int
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    rtsp_port: int = 0
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.workdir / "run"

    def rtmp(self, name: str = "sample", app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{name}"

    def rtsp(self, name: str = "sample", app: str = "live") -> str:
        return f"rtsp://127.0.0.1:{self.rtsp_port}/{app}/{name}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.http_port}{path}"

    def status(self) -> dict[str, Any]:
        answer = ctlsock.request(str(self.run_dir / "ctl.sock"), {"cmd": "status"})
        assert answer["ok"], answer
        status: dict[str, Any] = answer["status"]
        return status

    def ready(self) -> bool:
        try:
            workers = self.status()["workers"]
        except (OSError, ValueError):
            return False
        return all(w["reporting"] for w in workers if w["role"] != "broker")

    def stream_status(self, key: str = "live/_definst_/sample") -> dict[str, Any] | None:
        for st in self.status()["streams"]:
            if st["key"] == key:
                found: dict[str, Any] = st
                return found
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log().splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=5)


def start_server(*, ingest: int = 1, egress: int = 2, tweak: Any = None,
                 env: dict[str, str] | None = None) -> Server:
    # ipc:// paths are limited to about 100 characters: keep the run directory short.
    workdir = Path(tempfile.mkdtemp(prefix="rm-", dir="/tmp"))
    doc = default_document()
    doc["server"] = {"ingest_workers": ingest, "egress_workers": egress,
                     "run_dir": str(workdir / "run"), "log_level": "info"}
    doc["bus"] = {"frontend_tcp": "", "backend_tcp": "", "hwm": 10000}
    rtmp_port, http_port = free_port(), free_port()
    doc["rtmp"]["listen"] = f"127.0.0.1:{rtmp_port}"  # type: ignore[index]
    doc["http"]["listen"] = f"127.0.0.1:{http_port}"  # type: ignore[index]
    rtsp_port = free_port()
    doc["rtsp"]["listen"] = f"127.0.0.1:{rtsp_port}"  # type: ignore[index]
    (workdir / "www").mkdir()
    doc["http"]["root"] = str(workdir / "www")  # type: ignore[index]
    for loc in doc["rtmp"]["location"]:  # type: ignore[index]
        for dvr in loc["dvr"]:  # recordings and HLS/DASH files go to the test's own folder
            dvr["directory"] = str(workdir / dvr["directory"])
    if tweak is not None:
        tweak(doc)
    config_path = workdir / "rtmpmate.toml"
    config_path.write_bytes(tomli_w.dumps(doc).encode())
    log_path = workdir / "server.log"
    server = Server(workdir, rtmp_port, http_port, config_path, log_path, rtsp_port=rtsp_port)
    with open(log_path, "wb") as log:
        server.proc = subprocess.Popen(
            [sys.executable, "-m", "control.supervisor", "--config", str(config_path)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})
    STARTED.append(server)
    try:
        wait_until(server.ready, START_TIMEOUT_S, "rtmpmate to start")
    except TimeoutError:
        server.stop()
        raise AssertionError(f"rtmpmate did not start:\n{server.log()}") from None
    return server


def cleanup(server: Server) -> None:
    server.stop()
    if server in STARTED:
        CLEANED_LOGS[server.workdir.name] = server.log_tail()
        STARTED.remove(server)
    shutil.rmtree(server.workdir, ignore_errors=True)


# -- media --------------------------------------------------------------------------------------

def make_media(path: Path, *, seconds: float, video: bool = True, audio: bool = True,
               size: str = "320x240", fps: int = 30) -> Path:
    """H.264 High with B-frames (keyframe every 2 s) and/or AAC-LC, as an FLV file."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    cmd += ["-t", str(seconds)]
    if video:
        cmd += ["-c:v", "libx264", "-profile:v", "high", "-bf", "2", "-g", str(2 * fps),
                "-pix_fmt", "yuv420p", "-b:v", "600k"]
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "128k", "-ac", "2"]
    cmd += ["-f", "flv", str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path


def publish(server: Server, media: Path, name: str = "sample", *,
            extra: list[str] | None = None, loop: bool = False) -> subprocess.Popen[bytes]:
    """ffmpeg publishing `media` in real time (over and over with `loop`)."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
           *(["-stream_loop", "-1"] if loop else []), "-i", str(media),
           "-c", "copy", *(extra or []), "-f", "flv", server.rtmp(name)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ffmpeg_record(url: str, out: Path, *, seconds: float | None = None,
                  ) -> subprocess.Popen[bytes]:
    """An ffmpeg player that stores what it receives (no re-encoding) as FLV."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", url, "-c", "copy"]
    if seconds is not None:
        cmd += ["-t", str(seconds)]
    cmd += ["-f", "flv", str(out)]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """Wait for a process to exit successfully; returns its stderr (pipes closed either way)."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{proc.args!r} still running after {timeout_s} s") from None
    text = (err or b"").decode(errors="replace")
    assert proc.returncode == 0, f"{proc.args!r} exited with {proc.returncode}: {text}"
    return text


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.communicate()


@dataclass
class FlvReport:
    """What a player received, read back from FLV bytes with our own decoder."""

    audio_flag: bool = False
    video_flag: bool = False
    video: list[tuple[int, int, bool]] = field(default_factory=list)  # dts, pts, keyframe
    audio: list[int] = field(default_factory=list)
    video_codec: str = ""
    width: int = 0
    height: int = 0
    audio_config: bytes = b""
    metadata: int = 0

    def check_timing(self) -> None:
        """Players' rules: start on a keyframe, DTS strictly increasing per track, PTS >= DTS."""
        if self.video:
            assert self.video[0][2], "video does not start on a keyframe"
            dts = [d for d, _, _ in self.video]
            assert all(a < b for a, b in itertools.pairwise(dts)), "video DTS not increasing"
            assert all(p >= d for d, p, _ in self.video), "video PTS < DTS"
        if self.audio:
            assert all(a < b for a, b in zip(self.audio, self.audio[1:], strict=False)), (
                "audio DTS not increasing")


def analyze_flv(data: bytes) -> FlvReport:
    dec = flv.FlvDecoder()
    dec.receive_data(data)
    report = FlvReport()
    key = StreamKey("t", "t", "t")
    while True:
        ev = dec.next_event()
        if ev is flv.NEED_DATA:
            break
        if isinstance(ev, flv.FlvHeader):
            report.audio_flag, report.video_flag = ev.audio, ev.video
            continue
        assert isinstance(ev, flv.FlvTag)
        if ev.tag_type == flv.TagType.SCRIPT:
            report.metadata += 1
            continue
        pkt = flvpacket.packet_from_flv(key, ev.tag_type, ev.timestamp_ms, ev.body)
        if pkt is None:
            continue
        if pkt.kind is TrackKind.VIDEO:
            if pkt.is_config:
                cfg = avc.parse_avcc(pkt.payload)
                report.video_codec = avc.codec_string(cfg)
                sps = avc.parse_sps(cfg.sps[0])
                report.width, report.height = sps.width, sps.height
            else:
                report.video.append((pkt.dts, pkt.pts, pkt.keyframe))
        elif pkt.is_config:
            report.audio_config = pkt.payload
        else:
            report.audio.append(pkt.dts)
    return report


def media_report(path: Path) -> FlvReport:
    return analyze_flv(path.read_bytes())


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


def dvr_entry(name: str, **keys: Any) -> Any:
    """A start_server tweak: set keys of the default location's DVR entry of that name."""
    def tweak(doc: dict[str, Any]) -> None:
        for dvr in doc["rtmp"]["location"][0]["dvr"]:
            if dvr["name"] == name:
                dvr.update(keys)
    return tweak


def publish_again(server: Server, media: Path, warm_url: str) -> subprocess.Popen[bytes]:
    """Publish for 3 s (with `warm_url` asked for, so presentations run), stop, and publish
    again a second later: the second publisher, running."""
    import httpx

    first = publish(server, media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        assert httpx.get(warm_url, timeout=15).status_code == 200
        time.sleep(3)
    finally:
        kill(first)
    time.sleep(1)
    return publish(server, media)


@contextlib.contextmanager
def live_stream(server: Server, media: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A publisher of `media` while the block runs: the stream is live when it starts, and
    the publisher is stopped when it ends, however it ends."""
    publisher = publish(server, media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        yield publisher
    finally:
        kill(publisher)
