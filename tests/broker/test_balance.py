"""The group's connection table: one writer per cell, loads with connections in flight, and a
rule that keeps the workers' counts within MARGIN of each other."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.balance import MARGIN, LoadTable, table_size


def group(workers: int) -> list[LoadTable]:
    buffer = memoryview(bytearray(table_size(workers)))
    tables = [LoadTable(buffer, workers, i) for i in range(workers)]
    for table in tables:
        table.join()
    return tables


def test_a_busier_worker_hands_over_to_the_least_busy() -> None:
    a, b, c = group(3)
    for _ in range(4):
        a.opened()
    b.opened()
    assert a.loads() == [4, 1, 0]
    assert a.target() == 2
    assert b.target() is None  # 1 against 0: within the margin
    assert c.target() is None


def test_connections_in_flight_count_for_their_receiver() -> None:
    a, b = group(2)
    for _ in range(3):
        a.opened()
    a.sent(1)
    assert b.loads() == [3, 1]  # sent, not taken yet
    b.took()
    b.opened()
    assert a.loads() == [3, 1]  # taken and open: counted once
    b.closed()
    assert a.loads() == [3, 0]


def test_a_restarted_worker_starts_from_nothing() -> None:
    buffer = memoryview(bytearray(table_size(2)))
    a, b = LoadTable(buffer, 2, 0), LoadTable(buffer, 2, 1)
    for _ in range(5):
        b.opened()
    a.sent(1)  # lost with b's old process
    LoadTable(buffer, 2, 1).join()  # the same cells, a new process
    assert a.loads() == [0, 0]


def test_one_worker_keeps_everything() -> None:
    (only,) = group(1)
    for _ in range(3):
        only.opened()
    assert only.target() is None


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="not in a group"):
        LoadTable(memoryview(bytearray(table_size(2))), 2, 2)
    with pytest.raises(ValueError, match="needs"):
        LoadTable(memoryview(bytearray(8)), 2, 0)


def accept(tables: list[LoadTable], at: int) -> int:
    """The kernel gave worker `at` a connection: where it ends up (handed over at once)."""
    target = tables[at].target()
    if target is None:
        tables[at].opened()
        return at
    tables[at].sent(target)
    tables[target].took()
    tables[target].opened()
    return target


@settings(max_examples=200)
@given(st.integers(2, 4), st.lists(st.integers(0, 3), max_size=300))
def test_any_accept_order_fills_the_group_evenly(workers: int, hashes: list[int]) -> None:
    tables = group(workers)
    for h in hashes:
        accept(tables, h % workers)
        loads = tables[0].loads()
        assert max(loads) - min(loads) <= MARGIN
    assert sum(tables[0].loads()) == len(hashes)


@settings(max_examples=200)
@given(st.integers(2, 4), st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=300))
def test_accepts_never_widen_a_spread_that_closes_made(
        workers: int, events: list[tuple[bool, int]]) -> None:
    tables = group(workers)
    held = [0] * workers
    for is_accept, w in events:
        w %= workers
        before = max(held) - min(held)
        if is_accept:
            held[accept(tables, w)] += 1
            assert max(held) - min(held) <= max(before, MARGIN)
        elif held[w]:
            tables[w].closed()
            held[w] -= 1
        assert tables[0].loads() == held
