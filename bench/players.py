"""The load client's players: RTMP, and FLV or fMP4 over HTTP or WebSocket; a task each.

Every player does the real handshake or request. Then it either *parses* (a sample of players:
FLV tags or fMP4 fragments, for startup time and per-frame latency) or hands its socket to the
Drainer, which only counts bytes (bench/counting.py). RTMP counting players still acknowledge
every window, as real clients do (nginx-rtmp asks for it). New protocols go in PROTOCOLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import h11
import trio
import wsproto
from wsproto import events as ws
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from bench.counting import RECV_BYTES, Drainer, PlayerStats, Sink, StartGate
from bench.fmp4 import Fmp4Error, Fmp4Reader
from bench.media import is_video_frame, is_video_keyframe
from bench.rtmp import RtmpError, client_socket, open_rtmp, play_status, send_all
from ingest.rtmp import messages as m
from media import flv

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable

MAX_HEAD_BYTES = 16384
PLAY_ERRORS = ("NetStream.Play.StreamNotFound", "NetStream.Play.Failed")


@dataclass
class PlayContext:
    host: str
    port: int
    app: str
    name: str
    sent_at: dict[int, float]  # the publisher's video send times, by FLV timestamp
    limiter: trio.CapacityLimiter  # bounds connections being set up at once
    drainer: Drainer
    gate: StartGate

    def playing(self, stats: PlayerStats) -> None:
        stats.playing_at = trio.current_time()
        self.gate.arrive(stats)

    def on_frame(self, stats: PlayerStats, ts: int, keyframe: bool, now: float) -> None:
        """A coded video frame (not a sequence header) was received whole at `now`."""
        if stats.first_keyframe_at is None and keyframe:
            stats.first_keyframe_at = now
        sent = self.sent_at.get(ts)
        if sent is None:
            stats.unmatched += 1
        elif sent >= stats.connect_start:  # not a cached frame from before we came
            stats.frames.append((sent, now))


async def count(raw: socket.socket, ctx: PlayContext, stats: PlayerStats,
                on_bytes: Callable[[int], None] | None = None) -> None:
    """Hand the socket to the Drainer; this task only keeps it open until the run ends."""
    ctx.drainer.add(Sink(raw, stats, on_bytes))
    await trio.sleep_forever()


# -- RTMP ---------------------------------------------------------------------------------------

async def play_rtmp(ctx: PlayContext, stats: PlayerStats) -> None:
    raw, sock = client_socket()
    with sock:
        async with ctx.limiter:
            stats.connect_start = trio.current_time()
            conn = await open_rtmp(sock, ctx.host, ctx.port, ctx.app)
            await conn.create_stream()
            await conn.play(ctx.name)
            ctx.playing(stats)
        if not stats.sampled:
            base = conn.decoder.bytes_received

            def ack(received: int) -> None:
                # A 16-byte write into an idle socket goes whole; if it would block, the
                # BlockingIOError ends this drain and the next read tries again.
                total = base + received
                if conn.ack_window and total - conn.acked >= conn.ack_window:
                    raw.send(conn.encoder.encode(m.acknowledgement(total)))
                    conn.acked = total

            await count(raw, ctx, stats, ack)
            return
        while True:
            n = await conn.sock.recv_into(conn.buf)
            now = trio.current_time()
            if not n:
                stats.ended = True
                return
            stats.bytes += n
            conn.decoder.receive_data(bytes(conn.buf[:n]))
            for msg in conn.drain():
                if msg.type_id == m.MessageType.VIDEO and is_video_frame(msg.payload):
                    ctx.on_frame(stats, msg.timestamp, is_video_keyframe(msg.payload), now)
                elif msg.type_id == m.MessageType.USER_CONTROL:
                    await conn.answer_ping(msg)
                elif play_status(msg) in PLAY_ERRORS:
                    raise RtmpError(f"play refused: {play_status(msg)}")
            await conn.maybe_ack(conn.decoder.bytes_received)


# -- HTTP-FLV and WS-FLV -------------------------------------------------------------------------

async def _connect(sock: trio.socket.SocketType, ctx: PlayContext, stats: PlayerStats) -> None:
    stats.connect_start = trio.current_time()
    await sock.connect((ctx.host, ctx.port))


def status_line(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].decode("latin-1")


async def read_head(sock: trio.socket.SocketType) -> tuple[bytes, bytes]:
    """(response head, bytes after it) of an HTTP response."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise RtmpError("response head too long")
        chunk = await sock.recv(4096)
        if not chunk:
            raise RtmpError(f"connection closed before the response head: {data[:80]!r}")
        data += chunk
    return data[: end + 4], data[end + 4 :]


# Parsers of the sampled players: bytes of the container in, frames reported to the context.
def flv_feed(ctx: PlayContext, stats: PlayerStats) -> Callable[[bytes, float], None]:
    dec = flv.FlvDecoder()

    def feed(data: bytes, now: float) -> None:
        dec.receive_data(data)
        while (ev := dec.next_event()) is not flv.NEED_DATA:
            if (isinstance(ev, flv.FlvTag) and ev.tag_type == flv.TagType.VIDEO
                    and is_video_frame(ev.body)):
                ctx.on_frame(stats, ev.timestamp_ms, is_video_keyframe(ev.body), now)

    return feed


