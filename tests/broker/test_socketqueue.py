"""SocketQueue and Flusher on real sockets: writev batching, blocking, dropping, draining, errors.

The sender side of each pair is non-blocking, as the servers keep it; small kernel buffers
force partial writes, so the memoryview remainders of `_consume` are exercised for real.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import fanout
from broker.fanout import MAX_IOV, Flusher, SocketQueue, ViewerQueue

if TYPE_CHECKING:
    from collections.abc import Iterator

SMALL_BUF = 4096  # the kernel doubles it; a 64 KiB frame never fits in one go
BIG_FRAME = 64 << 10
WAIT_S = 10.0


class CountingSocket(socket.socket):
    """A socket that records the send calls made on it (one call = one system call)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def send(self, *args: Any, **kwargs: Any) -> int:
        self.calls.append("send")
        return super().send(*args, **kwargs)

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:
        self.calls.append("sendmsg")
        return super().sendmsg(*args, **kwargs)


def make_pair(*, small: bool = False, tcp: bool = False) -> tuple[CountingSocket, socket.socket]:
    """(sender, receiver), both non-blocking; `small` shrinks the kernel buffers."""
    if tcp:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            a = socket.create_connection(listener.getsockname())
            b, _ = listener.accept()
    else:
        a, b = socket.socketpair()
    sender = CountingSocket(a.family, a.type, fileno=a.detach())
    if small:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
    sender.setblocking(False)
    b.setblocking(False)
    return sender, b


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    sender, receiver = make_pair()
    with sender, receiver:
        yield sender, receiver


@pytest.fixture
def small_pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    sender, receiver = make_pair(small=True)
    with sender, receiver:
        yield sender, receiver


def read_now(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """What the peer has received so far (up to `limit` bytes), without waiting."""
    out = bytearray()
    while len(out) < limit:
        try:
            data = sock.recv(min(1 << 20, limit - len(out)))
        except BlockingIOError:
            break
        if not data:
            break
        out += data
    return bytes(out)


async def read_to_eof(sock: socket.socket, out: bytearray) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not data:
            return
        out += data


async def writer_then_eof(queue: SocketQueue) -> None:
    """run_writer, then end the byte stream so the reader sees EOF."""
    await queue.run_writer()
    queue.sock.shutdown(socket.SHUT_WR)


async def drain(queue: SocketQueue, receiver: socket.socket) -> bytearray:
    """Run the (closed) queue's writer to the end; everything the receiver got."""
    received = bytearray()
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_to_eof, receiver, received)
            nursery.start_soon(writer_then_eof, queue)
    return received


async def wait_for(predicate: Any) -> None:
    """Poll a condition another task brings about (bounded)."""
    with trio.fail_after(WAIT_S):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.001)


