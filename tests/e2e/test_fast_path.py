"""The egress fast path over raw sockets: HTTP-FLV and WebSocket-FLV written by the hub itself.

Every byte is checked as a player would see it: the response head, the HTTP/1.1 chunks or the
WebSocket frames around the FLV, and the FLV itself (header, metadata, sequence headers, a
keyframe first). The keep-alive fallback (hypercorn and starlette) and RTMP's one-play-per-
connection rule are covered too.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest

from broker import flvpacket
from broker.packet import StreamKey, TrackKind
from ingest.rtmp import messages as m
from media import amf0, flv
from tests.e2e.harness import cleanup, publish, start_server, wait_until
from tests.ingest.rtmp_client import RtmpTestClient
from tests.ingest.test_session import aac_config, aac_frame, avc_config, avc_frame, nalu

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.e2e.harness import Server

IO_TIMEOUT_S = 10.0
ALLOWED_ORIGIN = "http://allowed.example"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_names = itertools.count(1)


def allow_origin(doc: dict[str, Any]) -> None:
    doc["http"]["cors"] = ALLOWED_ORIGIN


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    server = start_server(ingest=1, egress=2, tweak=allow_origin)
    yield server
    cleanup(server)


class Live:
    """A stream published by ffmpeg for the duration of one test."""

    def __init__(self, server: Server, media: Path) -> None:
        # One name per test: no test sees another's publisher or viewer counts.
        self.name = f"fast{next(_names)}"
        self.path = f"/live/{self.name}.flv"
        self.key = f"live/_definst_/{self.name}"
        self.server = server
        self.publisher = publish(server, media, self.name)

    def status(self) -> dict[str, Any] | None:
        return self.server.stream_status(self.key)

    def stop(self) -> None:
        self.publisher.kill()
        self.publisher.communicate()


def go_live(server: Server, media: Path) -> Iterator[Live]:
    live = Live(server, media)
    try:
        wait_until(live.status, 10, f"{live.key} to be live")
        yield live
    finally:
        live.stop()


@pytest.fixture
def live(srv: Server, short_av_media: Path) -> Iterator[Live]:
    yield from go_live(srv, short_av_media)


@pytest.fixture
def long_live(srv: Server, av_media: Path) -> Iterator[Live]:
    """10 s of media: for what must still be live after a few status reports."""
    yield from go_live(srv, av_media)


# -- raw HTTP ----------------------------------------------------------------------------------

def open_http(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=IO_TIMEOUT_S)


def request(path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Response:
    """A response head read off a socket; `rest` is what came after it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data, f"connection closed before a response head: {buf!r}"
            buf += data
            assert len(buf) < 1 << 20
        head, _, self.rest = buf.partition(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        self.status_line = first
        self.status = int(first.split(" ")[1])
        self.header_lines = lines
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines)}

    def read_exact(self, n: int) -> bytes:
        while len(self.rest) < n:
            data = self.sock.recv(65536)
            assert data, "connection closed early"
            self.rest += data
        out, self.rest = self.rest[:n], self.rest[n:]
        return out

    def read_to_eof(self) -> bytes:
        out, self.rest = self.rest, b""
        while data := self.sock.recv(65536):
            out += data
        return out


class Dechunker:
    """The body of a `Transfer-Encoding: chunked` response, piece by piece."""

    def __init__(self, response: Response) -> None:
        self.response = response

    def next_piece(self) -> bytes:
        r = self.response
        while b"\r\n" not in r.rest:
            data = r.sock.recv(65536)
            assert data, "connection closed inside a chunk header"
            r.rest += data
        line, _, r.rest = r.rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        data = r.read_exact(size + 2)
        assert data[size:] == b"\r\n", "a chunk must end with CRLF"
        return data[:size]  # b"" is the last chunk


# -- raw WebSocket -----------------------------------------------------------------------------

def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.2, §5.3); payloads under 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def read_server_frame(r: Response) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of the server's next frame, which must not be masked."""
    b0, b1 = r.read_exact(2)
    assert not b1 & 0x80, "server frames are never masked"
    assert not b0 & 0x70, "no extension was negotiated"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", r.read_exact(2))
    elif n == 127:
        (n,) = struct.unpack(">Q", r.read_exact(8))
    return bool(b0 & 0x80), b0 & 0x0F, r.read_exact(n)


def ws_handshake(server: Server, path: str, key: str | None) -> Response:
    sock = open_http(server)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    if key is not None:
        headers["Sec-WebSocket-Key"] = key
    sock.sendall(request(path, headers=headers))
    return Response(sock)


def binary_messages(r: Response) -> Callable[[], bytes]:
    def feed() -> bytes:
        fin, opcode, payload = read_server_frame(r)
        assert (fin, opcode) == (True, 2), "FLV travels as final binary frames"
        return payload

    return feed


