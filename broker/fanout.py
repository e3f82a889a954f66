"""Per-viewer bounded queues of shared bytes: the fan-out half of "mux once, send to many".

The producer (a stream's hub, running synchronously in the bus task) pushes the same `bytes`
object to every viewer; nothing is copied per viewer. A viewer whose queue is full loses
frames up to the next sync point (a video keyframe, or any audio frame of an audio-only
stream), so a slow viewer never slows the publisher or anyone else. The viewer's own task
takes everything queued at once and sends it in one write.
"""

from __future__ import annotations

from collections import deque

import trio


class ViewerQueue:
    __slots__ = ("_items", "_waiter", "bytes_out", "capacity", "closed", "dropped", "skipping")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[bytes] = deque()
        self._waiter: trio.Event | None = None
        self.skipping = False  # dropping until the next sync point
        self.closed = False
        self.dropped = 0
        self.bytes_out = 0

    def push(self, data: bytes, *, sync: bool) -> None:
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
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    def push_control(self, data: bytes) -> None:
        """Bytes that must reach the viewer whatever its lag (headers, status messages)."""
        if not self.closed:
            self._items.append(data)
            if self._waiter is not None:
                self._waiter.set()
                self._waiter = None

    def close(self) -> None:
        """No more data: the viewer ends after what is queued."""
        self.closed = True
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
        items = list(self._items)
        self._items.clear()
        self.bytes_out += sum(map(len, items))
        return items
