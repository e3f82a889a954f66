"""The egress fast path: live FLV and fMP4, over HTTP or WebSocket, straight on the socket.

The egress worker accepts connections itself and peeks at the first request. A live stream
request (GET of APP/NAME.flv or APP/NAME.mp4, plain or as a WebSocket upgrade) is answered
here: after the response head, the stream's hub writes shared, pre-framed bytes into the
socket with one sendmsg per bus wake-up (broker.fanout.SocketQueue), and no per-frame task,
await or ASGI layer stands between them. Every other request goes to hypercorn and the
starlette app. The same code serves the players that egress workers pass to the ingest
worker holding a stream's publisher (`Handover`, egress/worker.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

import msgpack
import trio

from broker.fanout import Flusher, SocketQueue
from broker.hub import Viewer
from broker.packet import DEFAULT_INSTANCE, StreamKey
from broker.sockets import receive_some, send_short
from egress import wsframe
from egress.flv_live import FlvHandler, Framing
from egress.fmp4.live import Fmp4Handler

if TYPE_CHECKING:
    from broker.consumer import Consumer
    from broker.fanout import BoundedQueue
    from broker.hub import ViewerHandler
    from control.admission import Admission

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192
PEEK_RETRY_S = 0.005  # a head split over several segments: look again shortly
MAX_RECV = 4096


@dataclass(frozen=True, slots=True)
class LiveFormat:
    """A live output format: URL suffix, hub kind, DVR entry it needs, content type."""

    suffix: str
    kind: str
    dvr: str
    content_type: str
    protocol: str  # as counted in the status: "http-flv", and "ws-flv" over WebSocket


FLV = LiveFormat(".flv", "flv", "DVR_FLV", "video/x-flv", "flv")
FMP4 = LiveFormat(".mp4", "mp4", "DVR_FMP4", "video/mp4", "fmp4")
LIVE_FORMATS = (FLV, FMP4)


@dataclass(frozen=True, slots=True)
class LiveRoute:
    key: StreamKey
    format: LiveFormat
    cache_frames: int

    def viewer(self, queue: BoundedQueue, framing: Framing, *, websocket: bool) -> Viewer:
        handler: ViewerHandler = (FlvHandler(framing) if self.format is FLV
                                  else Fmp4Handler(framing))
        protocol = ("ws-" if websocket else "http-") + self.format.protocol
        return Viewer(protocol, handler, queue, variant=framing)


@dataclass(frozen=True, slots=True)
class Handover:
    """What travels with an admitted live player's connection to the ingest worker that holds
    the publisher (broker/handoff.py). Its request head is still unread in the socket."""

    route: LiveRoute
    cors: dict[str, str]
    peer: str

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([str(self.route.key), self.route.format.kind,
                                     self.route.cache_frames, self.cors, self.peer])
        return data

    @classmethod
    def decode(cls, data: bytes) -> Handover:
        """Raises ValueError for anything but what `encode` makes."""
        try:
            key, kind, cache, cors, peer = msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"not a player hand-over: {exc}") from None
        fmt = next((f for f in LIVE_FORMATS if f.kind == kind), None)
        if (fmt is None or type(cache) is not int or cache < 1 or not isinstance(peer, str)
                or not isinstance(cors, dict)
                or not all(isinstance(v, str) for v in (*cors, *cors.values()))):
            raise ValueError("not a player hand-over")
        return cls(LiveRoute(StreamKey.parse(str(key)), fmt, cache), cors, peer)


def player_inbox_path(run_dir: str, worker: str) -> str:
    """Where an ingest worker takes the players egress workers pass it."""
    return os.path.join(os.path.abspath(run_dir), f"players-{worker}.sock")


def parse_live_path(path: str, suffix: str) -> StreamKey | None:
    """'/live/sample.flv' or '/live/inst/sample.flv' -> the stream key; None if not such a path."""
    if not path.endswith(suffix):
        return None
    parts = path[: -len(suffix)].strip("/").split("/")
    if len(parts) == 2:
        parts.insert(1, DEFAULT_INSTANCE)
    if len(parts) != 3 or not all(parts) or any(p.startswith("$") or "\x00" in p
                                                 for p in parts):
        return None
    return StreamKey(*parts)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    size: int  # bytes of the head, blank line included
    query: str = ""  # after the "?", as sent


def parse_head(data: bytes) -> RequestHead | None:
    """Parse an HTTP/1.1 request head (pure); None if it is not one we can read."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    try:
        lines = data[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    return RequestHead(method, unquote(path), headers, end + 4, query)


async def peek_head(sock: socket.socket, timeout_s: float) -> RequestHead | None:
    """Look at the request head without consuming it, so hypercorn can still read it; None
    if it is not one we read (hypercorn answers it). Raises trio.TooSlowError if it is not
    all there within timeout_s, EOFError if the client left before sending a byte."""
    with trio.fail_after(timeout_s):
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise EOFError(str(exc)) from exc
            if not data:
                raise EOFError("closed before a request")
            if b"\r\n\r\n" in data or len(data) >= MAX_HEAD_BYTES:
                return parse_head(data)
            await trio.sleep(PEEK_RETRY_S)


def http_response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    if body or not status.startswith(("101", "200")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LiveStreams:
    def __init__(self, consumer: Consumer, flusher: Flusher,
                 admission: Admission | None = None, *, nagle: bool = False) -> None:
        self.consumer = consumer
        self.flusher = flusher
        self.admission = admission  # fires on_play_done
        self.nagle = nagle  # players' media with Nagle's algorithm once started (SocketQueue)

    async def serve_handed(self, sock: socket.socket, handover: Handover) -> None:
        """A player another process admitted and passed here, its head unread: the whole
        head was in the socket when it was passed, so one peek finds it."""
        try:
            head = parse_head(sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK))
        except OSError:
            return  # it left on the way
        if head is None:
            logger.warning("a handed-over player's request head is gone (%s)", handover.peer)
            return
        await self.serve(sock, head, handover.route, cors=handover.cors, peer=handover.peer)

    async def serve(self, sock: socket.socket, head: RequestHead, route: LiveRoute, *,
                    cors: dict[str, str], peer: str = "?") -> None:
        key, kind = route.key, route.format.kind
        sock.recv(head.size)  # consume the head we peeked at
        upgrade = head.headers.get("upgrade", "").lower() == "websocket"
        if upgrade:
            ws_key = head.headers.get("sec-websocket-key", "")
            if not ws_key or head.headers.get("sec-websocket-version") != "13":
                await send_short(sock, http_response("400 Bad Request", {"Connection": "close"},
                                                b"bad WebSocket upgrade\n"))
                return
            framing = Framing.WEBSOCKET
            start = http_response("101 Switching Protocols", {
                "Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Accept": wsframe.accept_key(ws_key)})
        else:
            framing = Framing.CHUNKED
            start = http_response("200 OK", {
                "Content-Type": route.format.content_type, "Transfer-Encoding": "chunked",
                "Cache-Control": "no-cache", "Connection": "close", **cors})
        queue = SocketQueue(sock, route.cache_frames, self.flusher, nagle=self.nagle)
        queue.preload(start)  # goes out with the first media, or not at all if 404
        viewer = route.viewer(queue, framing, websocket=upgrade)
        if head.method == "HEAD" and not upgrade:
            live = self.consumer.directory.get(key, trio.current_time()) is not None
            answer = start if live else _not_found(key, cors)
            await send_short(sock, answer[:answer.index(b"\r\n\r\n") + 4])  # no body
            return
        if await self.consumer.attach(key, viewer, kind=kind) is None:
            await send_short(sock, _not_found(key, cors))
            return
        queue.flush()  # the start (header, GOP) goes now, not with the next bus message
        started = time.time()
        client = _Client(sock, queue, upgrade)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.watch, nursery.cancel_scope)
                await queue.run_writer()
                nursery.cancel_scope.cancel()
            if queue.closed and not client.closed:  # the publisher left: end properly
                ending = wsframe.close_frame(1000, "stream ended") if upgrade else b"0\r\n\r\n"
                await send_short(sock, ending)
        except* trio.BrokenResourceError:
            pass  # the viewer went away
        finally:
            self.consumer.detach(key, viewer, kind=kind)
            if self.admission is not None:
                self.admission.done("play", app=key.app, key=key,
                                    protocol=("ws-" if upgrade else "http-") + kind, peer=peer,
                                    query=head.query, started=started,
                                    bytes_count=queue.bytes_out)


