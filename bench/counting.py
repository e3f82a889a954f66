"""What the load client keeps per player, and the one task that reads every counting player.

A trio task per counting socket would cost a wake-up, a task switch and an epoll update per
read: at 800 players that is most of a core, and the benchmark would measure its own client.
Instead, once a counting player's handshake is done, its socket joins the Drainer, which every
`interval_s` reads each socket once into a single shared buffer (non-blocking `recv_into`): one
system call per player per tick, no await. The kernel buffers the ~12 KB that 50 ms of a
2 Mbit/s stream makes, so the server sends exactly as it would to an eager reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

RECV_BYTES = 65536
SLICE_S = 0.005


@dataclass
class PlayerStats:
    index: int
    sampled: bool
    connect_start: float = 0.0
    playing_at: float | None = None  # the play request went out / the response head came
    first_keyframe_at: float | None = None
    bytes: int = 0  # received after the handshake or response head
    frames: list[tuple[float, float]] = field(default_factory=list)  # (sent, received)
    unmatched: int = 0  # video frames whose timestamp the publisher never sent
    error: str | None = None
    ended: bool = False  # the server closed the connection

    @property
    def startup_s(self) -> float | None:
        if self.first_keyframe_at is None:
            return None
        return self.first_keyframe_at - self.connect_start


class StartGate:
    """Set once each of `n` players is playing or gone, so a run knows when to measure."""

    def __init__(self, n: int) -> None:
        self.waiting = n
        self.arrived: set[int] = set()
        self.event = trio.Event()
        if n <= 0:
            self.event.set()

    def arrive(self, stats: PlayerStats) -> None:
        if stats.index not in self.arrived:
            self.arrived.add(stats.index)
            if len(self.arrived) >= self.waiting:
                self.event.set()


@dataclass(slots=True)
class Sink:
    sock: socket.socket  # non-blocking; its player task keeps it open
    stats: PlayerStats
    on_bytes: Callable[[int], None] | None  # RTMP: acknowledge with the running byte count


class Drainer:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.buf = bytearray(RECV_BYTES)
        self.sinks: list[Sink] = []

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def drain_now(self) -> None:
        """Read what every socket has buffered; the run calls it at the window's edges too,
        so byte counts are exact there rather than a tick old."""
        self._drain(self.sinks)

    def _drain(self, sinks: list[Sink]) -> None:
        buf = self.buf
        size = len(buf)
        gone: list[Sink] = []
        for sink in sinks:
            stats = sink.stats
            try:
                while True:
                    n = sink.sock.recv_into(buf)
                    if not n:
                        stats.ended = True
                        gone.append(sink)
                        break
                    stats.bytes += n
                    if sink.on_bytes is not None:
                        sink.on_bytes(stats.bytes)
                    if n < size:
                        break  # drained for now; what comes next waits for the next tick
            except BlockingIOError:
                pass
            except OSError as exc:
                stats.error = f"{type(exc).__name__}: {exc}"
                gone.append(sink)
        for sink in gone:
            self.sinks.remove(sink)

    async def run(self) -> None:
        # One sweep of 800 sockets holds the event loop ~8 ms, and every sampled player's
        # latency would include it: sweep a slice of the sockets every SLICE_S instead.
        slices = max(1, round(self.interval_s / SLICE_S))
        while True:
            start = trio.current_time()
            for k in range(slices):
                self._drain(self.sinks[k::slices])
                await trio.sleep_until(start + (k + 1) * self.interval_s / slices)
