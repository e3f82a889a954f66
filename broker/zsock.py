"""ZeroMQ sockets under trio: the only module where trio meets zmq.

Each socket has exactly one owning task (or is used only by synchronous, non-blocking calls,
which cannot interleave in trio's single thread). ZMQ_FD is edge-triggered, so after every
wake-up the owner drains the socket until ZMQ_EVENTS no longer says POLLIN.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from typing import NoReturn, cast

import trio
import zmq

from broker import wire
from broker.gop import GopCache
from broker.packet import MediaPacket, StreamKey, TrackKind

logger = logging.getLogger(__name__)

# pyzmq's constants are enum.Flag members, whose operators run in Python: the hot paths
# (every packet) use their plain int values.
_NOBLOCK, _EVENTS, _POLLIN, _FD = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.FD)
# Safety net against a missed edge: the owner re-checks ZMQ_EVENTS at least this often.
EDGE_SAFETY_S = 0.5
SNAPSHOT_TIMEOUT_S = 2.0
# The longest an audio frame of a stream with video waits on its publisher for the next video
# frame, with which it then travels (about one frame interval at 25-30 fps).
HOLD_AUDIO_S = 0.04

FrameHandler = Callable[[bytes], None]


def bus_endpoints(run_dir: str) -> tuple[str, str]:
    """The proxy's local endpoints: (frontend where publishers connect, backend for subscribers)."""
    base = os.path.abspath(run_dir)
    return f"ipc://{base}/bus-in.sock", f"ipc://{base}/bus-out.sock"


def snapshot_endpoint(run_dir: str, worker: str) -> str:
    return f"ipc://{os.path.abspath(run_dir)}/snap-{worker}.sock"


