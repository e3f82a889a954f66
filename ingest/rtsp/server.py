"""The trio shell around RtspServerConnection: one task per connection, one more per DESCRIBE.

A publisher's RTP becomes MediaPackets on the bus as it arrives. A player is a viewer of the
stream's "rtsp" hub, whose variant is the player itself (its RTP headers are its own; the
payloads are cut once per stream); everything it is sent goes through one SocketQueue.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Final

import trio

from broker.fanout import SocketQueue
from broker.hub import Viewer
from broker.sockets import receive_some
from ingest.rtsp import session as s
from ingest.rtsp.message import RtspProtocolError
from ingest.rtsp.play import Player, play_tracks
from media.codecs.errors import CodecError

if TYPE_CHECKING:
    import socket

    from broker.packet import StreamKey
    from ingest.worker import IngestWorker

logger = logging.getLogger(__name__)

MAX_RECV: Final = 65536
SENDER_REPORT_S: Final = 5.0
FIRST_SENDER_REPORT_S: Final = 0.25  # soon: players align their tracks by these
# How long a DESCRIBE waits for the stream to have its decoder configs and a keyframe: a
# publisher that has just connected needs up to a GOP.
DESCRIBE_WAIT_S: Final = 6.0
PLAYER_QUEUE_ITEMS: Final = 1024
TEARDOWN_DRAIN_S: Final = 2.0  # how long what is queued may take to go after a TEARDOWN


class _Log(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        return f"[rtsp {self.extra['peer'] if self.extra else '?'}] {msg}", kwargs


class _PlayHandler:
    """How the stream's hub talks to this player (see broker.hub.ViewerHandler)."""

    def __init__(self, player: Player) -> None:
        self.player = player

    def begin(self, *, audio: bool, video: bool) -> bytes:
        return b""  # the SDP said it all

    def ended(self) -> bytes | None:
        # RTCP BYE: ffmpeg and GStreamer end the stream; a player that stays gets the next
        # publisher's media on the same timeline.
        return self.player.bye()