# -- FLV ---------------------------------------------------------------------------------------

def read_flv_start(feed: Callable[[], bytes]) -> list[flv.FlvHeader | flv.FlvTag]:
    """FLV events up to and including the first audio or video frame that is not a header."""
    dec = flv.FlvDecoder()
    events: list[flv.FlvHeader | flv.FlvTag] = []
    key = StreamKey("t", "t", "t")
    deadline = time.monotonic() + IO_TIMEOUT_S
    while time.monotonic() < deadline:
        ev = dec.next_event()
        if ev is flv.NEED_DATA:
            data = feed()
            assert data, f"the stream ended after {events!r}"
            dec.receive_data(data)
            continue
        events.append(ev)
        if isinstance(ev, flv.FlvTag) and ev.tag_type != flv.TagType.SCRIPT:
            pkt = flvpacket.packet_from_flv(key, ev.tag_type, ev.timestamp_ms, ev.body)
            if pkt is not None and not pkt.is_config:
                return events
    raise AssertionError(f"no media frame within {IO_TIMEOUT_S} s")


def assert_player_start(events: list[flv.FlvHeader | flv.FlvTag]) -> None:
    """FLV header, onMetaData, both sequence headers, then a video keyframe."""
    header, *tags = events
    assert header == flv.FlvHeader(audio=True, video=True)
    assert isinstance(tags[0], flv.FlvTag)
    assert tags[0].tag_type == flv.TagType.SCRIPT
    assert amf0.decode(tags[0].body)[0] == "onMetaData"
    key = StreamKey("t", "t", "t")
    packets = []
    for tag in tags[1:]:
        assert isinstance(tag, flv.FlvTag)
        pkt = flvpacket.packet_from_flv(key, tag.tag_type, tag.timestamp_ms, tag.body)
        assert pkt is not None
        packets.append(pkt)
    *configs, first = packets
    assert all(p.is_config for p in configs)
    assert {p.kind for p in configs} == {TrackKind.VIDEO, TrackKind.AUDIO}
    assert first.kind is TrackKind.VIDEO, "the first frame must be video"
    assert first.keyframe, "the first video frame must be a keyframe"


def viewers(live: Live) -> dict[str, int]:
    st = live.status()
    assert st is not None, f"{live.key} is no longer live"
    counts: dict[str, int] = st["viewers"]
    return counts


# -- HTTP-FLV ----------------------------------------------------------------------------------

def test_http_flv_get_is_chunked_flv_starting_on_a_keyframe(srv: Server, live: Live) -> None:
    with open_http(srv) as sock:
        sock.sendall(request(live.path))
        r = Response(sock)
        assert r.status_line == "HTTP/1.1 200 OK"
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"] == "video/x-flv"
        assert r.headers["cache-control"] == "no-cache"
        assert "server" not in r.headers, "served by hypercorn, not the fast path"
        assert "content-length" not in r.headers
        assert "access-control-allow-origin" not in r.headers  # no Origin, no CORS
        assert_player_start(read_flv_start(Dechunker(r).next_piece))


def test_head_while_live_is_200_without_a_body(srv: Server, live: Live) -> None:
    with open_http(srv) as sock:
        sock.sendall(request(live.path, method="HEAD"))
        r = Response(sock)
        assert r.status == 200
        assert r.headers["content-type"] == "video/x-flv"
        assert r.read_to_eof() == b""  # and the connection ends


def test_head_of_an_unknown_stream_is_404_at_once(srv: Server) -> None:
    started = time.monotonic()
    with open_http(srv) as sock:
        sock.sendall(request("/live/nobody-publishes-this.flv", method="HEAD"))
        r = Response(sock)
        assert r.status == 404
        assert r.read_to_eof() == b""  # a HEAD answer has no body (RFC 9110 §9.3.2)
    assert time.monotonic() - started < 2.0  # HEAD does not wait for a publisher


def test_request_head_split_over_several_segments(srv: Server, live: Live) -> None:
    head = request(live.path)
    pieces = [head[:7], head[7:len(head) - 5], head[len(head) - 5:]]
    with open_http(srv) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(0.05)
            sock.sendall(piece)
        r = Response(sock)
        assert r.status == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert "server" not in r.headers  # still the fast path
        assert_player_start(read_flv_start(Dechunker(r).next_piece))


def test_keep_alive_connection_falls_back_to_the_starlette_route(srv: Server,
                                                                  live: Live) -> None:
    with open_http(srv) as sock:
        sock.sendall(request("/api/streams"))
        r = Response(sock)
        assert r.status == 200
        assert "server" in r.headers  # hypercorn answered
        assert r.headers.get("connection", "keep-alive").lower() != "close"
        streams = json.loads(r.read_exact(int(r.headers["content-length"])))
        assert live.key in streams
        assert r.rest == b""

        sock.sendall(request(live.path))  # the same connection
        r2 = Response(sock)
        assert r2.status == 200
        assert r2.headers["content-type"] == "video/x-flv"
        assert r2.headers["transfer-encoding"] == "chunked"
        assert_player_start(read_flv_start(Dechunker(r2).next_piece))


