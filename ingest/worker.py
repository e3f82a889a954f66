"""The ingest worker process: RTMP and RTSP publish and play on the inherited listening sockets.

It also serves the live HTTP and WebSocket players (FLV, fMP4) of its own publishers' streams
that an egress worker admitted and passed over (egress/worker.py): their frames then never
cross the bus.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import trio
import zmq

from broker.consumer import Consumer
from broker.fanout import Flusher
from broker.feed import ANNOUNCE_INTERVAL_S
from broker.handoff import Inbox
from broker.hub import StreamHub
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from broker.sockets import ConnectionLimits, serve_accept
from broker.zsock import (
    BusPublisher,
    BusSubscriber,
    SnapshotServer,
    bus_endpoints,
    snapshot_endpoint,
)
from control.admission import Admission
from control.hooks import Hooks
from egress.flv_live import FlvMuxer
from egress.fmp4.live import Fmp4Hub
from egress.live import Handover, LiveStreams, player_inbox_path
from ingest.rtmp.chunk import ChunkEncoder
from ingest.rtmp.server import LazyReads, RtmpConnectionHandler
from ingest.rtmp.session import media_message_bytes
from ingest.rtsp.play import Packetizer, Player
from ingest.rtsp.server import RtspConnectionHandler
from media.codecs import aac, avc
from media.codecs.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Hashable

    from control.config import Config

logger = logging.getLogger(__name__)


class StreamStats:
    """What `rtmpmate-ctl status` shows of a published stream."""

    def __init__(self, peer: str, publish_type: str = "live", protocol: str = "rtmp") -> None:
        self.peer = peer
        self.protocol = protocol
        self.publish_type = publish_type  # "live", "record" or "append", as the client asked
        self.started = time.time()
        self.codecs: dict[str, str] = {}
        self.width = 0
        self.height = 0
        self.bytes_in = 0
        self.frames_in = 0
        self._window_bytes = 0
        self.bitrate = 0.0  # bits per second over the last announce interval

    def add(self, pkt: MediaPacket) -> None:
        n = len(pkt.payload)
        self.bytes_in += n
        self._window_bytes += n
        self.frames_in += 1
        if pkt.is_config and pkt.kind is not TrackKind.DATA:
            self._describe(pkt)

    def _describe(self, pkt: MediaPacket) -> None:
        track = "video" if pkt.kind is TrackKind.VIDEO else "audio"
        self.codecs[track] = pkt.codec.name.lower()
        try:
            if pkt.codec is Codec.H264:
                cfg = avc.parse_avcc(pkt.payload)
                self.codecs[track] = avc.codec_string(cfg)
                if cfg.sps:
                    sps = avc.parse_sps(cfg.sps[0])
                    self.width, self.height = sps.width, sps.height
            elif pkt.codec is Codec.AAC:
                self.codecs[track] = aac.codec_string(aac.parse_asc(pkt.payload))
        except CodecError as exc:
            logger.warning("unreadable %s config: %s", track, exc)

    def tick(self, interval_s: float) -> dict[str, object]:
        self.bitrate = self._window_bytes * 8 / interval_s
        self._window_bytes = 0
        return self.info()

    def info(self) -> dict[str, object]:
        return {"peer": self.peer, "protocol": self.protocol, "type": self.publish_type,
                "started": self.started, "codecs": self.codecs,
                "width": self.width, "height": self.height, "bitrate": self.bitrate,
                "bytes_in": self.bytes_in, "frames_in": self.frames_in}


class IngestWorker:
    def __init__(self, cfg: Config, name: str, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.cfg = cfg
        self.name = name
        frontend, backend = bus_endpoints(cfg.server.run_dir)
        self.flusher = Flusher()
        self.lazy_reads = LazyReads()  # publishers' sockets with SO_RCVLOWAT above 1
        self.subscriber = BusSubscriber(ctx, backend, hwm=cfg.bus.hwm,
                                        on_drained=self.flusher.flush)
        # Players on this worker get its own publishers' streams without the bus round trip.
        self.publisher = BusPublisher(ctx, frontend, hwm=cfg.bus.hwm, local=self.subscriber)
        self.snapshots = SnapshotServer(ctx, snapshot_endpoint(cfg.server.run_dir, name),
                                        self.publisher)
        encoder = ChunkEncoder(chunk_size=cfg.rtmp.chunk_size_bytes)

        def mux(pkt: MediaPacket, stream_id: Hashable) -> bytes:
            assert isinstance(stream_id, int)
            return media_message_bytes(pkt, stream_id, cfg.rtmp.chunk_size_bytes, encoder)

        def rtsp_mux(pkt: MediaPacket, player: Hashable) -> bytes:
            assert isinstance(player, Player)
            return player.mux(pkt)

        self.rtsp_packetizer = Packetizer()
        flv_muxer = FlvMuxer()
        self.consumer = Consumer(ctx, self.subscriber, {
            "rtmp": lambda key: StreamHub(key, mux, self.flusher),
            "rtsp": lambda key: StreamHub(key, rtsp_mux, self.flusher),
            "flv": lambda key: StreamHub(key, flv_muxer, self.flusher),
            "mp4": lambda key: Fmp4Hub(key, self.flusher)}, local=self.snapshots)
        self.stats: dict[StreamKey, StreamStats] = {}
        self.hooks = Hooks()
        self.admission = Admission(cfg, self.hooks)
        # Live HTTP players egress workers pass over (server.publisher_http_players).
        self.live = LiveStreams(self.consumer, self.flusher, self.admission,
                                nagle=not cfg.server.tcp_nodelay)
        self.inbox = (Inbox(player_inbox_path(cfg.server.run_dir, name))
                      if cfg.server.publisher_http_players > 0 else None)
        self.http_players = 0
        # Connections by stream, for kicks: their cancel scope, and "publisher" or "player".
        self.sessions: dict[StreamKey, dict[trio.CancelScope, str]] = {}
        self.consumer.control_handlers.append(self._on_control)

    # -- publishing ----------------------------------------------------------------------------

    def begin_publish(self, key: StreamKey, peer: str, publish_type: str = "live", *,
                      protocol: str = "rtmp") -> bool:
        """Claim the key: one publisher per stream key across every ingest worker."""
        if key in self.stats:
            return False
        live = self.consumer.directory.live(trio.current_time())
        if len(live) >= self.cfg.server.max_streams and all(i.key != key for i in live):
            logger.warning("refused publish of %s: %d streams are live (max_streams)", key,
                           len(live))
            return False
        other = self.consumer.directory.get(key, trio.current_time())
        if other is not None and other.owner != self.snapshots.endpoint:
            return False
        stats = self.stats[key] = StreamStats(peer, publish_type, protocol)
        self.publisher.start_session(key)
        self._announce(key, stats.info())
        return True

    def publish(self, pkt: MediaPacket) -> None:
        """A publisher's packet; the caller calls `flush` once it has handled what it read."""
        stats = self.stats.get(pkt.stream)
        if stats is not None:
            stats.add(pkt)
            self.publisher.publish(pkt)

    def flush(self) -> None:
        """Send what `publish` queued for this worker's own players (BusPublisher local)."""
        self.flusher.flush()

    def end_publish(self, key: StreamKey) -> None:
        if self.stats.pop(key, None) is None:
            return
        session = self.publisher.streams[key].session
        self.publisher.end_session(key)
        self.flush()
        self.publisher.send_control("stream-end", {"key": str(key), "session": session})

    def _announce(self, key: StreamKey, info: dict[str, object]) -> None:
        stream = self.publisher.streams[key]
        body: dict[str, object] = {
            "key": str(key), "owner": self.snapshots.endpoint, "session": stream.session,
            "worker": self.name, "info": info}
        if self.inbox is not None:
            room = self.cfg.server.publisher_http_players - self.http_players
            body["players"] = {"inbox": self.inbox.path, "room": max(0, room)}
        self.publisher.send_control("stream", body)

    async def _announce_loop(self) -> None:
        while True:
            await trio.sleep(ANNOUNCE_INTERVAL_S)
            for key, stats in list(self.stats.items()):
                self._announce(key, stats.tick(ANNOUNCE_INTERVAL_S))
            self.publisher.send_control("viewers", {
                "worker": self.name, "pid": os.getpid(),
                "streams": self.consumer.viewer_counts()})

    # -- live HTTP players passed over by egress workers ---------------------------------------

    async def _take_players(self, inbox: Inbox) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                for conn, message in await inbox.receive():
                    nursery.start_soon(self._serve_player, conn, message)

    async def _serve_player(self, conn: socket.socket, message: bytes) -> None:
        try:
            handover = Handover.decode(message)
        except ValueError as exc:
            logger.warning("dropped a passed connection: %s", exc)
            conn.close()
            return
        conn.setblocking(False)
        key = handover.route.key
        self.http_players += 1
        try:
            with trio.CancelScope() as scope:  # a kick of the stream's players cancels it
                self.register(key, scope, "player")
                await self.live.serve_handed(conn, handover)
        finally:
            self.unregister(key, scope)
            self.http_players -= 1
            conn.close()

    # -- kicks -------------------------------------------------------------------------------

    def register(self, key: StreamKey, scope: trio.CancelScope, role: str) -> None:
        self.sessions.setdefault(key, {})[scope] = role

    def unregister(self, key: StreamKey, scope: trio.CancelScope) -> None:
        if (of_key := self.sessions.get(key)) is not None:
            of_key.pop(scope, None)
            if not of_key:
                del self.sessions[key]

    def kick(self, key: StreamKey, what: str) -> int:
        """Close the stream's publisher ("publisher"), its players ("players") or both."""
        kicked = 0
        for scope, role in list(self.sessions.get(key, {}).items()):
            if what == "all" or what.rstrip("s") == role:
                scope.cancel()
                kicked += 1
        return kicked

    def _on_control(self, body: dict[str, Any]) -> None:
        if body.get("kind") != "kick":
            return
        try:
            key = StreamKey.parse(str(body.get("key")))
        except ValueError:
            return
        kicked = self.kick(key, str(body.get("what", "all")))
        if kicked:
            logger.info("kicked %d %s session(s) of %s", kicked, body.get("what", "all"), key)
        self.publisher.send_control("kick-result", {"call": body.get("call"),
                                                    "worker": self.name, "kicked": kicked})

    # -- process -------------------------------------------------------------------------------

    async def serve(self, rtmp_sock: socket.socket, rtsp_sock: socket.socket) -> None:
        async with trio.open_nursery() as nursery:
            self.hooks.nursery = nursery
            nursery.start_soon(self.subscriber.serve)
            await nursery.start(self.snapshots.serve)
            nursery.start_soon(self.consumer.serve)
            nursery.start_soon(self._announce_loop)
            nursery.start_soon(self.lazy_reads.run)
            if self.inbox is not None:
                nursery.start_soon(self._take_players, self.inbox)
            logger.info("%s serving RTMP on %s, RTSP on %s", self.name,
                        rtmp_sock.getsockname(), rtsp_sock.getsockname())
            srv = self.cfg.server
            limits = ConnectionLimits(srv.max_connections, srv.max_connections_per_ip)
            nursery.start_soon(serve_accept, rtsp_sock, self._handle_rtsp, limits)
            await serve_accept(rtmp_sock, self._handle_rtmp, limits)

    async def _handle_rtmp(self, sock: socket.socket) -> None:
        await RtmpConnectionHandler(self, sock).run()

    async def _handle_rtsp(self, sock: socket.socket) -> None:
        await RtspConnectionHandler(self, sock).run()


def run_ingest_worker(cfg: Config, name: str, rtmp_fd: int, rtsp_fd: int) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = [socket.socket(fileno=fd) for fd in (rtmp_fd, rtsp_fd)]
    for sock in socks:
        sock.setblocking(False)
    worker = IngestWorker(cfg, name, ctx)
    try:
        trio.run(worker.serve, socks[0], socks[1])
    finally:
        ctx.destroy(linger=0)
        if worker.inbox is not None:
            worker.inbox.close()
