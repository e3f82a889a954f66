"""The egress worker process: HTTP and WebSocket on the inherited listening socket.

Egress workers share the HTTP port (SO_REUSEPORT); one that holds more connections than
another hands a new one over before reading it (broker/handoff.py), so the group fills evenly.

It accepts connections itself: a live FLV request takes the fast path (egress/live.py); every
other connection is handed, untouched, to hypercorn's HTTP server running the starlette app.
An admitted live player (FLV or fMP4, HTTP or WebSocket) of a stream published on this machine
goes, its request head still unread, to the ingest worker that holds the publisher, which
serves it without the bus (up to server.publisher_http_players players per ingest worker).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import trio
import zmq
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from broker.consumer import Consumer
from broker.fanout import Flusher
from broker.feed import ANNOUNCE_INTERVAL_S
from broker.handoff import RETRY_FOR_S, RETRY_S, Handoff, pass_socket
from broker.hub import StreamHub
from broker.sockets import ConnectionLimits, peer_name, send_short, serve_accept
from broker.zsock import BusPublisher, BusSubscriber, bus_endpoints
from egress.flv_live import FlvMuxer
from egress.fmp4.live import Fmp4Hub
from egress.http import EgressApp
from egress.live import Handover, LiveRoute, LiveStreams, http_response, peek_head

if TYPE_CHECKING:
    from control.config import Config

logger = logging.getLogger(__name__)


class EgressServer:
    def __init__(self, cfg: Config, consumer: Consumer, flusher: Flusher,
                 publisher: BusPublisher, group: tuple[int, int] = (0, 1)) -> None:
        self.app = EgressApp(cfg, consumer, publisher.send_control)
        self.live = LiveStreams(consumer, flusher, self.app.admission,
                                nagle=not cfg.server.tcp_nodelay)
        self.handshake_timeout_s = cfg.server.handshake_timeout_s
        hc = HypercornConfig()
        hc.keep_alive_timeout = cfg.http.idle_timeout_s
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        self.hypercorn = hc
        self.asgi = ASGIWrapper(self.app.app)  # type: ignore[arg-type]
        self.context = WorkerContext(None)
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # passes players over
        self.sender.setblocking(False)
        self.group = group  # (index, size) of this worker in the egress group

    async def handle(self, conn: socket.socket) -> None:
        try:
            head = await peek_head(conn, self.handshake_timeout_s)
        except trio.TooSlowError:
            logger.info("closed %s: no request head within %.0f s", peer_name(conn),
                        self.handshake_timeout_s)
            return
        except EOFError:
            return  # it left without asking anything: nothing to answer
        live = head is not None and head.method in ("GET", "HEAD")
        route = (self.app.live_route(head.path, head.headers.get("host"))
                 if head is not None and live else None)
        if head is None or route is None:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            await TCPServer(self.asgi, self.hypercorn, self.context, {}, stream)  # type: ignore[arg-type]
            return
        cors = self.app.cors_headers(head.headers.get("origin"))
        if isinstance(route, LiveRoute):
            upgrade = head.headers.get("upgrade", "").lower() == "websocket"
            peer = peer_name(conn)
            refusal = await self.app.admit_play(
                route, websocket=upgrade, peer=peer, query=head.query, cors=cors)
            if refusal is not None:
                conn.recv(head.size)
                await send_short(conn, refusal)
                return
            if head.method == "GET" and await self.pass_to_publisher(
                    conn, Handover(route, cors, peer)):
                return
            await self.live.serve(conn, head, route, cors=cors, peer=peer)
        else:
            conn.recv(head.size)
            await send_short(conn, http_response("404 Not Found", {"Connection": "close", **cors},
                                                 route.encode()))

    async def pass_to_publisher(self, conn: socket.socket, handover: Handover) -> bool:
        """Pass the player to the ingest worker that holds the stream's publisher, if it takes
        players and has room; False: serve it here. A full queue (a burst of players) is
        tried again for up to RETRY_FOR_S."""
        info = self.live.consumer.directory.get(handover.route.key, trio.current_time())
        if info is None or not info.inbox:
            return False
        # The room the owner announced (every second) is shared out among the egress
        # workers, so that together they never pass it more than it takes.
        index, size = self.group
        if info.handed >= info.room // size + (index < info.room % size):
            return False
        message = handover.encode()
        until = trio.current_time() + RETRY_FOR_S
        while True:
            try:
                pass_socket(self.sender, info.inbox, conn, message)
            except BlockingIOError:
                if trio.current_time() >= until:
                    return False
                await trio.sleep(RETRY_S)
                continue
            except OSError as exc:  # the worker is restarting
                logger.debug("kept a player of %s: %s", handover.route.key, exc)
                return False
            info.handed += 1
            return True


async def _report_viewers(name: str, publisher: BusPublisher, consumer: Consumer) -> None:
    while True:
        await trio.sleep(ANNOUNCE_INTERVAL_S)
        publisher.send_control("viewers", {
            "worker": name, "pid": os.getpid(),
            "streams": consumer.viewer_counts()})


async def serve_egress(cfg: Config, name: str, listener: socket.socket,
                       ctx: zmq.Context[zmq.Socket[bytes]], handoff: Handoff | None = None,
                       group: tuple[int, int] = (0, 1)) -> None:
    frontend, backend = bus_endpoints(cfg.server.run_dir)
    flusher = Flusher()
    subscriber = BusSubscriber(ctx, backend, hwm=cfg.bus.hwm, on_drained=flusher.flush)
    publisher = BusPublisher(ctx, frontend, hwm=cfg.bus.hwm)  # control messages only
    flv_muxer = FlvMuxer()  # one per worker: the tag of a packet is built once
    consumer = Consumer(ctx, subscriber, {
        "flv": lambda key: StreamHub(key, flv_muxer, flusher),
        "mp4": lambda key: Fmp4Hub(key, flusher)})
    server = EgressServer(cfg, consumer, flusher, publisher, group)
    async with trio.open_nursery() as nursery:
        server.app.hooks.nursery = nursery
        nursery.start_soon(server.app.expire_plays)
        nursery.start_soon(subscriber.serve)
        nursery.start_soon(consumer.serve)
        nursery.start_soon(_report_viewers, name, publisher, consumer)
        logger.info("%s serving HTTP on %s", name, listener.getsockname())
        await serve_accept(listener, server.handle, ConnectionLimits(
            cfg.server.max_connections, cfg.server.max_connections_per_ip), handoff)


def run_egress_worker(cfg: Config, name: str, http_fd: int,
                      group: tuple[int, int] = (0, 1)) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    listener = socket.socket(fileno=http_fd)
    listener.setblocking(False)
    index, size = group
    handoff = Handoff(cfg.server.run_dir, "egress", size, index) if size > 1 else None
    try:
        trio.run(serve_egress, cfg, name, listener, ctx, handoff, group)
    finally:
        ctx.destroy(linger=0)
        if handoff is not None:
            handoff.close()
