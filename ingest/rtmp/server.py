"""The trio shell around RtmpServerConnection: a task per connection, one more per played stream."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from broker.hub import Viewer
from ingest.rtmp import session as s
from ingest.rtmp.errors import RtmpProtocolError

if TYPE_CHECKING:
    from broker.packet import StreamKey
    from ingest.worker import IngestWorker

logger = logging.getLogger(__name__)

MAX_RECV = 65536
HANDSHAKE_TIMEOUT_S = 10.0


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
    def __init__(self, worker: IngestWorker, stream: trio.SocketStream) -> None:
        self.worker = worker
        self.stream = stream
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"
        self.log = _Log(logger, {"peer": self.peer})
        self.conn = s.RtmpServerConnection(chunk_size=worker.cfg.rtmp.chunk_size_bytes)
        self.send_lock = trio.Lock()
        self.plays: dict[int, trio.CancelScope] = {}
        self.published: list[StreamKey] = []

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
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
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    async def _receive_loop(self, nursery: trio.Nursery) -> None:
        cfg = self.worker.cfg.rtmp
        while True:
            if self.conn.state is s.State.HANDSHAKE:
                timeout = HANDSHAKE_TIMEOUT_S
            elif self.conn.playing and not self.conn.publishing:
                timeout = float("inf")  # players may stay silent for long: their data flows out
            else:
                timeout = cfg.idle_timeout_s
            with trio.fail_after(timeout):
                data = await self.stream.receive_some(MAX_RECV)
            if not data:
                self.log.info("closed by peer")
                return
            for ev in self.conn.receive_data(data):
                self._on_event(ev, nursery)
            await self.flush()
            if self.conn.state is s.State.CLOSED:
                return

    async def flush(self) -> None:
        if self.conn.has_output:
            async with self.send_lock:
                await self.stream.send_all(self.conn.data_to_send())

    def _on_event(self, ev: s.SessionEvent, nursery: trio.Nursery) -> None:
        if isinstance(ev, s.MediaReceived):
            self.worker.publish(ev.packet)
        elif isinstance(ev, s.ConnectRequested):
            self.log.info("connect app=%s tcUrl=%s", ev.app, ev.tc_url)
            self.conn.accept_connect()
        elif isinstance(ev, s.PublishRequested):
            if self.worker.begin_publish(ev.key, self.peer):
                self.log.info("publish %s", ev.key)
                self.conn.accept_publish(ev.stream_id, ev.key)
                self.published.append(ev.key)
            else:
                self.log.warning("refused publish of %s: already publishing", ev.key)
                self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName",
                                         f"{ev.key} is already being published")
        elif isinstance(ev, s.PublishEnded):
            self.log.info("unpublish %s", ev.key)
            self.worker.end_publish(ev.key)
        elif isinstance(ev, s.PlayRequested):
            scope = trio.CancelScope()
            self.plays[ev.stream_id] = scope
            nursery.start_soon(self._play, ev.stream_id, ev.key, scope)
        elif isinstance(ev, s.PlayEnded):
            play = self.plays.pop(ev.stream_id, None)
            if play is not None:
                play.cancel()
        elif isinstance(ev, s.MediaRefused):
            self.log.warning("%s: %s; that track is dropped", ev.key, ev.reason)

    async def _play(self, stream_id: int, key: StreamKey, scope: trio.CancelScope) -> None:
        with scope:
            handler = _PlayHandler(self.conn, stream_id, key)
            viewer = Viewer("rtmp", handler, cache_frames=self.worker.cfg.rtmp.cache_frames,
                            variant=stream_id)
            hub = await self.worker.consumer.attach(key, viewer)
            if hub is None:
                self.log.info("play %s: not found", key)
                self.conn.reject_play(stream_id, "NetStream.Play.StreamNotFound",
                                      f"{key} is not published")
                await self.flush()
                return
            self.log.info("play %s", key)
            self.conn.accept_play(stream_id, key)
            try:
                await self.flush()
                while batch := await viewer.queue.get_batch():
                    async with self.send_lock:
                        await self.stream.send_all(b"".join(batch))
            finally:
                self.worker.consumer.detach(key, viewer)
        if not scope.cancelled_caught:
            self.log.info("play %s ended", key)
