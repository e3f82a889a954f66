"""What production servers are judged by: reconnects, slow viewers, crashes, hostile input."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from ingest.rtmp import messages as m
from ingest.rtmp.chunk import ChunkDecoder, ChunkEncoder, RtmpMessage
from ingest.rtmp.handshake import ClientHandshake
from media import amf0
from tests.e2e.harness import (
    cleanup,
    ffmpeg_record,
    finish,
    kill,
    make_media,
    media_report,
    publish,
    start_server,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.harness import Server


def test_republish_under_the_same_key(server: Server, short_av_media: Path,
                                      tmp_path: Path) -> None:
    first = [ffmpeg_record(server.rtmp(), tmp_path / "a.flv"),
             ffmpeg_record(server.http("/live/sample.flv"), tmp_path / "b.flv")]
    time.sleep(1.0)
    finish(publish(server, short_av_media), 30)
    for p in first:  # a clean end, never a hang
        finish(p, 15)
    for name in ("a.flv", "b.flv"):
        media_report(tmp_path / name).check_timing()
    wait_until(lambda: server.stream_status() is None, 10, "the stream to end")

    second = ffmpeg_record(server.rtmp(), tmp_path / "c.flv")
    time.sleep(1.0)
    finish(publish(server, short_av_media), 30)
    finish(second, 15)
    report = media_report(tmp_path / "c.flv")
    report.check_timing()
    assert len(report.video) >= 0.95 * len(media_report(short_av_media).video)


def test_second_publisher_is_refused_while_the_first_is_live(
        server: Server, av_media: Path, short_av_media: Path) -> None:
    first = publish(server, av_media)
    st = wait_until(lambda: server.stream_status(), 10, "the first publisher")
    second = publish(server, short_av_media)
    try:
        _, err = second.communicate(timeout=15)
    except Exception:
        kill(second)
        raise
    assert second.returncode != 0
    assert b"already being published" in err
    assert server.stream_status()["peer"] == st["peer"]  # type: ignore[index]
    kill(first)
    wait_until(lambda: server.stream_status() is None, 10, "the first publisher to leave")
    third = publish(server, short_av_media)
    st3 = wait_until(lambda: server.stream_status(), 10, "the next publisher")
    assert st3["peer"] != st["peer"]
    finish(third, 30)


@pytest.fixture
def one_egress() -> Iterator[Server]:
    srv = start_server(ingest=1, egress=1)  # both viewers share one hub: the hard case
    yield srv
    cleanup(srv)


def test_a_stalled_viewer_does_not_slow_anyone(one_egress: Server, tmp_path: Path) -> None:
    server = one_egress
    media = make_media(tmp_path / "in.flv", seconds=14)
    sent = media_report(media)
    stalled = socket.create_connection(("127.0.0.1", server.http_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /live/sample.flv HTTP/1.1\r\nHost: x\r\n\r\n")
    good = ffmpeg_record(server.http("/live/sample.flv"), tmp_path / "good.flv")
    time.sleep(1.0)
    started = time.monotonic()
    finish(publish(server, media), 40)
    took = time.monotonic() - started
    finish(good, 15)
    stalled.close()
    report = media_report(tmp_path / "good.flv")
    report.check_timing()
    assert len(report.video) >= 0.95 * len(sent.video)
    assert len(report.audio) >= 0.95 * len(sent.audio)
    assert took < 14 + 4, f"the publisher was slowed down: {took:.1f} s for 14 s of media"


def test_killed_egress_worker_is_back_within_a_second(server: Server, av_media: Path,
                                                      tmp_path: Path) -> None:
    player = ffmpeg_record(server.rtmp(), tmp_path / "rtmp.flv")
    time.sleep(1.0)
    publisher = publish(server, av_media)
    wait_until(lambda: server.stream_status(), 10, "the stream")
    time.sleep(2.0)
    victim = next(w for w in server.status()["workers"] if w["name"] == "egress-0")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted() -> bool:
        w = next(w for w in server.status()["workers"] if w["name"] == "egress-0")
        return bool(w["pid"] != victim["pid"] and w["restarts"] == 1)

    wait_until(restarted, 5, "egress-0 to be restarted", interval_s=0.01)
    assert time.monotonic() - killed_at < 1.0
    wait_until(lambda: httpx.get(server.http("/api/streams"), timeout=5).status_code == 200,
               5, "HTTP to answer")
    finish(publisher, 30)
    finish(player, 15)
    report = media_report(tmp_path / "rtmp.flv")
    report.check_timing()
    assert len(report.video) >= 0.95 * len(media_report(av_media).video)
    assert all(w["restarts"] == 0 for w in server.status()["workers"] if w["name"] != "egress-0")


# -- hostile input -------------------------------------------------------------------------------

def _handshaken(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=10)
    hs = ClientHandshake()
    sock.sendall(hs.initial_data())
    while not hs.done:
        data = sock.recv(65536)
        assert data, "server closed during the handshake"
        hs.receive_data(data)
        if out := hs.data_to_send():
            sock.sendall(out)
    return sock


def _connect_msg() -> RtmpMessage:
    return m.command("connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"})


def _closed_by_server(sock: socket.socket, timeout_s: float = 10) -> bool:
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


def _deep_amf(depth: int) -> bytes:
    # "connect", 1.0, then an object nested `depth` times (one key per level).
    head = amf0.encode(["connect", 1.0])
    return head + b"\x03\x00\x01a" * depth + b"\x05" + b"\x00\x00\x09" * depth


BAD_INPUTS: dict[str, list[bytes | RtmpMessage]] = {
    "chunk size 0": [RtmpMessage(2, 0, 1, 0, struct.pack(">I", 0))],
    "chunk size 2**31": [RtmpMessage(2, 0, 1, 0, struct.pack(">I", 1 << 31))],
    "AMF nested 10 000 deep": [RtmpMessage(3, 0, 20, 0, _deep_amf(10_000))],
    "publish without connect": [m.command("publish", 5.0, None, "sample", "live", stream_id=1)],
    "connect twice": [_connect_msg(), _connect_msg()],
}


def test_bad_input_ends_only_that_connection(server: Server, short_av_media: Path,
                                             tmp_path: Path) -> None:
    # Garbage instead of a handshake, and a truncated handshake.
    for junk in (b"GET / HTTP/1.1\r\n\r\n" + bytes(2000), b"\x03" + bytes(700)):
        sock = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=10)
        sock.sendall(junk)
        if junk[0] == 3:
            sock.shutdown(socket.SHUT_WR)
        assert _closed_by_server(sock)
        sock.close()
    for name, msgs in BAD_INPUTS.items():
        sock = _handshaken(server)
        enc = ChunkEncoder(chunk_size=128)
        sock.sendall(b"".join(enc.encode(x) if isinstance(x, RtmpMessage) else x for x in msgs))
        assert _closed_by_server(sock), name
        sock.close()

    # A 16 MiB message (the largest a header can declare), then an unknown command: the
    # connection survives both and answers _error.
    sock = _handshaken(server)
    enc = ChunkEncoder(chunk_size=128)
    sock.sendall(enc.encode(RtmpMessage(2, 0, 1, 0, struct.pack(">I", 65536))))
    enc.set_chunk_size(65536)
    sock.sendall(enc.encode(_connect_msg()))
    sock.sendall(enc.encode(RtmpMessage(6, 0, 9, 0, bytes(0xFFFFFF))))
    sock.sendall(enc.encode(m.command("noSuchCommand", 7.0, None)))
    dec = ChunkDecoder()
    answers: list[str] = []
    sock.settimeout(10)
    while "_error" not in answers:
        data = sock.recv(65536)
        assert data
        dec.receive_data(data)
        while isinstance(msg := dec.next_event(), RtmpMessage):
            if msg.type_id == m.MessageType.SET_CHUNK_SIZE:
                dec.set_chunk_size(m.parse_u32(msg))
            elif msg.type_id == m.MessageType.COMMAND_AMF0:
                answers.append(m.parse_command(msg).name)
    assert answers[0] == "_result"
    sock.close()

    # Every worker is still the one that started, and the server still serves.
    assert all(w["restarts"] == 0 for w in server.status()["workers"])
    player = ffmpeg_record(server.http("/live/sample.flv"), tmp_path / "ok.flv")
    time.sleep(1.0)
    finish(publish(server, short_av_media), 30)
    finish(player, 15)
    assert media_report(tmp_path / "ok.flv").video
    log = server.log()
    assert log.count("protocol error") >= len(BAD_INPUTS) + 1, log
    assert "Traceback" not in log
