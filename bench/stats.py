"""Small statistics helpers and the load process's self-checks (its CPU, its event-loop lag)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

LAG_TICK_S = 0.01


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class LagMonitor:
    """How late trio wakes a task that asked to sleep LAG_TICK_S: when the load process is
    saturated this grows, and every latency it measures grows with it."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    def reset(self) -> None:
        self.lags = []

    async def run(self) -> None:
        while True:
            due = trio.current_time() + LAG_TICK_S
            await trio.sleep_until(due)
            self.lags.append(trio.current_time() - due)

    def summary(self) -> dict[str, float | None]:
        return {"p95_ms": ms(percentile(self.lags, 95)), "max_ms": ms(max(self.lags, default=0))}