def frame(i: int, size: int) -> bytes:
    """`size` bytes that say which item they belong to, so reordering shows."""
    return (struct.pack(">I", i) * (size // 4 + 1))[:size]


def fill_until_blocked(queue: SocketQueue, flusher: Flusher) -> bytes:
    """Push one frame bigger than the kernel buffers and flush: the queue blocks."""
    first = frame(0, BIG_FRAME)
    queue.push(first, sync=True)
    flusher.flush()
    assert queue._blocked
    return first


# -- flush and Flusher -----------------------------------------------------------------------------

def test_flush_sends_everything_queued_in_order_with_one_call(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 8, flusher)
    q.push(b"key", sync=True)
    q.push(b"-p1", sync=False)
    q.push_control(b"-ctl")
    q.push(b"-p2", sync=False)
    assert flusher.dirty == {q}
    assert sender.calls == []  # pushes only mark the queue dirty
    assert read_now(receiver) == b""
    flusher.flush()
    assert sender.calls == ["sendmsg"]  # one writev for the four buffers
    assert read_now(receiver) == b"key-p1-ctl-p2"
    assert q.bytes_out == 13
    assert not q._items
    assert not q._blocked
    assert flusher.dirty == set()


def test_a_single_buffer_goes_with_send(pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 8, flusher)
    q.push(b"only", sync=True)
    flusher.flush()
    assert sender.calls == ["send"]
    assert read_now(receiver) == b"only"


def test_flush_of_an_empty_queue_makes_no_call(pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, _ = pair
    q = SocketQueue(sender, 8, Flusher())
    q.flush()
    assert sender.calls == []


def test_flusher_flushes_only_the_queues_pushed_to() -> None:
    flusher = Flusher()
    (s1, r1), (s2, r2) = make_pair(), make_pair()
    with s1, r1, s2, r2:
        q1 = SocketQueue(s1, 8, flusher)
        q2 = SocketQueue(s2, 8, flusher)
        q2.preload(b"preloaded")  # queued, but not a reason to flush
        q1.push(b"one", sync=True)
        assert flusher.dirty == {q1}
        flusher.flush()
        assert read_now(r1) == b"one"
        assert read_now(r2) == b""
        assert s2.calls == []
        assert flusher.dirty == set()
        flusher.flush()  # nothing dirty: no system call at all
        assert s1.calls == ["send"]
        q2.push(b"+two", sync=True)
        flusher.flush()
        assert read_now(r2) == b"preloaded+two"
        assert s1.calls == ["send"]


# -- blocking, filling up, dropping, draining ------------------------------------------------------

async def test_stalled_reader_blocks_queue_fills_then_drops_until_sync(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    f = [frame(i, BIG_FRAME) for i in range(10)]

    f0 = fill_until_blocked(q, flusher)
    # Part of the frame went; the rest waits as a memoryview (no copy).
    assert 0 < q.bytes_out < BIG_FRAME
    assert len(q._items) == 1
    assert isinstance(q._items[0], memoryview)
    assert bytes(q._items[0]) == f0[q.bytes_out:]

    for i in (1, 2, 3):  # room for three more: capacity counts the remainder too
        q.push(f[i], sync=False)
    assert len(q._items) == 4
    assert (q.skipping, q.dropped) == (False, 0)
    assert flusher.dirty == set()  # blocked: pushes are the writer task's business

    q.push(f[4], sync=False)  # full: dropped, and skipping starts
    assert (q.skipping, q.dropped) == (True, 1)
    q.push(f[5], sync=True)  # a sync point, but no room: dropped too
    assert (q.skipping, q.dropped) == (True, 2)
    q.push_control(b"CONTROL")  # always queued, and it does not end the skip
    assert q.skipping
    # The queued prefix is intact.
    assert [bytes(i) for i in list(q._items)[1:]] == [f[1], f[2], f[3], b"CONTROL"]

    received = bytearray()
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_to_eof, receiver, received)
            nursery.start_soon(writer_then_eof, q)
            await wait_for(lambda: not q._items)  # the backlog drained
            q.push(f[6], sync=False)  # room again, but skipping waits for a sync point
            assert (q.skipping, q.dropped) == (True, 3)
            q.push(f[7], sync=True)
            q.push(f[8], sync=False)
            assert (q.skipping, q.dropped) == (False, 3)
            flusher.flush()  # what the bus task does after each drain
            q.close()
            q.push(f[9], sync=True)  # after close: ignored, not counted
    expected = f0 + f[1] + f[2] + f[3] + b"CONTROL" + f[7] + f[8]
    assert len(received) == len(expected)
    assert received == expected
    assert q.bytes_out == len(expected)
    assert q.dropped == 3
    assert q.error is None


async def test_push_control_bypasses_capacity_and_skipping(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    q = SocketQueue(sender, 1, flusher)
    f0 = fill_until_blocked(q, flusher)
    q.push(b"dropped", sync=True)
    assert (q.skipping, q.dropped) == (True, 1)
    q.push_control(b"<c1>")
    q.push_control(b"<c2>")
    q.push_control(b"")  # nothing to send: not queued
    assert len(q._items) == 3
    assert (q.skipping, q.dropped) == (True, 1)
    received = bytearray()
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_to_eof, receiver, received)
            nursery.start_soon(writer_then_eof, q)
            q.close()
    assert received == f0 + b"<c1><c2>"


async def test_control_pushed_while_not_blocked_goes_with_the_writer_wakeup(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    q.push_control(b"ctl")
    assert flusher.dirty == {q}  # not blocked: flushed with the others
    q.flush()  # a shell may flush at once (a pong, a status message)
    assert read_now(receiver) == b"ctl"


def test_preload_goes_out_first_and_only_on_the_next_flush(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    q.preload(b"HTTP/1.1 200 OK\r\n\r\n")
    assert flusher.dirty == set()
    flusher.flush()
    assert read_now(receiver) == b""
    assert sender.calls == []
    q.push(b"<media>", sync=True)
    flusher.flush()
    assert read_now(receiver) == b"HTTP/1.1 200 OK\r\n\r\n<media>"
    assert sender.calls == ["sendmsg"]


def test_preload_alone_goes_on_an_explicit_flush(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    q = SocketQueue(sender, 4, Flusher())
    q.preload(b"head")
    assert read_now(receiver) == b""
    q.flush()
    assert read_now(receiver) == b"head"


# -- close -----------------------------------------------------------------------------------------

async def test_close_of_an_idle_queue_ends_run_writer_at_once(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, _ = pair
    q = SocketQueue(sender, 4, Flusher())
    q.close()
    with trio.fail_after(WAIT_S):
        await q.run_writer()
    assert sender.calls == []


async def test_run_writer_waits_until_close(pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    done = False

    async def writer() -> None:
        nonlocal done
        await q.run_writer()
        done = True

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            q.push(b"a", sync=True)
            flusher.flush()
            await trio.testing.wait_all_tasks_blocked()
            assert not done  # delivered, but not closed: the writer keeps waiting
            assert read_now(receiver) == b"a"
            q.close()
    assert done


async def test_close_sends_what_was_pushed_but_not_yet_flushed(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    q.push(b"last", sync=True)
    q.push_control(b"-bye")
    q.close()  # before the bus task flushed
    with trio.fail_after(WAIT_S):
        await q.run_writer()
    assert read_now(receiver) == b"last-bye"


async def test_close_while_blocked_drains_then_returns(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    q = SocketQueue(sender, 8, flusher)
    first = fill_until_blocked(q, flusher)
    rest = [frame(i, 10_000) for i in range(1, 6)]
    for data in rest:
        q.push(data, sync=False)
    q.close()
    received = await drain(q, receiver)
    assert received == first + b"".join(rest)
    assert not q._items


# -- a peer that goes away -------------------------------------------------------------------------

async def test_peer_closed_push_sets_error_and_run_writer_raises(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    receiver.close()
    q.push(b"nobody listens", sync=True)
    q.push(b"!", sync=False)
    flusher.flush()  # never raises: the error is kept for the writer task
    assert isinstance(q.error, BrokenPipeError)
    assert not q._items
    q.push(b"more", sync=False)
    q.flush()  # after an error nothing is attempted
    assert sender.calls == ["sendmsg"]
    with trio.fail_after(WAIT_S), pytest.raises(trio.BrokenResourceError) as info:
        await q.run_writer()
    assert info.value.__cause__ is q.error


async def test_peer_closing_while_writer_waits_makes_it_raise(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    q = SocketQueue(sender, 4, flusher)
    fill_until_blocked(q, flusher)

    async def close_peer() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for writability
        receiver.close()

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_peer)
            with pytest.raises(trio.BrokenResourceError):
                await q.run_writer()
    assert isinstance(q.error, OSError)
    assert not q._items


async def test_peer_reset_over_tcp_makes_run_writer_raise() -> None:
    sender, receiver = make_pair(small=True, tcp=True)
    with sender, receiver:
        flusher = Flusher()
        q = SocketQueue(sender, 4, flusher)
        q.push(frame(0, 4 << 20), sync=True)  # far more than loopback TCP buffers hold
        flusher.flush()
        assert q._blocked

        async def reset_peer() -> None:
            await trio.testing.wait_all_tasks_blocked()
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            receiver.close()

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset_peer)
                with pytest.raises(trio.BrokenResourceError):
                    await q.run_writer()
        assert q.error is not None
        assert q.error.errno in (errno.ECONNRESET, errno.EPIPE)


# -- many buffers ----------------------------------------------------------------------------------

def test_more_than_max_iov_items_go_in_batches_of_max_iov(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    count = 3 * MAX_IOV + 7
    q = SocketQueue(sender, count, flusher)
    items = [frame(i, 1 + i % 13) for i in range(count)]
    for i, data in enumerate(items):
        q.push(data, sync=i == 0)
    flusher.flush()
    assert sender.calls == ["sendmsg"] * 4
    assert read_now(receiver) == b"".join(items)
    assert not q._items
    assert q.bytes_out == sum(map(len, items))


async def test_more_than_max_iov_items_with_partial_writes(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    count = 4 * MAX_IOV + 3
    q = SocketQueue(sender, count, flusher)
    items = [frame(i, 37 + i % 101) for i in range(count)]
    for i, data in enumerate(items):
        q.push(data, sync=i == 0)
    flusher.flush()
    assert q._blocked
    q.close()
    received = await drain(q, receiver)
    assert received == b"".join(items)
    assert q.bytes_out == len(received)
    assert q.dropped == 0


# -- a random workload against the model -----------------------------------------------------------

Op = tuple[str, int, bool]

ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 20_000), st.booleans()),
    st.tuples(st.just("control"), st.integers(1, 3_000), st.just(False)),
    st.tuples(st.just("flush"), st.just(0), st.just(False)),
    st.tuples(st.just("read"), st.integers(1, 50_000), st.just(False)),
    st.tuples(st.just("yield"), st.just(0), st.just(False)),
), max_size=60)


async def run_workload(ops: list[Op], capacity: int) -> None:
    sender, receiver = make_pair(small=True)
    with sender, receiver:
        flusher = Flusher()
        q = SocketQueue(sender, capacity, flusher)
        accepted: list[bytes] = []
        received = bytearray()
        counter = itertools.count()
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer_then_eof, q)
                for kind, n, sync in ops:
                    if kind == "push":
                        data = frame(next(counter), n)
                        room = len(q._items) < capacity
                        expect = room and (sync or not q.skipping)
                        dropped = q.dropped
                        q.push(data, sync=sync)
                        assert q.dropped == dropped + (not expect)
                        if expect:
                            accepted.append(data)
                    elif kind == "control":
                        data = frame(next(counter), n)
                        q.push_control(data)
                        accepted.append(data)
                    elif kind == "flush":
                        flusher.flush()
                    elif kind == "read":
                        received += read_now(receiver, n)
                    else:
                        await trio.testing.wait_all_tasks_blocked()
                flusher.flush()
                q.close()
                nursery.start_soon(read_to_eof, receiver, received)
        assert q.error is None
        assert bytes(received) == b"".join(accepted)
        assert q.bytes_out == len(received)


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy, capacity=st.integers(0, 6))
def test_random_workload_delivers_exactly_what_was_accepted(ops: list[Op], capacity: int) -> None:
    trio.run(run_workload, ops, capacity)


# -- ViewerQueue: what tests/broker/test_fanout.py does not cover ----------------------------------

async def test_viewer_queue_preload_comes_before_the_first_push() -> None:
    q = ViewerQueue(4)
    q.preload(b"hdr")
    q.push(b"frame", sync=True)
    assert await q.get_batch() == [b"hdr", b"frame"]
    assert q.bytes_out == 8


async def test_viewer_queue_preload_does_not_wake_a_waiting_reader() -> None:
    q = ViewerQueue(4)
    got: list[list[bytes]] = []

    async def reader() -> None:
        got.append(await q.get_batch())

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            q.preload(b"hdr")
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            q.push(b"frame", sync=True)
    assert got == [[b"hdr", b"frame"]]


async def test_audio_waits_for_the_next_urgent_frame_or_the_deadline() -> None:
    """Deferred (audio) frames share the next urgent (video) write, or go after DEFER_S."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        flusher = Flusher()
        queue = SocketQueue(a, 100, flusher)
        queue.push(b"audio1", sync=True, urgent=False)
        flusher.flush()
        with pytest.raises(BlockingIOError):
            b.recv(100)  # held back
        queue.push(b"video1", sync=True)
        flusher.flush()
        assert b.recv(100) == b"audio1video1"  # one write
        queue.push(b"audio2", sync=True, urgent=False)
        await trio.sleep(fanout.DEFER_S + 0.01)
        flusher.flush()  # the next bus wake-up, whatever it carried
        assert b.recv(100) == b"audio2"
        assert not flusher.deferred


# -- deliver: a hub's batch of shared bytes ----------------------------------------------------

def test_deliver_sends_the_shared_list_with_one_call(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    flusher = Flusher()
    q = SocketQueue(sender, 8, flusher)
    items = [b"video", b"audio"]
    q.deliver(items, [fanout.SYNC, fanout.PLAIN], 10)
    assert sender.calls == ["sendmsg"]
    assert read_now(receiver) == b"videoaudio"
    q.deliver([b"one"], [fanout.PLAIN], 3)
    assert sender.calls == ["sendmsg", "send"]
    assert read_now(receiver) == b"one"
    assert q.bytes_out == 13
    assert not q._items
    assert flusher.dirty == set()  # nothing left over to flush


async def test_deliver_keeps_what_the_kernel_did_not_take_for_the_writer(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    q = SocketQueue(sender, 2, Flusher())
    items = [frame(i, BIG_FRAME) for i in range(4)]  # the first never fits whole
    q.deliver(items, [fanout.SYNC] + [fanout.PLAIN] * 3, sum(map(len, items)))
    assert q._blocked
    assert 0 < q.bytes_out < BIG_FRAME
    # The item cut short waits whole, without a copy; those after it are queued under the
    # drop policy: room for one, then the skip starts.
    assert isinstance(q._items[0], memoryview)
    assert bytes(q._items[0]) == items[0][q.bytes_out:]
    assert q._items[1] is items[1]
    assert len(q._items) == 2
    assert (q.skipping, q.dropped) == (True, 2)
    q.close()
    received = await drain(q, receiver)
    assert received == items[0] + items[1]


async def test_deliver_to_a_lagging_queue_applies_the_drop_policy(
        small_pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = small_pair
    flusher = Flusher()
    q = SocketQueue(sender, 3, flusher)
    f0 = fill_until_blocked(q, flusher)
    batch = [b"p1", b"p2", b"p3", b"CTL", b"key", b"p4"]
    flags = [fanout.PLAIN, fanout.PLAIN, fanout.PLAIN, fanout.CONTROL, fanout.SYNC,
             fanout.PLAIN]
    q.deliver(batch, flags, sum(map(len, batch)))
    # Room for two behind the blocked remainder; p3 starts the skip; the control goes anyway;
    # the keyframe finds no room either.
    assert [bytes(i) for i in list(q._items)[1:]] == [b"p1", b"p2", b"CTL"]
    assert (q.skipping, q.dropped) == (True, 3)
    q.close()
    received = await drain(q, receiver)
    assert received == f0 + b"p1p2CTL"


def test_deliver_after_close_or_an_error_sends_nothing(
        pair: tuple[CountingSocket, socket.socket]) -> None:
    sender, receiver = pair
    q = SocketQueue(sender, 8, Flusher())
    q.close()
    q.deliver([b"late"], [fanout.SYNC], 4)
    assert sender.calls == []
    q2 = SocketQueue(sender, 8, Flusher())
    receiver.close()
    q2.deliver([b"gone"], [fanout.SYNC], 4)
    assert isinstance(q2.error, BrokenPipeError)
    q2.deliver([b"more"], [fanout.SYNC], 4)
    assert sender.calls == ["send"]


# -- Nagle's algorithm once the start is out ---------------------------------------------------

@pytest.mark.parametrize("nagle", [True, False])
def test_nagle_from_the_first_media_batch_after_the_start(nagle: bool) -> None:
    sender, receiver = make_pair(tcp=True)
    with sender, receiver:
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as servers accept
        flusher = Flusher()
        q = SocketQueue(sender, 8, flusher, nagle=nagle)
        q.push_control(b"start")
        q.push_control(b"-more")
        assert sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        q.deliver([b"video", b"audio"], [fanout.SYNC, fanout.PLAIN], 10)
        # With Nagle, the queued start went first, in its own write, before the switch.
        assert sender.calls == (["sendmsg", "sendmsg"] if nagle else ["sendmsg"])
        assert bool(sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is not nagle
        received = bytearray()
        for _ in range(200):
            received += read_now(receiver)
            if len(received) == 20:
                break
            time.sleep(0.01)
        assert bytes(received) == b"start-morevideoaudio"
