"""Connections handed between two accept loops over real sockets: the one that holds more
passes new connections on, untouched, and the other serves them."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest
import trio

from broker.balance import MARGIN
from broker.handoff import (
    RETRY_FOR_S,
    Handoff,
    Inbox,
    Outcome,
    create_table,
    pass_socket,
    read_open,
)
from broker.sockets import serve_accept

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

CLIENTS = 12
WAIT_S = 10.0


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def burst(tmp_path: Path, clients: int, idle_starts_after: float = 0.0) -> list[int]:
    """`clients` connections, all to the first of two workers; the second starts serving
    (and taking what is handed to it) after a while. How many each worker served."""
    run_dir = str(tmp_path)
    create_table(run_dir, "egress", 2)
    handoffs = [Handoff(run_dir, "egress", 2, i) for i in range(2)]
    busy, idle = listening(), listening()
    served: list[int] = []
    release = trio.Event()

    def handler(worker: int) -> Callable[[socket.socket], Awaitable[None]]:
        async def handle(conn: socket.socket) -> None:
            served.append(worker)
            await trio.lowlevel.wait_readable(conn)
            data = conn.recv(100)  # the bytes sent before the hand-over arrive whole
            conn.sendall(f"{worker}:".encode() + data)
            await release.wait()
        return handle

    async def start_idle() -> None:
        await trio.sleep(idle_starts_after)
        await serve_accept(idle, handler(1), None, handoffs[1])

    streams: list[trio.SocketStream] = []
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_accept, busy, handler(0), None, handoffs[0])
            nursery.start_soon(start_idle)
            for n in range(clients):
                stream = await trio.open_tcp_stream("127.0.0.1", busy.getsockname()[1])
                await stream.send_all(b"hello %d" % n)
                streams.append(stream)
            answers = [await c.receive_some(100) for c in streams]
            assert read_open(run_dir, "egress", 2) == [served.count(0), served.count(1)]
            release.set()
            for c in streams:
                await c.aclose()
            while read_open(run_dir, "egress", 2) != [0, 0]:  # noqa: ASYNC110 - counted out
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    for h in handoffs:
        h.close()
    busy.close()
    idle.close()
    assert all(a.endswith(b":hello %d" % n) for n, a in enumerate(answers))
    by_worker = [sum(a.startswith(b"%d:" % w) for a in answers) for w in (0, 1)]
    assert by_worker == [served.count(0), served.count(1)]
    return by_worker


async def test_a_burst_on_one_worker_is_shared(tmp_path: Path) -> None:
    first, second = await burst(tmp_path, CLIENTS)
    assert abs(first - second) <= MARGIN


async def test_a_full_hand_over_queue_makes_the_sender_wait_not_keep(tmp_path: Path) -> None:
    # The second worker takes nothing for 50 ms: its queue (10 by default) fills at once.
    first, second = await burst(tmp_path, 40, idle_starts_after=RETRY_FOR_S / 2)
    assert abs(first - second) <= MARGIN


async def test_a_worker_that_is_gone_leaves_the_connection_here(tmp_path: Path) -> None:
    run_dir = str(tmp_path)
    create_table(run_dir, "egress", 2)
    here = Handoff(run_dir, "egress", 2, 0)
    gone = Handoff(run_dir, "egress", 2, 1)
    gone.close()  # nobody is bound at its path any more
    for _ in range(MARGIN):
        here.opened()
    a, b = socket.socketpair()
    assert here.table.target() == 1
    assert here.hand_off(a) is Outcome.KEEP
    assert here.table.loads() == [MARGIN, 0]  # nothing counted as sent
    for s in (a, b):
        s.close()
    here.close()


async def test_a_passed_connection_arrives_with_its_message_and_unread_bytes(
        tmp_path: Path) -> None:
    inbox = Inbox(str(tmp_path / "players.sock"))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pairs = [socket.socketpair() for _ in range(3)]
    for n, (ours, theirs) in enumerate(pairs):
        theirs.sendall(b"request %d" % n)
        assert ours.recv(100, socket.MSG_PEEK) == b"request %d" % n  # looked at, not read
        pass_socket(sender, inbox.path, ours, b"message %d" % n)
        ours.close()  # the sender's copy: the connection lives on in the receiver
    with trio.fail_after(WAIT_S):
        got = await inbox.receive()
    assert [m for _, m in got] == [b"message %d" % n for n in range(3)]
    for n, (conn, _) in enumerate(got):
        assert conn.recv(100) == b"request %d" % n
        conn.sendall(b"answer")
        assert pairs[n][1].recv(100) == b"answer"
        conn.close()
    inbox.close()
    with pytest.raises(FileNotFoundError):  # nobody there any more
        pass_socket(sender, inbox.path, pairs[0][1])
    sender.close()
    for _, theirs in pairs:
        theirs.close()
