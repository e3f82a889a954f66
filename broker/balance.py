"""How many connections each worker of a port group holds, and where a new one should go.

The kernel's SO_REUSEPORT hash spreads connections over a group's workers only roughly: 400
viewers split 190/210 as often as not, and the busier worker sets the group's capacity. So a
worker that accepts a connection while it holds more than another worker hands the connection
over (the shell passes the socket itself, see broker/handoff.py) before reading a byte of it.

The counts live in a buffer every worker of the group maps (a file in the run directory), laid
out as little-endian int64 cells with exactly one writer each, so no cell needs a lock:

    open[i]      connections worker i holds now               (written by i)
    sent[i][j]   connections i handed to j, ever              (written by i)
    taken[j]     handed connections j took, ever              (written by j)

Worker j's load is open[j] plus the connections on their way to it: the sum over i of
sent[i][j], less taken[j]. A torn or stale read only makes one decision a little worse.
"""

from __future__ import annotations

import struct
from typing import Final

CELL: Final = struct.Struct("<q")
# Hand over when another worker holds at least this many fewer: the counts stay within two
# of each other (within one, every other connection would change worker).
MARGIN: Final = 2


def table_size(workers: int) -> int:
    """Bytes of the buffer for a group of this many workers."""
    return CELL.size * (workers + workers * workers + workers)


def held(buffer: bytes, workers: int) -> list[int]:
    """The open[] cells of a table: connections each worker holds now."""
    return [CELL.unpack_from(buffer, CELL.size * i)[0] for i in range(workers)]


class LoadTable:
    """One worker's view of its group's counts."""

    def __init__(self, buffer: memoryview, workers: int, index: int) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker {index} is not in a group of {workers}")
        if len(buffer) < table_size(workers):
            raise ValueError(f"a group of {workers} needs {table_size(workers)} bytes")
        self._buf, self.workers, self.index = buffer, workers, index
        self._open = [CELL.size * i for i in range(workers)]
        self._sent = [[CELL.size * (workers + i * workers + j) for j in range(workers)]
                      for i in range(workers)]
        self._taken = [CELL.size * (workers + workers * workers + j) for j in range(workers)]

    def _get(self, offset: int) -> int:
        value: int = CELL.unpack_from(self._buf, offset)[0]
        return value

    def _add(self, offset: int, delta: int) -> None:
        CELL.pack_into(self._buf, offset, self._get(offset) + delta)

    def join(self) -> None:
        """A (re)started worker holds nothing, and what was handed to its previous process
        went with that process."""
        CELL.pack_into(self._buf, self._open[self.index], 0)
        owed = sum(self._get(self._sent[i][self.index]) for i in range(self.workers))
        CELL.pack_into(self._buf, self._taken[self.index], owed)

    def load(self, worker: int) -> int:
        incoming = sum(self._get(self._sent[i][worker]) for i in range(self.workers))
        return self._get(self._open[worker]) + incoming - self._get(self._taken[worker])

    def loads(self) -> list[int]:
        return [self.load(j) for j in range(self.workers)]

    def target(self) -> int | None:
        """The worker a connection accepted here should go to, or None to keep it."""
        if self.workers == 1:
            return None
        mine = self.load(self.index)
        best, least = None, mine - MARGIN + 1
        for j in range(self.workers):
            if j != self.index and (load := self.load(j)) < least:
                best, least = j, load
        return best

    def opened(self) -> None:
        self._add(self._open[self.index], 1)

    def closed(self) -> None:
        self._add(self._open[self.index], -1)

    def sent(self, worker: int) -> None:
        self._add(self._sent[self.index][worker], 1)

    def took(self) -> None:
        self._add(self._taken[self.index], 1)
