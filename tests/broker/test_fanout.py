"""ViewerQueue: bounded per-viewer queue of shared bytes, dropping up to the next sync point."""

from __future__ import annotations

import trio
import trio.testing

from broker.fanout import ViewerQueue


def drain_now(q: ViewerQueue) -> list[bytes]:
    """get_batch on a non-empty (or closed) queue, which never blocks."""
    out: list[bytes] = []

    async def run() -> None:
        out.extend(await q.get_batch())

    trio.run(run)
    return out


async def test_get_batch_returns_everything_queued_in_order() -> None:
    q = ViewerQueue(8)
    for i in range(5):
        q.push(b"%d" % i, sync=i == 0)
    q.push_control(b"ctl")
    assert await q.get_batch() == [b"0", b"1", b"2", b"3", b"4", b"ctl"]
    assert q.bytes_out == 8
    q.push(b"next", sync=False)
    assert await q.get_batch() == [b"next"]
    assert q.bytes_out == 12
    assert q.dropped == 0


async def test_same_bytes_object_is_queued_not_copied() -> None:
    q = ViewerQueue(2)
    data = bytes(1000)
    q.push(data, sync=True)
    (got,) = await q.get_batch()
    assert got is data


async def test_get_batch_waits_when_empty_and_wakes_on_push() -> None:
    q = ViewerQueue(4)
    got: list[list[bytes]] = []

    async def reader() -> None:
        got.append(await q.get_batch())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # still waiting
            q.push(b"a", sync=False)
            q.push(b"b", sync=False)  # both pushed before the reader runs again
    assert got == [[b"a", b"b"]]


async def test_push_control_wakes_a_waiting_reader() -> None:
    q = ViewerQueue(4)
    got: list[list[bytes]] = []

    async def reader() -> None:
        got.append(await q.get_batch())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            q.push_control(b"hdr")
    assert got == [[b"hdr"]]


async def test_close_wakes_a_waiting_reader_with_empty_batch() -> None:
    q = ViewerQueue(4)
    got: list[list[bytes]] = []

    async def reader() -> None:
        got.append(await q.get_batch())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            q.close()
    assert got == [[]]


async def test_close_drains_then_returns_empty() -> None:
    q = ViewerQueue(4)
    q.push(b"a", sync=True)
    q.push_control(b"b")
    q.close()
    q.push(b"late", sync=True)  # ignored once closed
    q.push_control(b"late-ctl")
    assert await q.get_batch() == [b"a", b"b"]
    assert await q.get_batch() == []
    assert await q.get_batch() == []
    assert q.dropped == 0  # pushes after close are not counted as drops


async def test_reader_loop_sees_every_frame_and_then_the_end() -> None:
    q = ViewerQueue(1000)
    received: list[bytes] = []

    async def reader() -> None:
        while batch := await q.get_batch():
            received.extend(batch)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for i in range(100):
                q.push(b"%d" % i, sync=False)
                if i % 7 == 0:
                    await trio.testing.wait_all_tasks_blocked()
            q.close()
    assert received == [b"%d" % i for i in range(100)]


def test_capacity_counts_queued_items_and_overflow_starts_skipping() -> None:
    q = ViewerQueue(3)
    for i in range(3):
        q.push(b"%d" % i, sync=False)
    assert (q.skipping, q.dropped) == (False, 0)
    q.push(b"x", sync=False)  # the fourth: dropped, and skipping begins
    assert (q.skipping, q.dropped) == (True, 1)
    q.push(b"k", sync=True)  # a sync point, but still no room: dropped too
    assert (q.skipping, q.dropped) == (True, 2)
    assert drain_now(q) == [b"0", b"1", b"2"]
    # Room again, but a skipping queue waits for a sync point.
    q.push(b"p", sync=False)
    q.push(b"p2", sync=False)
    assert (q.skipping, q.dropped) == (True, 4)
    q.push(b"k2", sync=True)
    assert (q.skipping, q.dropped) == (False, 4)
    q.push(b"p3", sync=False)
    assert drain_now(q) == [b"k2", b"p3"]
    assert q.dropped == 4


def test_overflowing_push_is_dropped_even_if_sync() -> None:
    q = ViewerQueue(1)
    q.push(b"a", sync=True)
    q.push(b"k", sync=True)  # full: the first drop starts skipping whatever the frame
    assert q.skipping
    assert q.dropped == 1
    assert drain_now(q) == [b"a"]


def test_push_control_bypasses_capacity_and_skipping() -> None:
    q = ViewerQueue(2)
    q.push(b"0", sync=False)
    q.push(b"1", sync=False)
    q.push(b"2", sync=False)
    assert q.skipping
    q.push_control(b"ctl")  # queued although the queue is full and skipping
    assert q.skipping  # and does not end the skip
    assert q.dropped == 1
    assert drain_now(q) == [b"0", b"1", b"ctl"]


def test_control_items_count_toward_capacity_of_later_pushes() -> None:
    q = ViewerQueue(2)
    q.push_control(b"hdr")
    q.push_control(b"cfg")
    q.push(b"frame", sync=True)
    assert q.skipping
    assert q.dropped == 1
    assert drain_now(q) == [b"hdr", b"cfg"]


def test_capacity_zero_queues_only_control() -> None:
    q = ViewerQueue(0)
    q.push(b"k", sync=True)
    q.push_control(b"c")
    assert q.dropped == 1
    assert drain_now(q) == [b"c"]
