"""DVR_FLV through a real rtmpmate: recordings PyAV reads whole, limits that cut files, and a
DVR worker killed with SIGKILL in the middle of a recording."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import av
import httpx
import pytest
import trio

from bench.media import load_media
from bench.publisher import EncodedMedia, Publisher
from bench.rtmp import CHUNK_SIZE
from tests.e2e.harness import (
    REPO,
    cleanup,
    dvr_entry,
    finish,
    free_port,
    kill,
    media_report,
    publish,
    start_server,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.e2e.harness import Server


def flv_dvr(**keys: Any) -> Callable[[dict[str, Any]], None]:
    tweak: Callable[[dict[str, Any]], None] = dvr_entry("DVR_FLV", **keys)
    return tweak


def folder(server: Server) -> Path:
    return server.workdir / "var" / "dvr" / "live" / "_definst_"


def frames(path: Path) -> tuple[int, int, float]:
    """Video frames, audio frames and the duration PyAV finds in a file."""
    video = audio = 0
    with av.open(str(path)) as container:
        duration = (container.duration or 0) / 1_000_000
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.stream.type == "video":
                video += 1
            elif packet.stream.type == "audio":
                audio += 1
    return video, audio, duration


@pytest.fixture
def recording_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = start_server(ingest=1, egress=1, tweak=flv_dvr(**request.param))
    yield srv
    cleanup(srv)


@pytest.mark.parametrize("recording_server", [{"mode": "all"}], indirect=True)
def test_all_mode_records_every_frame(recording_server: Server, av_media: Path) -> None:
    server = recording_server
    sent = media_report(av_media)
    finish(publish(server, av_media), 40)
    path = folder(server) / "sample.flv"
    wait_until(lambda: path.exists() and not path.with_name("sample.flv.tmp").exists()
               and b"keyframes" in path.read_bytes()[:4096], 15, "the finished recording")
    video, audio, duration = frames(path)
    assert video == len(sent.video)
    assert abs(audio - len(sent.audio)) <= 1
    assert duration == pytest.approx(10, abs=0.2)


@pytest.mark.parametrize("recording_server", [{"mode": "all", "max_time": 3000}],
                         indirect=True)
def test_max_time_cuts_files_at_keyframes(recording_server: Server, av_media: Path) -> None:
    server = recording_server
    sent = media_report(av_media)
    finish(publish(server, av_media), 40)
    # GOPs of 2 s: each file ends at the first keyframe past 3 s, so 4 s, 4 s and 2 s; the
    # file name repeats, so each new file replaces the last unless `unique` is set.
    path = folder(server) / "sample.flv"
    wait_until(lambda: path.exists() and b"keyframes" in path.read_bytes()[:4096], 15,
               "the last file")
    video, _, duration = frames(path)
    assert video == 60
    assert duration == pytest.approx(2, abs=0.2)
    assert "is replaced by a new recording" in server.log()
    assert len(sent.video) == 300


@pytest.mark.parametrize("recording_server", [{"mode": "all", "max_time": 3000,
                                               "unique": True}], indirect=True)
def test_unique_files_are_each_kept(recording_server: Server, av_media: Path) -> None:
    server = recording_server
    finish(publish(server, av_media), 40)
    wait_until(lambda: sum(1 for p in folder(server).glob("sample-*.flv")) >= 2, 15,
               "the files")
    time.sleep(1.5)  # the last one is finished when the publisher has gone
    files = sorted(folder(server).glob("sample-*.flv"))
    counts = [frames(p)[0] for p in files]
    # Names carry the second a file started: files started within one second share it.
    assert sum(counts) <= 300
    assert all(c % 60 == 0 for c in counts)


@pytest.mark.parametrize("recording_server", [{"mode": "all"}], indirect=True)
def test_killed_dvr_worker_loses_nothing_written(recording_server: Server,
                                                 long_av_media: Path) -> None:
    server = recording_server
    publisher = publish(server, long_av_media)
    path = folder(server) / "sample.flv"
    try:
        wait_until(lambda: path.exists() and path.stat().st_size > 100_000, 15, "recording")
        time.sleep(2)
        (dvr,) = [w for w in server.status()["workers"] if w["role"] == "dvr"]
        os.kill(dvr["pid"], signal.SIGKILL)
        wait_until(lambda: any(w["role"] == "dvr" and w["pid"] != dvr["pid"]
                               and w["reporting"] for w in server.status()["workers"]), 15,
                   "the DVR worker's restart")
        wait_until(lambda: list(folder(server).glob("sample-*.flv")), 15,
                   "the interrupted file kept aside")
        time.sleep(3)
    finally:
        publisher.kill()
        publisher.communicate()
    (kept,) = folder(server).glob("sample-*.flv")
    video, audio, _ = frames(kept)  # plays up to its last tag
    assert video >= 3 * 30
    assert audio > 0
    assert "was cut short; kept as" in server.log()
    wait_until(lambda: b"keyframes" in path.read_bytes()[:4096], 20, "the new file finished")
    assert frames(path)[0] >= 60  # the restarted worker went on in a new file


@pytest.mark.parametrize("recording_server", [{"mode": "manual"}], indirect=True)
def test_record_control_starts_and_stops_manual_recordings(recording_server: Server,
                                                           long_av_media: Path) -> None:
    server = recording_server
    control = server.http("/rtmp/control/record")
    query = {"dvr": "dvr1", "app": "live", "inst": "_definst_", "name": "sample"}
    path = folder(server) / "sample.flv"
    publisher = publish(server, long_av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        time.sleep(1)
        assert not path.exists()  # manual: nothing until asked
        with httpx.Client(timeout=15) as client:
            started = client.get(f"{control}/start", params=query)
            assert started.status_code == 200, started.text
            assert started.json() == {"ok": True, "path": str(path)}
            again = client.get(f"{control}/start", params=query)
            assert again.status_code == 409
            assert "already recording" in again.json()["error"]
            assert client.get(f"{control}/start", params={**query, "dvr": "nope"}
                              ).status_code == 404
            assert client.get(f"{control}/start", params={**query, "name": "absent"}
                              ).status_code == 404
            assert client.get(f"{control}/start", params={"dvr": "dvr1"}).status_code == 400
            time.sleep(3)
            stopped = client.get(f"{control}/stop", params=query)
            assert stopped.status_code == 200
            assert stopped.json()["path"] == str(path)
            assert client.get(f"{control}/stop", params=query).status_code == 409
        video, audio, duration = frames(path)
        assert video >= 3 * 30  # from the cached GOP on: 3 s and more
        assert audio > 0
        assert 3 <= duration <= 8
        # rtmpmate-ctl does the same through the supervisor.
        ctl = [sys.executable, "-m", "control.cli", "--config", str(server.config_path),
               "record"]
        out = subprocess.run([*ctl, "start", "live/sample", "--dvr", "dvr1"], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"recording to {path}"
        out = subprocess.run([*ctl, "stop", "live/sample", "--dvr", "dvr1"], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        out = subprocess.run([*ctl, "stop", "live/sample", "--dvr", "dvr1"], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 1
        assert "not recording" in out.stderr
    finally:
        kill(publisher)


@pytest.mark.parametrize("recording_server", [{"mode": "all", "append": True}], indirect=True)
def test_append_continues_the_file(recording_server: Server, av_media: Path) -> None:
    server = recording_server
    path = folder(server) / "sample.flv"
    for _ in range(2):
        finish(publish(server, av_media), 40)
        wait_until(lambda: path.exists() and b"keyframes" in path.read_bytes()[:8192], 15,
                   "the finished file")
        time.sleep(0.5)
    video, _audio, duration = frames(path)
    assert video == 2 * 300
    assert duration == pytest.approx(20, abs=0.5)  # timestamps went on: no jump back to 0
    with av.open(str(path)) as container:
        dts = [p.dts for p in container.demux(video=0) if p.dts is not None]
    assert all(a < b for a, b in itertools.pairwise(dts))


@pytest.mark.parametrize("recording_server", [{"mode": "auto"}], indirect=True)
def test_auto_mode_records_when_the_publisher_asks(recording_server: Server,
                                                   av_media: Path) -> None:
    server = recording_server
    path = folder(server) / "sample.flv"
    publisher = publish(server, av_media)  # ffmpeg publishes "live": nothing is recorded
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        time.sleep(2)
        assert not path.exists()
    finally:
        kill(publisher)
    wait_until(lambda: server.stream_status() is None, 10, "the stream's end")
    encoded = EncodedMedia(load_media(av_media), CHUNK_SIZE)

    async def record_for(seconds: float) -> None:
        # The window starts once the publish is accepted: connecting can be slow on a busy host.
        async with trio.open_nursery() as nursery:
            await nursery.start(Publisher(encoded, publish_type="record").run,
                                "127.0.0.1", server.rtmp_port, "live", "sample")
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    trio.run(record_for, 4)
    wait_until(lambda: path.exists() and b"keyframes" in path.read_bytes()[:8192], 15,
               "the recording")
    assert frames(path)[0] >= 90


class _HookReceiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        size = int(self.headers["Content-Length"])
        _HookReceiver.received.append(json.loads(self.rfile.read(size)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_record_hooks_are_posted(av_media: Path) -> None:
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), _HookReceiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _HookReceiver.received = []
    url = f"http://127.0.0.1:{port}/hook"
    server = start_server(ingest=1, egress=1, tweak=flv_dvr(
        mode="all", on_record=url, on_record_done=[url, f"http://127.0.0.1:{free_port()}/x"]))
    try:
        finish(publish(server, av_media), 40)
        wait_until(lambda: len(_HookReceiver.received) >= 2, 15, "both hooks")
        wait_until(lambda: "hook record_done" in server.log(), 10, "the failed hook's log line")
    finally:
        cleanup(server)
        httpd.shutdown()
        httpd.server_close()
    started, done = _HookReceiver.received[:2]
    path = str(folder(server) / "sample.flv")
    assert started == {"event": "record", "app": "live", "instance": "_definst_",
                       "name": "sample", "stream": "live/_definst_/sample", "dvr": "dvr1",
                       "path": path}
    assert done["event"] == "record_done"
    assert done["path"] == path
    assert done["size"] > 100_000
    assert done["duration"] == pytest.approx(10, abs=0.2)


@pytest.mark.parametrize(("mode", "want"), [
    ("audio", (0, True)), ("video", (300, False)), ("keyframe", (5, False)),
    ("advanced", (300, True)),
])
def test_each_mode_records_its_tracks(mode: str, want: tuple[int, bool],
                                      av_media: Path) -> None:
    server = start_server(ingest=1, egress=1, tweak=flv_dvr(mode=mode))
    try:
        finish(publish(server, av_media), 40)
        path = folder(server) / "sample.flv"
        wait_until(lambda: path.exists() and b"keyframes" in path.read_bytes()[:8192], 15,
                   "the recording")
        video, audio, _ = frames(path)
        with av.open(str(path)) as container:
            kinds = sorted(s.type for s in container.streams)
    finally:
        cleanup(server)
    assert video == want[0]
    assert (audio > 400) == want[1]
    assert kinds == sorted((["audio"] if want[1] else []) + (["video"] if want[0] else []))


@pytest.mark.parametrize("recording_server", [{"mode": "all"}], indirect=True)
def test_recordings_seek(recording_server: Server, av_media: Path) -> None:
    server = recording_server
    finish(publish(server, av_media), 40)
    path = folder(server) / "sample.flv"
    wait_until(lambda: path.exists() and b"keyframes" in path.read_bytes()[:8192], 15,
               "the recording")
    for target in (3.0, 6.5):
        with av.open(str(path)) as container:
            container.seek(round(target * 1_000_000))
            frame = next(container.decode(video=0))
            # On the keyframe before the target (every 2 s in the test media).
            assert frame.time == pytest.approx(2 * (target // 2), abs=0.1)  # + B-frame delay
