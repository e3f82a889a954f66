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

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

ACCEPT_ERROR_PAUSE_S = 0.1  # out of file descriptors: let connections close, then go on
NO_FD_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
SHORT_WRITE_TIMEOUT_S = 10.0


async def serve_accept(listener: socket.socket,
                       handler: Callable[[socket.socket], Awaitable[None]]) -> None:
    """Accept forever, one task per connection; the handler owns (and closes) the socket."""

    async def run(conn: socket.socket) -> None:
        try:
            await handler(conn)
        finally:
            conn.close()

    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:  # several workers share the socket: another may win the race
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno not in NO_FD_ERRORS:
                        raise
                    logger.warning("accept failed: %s", exc)
                    await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(run, conn)


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
