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
from broker.sockets import ConnectionLog, peer_name, receive_some
from control.admission import redirect_key
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
        self.peer = peer_name(sock)
        try:
            local = sock.getsockname()[0]
        except OSError:
            local = "0.0.0.0"
        self.log = ConnectionLog(logger, "rtsp", self.peer)
        self.conn = s.RtspServerConnection(
            session_id=secrets.token_hex(8), random32=lambda: secrets.randbits(32),
            packetizer=worker.rtsp_packetizer, host=local)
        self.out = SocketQueue(sock, PLAYER_QUEUE_ITEMS, worker.flusher,
                               nagle=not worker.cfg.server.tcp_nodelay)
        self.viewer: tuple[StreamKey, Viewer, trio.CancelScope] | None = None
        self.nursery: trio.Nursery | None = None
        self.published: tuple[str, float] | None = None  # query, start time
        self.play_query = ""
        self.play_started = (0.0, 0)  # time, bytes sent before
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
        idle = self.worker.cfg.rtsp.idle_timeout_s
        first = self.worker.cfg.server.handshake_timeout_s  # until a first whole request
        while True:
            with trio.fail_after(idle if self.conn.requests else first):
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
        self.worker.flush()

    def _on_event(self, ev: s.SessionEvent) -> None:
        worker = self.worker
        if isinstance(ev, s.MediaReceived):
            worker.publish(ev.packet)
        elif isinstance(ev, s.AnnounceRequested):
            for reason in ev.refused:
                self.log.warning("%s: a track is left out: %s", ev.key, reason)
            if worker.admission.open("publish", ev.key.app):
                self._publish(ev.key, ev.query)
            else:
                assert self.nursery is not None
                self.nursery.start_soon(self._admit_publish, ev)
        elif isinstance(ev, s.RecordStarted):
            self.log.info("record %s", ev.key)
        elif isinstance(ev, s.PublishEnded):
            self.log.info("unpublish %s", ev.key)
            stats = worker.stats.get(ev.key)
            received = stats.bytes_in if stats is not None else 0
            worker.end_publish(ev.key)
            if self.nursery is not None:
                worker.unregister(ev.key, self.nursery.cancel_scope)
            if self.published is not None:
                query, started = self.published
                self.published = None
                worker.admission.done("publish", app=ev.key.app, key=ev.key, protocol="rtsp",
                                      peer=self.peer, query=query, started=started,
                                      bytes_count=received)
        elif isinstance(ev, s.DescribeRequested):
            assert self.nursery is not None
            self.nursery.start_soon(self._describe, ev.key, ev.query)
        elif isinstance(ev, s.PlayStarted):
            self._start_playing(ev.key, ev.player)
        elif isinstance(ev, s.PlayPaused):
            self._stop_playing()
        elif isinstance(ev, s.Warning):
            self.log.warning("%s", ev.text)

    def _publish(self, key: StreamKey, query: str, requested: StreamKey | None = None) -> None:
        """Claim `key` (a hook may have renamed the `requested` one) and answer."""
        if self.worker.begin_publish(key, self.peer, "live", protocol="rtsp"):
            self.log.info("publish %s", key)
            self.published = (query, time.time())
            assert self.nursery is not None
            self.worker.register(key, self.nursery.cancel_scope, "publisher")
            self._handle(self.conn.accept_announce(key if requested else None))
        else:
            self.log.warning("refused publish of %s: already publishing", key)
            self._handle(self.conn.refuse(403))

    async def _admit_publish(self, ev: s.AnnounceRequested) -> None:
        decision = await self.worker.admission.check(
            "publish", app=ev.key.app, key=ev.key, protocol="rtsp", peer=self.peer,
            query=ev.query)
        key = redirect_key(ev.key, decision.target) if decision.target else ev.key
        if decision.verdict == "refuse" or key is None:
            self.log.warning("refused publish of %s: %s", ev.key, decision.reason)
            self._handle(self.conn.refuse(403))
        else:
            self._publish(key, ev.query, ev.key if key != ev.key else None)
        self.flush()

    async def _describe(self, key: StreamKey, query: str) -> None:
        admission = self.worker.admission
        requested = key
        if not admission.open("play", key.app):
            decision = await admission.check("play", app=key.app, key=key, protocol="rtsp",
                                             peer=self.peer, query=query)
            target = redirect_key(key, decision.target) if decision.target else key
            if decision.verdict == "refuse" or target is None:
                self.log.warning("refused play of %s: %s", key, decision.reason)
                self._handle(self.conn.refuse(403))
                self.flush()
                return
            key = target
        self.play_query = query
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
            self._handle(self.conn.accept_describe(tracks, key.name,
                                                   key if key != requested else None))
        self.flush()

    def _start_playing(self, key: StreamKey, player: Player) -> None:
        assert self.nursery is not None
        self.log.info("play %s", key)
        self.flush()  # the PLAY answer before any RTP: clients skip data until they have it
        viewer = Viewer("rtsp", _PlayHandler(player), self.out, variant=player)
        self.worker.consumer.add(key, viewer, kind="rtsp")
        scope = trio.CancelScope()
        self.viewer = (key, viewer, scope)
        self.play_started = (time.time(), self.out.bytes_out)
        self.worker.register(key, self.nursery.cancel_scope, "player")
        self.out.flush()  # the start (GOP from its keyframe) goes now
        self.nursery.start_soon(self._sender_reports, player, scope)

    def _stop_playing(self) -> None:
        if self.viewer is None:
            return
        key, viewer, scope = self.viewer
        self.viewer = None
        scope.cancel()
        if self.nursery is not None:
            self.worker.unregister(key, self.nursery.cancel_scope)
        started, sent = self.play_started
        self.worker.admission.done("play", app=key.app, key=key, protocol="rtsp",
                                   peer=self.peer, query=self.play_query, started=started,
                                   bytes_count=self.out.bytes_out - sent)
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
