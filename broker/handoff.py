"""Accepted connections passed between worker processes with SCM_RIGHTS.

Two uses: the workers of a port group even out their connection counts (the decision is
broker/balance.py's; `Handoff` maps the group's table, a file the supervisor creates in the
run directory), and an egress worker passes an admitted live HTTP player to the ingest worker
that holds the stream's publisher (egress/worker.py). Each receiver binds a Unix datagram
socket (`Inbox`). One that is restarting leaves its sender to keep the connection; one whose
queue is full makes the group's sender wait a little (RETRY_FOR_S at most).
"""

from __future__ import annotations

import array
import contextlib
import enum
import logging
import mmap
import os
import socket

import trio

from broker.balance import LoadTable, held, table_size

logger = logging.getLogger(__name__)

RECEIVE_BATCH = 64  # connections taken per wake-up at most; then the others get a turn
MAX_MESSAGE = 4096  # bytes that travel with a connection
# A worker's queue of handed connections holds net.unix.max_dgram_qlen (10 by default): in a
# burst, the sender stops accepting and tries again this often, for at most RETRY_FOR_S.
RETRY_S = 0.002
RETRY_FOR_S = 0.1


class Outcome(enum.Enum):
    HANDED = "handed"
    KEEP = "keep"
    FULL = "full"


def table_path(run_dir: str, role: str) -> str:
    return os.path.join(run_dir, f"{role}.load")


def create_table(run_dir: str, role: str, workers: int) -> str:
    """The supervisor's part: a zeroed table for a fresh group."""
    path = table_path(run_dir, role)
    with open(path, "wb") as f:
        f.write(bytes(table_size(workers)))
    return path


def read_open(run_dir: str, role: str, workers: int) -> list[int] | None:
    """Connections each worker of the group holds now (None without a table)."""
    try:
        with open(table_path(run_dir, role), "rb") as f:
            data = f.read(table_size(workers))
    except OSError:
        return None
    return held(data, workers) if len(data) == table_size(workers) else None


def pass_socket(sender: socket.socket, path: str, conn: socket.socket,
                message: bytes = b"c") -> None:
    """Send conn (a duplicate of its descriptor) and a message to the Inbox bound at path.
    Raises BlockingIOError when the receiver's queue is full, OSError when nobody is there;
    the caller still owns, and closes, its own descriptor."""
    # (socket.send_fds drops its address argument before Python 3.12.)
    sender.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [conn.fileno()]))], 0, path)


class Inbox:
    """The receiving end: connections other processes passed here, each with its message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous process
        self.sock.bind(path)
        self.sock.setblocking(False)

    async def receive(self) -> list[tuple[socket.socket, bytes]]:
        """Waits for at least one connection; then takes what is there (RECEIVE_BATCH)."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            taken: list[tuple[socket.socket, bytes]] = []
            while len(taken) < RECEIVE_BATCH:
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
                except BlockingIOError:
                    break
                conns = [socket.socket(fileno=fd) for fd in fds]
                taken += [(conn, msg) for conn in conns[:1]]
                for extra in conns[1:]:  # one per message; more is not ours to serve
                    extra.close()
            if taken:
                return taken

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Handoff:
    """One worker's end: counts its connections and hands new ones to a less busy worker."""

    def __init__(self, run_dir: str, role: str, workers: int, index: int) -> None:
        fd = os.open(table_path(run_dir, role), os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, table_size(workers))
        finally:
            os.close(fd)
        self.table = LoadTable(memoryview(self._map), workers, index)
        self.table.join()
        self._paths = [os.path.join(run_dir, f"{role}-{j}.handoff") for j in range(workers)]
        self.inbox = Inbox(self._paths[index])

    def hand_off(self, conn: socket.socket) -> Outcome:
        """Pass a just-accepted connection on if another worker holds fewer. HANDED: it went
        (the caller closes its own descriptor); KEEP: serve it here; FULL: the other worker's
        queue is full, try again in a moment."""
        target = self.table.target()
        if target is None:
            return Outcome.KEEP
        try:
            pass_socket(self.inbox.sock, self._paths[target], conn)
        except BlockingIOError:
            return Outcome.FULL
        except OSError as exc:  # it is between processes
            logger.debug("kept a connection: %s", exc)
            return Outcome.KEEP
        self.table.sent(target)
        return Outcome.HANDED

    async def receive(self) -> list[socket.socket]:
        """Connections other workers handed here: waits for at least one."""
        taken = [conn for conn, _msg in await self.inbox.receive()]
        for _ in taken:
            self.table.took()
        return taken

    def opened(self) -> None:
        self.table.opened()

    def closed(self) -> None:
        self.table.closed()

    def close(self) -> None:
        self.inbox.close()