def fmp4_feed(ctx: PlayContext, stats: PlayerStats) -> Callable[[bytes, float], None]:
    reader = Fmp4Reader()

    def feed(data: bytes, now: float) -> None:
        for sample in reader.receive(data):
            ctx.on_frame(stats, sample.dts_ms, sample.keyframe, now)

    return feed


async def play_http(ctx: PlayContext, stats: PlayerStats, *, suffix: str,
                    parser: Callable[[PlayContext, PlayerStats],
                                     Callable[[bytes, float], None]]) -> None:
    """GET /APP/NAME{suffix}; the body goes to `parser` (sampled) or is only counted."""
    raw, sock = client_socket()
    with sock:
        async with ctx.limiter:
            await _connect(sock, ctx, stats)
            http = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target=f"/{ctx.app}/{ctx.name}{suffix}",
                                  headers=[("Host", f"{ctx.host}:{ctx.port}"),
                                           ("User-Agent", "rtmpmate-bench"), ("Accept", "*/*")])
            await send_all(sock, http.send(request) + (http.send(h11.EndOfMessage()) or b""))
            head, rest = await read_head(sock)
            if " 200 " not in status_line(head):
                raise RtmpError(f"HTTP answered {status_line(head)!r}")
            ctx.playing(stats)
        stats.bytes += len(rest)
        if not stats.sampled:
            await count(raw, ctx, stats)
            return
        http.receive_data(head + rest)
        feed = parser(ctx, stats)
        buf = bytearray(RECV_BYTES)
        now = trio.current_time()
        while True:
            ev = http.next_event()
            if ev is h11.NEED_DATA:
                n = await sock.recv_into(buf)
                now = trio.current_time()
                stats.bytes += n
                http.receive_data(bytes(buf[:n]))
            elif isinstance(ev, h11.Data):
                feed(bytes(ev.data), now)
            elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                stats.ended = True
                return


async def play_ws(ctx: PlayContext, stats: PlayerStats, *, suffix: str,
                  parser: Callable[[PlayContext, PlayerStats],
                                   Callable[[bytes, float], None]]) -> None:
    """WebSocket upgrade of /APP/NAME{suffix}; binary messages carry the container."""
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    raw, sock = client_socket()
    with sock:
        async with ctx.limiter:
            await _connect(sock, ctx, stats)
            await send_all(sock, conn.send(ws.Request(host=f"{ctx.host}:{ctx.port}",
                                                      target=f"/{ctx.app}/{ctx.name}{suffix}")))
            head, rest = await read_head(sock)
            conn.receive_data(head)
            answer = next(conn.events(), None)
            if not isinstance(answer, ws.AcceptConnection):
                raise RtmpError(f"WebSocket refused: {status_line(head)!r}")
            ctx.playing(stats)
        stats.bytes += len(rest)
        if not stats.sampled:
            await count(raw, ctx, stats)
            return
        feed = parser(ctx, stats)
        buf = bytearray(RECV_BYTES)
        data, now = rest, trio.current_time()
        while True:
            conn.receive_data(data)
            for ev in conn.events():
                if isinstance(ev, ws.BytesMessage):
                    feed(bytes(ev.data), now)
                elif isinstance(ev, ws.Ping):
                    await send_all(sock, conn.send(ev.response()))
                elif isinstance(ev, ws.CloseConnection):
                    stats.ended = True
                    return
            n = await sock.recv_into(buf)
            now = trio.current_time()
            if not n:
                stats.ended = True
                return
            stats.bytes += n
            data = bytes(buf[:n])


# -- the protocol list ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Protocol:
    """A way to play. `listener` says which server port it uses ("rtmp" or "http"); `play`
    is None when the load client cannot play it yet (the run reports n/a)."""

    name: str
    listener: str
    path_suffix: str  # HTTP protocols: what follows /APP/NAME in the URL
    websocket: bool
    play: Callable[[PlayContext, PlayerStats], Awaitable[None]] | None


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("rtmp", "rtmp", "", False, play_rtmp),
    Protocol("http-flv", "http", ".flv", False, partial(play_http, suffix=".flv",
                                                        parser=flv_feed)),
    Protocol("ws-flv", "http", ".flv", True, partial(play_ws, suffix=".flv", parser=flv_feed)),
    Protocol("http-fmp4", "http", ".mp4", False, partial(play_http, suffix=".mp4",
                                                         parser=fmp4_feed)),
    Protocol("ws-fmp4", "http", ".mp4", True, partial(play_ws, suffix=".mp4",
                                                      parser=fmp4_feed)),
)}
DEFAULT_PROTOCOLS = ("rtmp", "http-flv", "ws-flv", "http-fmp4")


async def run_player(play: Callable[[PlayContext, PlayerStats], Awaitable[None]],
                     ctx: PlayContext, stats: PlayerStats, delay_s: float = 0.0) -> None:
    """A player that fails records why and stops; it never takes the others down."""
    await trio.sleep(delay_s)
    try:
        await play(ctx, stats)
    except (OSError, RtmpError, h11.ProtocolError, LocalProtocolError, RemoteProtocolError,
            flv.FlvError, Fmp4Error) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    finally:
        ctx.gate.arrive(stats)