def unlink_stale(endpoint: str) -> None:
    """Remove the socket file of an ipc:// endpoint a killed process left behind."""
    if endpoint.startswith("ipc://"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(endpoint.removeprefix("ipc://"))


async def recv_multipart(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Await one multipart message on a socket owned by the calling task."""
    while True:
        if cast("int", sock.get(zmq.EVENTS)) & zmq.POLLIN:
            try:
                return sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
        with trio.move_on_after(EDGE_SAFETY_S):
            await trio.lowlevel.wait_readable(sock)


def close_socket(sock: zmq.Socket[bytes]) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close(linger=0)


class PublishedStream:
    """What the owner keeps of a stream it publishes: session, next sequence number, cache,
    and the audio frames held back to travel with the next video frame."""

    __slots__ = ("cache", "held", "held_since", "next_seq", "session")

    def __init__(self) -> None:
        self.session = secrets.randbits(52)
        self.next_seq = 0
        self.cache = GopCache()
        self.held: list[bytes] = []
        self.held_since = 0.0


class BusPublisher:
    """Publishes media with per-stream sequence numbers; never blocks (PUB drops at its HWM).

    With `local`, the process's own subscriber gets the streams published here directly, in
    the same call, instead of through the proxy: a player on the publisher's worker then
    costs no bus round trip (four thread wake-ups in three processes per message), and a
    stream nobody else watches costs the bus nothing (PUB drops unsubscribed topics itself).
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, *, hwm: int,
                 local: BusSubscriber | None = None) -> None:
        self._sock = ctx.socket(zmq.PUB)
        self._sock.set_hwm(hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._local = local
        self.streams: dict[StreamKey, PublishedStream] = {}

    def start_session(self, key: StreamKey) -> int:
        stream = self.streams[key] = PublishedStream()
        if self._local is not None:
            self._local.set_local(key.topic, True)
        return stream.session

    def publish(self, pkt: MediaPacket) -> None:
        """Send one packet of a started session and remember it for late joiners.

        Audio frames of a stream that has video are held (at most HOLD_AUDIO_S) and go just
        before the next video frame: every bus message wakes the proxy and every subscriber,
        and players get audio with the next video write anyway (broker.fanout.Flusher).
        """
        stream = self.streams[pkt.stream]
        seq = stream.next_seq
        stream.next_seq = seq + 1
        stream.cache.add(pkt)
        frame = wire.encode(pkt, seq=seq, session=stream.session)
        if pkt.kind is TrackKind.AUDIO and stream.cache.has_video and not pkt.is_config:
            now = trio.current_time()
            if not stream.held:
                stream.held_since = now
            stream.held.append(frame)
            if now - stream.held_since < HOLD_AUDIO_S:
                return
            frame = b""
        topic = pkt.stream.topic
        self._release(stream, topic)
        if frame:
            self._send_media(topic, frame)

    def end_session(self, key: StreamKey) -> None:
        stream = self.streams.pop(key, None)
        if stream is not None:
            self._release(stream, key.topic)
            self._send_media(key.topic, wire.encode_mark(key, wire.Mark.END,
                                                         seq=stream.next_seq,
                                                         session=stream.session))
            if self._local is not None:
                self._local.set_local(key.topic, False)  # the next publisher may be elsewhere

    def _release(self, stream: PublishedStream, topic: bytes) -> None:
        if stream.held:
            for held in stream.held:
                self._send_media(topic, held)
            stream.held.clear()

    def _send_media(self, topic: bytes, frame: bytes) -> None:
        self._send(frame)
        if self._local is not None:
            self._local.deliver(topic, frame)

    def send_control(self, kind: str, body: dict[str, object]) -> None:
        self._send(wire.encode_control(kind, body))

    def _send(self, frame: bytes) -> None:
        # PUB does not raise at its HWM; a full pipe to the proxy is the same silent drop.
        with contextlib.suppress(zmq.Again):
            self._sock.send(frame, _NOBLOCK)

    def close(self) -> None:
        self._sock.close(linger=0)


class BusSubscriber:
    """One SUB socket per process; handlers are called synchronously for each message."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, *, hwm: int,
                 on_drained: Callable[[], None] | None = None) -> None:
        self._on_drained = on_drained  # after each batch of messages: flush viewers' sockets
        self._sock = ctx.socket(zmq.SUB)
        self._sock.set_hwm(hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._handlers: dict[bytes, list[FrameHandler]] = {}
        self._local: set[bytes] = set()  # topics this process publishes (BusPublisher local)
        self._draining = False

    def subscribe(self, topic: bytes, handler: FrameHandler) -> None:
        handlers = self._handlers.setdefault(topic, [])
        if not handlers and topic not in self._local:
            self._set_filter(zmq.SUBSCRIBE, topic)
        handlers.append(handler)

    def unsubscribe(self, topic: bytes, handler: FrameHandler) -> None:
        handlers = self._handlers.get(topic, [])
        if handler in handlers:
            handlers.remove(handler)
        if not handlers and topic in self._handlers:
            del self._handlers[topic]
            if topic not in self._local:
                self._set_filter(zmq.UNSUBSCRIBE, topic)

    def set_local(self, topic: bytes, local: bool) -> None:
        """While this process publishes a topic, its frames come through `deliver`, not the
        proxy: the bus subscription is dropped meanwhile, so nothing arrives twice."""
        if local == (topic in self._local):
            return
        if local:
            self._local.add(topic)
        else:
            self._local.discard(topic)
        if topic in self._handlers:
            self._set_filter(zmq.UNSUBSCRIBE if local else zmq.SUBSCRIBE, topic)

    def deliver(self, topic: bytes, frame: bytes) -> None:
        """A frame this process published on `topic`: to its handlers, as if it came from
        the bus. (The publisher's caller flushes, as `serve` does after a drain.)"""
        handlers = self._handlers.get(topic)
        if handlers:
            for handler in tuple(handlers):
                handler(frame)

    def _set_filter(self, option: int, topic: bytes) -> None:
        self._sock.setsockopt(option, topic)
        self.drain()  # setsockopt may have consumed the edge the owner waits for

    def drain(self) -> None:
        """Hand every queued message to its handlers, then call `on_drained`. Synchronous, so
        any task may call it; `serve` does after each wake-up."""
        if self._draining or self._sock.closed:
            return  # a handler (un)subscribed: the drain it runs in goes on reading
        sock = self._sock
        self._draining = True
        try:
            while cast("int", sock.get(_EVENTS)) & _POLLIN:
                try:
                    frame = sock.recv(_NOBLOCK)
                except zmq.Again:
                    break
                for handler in tuple(self._handlers.get(wire.topic_of(frame), ())):
                    handler(frame)
        finally:
            self._draining = False
        if self._on_drained is not None:
            self._on_drained()

    async def serve(self) -> NoReturn:
        sock = self._sock
        fd = cast("int", sock.get(_FD))  # sock.fileno() asks libzmq on every wait
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._safety_net)
                while True:
                    self.drain()
                    # No cancel scope per wait: entering and leaving one cost about a fifth
                    # of the Python a bus wake-up runs.
                    await trio.lowlevel.wait_readable(fd)
        finally:
            close_socket(sock)

    async def _safety_net(self) -> NoReturn:
        """Against a missed edge: look at the socket now and then, whatever happened."""
        while True:
            await trio.sleep(EDGE_SAFETY_S)
            self.drain()


class SnapshotServer:
    """Answers late joiners with the current state of the streams this process publishes."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str,
                 publisher: BusPublisher) -> None:
        self.endpoint = endpoint
        self._ctx = ctx
        self._publisher = publisher

    def snapshot(self, key: StreamKey) -> wire.Snapshot | None:
        """A stream's snapshot as it is now; None if it is not published here. (A consumer in
        this process takes it directly, without encoding it for the socket.)"""
        stream = self._publisher.streams.get(key)
        if stream is None:
            return None
        return wire.Snapshot(key, stream.session, stream.next_seq - 1, stream.cache.snapshot())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> NoReturn:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        unlink_stale(self.endpoint)  # left by a crashed predecessor with the same worker name
        sock.bind(self.endpoint)
        task_status.started()
        try:
            while True:
                frames = await recv_multipart(sock)
                if len(frames) != 3 or frames[1]:
                    continue
                ident, _, topic = frames
                try:
                    key = StreamKey.from_topic(topic)
                except ValueError:
                    continue
                snap = self.snapshot(key)
                if snap is None:
                    reply = wire.encode_no_snapshot(key)
                else:
                    reply = wire.encode_snapshot(key, snap.session, snap.last_seq, snap.packets)
                sock.send_multipart([ident, b"", *reply], zmq.NOBLOCK)
        finally:
            close_socket(sock)


async def fetch_snapshot(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, key: StreamKey,
                         ) -> wire.Snapshot | None:
    """Ask a stream's owner for its snapshot; None if it has none or does not answer in time."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", key.topic], zmq.NOBLOCK)
        with trio.move_on_after(SNAPSHOT_TIMEOUT_S):
            frames = await recv_multipart(sock)
            return wire.decode_snapshot(frames[1:])
        logger.warning("snapshot of %s from %s timed out", key, endpoint)
        return None
    except (zmq.ZMQError, wire.WireError) as exc:
        logger.warning("snapshot of %s from %s failed: %s", key, endpoint, exc)
        return None
    finally:
        close_socket(sock)