def test_cors_header_only_for_an_allowed_origin(srv: Server, live: Live) -> None:
    with open_http(srv) as sock:
        sock.sendall(request(live.path, headers={"Origin": ALLOWED_ORIGIN}))
        r = Response(sock)
        assert r.status == 200
        assert "server" not in r.headers
        assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert r.headers["vary"] == "Origin"
    with open_http(srv) as sock:
        sock.sendall(request(live.path, headers={"Origin": "http://elsewhere.example"}))
        r = Response(sock)
        assert r.status == 200
        assert "access-control-allow-origin" not in r.headers


# -- WebSocket-FLV -----------------------------------------------------------------------------

def test_websocket_flv_handshake_and_binary_messages(srv: Server, live: Live) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    r = ws_handshake(srv, live.path, key)
    with r.sock:
        assert r.status_line == "HTTP/1.1 101 Switching Protocols"
        assert r.headers["upgrade"].lower() == "websocket"
        assert r.headers["connection"].lower() == "upgrade"
        expected = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        assert r.headers["sec-websocket-accept"] == expected
        assert_player_start(read_flv_start(binary_messages(r)))


def test_websocket_ping_gets_a_pong_with_the_same_payload(srv: Server, live: Live) -> None:
    r = ws_handshake(srv, live.path, base64.b64encode(os.urandom(16)).decode())
    with r.sock:
        assert r.status == 101
        read_flv_start(binary_messages(r))  # media is flowing
        r.sock.sendall(client_frame(0x9, b"are you there?"))
        for _ in range(10_000):
            fin, opcode, payload = read_server_frame(r)
            if opcode != 2:
                break
        assert (fin, opcode, payload) == (True, 0xA, b"are you there?")


def test_websocket_close_is_answered_and_ends_the_connection(srv: Server, live: Live) -> None:
    r = ws_handshake(srv, live.path, base64.b64encode(os.urandom(16)).decode())
    with r.sock:
        assert r.status == 101
        read_flv_start(binary_messages(r))
        r.sock.sendall(client_frame(0x8, struct.pack(">H", 1000)))
        for _ in range(10_000):
            fin, opcode, payload = read_server_frame(r)
            if opcode != 2:
                break
        assert (fin, opcode) == (True, 0x8)
        assert struct.unpack(">H", payload[:2]) == (1000,)
        # Then the server closes the TCP connection, with no data frame after its close frame
        # (RFC 6455 §5.5.1).
        r.rest += r.read_to_eof()
        assert r.rest == b""


def test_websocket_upgrade_without_key_is_400(srv: Server) -> None:
    # No publisher needed: the upgrade is refused before the stream is looked up.
    r = ws_handshake(srv, "/live/whatever.flv", None)
    with r.sock:
        assert r.status == 400
        assert r.headers["connection"] == "close"
        body = r.read_to_eof()
        assert len(body) == int(r.headers["content-length"])


# -- viewers that leave ------------------------------------------------------------------------

def test_viewers_that_disconnect_leave_the_status(srv: Server, long_live: Live) -> None:
    http_sock = open_http(srv)
    ws = ws_handshake(srv, long_live.path, base64.b64encode(os.urandom(16)).decode())
    with http_sock, ws.sock:
        http_sock.sendall(request(long_live.path))
        r = Response(http_sock)
        assert r.status == 200
        assert ws.status == 101
        read_flv_start(Dechunker(r).next_piece)
        read_flv_start(binary_messages(ws))
        wait_until(lambda: viewers(long_live) == {"http-flv": 1, "ws-flv": 1}, 5,
                   "both viewers in the status")
    # Both sockets closed without a word (no WebSocket close frame).
    wait_until(lambda: viewers(long_live).get("http-flv", 0) == 0
               and viewers(long_live).get("ws-flv", 0) == 0, 5, "the viewers to leave")
    assert long_live.publisher.poll() is None, "the stream ended: the test proves nothing"


# -- RTMP: one play per connection -------------------------------------------------------------

def rtmp_pump(sock: socket.socket, client: RtmpTestClient, done: Callable[[], bool],
              what: str) -> None:
    deadline = time.monotonic() + IO_TIMEOUT_S
    while True:
        if out := client.data_to_send():
            sock.sendall(out)
        if done():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        data = sock.recv(65536)
        assert data, f"connection closed while waiting for {what}"
        client.receive(data)


