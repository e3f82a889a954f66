"""The trio shell around RtmpServerConnection: a task per connection, one more per played stream.

Everything a connection sends goes through one SocketQueue: the session's own messages and,
while it plays, the stream's shared media bytes, which the stream's hub writes straight into
the socket. One writer per socket keeps RTMP messages whole and in order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from typing import TYPE_CHECKING

import trio

from broker.fanout import SocketQueue
from broker.hub import Viewer
from broker.sockets import ConnectionLog, peer_name, receive_some
from control.admission import redirect_key
from ingest.rtmp import session as s
from ingest.rtmp.errors import RtmpProtocolError
from ingest.rtmp.wakeups import MAX_WAIT_S

if TYPE_CHECKING:
    from broker.packet import StreamKey
    from ingest.worker import IngestWorker

logger = logging.getLogger(__name__)

MAX_RECV = 65536
MAX_HOOK_CACHE = 16384  # the most frames an on_play answer may give a player
# An idle or handshake timeout may fire up to this fraction of itself early: its deadline
# moves by steps, not on every read.
DEADLINE_SLACK = 0.02


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


class LazyReads:
    """The publishers' sockets that wake their task only once several bytes are queued
    (SO_RCVLOWAT above 1, see ingest.rtmp.wakeups).

    Bytes under a socket's threshold stay unread until more come. So that they never stay
    long (a publisher that paused after an audio frame, or one that stops and waits for the
    answer to its deleteStream), this task lowers the threshold to 1 on every socket that has
    not been read since its previous round; the kernel then wakes the socket's task at once
    if anything is queued. One task per worker, awake only while such sockets exist.
    """

    def __init__(self) -> None:
        self._handlers: dict[RtmpConnectionHandler, int] = {}  # -> reads at the last round
        self._wake = trio.Event()

    def add(self, handler: RtmpConnectionHandler) -> None:
        self._handlers.setdefault(handler, -1)
        self._wake.set()

    def discard(self, handler: RtmpConnectionHandler) -> None:
        self._handlers.pop(handler, None)

    async def run(self) -> None:
        while True:
            if not self._handlers:
                await self._wake.wait()
                self._wake = trio.Event()
            await trio.sleep(MAX_WAIT_S)
            for handler, reads in list(self._handlers.items()):
                if handler.reads == reads:
                    handler.set_lowat(1)
                else:
                    self._handlers[handler] = handler.reads


class RtmpConnectionHandler:
    def __init__(self, worker: IngestWorker, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock
        self.peer = peer_name(sock)
        self.log = ConnectionLog(logger, "rtmp", self.peer)
        cfg = worker.cfg.rtmp
        self.conn = s.RtmpServerConnection(chunk_size=cfg.chunk_size_bytes)
        self.out = SocketQueue(sock, cfg.cache_frames, worker.flusher,
                               nagle=not worker.cfg.server.tcp_nodelay)
        self.play: tuple[int, trio.CancelScope] | None = None
        self.published: dict[StreamKey, tuple[str, float]] = {}  # query, start time
        self.lowat = 1  # the socket's SO_RCVLOWAT
        self.reads = 0  # waits for input so far (LazyReads tells a stalled one by it)
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.scope = nursery.cancel_scope  # what a kick cancels
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
            self.worker.lazy_reads.discard(self)
            for ev in self.conn.close():
                if isinstance(ev, s.PublishEnded):
                    self._end_publish(ev.key)

    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        cfg = self.worker.cfg.rtmp
        # One scope whose deadline moves, not a new one per read: this loop runs per segment.
        with trio.CancelScope() as idle:
            while True:
                if self.conn.state is s.State.HANDSHAKE:
                    timeout = self.worker.cfg.server.handshake_timeout_s
                elif self.play is not None and not self.conn.publishing:
                    timeout = math.inf  # a player may stay silent: its data flows out
                else:
                    timeout = cfg.idle_timeout_s
                deadline = trio.current_time() + timeout
                # Moving a deadline re-sorts the scheduler's timers: not for every read.
                slack = DEADLINE_SLACK * timeout if timeout < math.inf else 0.0
                if idle.deadline > deadline or idle.deadline < deadline - slack:
                    idle.deadline = deadline
                data = await self._receive()
                if not data:
                    self.log.info("closed by peer")
                    return
                for ev in self.conn.receive_data(data):
                    self._on_event(ev, nursery)
                self.worker.flush()  # what a publisher's media brought this worker's players
                self.flush()
                if self.conn.state is s.State.CLOSED:
                    return
        if idle.cancelled_caught:
            raise trio.TooSlowError

    async def _receive(self) -> bytes:
        """The next bytes (b"" at EOF). A publisher's socket wakes us only once as many bytes
        are queued as its session says are worth it (ingest.rtmp.wakeups): about once per
        video frame instead of once per message."""
        want = self.conn.wakeup_threshold()
        if want != self.lowat:
            self.set_lowat(want)
        self.reads += 1
        return await receive_some(self.sock, MAX_RECV)

    def set_lowat(self, value: int) -> None:
        with contextlib.suppress(OSError):  # closed meanwhile: nothing to wake
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
        self.lowat = value
        if value > 1:
            self.worker.lazy_reads.add(self)
        else:
            self.worker.lazy_reads.discard(self)

    def flush(self) -> None:
        if self.conn.has_output:
            self.out.push_control(self.conn.data_to_send())
            self.out.flush()

    def _on_event(self, ev: s.SessionEvent, nursery: trio.Nursery) -> None:
        if isinstance(ev, s.MediaReceived):
            self.worker.publish(ev.packet)
        elif isinstance(ev, s.ConnectRequested):
            self.log.info("connect app=%s tcUrl=%s", ev.app, ev.tc_url)
            if self.worker.admission.open("connect", ev.app):
                self.conn.accept_connect()
            else:
                nursery.start_soon(self._admit_connect, ev)
        elif isinstance(ev, s.PublishRequested):
            if self.worker.admission.open("publish", ev.key.app):
                self._publish(ev, ev.key)
            else:
                nursery.start_soon(self._admit_publish, ev)
        elif isinstance(ev, s.PublishEnded):
            self.log.info("unpublish %s", ev.key)
            self._end_publish(ev.key)
        elif isinstance(ev, s.PlayRequested):
            if self.play is not None:
                # One writer per socket carries one stream's shared bytes: one play at a time.
                self.conn.reject_play(ev.stream_id, "NetStream.Play.Failed",
                                      "one stream per connection")
                return
            scope = trio.CancelScope()
            self.play = (ev.stream_id, scope)
            nursery.start_soon(self._play, ev.stream_id, ev.key, ev.query, scope)
        elif isinstance(ev, s.PlayEnded):
            if self.play is not None and self.play[0] == ev.stream_id:
                self.play[1].cancel()
                self.play = None
        elif isinstance(ev, s.MediaRefused):
            self.log.warning("%s: %s; that track is dropped", ev.key, ev.reason)

    async def _admit_connect(self, ev: s.ConnectRequested) -> None:
        extra: dict[str, object] = {
            k: v for k, v in (("tcUrl", ev.tc_url), ("pageUrl", ev.params.get("pageUrl")),
                                   ("swfUrl", ev.params.get("swfUrl"))) if isinstance(v, str)}
        decision = await self.worker.admission.check(
            "connect", app=ev.app, key=None, protocol="rtmp", peer=self.peer, query=ev.query,
            extra=extra)
        if decision.allowed:
            self.conn.accept_connect()
        else:
            self.log.warning("refused connect to %s: %s", ev.app, decision.reason)
            self.conn.reject_connect(decision.reason)
        self.flush()

    async def _admit_publish(self, ev: s.PublishRequested) -> None:
        decision = await self.worker.admission.check(
            "publish", app=ev.key.app, key=ev.key, protocol="rtmp", peer=self.peer,
            query=ev.query, extra={"type": ev.mode})
        key: StreamKey | None = ev.key
        if decision.verdict == "redirect":
            key = redirect_key(ev.key, decision.target)
            self.log.info("publish %s redirected to %s", ev.key, key)
        if key is None or decision.verdict == "refuse":
            self.log.warning("refused publish of %s: %s", ev.key, decision.reason)
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                     decision.reason or "refused")
        else:
            self._publish(ev, key, decision.options)
        self.flush()

    def _publish(self, ev: s.PublishRequested, key: StreamKey,
                 options: dict[str, object] | None = None) -> None:
        mode = ev.mode
        record = (options or {}).get("record")
        if isinstance(record, bool):  # the hook's say: what the "auto" DVR modes go by
            mode = ("append" if mode == "append" else "record") if record else "live"
        if self.worker.begin_publish(key, self.peer, mode):
            self.log.info("publish %s (%s)", key, mode)
            self.conn.accept_publish(ev.stream_id, key)
            self.published[key] = (ev.query, time.time())
            self.worker.register(key, self.scope, "publisher")
        else:
            self.log.warning("refused publish of %s: already publishing", key)
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                     f"{key} is already being published")

    def _end_publish(self, key: StreamKey) -> None:
        stats = self.worker.stats.get(key)
        sent = stats.bytes_in if stats is not None else 0
        self.worker.end_publish(key)
        self.worker.unregister(key, self.scope)
        if (begun := self.published.pop(key, None)) is not None:
            self.worker.admission.done("publish", app=key.app, key=key, protocol="rtmp",
                                       peer=self.peer, query=begun[0], started=begun[1],
                                       bytes_count=sent)

    async def _play(self, stream_id: int, key: StreamKey, query: str,
                    scope: trio.CancelScope) -> None:
        with scope:
            admission = self.worker.admission
            if not admission.open("play", key.app):
                decision = await admission.check("play", app=key.app, key=key, protocol="rtmp",
                                                 peer=self.peer, query=query)
                target = redirect_key(key, decision.target) if decision.target else None
                if decision.verdict == "refuse" or (decision.target and target is None):
                    self.log.warning("refused play of %s: %s", key, decision.reason)
                    self.conn.reject_play(stream_id, "NetStream.Play.Failed",
                                          decision.reason or "refused")
                    self.flush()
                    self.play = None
                    return
                if target is not None:
                    self.log.info("play %s redirected to %s", key, target)
                    key = target
                cache = decision.options.get("cache")
                if isinstance(cache, int) and not isinstance(cache, bool) and cache >= 1:
                    self.out.capacity = min(cache, MAX_HOOK_CACHE)
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
            started, sent = time.time(), self.out.bytes_out
            self.worker.register(key, self.scope, "player")
            try:
                await trio.sleep_forever()
            finally:
                self.worker.unregister(key, self.scope)
                consumer.detach(key, viewer)
                admission.done("play", app=key.app, key=key, protocol="rtmp", peer=self.peer,
                               query=query, started=started,
                               bytes_count=self.out.bytes_out - sent)
