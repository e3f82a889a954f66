"""Operating rtmpmate: start-up, configuration errors, rtmpmate-ctl, systemd readiness, shutdown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import zmq

from broker import wire
from ingest.rtmp.handshake import ClientHandshake
from tests.e2e.harness import REPO, cleanup, free_port, publish, start_server, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from control.cli import main; main()", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=30)


def test_ctl_check_and_config_init(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    made = ctl("config", "init", str(path))
    assert made.returncode == 0, made.stderr
    assert ctl("--config", str(path), "check").stdout.strip() == f"{path}: ok"
    assert ctl("config", "init", str(path)).returncode != 0  # never overwrites
    assert ctl("--config", "etc/rtmpmate.toml", "check").returncode == 0

    bad = tmp_path / "bad.toml"
    bad.write_text('[rtmp]\nlisten = 1935\nchunksize = 4096\n')
    checked = ctl("--config", str(bad), "check")
    assert checked.returncode != 0
    assert f"{bad}:3: unknown key rtmp.chunksize (did you mean chunk_size?)" in checked.stderr
    started = subprocess.run([sys.executable, "-m", "control.supervisor", "--config", str(bad)],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    assert started.returncode != 0
    assert "rtmp.chunksize" in started.stderr


def test_ctl_status_shows_workers_and_streams(server: Server, av_media: Path) -> None:
    publisher = publish(server, av_media)
    wait_until(lambda: (s := server.stream_status()) and s["bitrate"] > 0, 10, "the stream")
    out = ctl("--config", str(server.config_path), "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in ("broker", "ingest-0", "ingest-1", "egress-0", "egress-1"):
        assert name in text
    assert "stream live/_definst_/sample" in text
    assert "avc1.64" in text
    assert "mp4a.40.2" in text
    assert "320x240" in text
    assert "kbit/s" in text or "Mbit/s" in text
    publisher.kill()
    publisher.communicate()


def test_egress_workers_share_connections_evenly(server: Server) -> None:
    """The kernel's SO_REUSEPORT hash splits 300 connections 150 +- 9 (one sigma); the
    workers hand connections over until they hold within two of each other. Each connection
    is served whole by the worker it ends up with, and counted out when it closes."""
    clients = [socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
               for _ in range(300)]
    try:
        def held() -> list[int]:
            return [w["connections"] for w in server.status()["workers"]
                    if w["role"] == "egress"]

        wait_until(lambda: sum(held()) == 300, 10, "every connection counted")
        first, second = held()
        assert abs(first - second) <= 2, (first, second)
        out = ctl("--config", str(server.config_path), "status")
        assert "CONNECTIONS" in out.stdout
        assert f" {first}       0\n" in out.stdout  # CONNECTIONS, then VIEWERS
        for sock in clients[:10]:  # a request, whichever worker holds it
            sock.sendall(b"GET /api/streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for sock in clients[:10]:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: sum(held()) == 0, 10, "closed connections counted out")


def test_ctl_status_when_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\n')
    out = ctl("--config", str(cfg), "status")
    assert out.returncode != 0
    assert "not running" in out.stderr


def test_systemd_readiness_and_shutdown_within_five_seconds(short_av_media: Path) -> None:
    path = os.path.join("/tmp", f"rm-notify-{os.getpid()}.sock")  # short: AF_UNIX path limit
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(20)
        try:
            server = start_server(env={"NOTIFY_SOCKET": path})
            assert notify.recv(256) == b"READY=1"
            pids = [w["pid"] for w in server.status()["workers"]]
            player_pub = publish(server, short_av_media)
            wait_until(lambda: server.stream_status(), 10, "the stream")
            assert server.proc is not None
            started = time.monotonic()
            assert server.stop() == 0
            assert time.monotonic() - started < 5.0
            assert notify.recv(256) == b"STOPPING=1"
            for pid in pids:
                assert not _alive(pid), f"worker {pid} outlived the supervisor"
            player_pub.communicate(timeout=10)
        finally:
            os.unlink(path)
            cleanup(server)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; its parent (the supervisor) is gone too.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"



def test_bus_is_reachable_over_tcp() -> None:
    """Other nodes (edges, later) subscribe to the bus over TCP: stream announcements arrive."""
    port = free_port()

    def tcp_bus(doc: dict[str, Any]) -> None:
        doc["bus"]["backend_tcp"] = f"tcp://127.0.0.1:{port}"

    server = start_server(tweak=tcp_bus)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, wire.CONTROL_TOPIC)
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        kinds = {wire.decode_control(sub.recv())["kind"] for _ in range(4)}
        assert "viewers" in kinds
    finally:
        sub.close(linger=0)
        ctx.term()
        cleanup(server)


def test_idle_rtmp_connection_is_closed_after_timeout() -> None:
    def short_timeout(doc: dict[str, Any]) -> None:
        doc["rtmp"]["timeout"] = 1

    server = start_server(tweak=short_timeout)
    try:
        sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=10)
        hs = ClientHandshake()
        sock.sendall(hs.initial_data())
        while not hs.done:
            hs.receive_data(sock.recv(65536))
            sock.sendall(hs.data_to_send())
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert 0.8 < time.monotonic() - started < 5
        sock.close()
        assert "timed out" in server.log()
    finally:
        cleanup(server)


def test_cors_headers_follow_the_config() -> None:
    def cors(doc: dict[str, Any]) -> None:
        doc["http"]["cors"] = "https://a.example, https://b.example"

    server = start_server(tweak=cors)
    try:
        url = server.http("/api/streams")
        assert httpx.get(url, headers={"Origin": "https://a.example"}).headers[
            "access-control-allow-origin"] == "https://a.example"
        assert "access-control-allow-origin" not in httpx.get(
            url, headers={"Origin": "https://evil.example"}).headers
        r = httpx.get(server.http("/live/none.flv"), headers={"Origin": "https://b.example"})
        assert r.status_code == 404
        assert r.headers["access-control-allow-origin"] == "https://b.example"
    finally:
        cleanup(server)