def _two_rtmp_streams(srv: Server, sock: socket.socket, client: RtmpTestClient,
                      ) -> tuple[int, int]:
    """connect, then createStream twice: the two message stream ids."""
    txn = client.connect("live", f"rtmp://127.0.0.1:{srv.rtmp_port}/live")
    rtmp_pump(sock, client, lambda: client.result(txn) is not None, "connect")
    txns = [client.create_stream(), client.create_stream()]
    rtmp_pump(sock, client, lambda: all(client.result(t) for t in txns), "createStream")
    ids = []
    for t in txns:
        result = client.result(t)
        assert result is not None
        assert result.name == "_result"
        assert isinstance(result.args[0], float)
        ids.append(int(result.args[0]))
    first, second = ids
    assert first != second
    return first, second


def test_rtmp_second_play_on_one_connection_fails(srv: Server, live: Live) -> None:
    with socket.create_connection(("127.0.0.1", srv.rtmp_port), timeout=IO_TIMEOUT_S) as sock:
        client = RtmpTestClient()
        first, second = _two_rtmp_streams(srv, sock, client)

        client.play(first, live.name)
        rtmp_pump(sock, client, lambda: "NetStream.Play.Start" in client.status_codes(
            stream_id=first), "Play.Start")
        client.play(second, live.name)
        rtmp_pump(sock, client, lambda: bool(client.status_codes(stream_id=second)),
                  "an answer to the second play")
        assert client.status_codes(stream_id=second) == ["NetStream.Play.Failed"]

        # The first play goes on: media keeps coming on its stream.
        media_before = len(client.received)
        rtmp_pump(sock, client, lambda: any(
            msg.type_id == m.MessageType.VIDEO and msg.stream_id == first
            for msg in client.received[media_before:]), "more video on the first stream")
        assert all(msg.stream_id != second for msg in client.received
                   if msg.type_id in (m.MessageType.VIDEO, m.MessageType.AUDIO))


def test_rtmp_play_after_stream_not_found(srv: Server, live: Live) -> None:
    """A refused play leaves the connection free to play another stream."""
    with socket.create_connection(("127.0.0.1", srv.rtmp_port), timeout=IO_TIMEOUT_S) as sock:
        client = RtmpTestClient()
        first, second = _two_rtmp_streams(srv, sock, client)
        client.play(first, "nobody-publishes-this")
        rtmp_pump(sock, client, lambda: bool(client.status_codes(stream_id=first)),
                  "an answer to the first play")
        assert client.status_codes(stream_id=first) == ["NetStream.Play.StreamNotFound"]
        client.play(second, live.name)
        rtmp_pump(sock, client, lambda: "NetStream.Play.Start" in client.status_codes(
            stream_id=second), "Play.Start of the second play")


# -- RTMP publishers: reads that wait for several bytes ----------------------------------------

def test_rtmp_publisher_is_answered_when_it_pauses_on_a_short_message(srv: Server) -> None:
    """A publisher of audio and video wakes the server only once a video frame's worth of
    bytes is queued (SO_RCVLOWAT, ingest.rtmp.wakeups); a short message after which it waits
    (here deleteStream, whose answer it wants before closing) is still read, within a bound."""
    name = f"lazy{next(_names)}"
    with socket.create_connection(("127.0.0.1", srv.rtmp_port), timeout=IO_TIMEOUT_S) as sock:
        client = RtmpTestClient()
        txn = client.connect("live", f"rtmp://127.0.0.1:{srv.rtmp_port}/live")
        rtmp_pump(sock, client, lambda: client.result(txn) is not None, "connect")
        txn = client.create_stream()
        rtmp_pump(sock, client, lambda: client.result(txn) is not None, "createStream")
        client.publish(1, name)
        rtmp_pump(sock, client, lambda: "NetStream.Publish.Start" in client.status_codes(
            stream_id=1), "Publish.Start")
        client.send_set_chunk_size(4096)
        client.send_media(1, m.MessageType.VIDEO, 0, avc_config())
        client.send_media(1, m.MessageType.AUDIO, 0, aac_config())
        for i in range(40):  # what makes the server's estimate: 400-byte audio, 5 kB video
            client.send_media(1, m.MessageType.AUDIO, 33 * i, aac_frame(bytes(398)))
            client.send_media(1, m.MessageType.VIDEO, 33 * i,
                              avc_frame(nalu(5 if i == 0 else 1, 5000), key=i == 0))
            sock.sendall(client.data_to_send())
            time.sleep(0.005)
        wait_until(lambda: srv.stream_status(f"live/_definst_/{name}"), 10, f"{name} live")
        client.send_media(1, m.MessageType.AUDIO, 33 * 40, aac_frame(bytes(398)))
        sock.sendall(client.data_to_send())
        time.sleep(0.1)
        started = time.monotonic()
        client.delete_stream(1)
        rtmp_pump(sock, client, lambda: "NetStream.Unpublish.Success" in client.status_codes(
            stream_id=1), "Unpublish.Success")
        assert time.monotonic() - started < 2.0
