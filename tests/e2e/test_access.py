"""Event hooks and access control with real publishers and players: a small starlette app on
loopback plays the operator's web service (allows, refuses, redirects, times out)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control.access import sign
from tests.e2e.harness import (
    FFMPEG,
    cleanup,
    ffmpeg_record,
    finish,
    free_port,
    kill,
    media_report,
    publish,
    start_server,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from starlette.requests import Request

    from tests.e2e.harness import Server

HOOKS = ("on_connect", "on_publish", "on_publish_done", "on_play", "on_play_done")


@dataclass
class HookService:
    """What each hook answers ("allow", "refuse", "slow", "redirect:TARGET", "json:BODY"),
    and every call it got, with its body."""

    port: int
    answers: dict[str, str] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def url(self, event: str) -> str:
        return f"http://127.0.0.1:{self.port}/{event}"

    def got(self, event: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["event"] == event]

    async def handle(self, request: Request) -> Response:
        body = dict(await request.json())
        self.calls.append(body)
        answer = self.answers.get(body["event"], "allow")
        if answer == "refuse":
            return Response("no", 403)
        if answer == "slow":
            await asyncio.sleep(3)
            return Response("late")
        if answer.startswith("redirect:"):
            return Response(status_code=302, headers={"Location": answer[9:]})
        if answer.startswith("json:"):
            return JSONResponse(json.loads(answer[5:]))
        return Response("ok")


@pytest.fixture
def hooks() -> Iterator[HookService]:
    service = HookService(free_port())
    app = Starlette(routes=[Route("/{event}", service.handle, methods=["POST"])])
    cfg = HypercornConfig()
    cfg.bind = [f"127.0.0.1:{service.port}"]
    cfg.accesslog = cfg.errorlog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        loop.run_until_complete(serve(app, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: _listening(service.port), 10, "the hook service")
    yield service
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def guarded_server(hooks: HookService | None = None, **location: Any) -> Server:
    """A server whose one RTMP location has these keys (and every hook pointed at `hooks`)."""
    def tweak(doc: dict[str, Any]) -> None:
        loc = doc["rtmp"]["location"][0]
        if hooks is not None:
            loc.update({event: [hooks.url(event)] for event in HOOKS})
        loc.update(location)
    return start_server(egress=1, tweak=tweak)


@pytest.fixture
def stop_after() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        cleanup(server)


def ffmpeg_publish(url: str, media: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i",
                             str(media), "-c", "copy", "-f", "flv", url],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_hooks_allow_and_report_what_happened(hooks: HookService, av_media: Path,
                                              tmp_path: Path, stop_after: list[Server]) -> None:
    server = guarded_server(hooks)
    stop_after.append(server)
    publisher = publish(server, av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        player = ffmpeg_record(server.http("/live/cam.flv?viewer=7"), tmp_path / "out.flv",
                               seconds=2)
        finish(player, 20)
    finally:
        kill(publisher)
    wait_until(lambda: hooks.got("on_publish_done") and hooks.got("on_play_done"), 15,
               "the *_done hooks")
    (connect,) = hooks.got("on_connect")
    assert connect["app"] == "live"
    assert connect["protocol"] == "rtmp"
    assert connect["addr"] == "127.0.0.1"
    assert connect["tcUrl"] == f"rtmp://127.0.0.1:{server.rtmp_port}/live"
    (pub,) = hooks.got("on_publish")
    assert (pub["name"], pub["instance"], pub["type"]) == ("cam", "_definst_", "live")
    (play,) = hooks.got("on_play")
    assert (play["protocol"], play["query"]) == ("http-flv", "viewer=7")
    (played,) = hooks.got("on_play_done")
    assert 0.5 <= played["duration"] <= 10
    assert played["bytes"] > 50_000
    (done,) = hooks.got("on_publish_done")
    assert done["duration"] >= 1
    assert done["bytes"] > 100_000
    assert len(media_report(tmp_path / "out.flv").video) > 30


def test_refused_publish_and_play(hooks: HookService, av_media: Path,
                                  stop_after: list[Server]) -> None:
    server = guarded_server(hooks)
    stop_after.append(server)
    hooks.answers["on_publish"] = "refuse"
    refused = ffmpeg_publish(server.rtmp("cam"), av_media)
    refused.communicate(timeout=30)
    assert refused.returncode != 0
    assert server.stream_status("live/_definst_/cam") is None
    assert "refused publish of live/_definst_/cam: the hook answered 403" in server.log()
    over_rtsp = subprocess.run([FFMPEG, "-hide_banner", "-re", "-i", str(av_media), "-t", "1",
                                "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp",
                                server.rtsp("cam")], capture_output=True, timeout=30)
    assert over_rtsp.returncode != 0
    assert b"403" in over_rtsp.stderr
    assert [c["protocol"] for c in hooks.got("on_publish")] == ["rtmp", "rtsp"]

    hooks.answers["on_publish"] = "allow"
    hooks.answers["on_play"] = "refuse"
    publisher = publish(server, av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        answer = httpx.get(server.http("/live/cam.flv"), timeout=10)
        assert answer.status_code == 403
        hls = httpx.get(server.http("/live/cam/index.m3u8"), timeout=10)
        assert hls.status_code == 403
        assert hooks.got("on_play")[-1]["protocol"] == "hls"
        # A player that skips the entry file is asked about all the same.
        asked = len(hooks.got("on_play"))
        assert httpx.get(server.http("/live/cam/v.m3u8"), timeout=10).status_code == 403
        assert httpx.get(server.http("/live/cam/index.mpd"), timeout=10).status_code == 403
        assert [c["protocol"] for c in hooks.got("on_play")[asked:]] == ["hls", "dash"]
        rtsp = subprocess.run([FFMPEG, "-hide_banner", "-rtsp_transport", "tcp", "-i",
                               server.rtsp("cam"), "-t", "1", "-f", "null", "-"],
                              capture_output=True, timeout=30)
        assert rtsp.returncode != 0
        assert b"403" in rtsp.stderr
        rtmp = subprocess.run([FFMPEG, "-hide_banner", "-i", server.rtmp("cam"), "-t", "1",
                               "-f", "null", "-"], capture_output=True, timeout=30)
        assert rtmp.returncode != 0
        hooks.answers["on_play"] = "redirect:http://example.invalid/elsewhere.flv"
        moved = httpx.get(server.http("/live/cam.flv"), timeout=10)
        assert moved.status_code == 302
        assert moved.headers["location"] == "http://example.invalid/elsewhere.flv"
    finally:
        kill(publisher)


def test_redirected_publish_and_slow_hooks(hooks: HookService, short_av_media: Path,
                                           stop_after: list[Server]) -> None:
    server = guarded_server(hooks, hook_timeout=1)
    stop_after.append(server)
    hooks.answers["on_publish"] = "redirect:cam2"
    publisher = publish(server, short_av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam2"), 10, "the renamed stream")
        assert server.stream_status("live/_definst_/cam") is None
    finally:
        kill(publisher)
    hooks.answers["on_publish"] = "slow"  # answers after 3 s, the hook_timeout is 1 s
    started = time.monotonic()
    refused = ffmpeg_publish(server.rtmp("late"), short_av_media)
    refused.communicate(timeout=30)
    assert refused.returncode != 0
    assert time.monotonic() - started < 3
    assert "the on_publish hook failed" in server.log()


def test_hook_failure_allow_lets_sessions_through(short_av_media: Path,
                                                  stop_after: list[Server]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    server = guarded_server(None, on_publish=[dead], hook_failure="allow")
    stop_after.append(server)
    publisher = publish(server, short_av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
    finally:
        kill(publisher)


def test_signed_urls(short_av_media: Path, stop_after: list[Server]) -> None:
    server = guarded_server(None, secret="s3cret", signed=["publish", "play"])
    stop_after.append(server)
    now = int(time.time())
    good = f"expires={now + 300}&token={sign('s3cret', '/live/cam', now + 300)}"
    expired = f"expires={now - 5}&token={sign('s3cret', '/live/cam', now - 5)}"
    tampered = good.replace("token=", "token=0")
    for query in (expired, tampered, ""):
        proc = ffmpeg_publish(f"{server.rtmp('cam')}?{query}", short_av_media)
        proc.communicate(timeout=30)
        assert proc.returncode != 0, query
    assert server.stream_status("live/_definst_/cam") is None
    publisher = publish(server, short_av_media, f"cam?{good}")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        assert httpx.get(server.http("/live/cam.flv"), timeout=10).status_code == 403
        with httpx.stream("GET", server.http(f"/live/cam.flv?{good}"), timeout=10) as answer:
            assert answer.status_code == 200
        ctl = subprocess.run([*_ctl(server), "sign", "live/cam", "--ttl", "60"],
                             capture_output=True, text=True, check=True, timeout=30)
        with httpx.stream("GET", server.http(f"/live/cam.flv?{ctl.stdout.strip()}"),
                          timeout=10) as answer:
            assert answer.status_code == 200
    finally:
        kill(publisher)


def _ctl(server: Server) -> list[str]:
    import sys

    return [sys.executable, "-m", "control.cli", "--config", str(server.config_path)]


def _get_from(address: str, port: int, path: str) -> int:
    """The status of a GET sent from a chosen loopback address."""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(address, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_networks_allow_and_deny(short_av_media: Path, stop_after: list[Server]) -> None:
    server = guarded_server(None, deny_play=["127.0.0.2/32"], allow_publish=["127.0.0.1"])
    stop_after.append(server)
    publisher = publish(server, short_av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        assert _get_from("127.0.0.2", server.http_port, "/live/cam.flv") == 403
        assert _get_from("127.0.0.1", server.http_port, "/live/cam.flv") == 200
    finally:
        kill(publisher)
    # Publishing from an address outside allow_publish is refused.
    refusing = guarded_server(None, allow_publish=["10.0.0.0/8"])
    stop_after.append(refusing)
    proc = ffmpeg_publish(refusing.rtmp("cam"), short_av_media)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "127.0.0.1 may not publish here" in refusing.log()


def test_kick_players_then_the_publisher(av_media: Path, tmp_path: Path,
                                         stop_after: list[Server]) -> None:
    server = guarded_server(None)
    stop_after.append(server)
    publisher = publish(server, av_media, "cam")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        players = [ffmpeg_record(server.http("/live/cam.flv"), tmp_path / "http.flv"),
                   ffmpeg_record(server.rtmp("cam"), tmp_path / "rtmp.flv")]
        wait_until(lambda: sum((server.stream_status("live/_definst_/cam") or {})
                               .get("viewers", {}).values()) >= 2, 10, "two viewers")
        kick = subprocess.run([*_ctl(server), "kick", "live/cam", "--what", "players"],
                              capture_output=True, text=True, check=True, timeout=30)
        assert kick.stdout.strip() == "kicked 2 session(s)"
        for player in players:
            player.communicate(timeout=20)  # ended by the server, not by a time limit
        assert publisher.poll() is None  # the publisher stays
        answer = httpx.get(server.http("/rtmp/control/kick?app=live&name=cam&what=publisher"),
                           timeout=10)
        assert answer.json() == {"ok": True, "kicked": 1}
        publisher.communicate(timeout=20)
        wait_until(lambda: server.stream_status("live/_definst_/cam") is None, 10,
                   "the stream to end")
    finally:
        if publisher.poll() is None:
            kill(publisher)


def _control_get(address: str, port: int, path: str, token: str = "") -> int:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(address, 0)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_control_api_is_loopback_only_unless_a_token_is_set(
        stop_after: list[Server]) -> None:
    server = guarded_server(None)
    stop_after.append(server)
    kick = "/rtmp/control/kick?app=live&name=nobody"
    assert _control_get("127.0.0.1", server.http_port, kick) == 200
    # 127.0.0.2 plays a remote client: only the host's own 127.0.0.1 and ::1 are let in.
    assert _control_get("127.0.0.2", server.http_port, kick) == 403
    assert _control_get("127.0.0.2", server.http_port, "/api/streams") == 403
    assert "control API refused to 127.0.0.2" in server.log()
    with_token = start_server(egress=1, tweak=lambda d: d["http"].update(control_token="t0k"))
    stop_after.append(with_token)
    assert _control_get("127.0.0.1", with_token.http_port, kick) == 401
    assert _control_get("127.0.0.1", with_token.http_port, "/api/streams") == 401
    assert _control_get("127.0.0.1", with_token.http_port, kick, "wrong") == 401
    assert _control_get("127.0.0.2", with_token.http_port, kick, "t0k") == 200


def test_limits_refuse_new_clients_and_keep_the_others(short_av_media: Path,
                                                       stop_after: list[Server]) -> None:
    server = start_server(egress=1, tweak=lambda d: d["server"].update(
        max_connections_per_ip=2, max_streams=1, handshake_timeout=1))
    stop_after.append(server)
    for port in (server.rtmp_port, server.rtsp_port, server.http_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(100) == b""  # a client that says nothing is let go
            assert time.monotonic() - started < 5, port
    options = b"OPTIONS rtsp://x/live/a RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", server.rtsp_port), timeout=10)
    first.sendall(options)
    assert first.recv(4096).startswith(b"RTSP/1.0 200 OK")
    second = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=10)
    time.sleep(0.3)  # accepted: the worker counts two connections from 127.0.0.1
    third = socket.create_connection(("127.0.0.1", server.rtsp_port), timeout=10)
    try:
        started = time.monotonic()
        assert third.recv(100) == b""
        assert time.monotonic() - started < 0.5  # closed at once, not timed out
        first.sendall(options)
        assert first.recv(4096).startswith(b"RTSP/1.0 200 OK")  # the others go on
    finally:
        for sock in (first, second, third):
            sock.close()
    assert "max_connections_per_ip" in server.log()
    publisher = publish(server, short_av_media, "one")
    try:
        wait_until(lambda: server.stream_status("live/_definst_/one"), 10, "the stream")
        second_publisher = ffmpeg_publish(server.rtmp("two"), short_av_media)
        second_publisher.communicate(timeout=30)
        assert second_publisher.returncode != 0
        assert "max_streams" in server.log()
    finally:
        kill(publisher)


def test_hook_options_set_the_session(hooks: HookService, short_av_media: Path,
                                      stop_after: list[Server]) -> None:
    """{"record": true} makes an "auto" DVR entry record a live publish."""
    server = start_server(egress=1, tweak=lambda d: (
        d["rtmp"]["location"][0].update(on_publish=[hooks.url("on_publish")]),
        d["rtmp"]["location"][0]["dvr"][0].update(mode="auto")))
    stop_after.append(server)
    hooks.answers["on_publish"] = 'json:{"record": true}'
    publisher = publish(server, short_av_media, "cam")
    try:
        status = wait_until(lambda: server.stream_status("live/_definst_/cam"), 10,
                            "the stream")
        assert status["type"] == "record"
        wait_until(lambda: list(server.workdir.rglob("cam*.flv")), 10, "a recording")
    finally:
        kill(publisher)


def test_hls_dash_and_kept_alive_plays_report_their_end(hooks: HookService, av_media: Path,
                                                        tmp_path: Path,
                                                        stop_after: list[Server]) -> None:
    """An HLS or DASH play is asked about once and ends when its player stops fetching; a
    play on a kept-alive HTTP connection (served by starlette, not the fast path) ends with
    the connection."""
    def tweak(doc: dict[str, Any]) -> None:
        doc["rtmp"]["location"][0].update({e: [hooks.url(e)] for e in HOOKS})
        doc["http"]["play_timeout"] = 5  # above the 2 s segments a player waits between
    server = start_server(egress=1, tweak=tweak)
    stop_after.append(server)
    publisher = publish(server, av_media, "cam", loop=True)
    try:
        wait_until(lambda: server.stream_status("live/_definst_/cam"), 10, "the stream")
        for protocol, entry in (("hls", "index.m3u8"), ("dash", "index.mpd")):
            before = len(hooks.got("on_play_done"))
            player = ffmpeg_record(server.http(f"/live/cam/{entry}?who=me"),
                                   tmp_path / f"{protocol}.flv", seconds=3)
            finish(player, 40)
            assert len(media_report(tmp_path / f"{protocol}.flv").video) > 30
            wait_until(lambda: len(hooks.got("on_play_done")) > before, 15,  # noqa: B023
                       f"the {protocol} play's end")
            done = hooks.got("on_play_done")[-1]
            assert (done["protocol"], done["query"]) == (protocol, "who=me")
            assert done["bytes"] > 100_000
            assert 3 <= done["duration"] <= 30
        # The players fetched dozens of files; each play was asked about once.
        assert [c["protocol"] for c in hooks.got("on_play")] == ["hls", "dash"]

        with httpx.Client(timeout=10) as client:
            assert client.get(server.http("/api/streams")).status_code == 200
            with client.stream("GET", server.http("/live/cam.flv?kept=1")) as response:
                assert response.status_code == 200
                got = 0
                for chunk in response.iter_bytes():
                    got += len(chunk)
                    if got > 100_000:
                        break
        wait_until(lambda: any(c["query"] == "kept=1" for c in hooks.got("on_play_done")), 15,
                   "the kept-alive play's end")
        (kept,) = [c for c in hooks.got("on_play_done") if c["query"] == "kept=1"]
        assert kept["protocol"] == "http-flv"
        assert kept["bytes"] > 100_000
    finally:
        kill(publisher)