class RtspConnectionHandler:
    def __init__(self, worker: IngestWorker, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock
        try:
            host, port = sock.getpeername()[:2]
            self.peer = f"{host}:{port}"
            local = sock.getsockname()[0]
        except OSError:
            self.peer, local = "?", "0.0.0.0"
        self.log = _Log(logger, {"peer": self.peer})
        self.conn = s.RtspServerConnection(
            session_id=secrets.token_hex(8), random32=lambda: secrets.randbits(32),
            packetizer=worker.rtsp_packetizer, host=local)
        self.out = SocketQueue(sock, PLAYER_QUEUE_ITEMS, worker.flusher)
        self.viewer: tuple[StreamKey, Viewer, trio.CancelScope] | None = None
        self.nursery: trio.Nursery | None = None
        self._written = trio.Event()  # the writer is done: closed and drained, or broken

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._write)
                await self._receive_loop()
                if self.conn.state is s.State.CLOSED:
                    # TEARDOWN: its answer goes out (after the media already queued) first.
                    self.out.close()
                    with trio.move_on_after(TEARDOWN_DRAIN_S):
                        await self._written.wait()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            self.log.info("disconnected")
        except* trio.TooSlowError:
            self.log.info("timed out")
        except* RtspProtocolError as group:
            self.log.warning("protocol error: %s", group.exceptions[0])
            self._try_send_answer()
        except* Exception as group:
            # A bug, not bad input; it ends this connection only, never the worker's others.
            self.log.error("internal error; closing the connection", exc_info=group)
        finally:
            self._handle(self.conn.close())
            self._stop_playing()

    async def _write(self) -> None:
        try:
            await self.out.run_writer()
        finally:
            self._written.set()

    async def _receive_loop(self) -> None:
        timeout = self.worker.cfg.rtsp.idle_timeout_s
        while True:
            with trio.fail_after(timeout):
                data = await receive_some(self.sock, MAX_RECV)
            if not data:
                self.log.info("closed by peer")
                return
            self._handle(self.conn.receive_data(data, trio.current_time()))
            self.flush()
            if self.conn.state is s.State.CLOSED:
                return

    def flush(self) -> None:
        if self.conn.has_output:
            self.out.push_control(self.conn.data_to_send())
            self.out.flush()

    def _try_send_answer(self) -> None:
        """The answer to a request that broke the connection (400, 413...), if the socket
        takes it at once; the connection closes either way."""
        data = self.conn.data_to_send()
        if data:
            with contextlib.suppress(OSError):
                self.sock.send(data)

    def _handle(self, events: list[s.SessionEvent]) -> None:
        for ev in events:
            self._on_event(ev)

    def _on_event(self, ev: s.SessionEvent) -> None:
        worker = self.worker
        if isinstance(ev, s.MediaReceived):
            worker.publish(ev.packet)
        elif isinstance(ev, s.AnnounceRequested):
            for reason in ev.refused:
                self.log.warning("%s: a track is left out: %s", ev.key, reason)
            if worker.begin_publish(ev.key, self.peer, "live", protocol="rtsp"):
                self.log.info("publish %s", ev.key)
                self._handle(self.conn.accept_announce())
            else:
                self.log.warning("refused publish of %s: already publishing", ev.key)
                self._handle(self.conn.refuse(403))
        elif isinstance(ev, s.RecordStarted):
            self.log.info("record %s", ev.key)
        elif isinstance(ev, s.PublishEnded):
            self.log.info("unpublish %s", ev.key)
            worker.end_publish(ev.key)
        elif isinstance(ev, s.DescribeRequested):
            assert self.nursery is not None
            self.nursery.start_soon(self._describe, ev.key)
        elif isinstance(ev, s.PlayStarted):
            self._start_playing(ev.key, ev.player)
        elif isinstance(ev, s.PlayPaused):
            self._stop_playing()
        elif isinstance(ev, s.Warning):
            self.log.warning("%s", ev.text)

    async def _describe(self, key: StreamKey) -> None:
        hub = await self.worker.consumer.wait_live(key, kind="rtsp", wait_s=DESCRIBE_WAIT_S)
        if hub is None:
            self.log.info("describe %s: not found", key)
            self._handle(self.conn.refuse(404))
            self.flush()
            return
        configs = [p for p in (hub.cache.video_config, hub.cache.audio_config) if p]
        try:
            tracks, skipped = play_tracks(configs)
        except CodecError as exc:
            self.log.warning("describe %s: unreadable decoder config: %s", key, exc)
            tracks, skipped = [], []
        for reason in skipped:
            self.log.warning("describe %s: a track is left out: %s", key, reason)
        if not tracks:
            self._handle(self.conn.refuse(415))
        else:
            self.log.info("describe %s", key)
            self._handle(self.conn.accept_describe(tracks, key.name))
        self.flush()

    def _start_playing(self, key: StreamKey, player: Player) -> None:
        assert self.nursery is not None
        self.log.info("play %s", key)
        self.flush()  # the PLAY answer before any RTP: clients skip data until they have it
        viewer = Viewer("rtsp", _PlayHandler(player), self.out, variant=player)
        self.worker.consumer.add(key, viewer, kind="rtsp")
        scope = trio.CancelScope()
        self.viewer = (key, viewer, scope)
        self.out.flush()  # the start (GOP from its keyframe) goes now
        self.nursery.start_soon(self._sender_reports, player, scope)

    def _stop_playing(self) -> None:
        if self.viewer is None:
            return
        key, viewer, scope = self.viewer
        self.viewer = None
        scope.cancel()
        # The queue stays open: PAUSE and TEARDOWN answers go after the media queued so far.
        self.worker.consumer.detach(key, viewer, kind="rtsp", close=False)

    async def _sender_reports(self, player: Player, scope: trio.CancelScope) -> None:
        wall_start = time.time()
        with scope:
            await trio.sleep(FIRST_SENDER_REPORT_S)
            while True:
                reports = player.sender_reports(wall_start)
                if reports:
                    self.out.push_control(reports)
                    self.out.flush()
                await trio.sleep(SENDER_REPORT_S)
