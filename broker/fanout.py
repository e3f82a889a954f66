"""Per-viewer bounded queues of shared bytes: the fan-out half of "mux once, send to many".

The producer (a stream's hub, running synchronously in the bus task) pushes the same `bytes`
object to every viewer; nothing is copied per viewer. A viewer whose queue is full loses
frames up to the next sync point (a video keyframe, or any audio frame of an audio-only
stream), so a slow viewer never slows the publisher or anyone else.

Two ways out of a queue:
- `ViewerQueue`: the viewer's own task takes everything queued at once (`get_batch`), for
  paths that must go through another stack (an ASGI response).
- `SocketQueue`: the queue owns a non-blocking socket. Pushes only mark it dirty; `flush`
  (called once the bus task has handled everything that arrived) sends all that is queued
  with one `sendmsg` (writev, no joining copy). The viewer's task sleeps until the kernel's
  buffer is full; only then does it wait for the socket to become writable. So a viewer that
  keeps up costs one system call per bus wake-up and no task switch.

A hub does not push each packet to each viewer: it batches the packets of one bus wake-up and,
when the Flusher says so, hands every viewer the same list of shared bytes at once
(`deliver`). A viewer with nothing of its own queued sends that list straight from the
caller's list; only a viewer that lags behind copies references into its own queue.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

# sendmsg takes at most IOV_MAX (1024 on Linux) buffers per call.
MAX_IOV = 512
# The longest a frame that may wait (see Flusher) waits for company.
DEFER_S = 0.04

# What a batch item is, for the drop policy (`deliver`).
PLAIN, SYNC, CONTROL = 0, 1, 2


class BoundedQueue:
    """The drop-to-the-next-sync-point policy both kinds of queue share."""

    __slots__ = ("_items", "bytes_out", "capacity", "closed", "dropped", "skipping")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[bytes | memoryview] = deque()
        self.skipping = False  # dropping until the next sync point
        self.closed = False
        self.dropped = 0
        self.bytes_out = 0

    def push(self, data: bytes, *, sync: bool, urgent: bool = True) -> None:
        """Queue a frame; `urgent=False` lets it wait (a little) to share a write with the next."""
        if self.closed:
            return
        if self.skipping:
            if not sync or len(self._items) >= self.capacity:
                self.dropped += 1
                return
            self.skipping = False
        elif len(self._items) >= self.capacity:
            self.skipping = True
            self.dropped += 1
            return
        self._items.append(data)
        self._wake(urgent)

    def push_control(self, data: bytes) -> None:
        """Bytes that must reach the viewer whatever its lag (headers, status messages)."""
        if not self.closed and data:
            self._items.append(data)
            self._wake(True)

    def preload(self, data: bytes) -> None:
        """Queue bytes without sending them yet: they go out ahead of the first push."""
        self._items.append(data)

    def close(self) -> None:
        """No more data: the viewer ends after what is queued."""
        self.closed = True
        self._wake(True)

    def deliver(self, items: Sequence[bytes], flags: Sequence[int], size: int) -> None:
        """A hub's batch: shared bytes, each PLAIN, SYNC or CONTROL; `size` is their total."""
        for data, flag in zip(items, flags, strict=True):
            if flag == CONTROL:
                self.push_control(data)
            else:
                self.push(data, sync=flag == SYNC)

    def flush(self) -> None:
        """Send what can go now (queues that a task drains send nothing here)."""

    def _wake(self, urgent: bool) -> None:
        raise NotImplementedError


class ViewerQueue(BoundedQueue):
    __slots__ = ("_waiter",)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._waiter: trio.Event | None = None

    def _wake(self, urgent: bool) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def get_batch(self) -> list[bytes]:
        """Everything queued, waiting for at least one item; [] once closed and drained."""
        while not self._items:
            if self.closed:
                return []
            waiter = self._waiter = trio.Event()
            await waiter.wait()
        items = [bytes(i) for i in self._items]
        self._items.clear()
        self.bytes_out += sum(map(len, items))
        return items


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """What has bytes to send since the last flush (viewers' queues, hubs with a batch); the
    bus task flushes them after each drain.

    One that only got frames that may wait (audio, while the stream has video) is flushed
    with its next urgent frame, or once its oldest waiting frame is DEFER_S old. A 2 Mbit/s
    stream brings about 30 video and 43 audio frames a second: sending audio along with video
    halves the system calls per viewer, at the cost of at most one video frame interval of
    audio delay, which players absorb in their buffers.
    """

    def __init__(self) -> None:
        self.dirty: set[Flushable] = set()
        self.deferred: dict[Flushable, float] = {}  # -> when its first frame waited

    def mark(self, target: Flushable, urgent: bool) -> None:
        if urgent:
            self.dirty.add(target)
        elif target not in self.deferred:
            self.deferred[target] = trio.current_time()

    def flush(self) -> None:
        dirty = self.dirty
        if dirty:
            self.dirty = set()
            for target in dirty:
                target.flush()
        if self.deferred:
            now = trio.current_time()
            for target, since in list(self.deferred.items()):
                if target in dirty:
                    del self.deferred[target]
                elif now - since >= DEFER_S:
                    del self.deferred[target]
                    target.flush()


