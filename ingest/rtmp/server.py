"""The trio shell around RtmpServerConnection: a task per connection, one more per played stream.

Everything a connection sends goes through one SocketQueue: the session's own messages and,
while it plays, the stream's shared media bytes, which the stream's hub writes straight into
the socket. One writer per socket keeps RTMP messages whole and in order.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from broker.fanout import SocketQueue
from broker.hub import Viewer
from broker.sockets import receive_some
from ingest.rtmp import session as s
from ingest.rtmp.errors import RtmpProtocolError

if TYPE_CHECKING:
    import socket

    from broker.packet import StreamKey
    from ingest.worker import IngestWorker

logger = logging.getLogger(__name__)

MAX_RECV = 65536
HANDSHAKE_TIMEOUT_S = 10.0
# An idle or handshake timeout may fire up to this fraction of itself early: its deadline
# moves by steps, not on every read.
DEADLINE_SLACK = 0.02


class _Log(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        return f"[rtmp {self.extra['peer'] if self.extra else '?'}] {msg}", kwargs


class _PlayHandler:
    """How the stream's hub talks to this player (see broker.hub.ViewerHandler)."""

    def __init__(self, conn: s.RtmpServerConnection, stream_id: int, key: StreamKey) -> None:
        self.conn, self.stream_id, self.key = conn, stream_id, key
        self.begun = False

    def begin(self, *, audio: bool, video: bool) -> bytes:
        if self.begun:  # a new publisher after the previous one left
            self.conn.play_republished(self.stream_id, self.key)
        self.begun = True
        return self.conn.data_to_send()

    def ended(self) -> bytes | None:
        # Stay, as nginx-rtmp does, and resume with the next publisher; players that take
        # UnpublishNotify as the end (ffmpeg) close by themselves.
        self.conn.play_unpublished(self.stream_id, self.key)
        return self.conn.data_to_send()


class RtmpConnectionHandler:
    def __init__(self, worker: IngestWorker, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"
        self.log = _Log(logger, {"peer": self.peer})
        cfg = worker.cfg.rtmp
        self.conn = s.RtmpServerConnection(chunk_size=cfg.chunk_size_bytes)
        self.out = SocketQueue(sock, cfg.cache_frames, worker.flusher)
        self.play: tuple[int, trio.CancelScope] | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.out.run_writer)
                await self._receive_loop(nursery)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.info("disconnected")
        except* trio.TooSlowError:
            self.log.info("timed out")
        except* RtmpProtocolError as group:
            self.log.warning("protocol error: %s", group.exceptions[0])
        except* Exception as group:
            # A bug, not bad input; it ends this connection only, never the worker's others.
            self.log.error("internal error; closing the connection", exc_info=group)
        finally:
            for ev in self.conn.close():
                if isinstance(ev, s.PublishEnded):
                    self.worker.end_publish(ev.key)

    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        cfg = self.worker.cfg.rtmp
        # One scope whose deadline moves, not a new one per read: this loop runs per segment.
        with trio.CancelScope() as idle:
            while True:
                if self.conn.state is s.State.HANDSHAKE:
                    timeout = HANDSHAKE_TIMEOUT_S
                elif self.play is not None and not self.conn.publishing:
                    timeout = math.inf  # a player may stay silent: its data flows out
                else:
                    timeout = cfg.idle_timeout_s
                deadline = trio.current_time() + timeout
                # Moving a deadline re-sorts the scheduler's timers: not for every read.
                slack = DEADLINE_SLACK * timeout if timeout < math.inf else 0.0
                if idle.deadline > deadline or idle.deadline < deadline - slack:
                    idle.deadline = deadline
                data = await receive_some(self.sock, MAX_RECV)
                if not data:
                    self.log.info("closed by peer")
                    return
                for ev in self.conn.receive_data(data):
                    self._on_event(ev, nursery)
                self.flush()
                if self.conn.state is s.State.CLOSED:
                    return
        if idle.cancelled_caught:
            raise trio.TooSlowError

    def flush(self) -> None:
        if self.conn.has_output:
            self.out.push_control(self.conn.data_to_send())
            self.out.flush()

    def _on_event(self, ev: s.SessionEvent, nursery: trio.Nursery) -> None:
        if isinstance(ev, s.MediaReceived):
            self.worker.publish(ev.packet)
        elif isinstance(ev, s.ConnectRequested):
            self.log.info("connect app=%s tcUrl=%s", ev.app, ev.tc_url)
            self.conn.accept_connect()
        elif isinstance(ev, s.PublishRequested):
            if self.worker.begin_publish(ev.key, self.peer, ev.mode):
                self.log.info("publish %s (%s)", ev.key, ev.mode)
                self.conn.accept_publish(ev.stream_id, ev.key)
            else:
                self.log.warning("refused publish of %s: already publishing", ev.key)
                self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                         f"{ev.key} is already being published")
        elif isinstance(ev, s.PublishEnded):
            self.log.info("unpublish %s", ev.key)
            self.worker.end_publish(ev.key)
        elif isinstance(ev, s.PlayRequested):
            if self.play is not None:
                # One writer per socket carries one stream's shared bytes: one play at a time.
                self.conn.reject_play(ev.stream_id, "NetStream.Play.Failed",
                                      "one stream per connection")
                return
            scope = trio.CancelScope()
            self.play = (ev.stream_id, scope)
            nursery.start_soon(self._play, ev.stream_id, ev.key, scope)
        elif isinstance(ev, s.PlayEnded):
            if self.play is not None and self.play[0] == ev.stream_id:
                self.play[1].cancel()
                self.play = None
        elif isinstance(ev, s.MediaRefused):
            self.log.warning("%s: %s; that track is dropped", ev.key, ev.reason)

    async def _play(self, stream_id: int, key: StreamKey, scope: trio.CancelScope) -> None:
        with scope:
            consumer = self.worker.consumer
            if not await consumer.wait_published(key):
                self.log.info("play %s: not found", key)
                self.conn.reject_play(stream_id, "NetStream.Play.StreamNotFound",
                                      f"{key} is not published")
                self.flush()
                self.play = None  # the connection may play something else
                return
            self.log.info("play %s", key)
            # Play.Start goes out before the hub's first bytes: accept, then add (no await).
            self.conn.accept_play(stream_id, key)
            self.flush()
            viewer = Viewer("rtmp", _PlayHandler(self.conn, stream_id, key), self.out,
                            variant=stream_id)
            consumer.add(key, viewer)
            self.out.flush()  # the start (metadata, GOP) goes now, not with the next message
            try:
                await trio.sleep_forever()
            finally:
                consumer.detach(key, viewer)
