"""Plain non-blocking sockets under trio, shared by the ingest and egress servers.

The hot path writes to client sockets synchronously (broker.fanout.SocketQueue), so servers
keep the stdlib socket objects themselves instead of wrapping them in trio streams.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from typing import TYPE_CHECKING

import trio

from broker.handoff import RETRY_FOR_S, RETRY_S, Outcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from broker.handoff import Handoff

logger = logging.getLogger(__name__)

ACCEPT_ERROR_PAUSE_S = 0.1  # out of file descriptors: let connections close, then go on
NO_FD_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHORT_WRITE_TIMEOUT_S = 10.0


def peer_name(sock: socket.socket) -> str:
    """"host:port" of the other end, "?" once it is gone."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Log lines of one connection, prefixed "[PROTOCOL PEER]"."""

    def __init__(self, logger: logging.Logger, protocol: str, peer: str) -> None:
        super().__init__(logger, {"prefix": f"[{protocol} {peer}]"})

    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        return f"{self.extra['prefix'] if self.extra else ''} {msg}", kwargs


class ConnectionLimits:
    """Connections open in this process, in total and per client address; one object may
    guard several listeners (an ingest worker's RTMP and RTSP)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self.open = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count the connection in, or say why not."""
        if self.open >= self.total:
            return f"{self.open} connections open (max_connections)"
        if self.by_address.get(address, 0) >= self.per_address:
            return f"{self.per_address} connections from {address} (max_connections_per_ip)"
        self.open += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        if (left := self.by_address[address] - 1) > 0:
            self.by_address[address] = left
        else:
            del self.by_address[address]


async def serve_accept(listener: socket.socket,
                       handler: Callable[[socket.socket], Awaitable[None]],
                       limits: ConnectionLimits | None = None,
                       handoff: Handoff | None = None) -> None:
    """Accept forever, one task per connection; the handler owns (and closes) the socket.
    Over a limit, a new connection is closed at once; those open are not touched. With a
    handoff, a connection goes to a less busy worker of the group before anything is read,
    and the connections other workers hand here are served like accepted ones."""

    async def run(conn: socket.socket, address: str) -> None:
        try:
            await handler(conn)
        finally:
            conn.close()
            if limits is not None:
                limits.release(address)
            if handoff is not None:
                handoff.closed()

    def serve(conn: socket.socket, peer: object) -> None:
        address = peer[0] if isinstance(peer, tuple) else str(peer)
        if limits is not None and (why := limits.admit(address)) is not None:
            logger.warning("refused a connection from %s: %s", address, why)
            conn.close()
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handoff is not None:
            handoff.opened()  # now, not when the task starts: a burst is accepted in one go
        nursery.start_soon(run, conn, address)

    async def take_handed(handoff: Handoff) -> None:
        while True:
            for conn in await handoff.receive():
                try:
                    peer = conn.getpeername()
                except OSError:  # it left on the way
                    conn.close()
                    continue
                serve(conn, peer)

    def pass_on(conn: socket.socket, peer: object, until: float) -> bool:
        """Hand the connection over or serve it here; False: try again later."""
        assert handoff is not None
        outcome = handoff.hand_off(conn)
        if outcome is Outcome.HANDED:
            conn.close()
        elif outcome is Outcome.KEEP or trio.current_time() >= until:
            serve(conn, peer)
        else:
            return False
        return True

    waiting: list[tuple[socket.socket, object, float]] = []  # for a full hand-over queue
    async with trio.open_nursery() as nursery:
        if handoff is not None:
            nursery.start_soon(take_handed, handoff)
        while True:
            if waiting:
                await trio.sleep(RETRY_S)
                waiting = [w for w in waiting if not pass_on(*w)]
            else:
                await trio.lowlevel.wait_readable(listener)
            while not waiting:  # no more accepts while a burst waits for the other worker
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno not in NO_FD_ERRORS:
                        raise
                    logger.warning("accept failed: %s", exc)
                    await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                    break
                if handoff is None:
                    serve(conn, peer)
                elif not pass_on(conn, peer, until := trio.current_time() + RETRY_FOR_S):
                    waiting.append((conn, peer, until))


async def receive_some(sock: socket.socket, max_bytes: int) -> bytes:
    """Await data (b"" at EOF); raises trio.BrokenResourceError if the peer reset.

    It reads first and waits only when nothing is there: under load the data usually is, and
    a wait costs an epoll registration and a trip through the scheduler. Either way it passes
    through the scheduler once (the wait, or a checkpoint), so a busy peer starves nobody.
    """
    waited = False
    while True:
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            waited = True
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if not waited:
            await trio.lowlevel.checkpoint()
        return data


async def send_short(sock: socket.socket, data: bytes) -> None:
    """A short reply (an error page, a final chunk); best effort, bounded in time."""
    view = memoryview(data)
    with contextlib.suppress(OSError), trio.move_on_after(SHORT_WRITE_TIMEOUT_S):
        while view:
            await trio.lowlevel.wait_writable(sock)
            with contextlib.suppress(BlockingIOError):
                view = view[sock.send(view):]
