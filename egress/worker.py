"""The egress worker process: hypercorn (trio) serving the starlette app on the inherited socket."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio
import zmq
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from broker.consumer import Consumer
from broker.feed import ANNOUNCE_INTERVAL_S
from broker.zsock import BusPublisher, BusSubscriber, bus_endpoints
from egress.flv_live import mux_flv
from egress.http import EgressApp

if TYPE_CHECKING:
    from control.config import Config

logger = logging.getLogger(__name__)


async def _report_viewers(name: str, publisher: BusPublisher, consumer: Consumer) -> None:
    while True:
        await trio.sleep(ANNOUNCE_INTERVAL_S)
        publisher.send_control("viewers", {
            "worker": name, "pid": os.getpid(),
            "streams": {str(k): hub.counts() for k, hub in consumer.hubs().items()}})


async def serve_egress(cfg: Config, name: str, http_fd: int,
                       ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    frontend, backend = bus_endpoints(cfg.server.run_dir)
    subscriber = BusSubscriber(ctx, backend, hwm=cfg.bus.hwm)
    publisher = BusPublisher(ctx, frontend, hwm=cfg.bus.hwm)  # control messages only
    consumer = Consumer(ctx, subscriber, mux_flv)
    app = EgressApp(cfg, consumer)
    hc = HypercornConfig()
    hc.bind = [f"fd://{http_fd}"]
    hc.keep_alive_timeout = cfg.http.idle_timeout_s
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber.serve)
        nursery.start_soon(consumer.serve)
        nursery.start_soon(_report_viewers, name, publisher, consumer)
        logger.info("%s serving HTTP", name)
        await hypercorn_serve(app.app, hc)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


def run_egress_worker(cfg: Config, name: str, http_fd: int) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        trio.run(serve_egress, cfg, name, http_fd, ctx)
    finally:
        ctx.destroy(linger=0)
