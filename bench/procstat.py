"""CPU time and resident memory of a server's process tree, read from /proc.

A server is its root process (rtmpmate's supervisor, nginx's master) and every descendant.
CPU time counts each live process's utime+stime plus its cutime+cstime: the time of children
it already reaped (a restarted worker) is not lost. Memory is the sum of VmRSS.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import trio

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_INTERVAL_S = 0.5


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from every thread's children list (Linux ≥ 3.5)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def tree(root: int) -> list[int]:
    """`root` and all its descendants (bounded: a process tree is never deeper than 8 here)."""
    pids, frontier = [root], [root]
    for _ in range(8):
        frontier = [c for p in frontier for c in children(p)]
        if not frontier:
            break
        pids += frontier
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # Fields after the command name (which may hold spaces) start at field 3 ("state").
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    at: float  # trio.current_time()
    per_process: dict[int, float]  # pid -> CPU seconds

    @property
    def total(self) -> float:
        return sum(self.per_process.values())


def cpu_snapshot(root: int) -> CpuSnapshot:
    return CpuSnapshot(trio.current_time(), {pid: cpu_seconds(pid) for pid in tree(root)})


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[int, float]:
    """CPU seconds each process used between the snapshots (a process born in between
    counts from zero; one that died in between is in its parent's cutime, so it is skipped)."""
    return {pid: cpu - before.per_process.get(pid, 0.0)
            for pid, cpu in after.per_process.items()}


def tree_rss(root: int) -> int:
    return sum(rss_bytes(pid) for pid in tree(root))


def self_cpu_seconds() -> float:
    """The load process's own CPU time (all threads), to show when the client saturates."""
    t = os.times()
    return t.user + t.system


class RssSampler:
    """Samples a tree's total RSS every RSS_INTERVAL_S and keeps the peak."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self.samples = 0

    def sample(self) -> int:
        rss = tree_rss(self.root)
        self.peak = max(self.peak, rss)
        self.samples += 1
        return rss

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(RSS_INTERVAL_S)