class SocketQueue(BoundedQueue):
    """A viewer's queue that writes straight to its (non-blocking) socket.

    With `nagle`, the socket (accepted with TCP_NODELAY) leaves Nagle's algorithm on from the
    hub's first batch of media: the start (a response head, headers, the GOP) has gone out at
    once, and from then on a write that finds its previous small segment not yet
    acknowledged waits for the acknowledgement with what follows. A player that reads as
    data comes acknowledges at once, so it sees no delay; one that reads in bursts gets
    fewer, fuller segments, and the kernel's cost per viewer falls by about a quarter
    (docs/benchmarks.md). nginx-rtmp and SRS leave Nagle on the same way.
    """

    __slots__ = ("_blocked", "_event", "_flusher", "_nagle", "error", "sock")

    def __init__(self, sock: socket.socket, capacity: int, flusher: Flusher, *,
                 nagle: bool = False) -> None:
        super().__init__(capacity)
        self.sock = sock
        self._flusher = flusher
        self._nagle = nagle  # not yet switched to Nagle's algorithm
        self._blocked = False  # the kernel buffer is full: the writer task drains
        self._event = trio.Event()
        self.error: OSError | None = None

    def _wake(self, urgent: bool) -> None:
        if self._blocked or self.closed:
            self._event.set()
        else:
            self._flusher.mark(self, urgent)

    def deliver(self, items: Sequence[bytes], flags: Sequence[int], size: int) -> None:
        if self.closed or self.error is not None:
            return
        if self._nagle:
            self._nagle = False
            self.flush()  # the start, with TCP_NODELAY still on
            with contextlib.suppress(OSError):  # gone: the next write says so
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if self._items or self._blocked or self.skipping or len(items) > MAX_IOV:
            super().deliver(items, flags, size)  # behind already: queue under the drop policy
            self.flush()
            return
        # The common case: nothing of its own queued, so the shared list goes as it is.
        sent = self._write(items)
        if sent is None or sent == size:
            return
        # The kernel buffer filled: the writer task sends the rest. The item cut short goes
        # whole (it is half sent); those after it are queued under the drop policy.
        self._blocked = True
        self._event.set()
        for i, data in enumerate(items):
            if sent < len(data):
                self._items.append(memoryview(data)[sent:] if sent else data)
                super().deliver(items[i + 1:], flags[i + 1:], 0)
                return
            sent -= len(data)

    def _write(self, batch: Sequence[bytes | memoryview]) -> int | None:
        """One system call for the batch: the bytes the kernel took, None if the peer is gone."""
        try:
            sent = self.sock.send(batch[0]) if len(batch) == 1 else self.sock.sendmsg(batch)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.error = exc
            self._items.clear()
            self._event.set()
            return None
        self.bytes_out += sent
        return sent

    def flush(self) -> None:
        """Send what is queued without blocking; leave the rest to the writer task."""
        items = self._items
        if self._blocked or self.error is not None or not items:
            return
        while items:
            # One buffer (the common case) goes with send; several with one sendmsg (writev).
            batch = [items[0]] if len(items) == 1 else list(islice(items, MAX_IOV))
            sent = self._write(batch)
            if sent is None:
                return
            if len(batch) == len(items) and sent == sum(map(len, batch)):
                items.clear()
                break
            if not self._consume(sent, batch):
                self._blocked = True  # the kernel buffer is full: the writer task waits
                self._event.set()
                return
        if self.closed:
            self._event.set()

    def _consume(self, sent: int, batch: list[bytes | memoryview]) -> bool:
        """Drop what was sent from the queue; True if the whole batch went."""
        complete = sent == sum(map(len, batch))
        items = self._items
        while sent:
            first = items[0]
            if sent >= len(first):
                sent -= len(first)
                items.popleft()
            else:
                items[0] = memoryview(first)[sent:]
                sent = 0
        return complete

    async def run_writer(self) -> None:
        """Wait while the socket is full; returns when closed and drained, or on an error."""
        while True:
            await self._event.wait()
            self._event = trio.Event()
            self.flush()  # after a close, or control bytes pushed while nothing was blocked
            while self._blocked and self.error is None:
                await trio.lowlevel.wait_writable(self.sock)
                self._blocked = False
                self.flush()
            if self.error is not None:
                raise trio.BrokenResourceError(str(self.error)) from self.error
            if self.closed and not self._items:
                return