def _not_found(key: StreamKey, cors: dict[str, str]) -> bytes:
    return http_response("404 Not Found", {"Content-Type": "text/plain", "Connection": "close",
                                       **cors}, f"stream {key} is not published\n".encode())


class _Client:
    """The viewer's side of the connection: notice it leaving; for WebSocket, answer pings
    and closes."""

    def __init__(self, sock: socket.socket, queue: SocketQueue, websocket: bool) -> None:
        self.sock, self.queue, self.websocket = sock, queue, websocket
        self.closed = False  # the client sent a WebSocket close (and got ours)

    async def watch(self, scope: trio.CancelScope) -> None:
        try:
            await self._read()
        except (OSError, wsframe.WsProtocolError):
            pass
        finally:
            scope.cancel()

    async def _read(self) -> None:
        decoder = wsframe.ClientFrameDecoder()
        queue = self.queue
        while data := await receive_some(self.sock, MAX_RECV):
            if not self.websocket:
                continue  # a player has nothing to say; pipelined requests are ignored
            decoder.receive_data(data)
            while (frame := decoder.next_frame()) is not None:
                if frame.opcode is wsframe.Opcode.PING:
                    queue.push_control(wsframe.frame(wsframe.Opcode.PONG, frame.payload))
                    queue.flush()
                elif frame.opcode is wsframe.Opcode.CLOSE:
                    # Our close goes last: nothing may follow it (RFC 6455 §5.5.1).
                    queue.push_control(wsframe.close_frame(1000))
                    queue.close()
                    queue.flush()
                    self.closed = True
                    return
