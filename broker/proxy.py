"""The broker process: libzmq's own XSUB/XPUB proxy, so no Python touches a forwarded message."""

from __future__ import annotations

import logging

import zmq

from broker.zsock import unlink_stale

logger = logging.getLogger(__name__)


def _bind(sock: zmq.Socket[bytes], endpoint: str) -> None:
    unlink_stale(endpoint)  # left behind by a broker that was killed
    sock.bind(endpoint)


def run_proxy(frontends: list[str], backends: list[str], *, hwm: int) -> None:
    """Forward publishers (XSUB, on `frontends`) to subscribers (XPUB, on `backends`) forever."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        sock.set_hwm(hwm)
        sock.setsockopt(zmq.LINGER, 0)
    for endpoint in frontends:
        _bind(xsub, endpoint)
    for endpoint in backends:
        _bind(xpub, endpoint)
    logger.info("bus proxy: %s -> %s", ", ".join(frontends), ", ".join(backends))
    try:
        zmq.proxy(xsub, xpub)
    finally:
        xsub.close(linger=0)
        xpub.close(linger=0)
        ctx.term()
