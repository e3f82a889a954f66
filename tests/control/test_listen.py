"""The supervisor's listening sockets: one per worker on one port, connections spread over all."""

from __future__ import annotations

import contextlib
import errno
import socket
import time

import pytest

from control.config import Listen
from control.supervisor import bind_group, bind_tcp

CONNECTIONS = 200


def accept_all(sock: socket.socket) -> list[socket.socket]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.accept()[0])
    return out


def spread_over(group: list[socket.socket], port: int) -> list[int]:
    """Connect CONNECTIONS clients to the port; how many each socket of the group took."""
    clients: list[socket.socket] = []
    counts = [0] * len(group)
    try:
        clients += [socket.create_connection(("127.0.0.1", port), timeout=5)
                    for _ in range(CONNECTIONS)]
        for _ in range(100):  # bounded: the handshakes are all in the backlogs by now
            for i, sock in enumerate(group):
                for conn in accept_all(sock):
                    conn.close()
                    counts[i] += 1
            if sum(counts) == CONNECTIONS:
                break
            time.sleep(0.01)
    finally:
        for client in clients:
            client.close()
    assert sum(counts) == CONNECTIONS
    # A hash over the client ports: binomial, so a share under a quarter is all but
    # impossible unless the sockets share the load.
    assert min(counts) >= CONNECTIONS // 4, counts
    return counts


def test_a_group_shares_one_port_and_the_kernel_spreads_connections() -> None:
    group = bind_group(Listen("127.0.0.1", 0), 2)
    try:
        port = group[0].getsockname()[1]
        assert [s.getsockname()[1] for s in group] == [port, port]
        spread_over(group, port)
    finally:
        for sock in group:
            sock.close()


def test_a_group_of_one_is_a_plain_listener() -> None:
    (sock,) = bind_group(Listen("127.0.0.1", 0), 1)
    with sock:
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_port_someone_listens_on_is_refused_not_shared() -> None:
    (first,) = bind_group(Listen("127.0.0.1", 0), 1)
    with first:
        port = first.getsockname()[1]
        # SO_REUSEPORT alone would let a second server (same user) take half the connections.
        with pytest.raises(OSError, match="in use") as info:
            bind_group(Listen("127.0.0.1", port), 2)
        assert info.value.errno == errno.EADDRINUSE


def test_a_closed_socket_leaves_the_group_to_the_others() -> None:
    """What the supervisor does while a worker restarts: close its socket, rebind later."""
    group = bind_group(Listen("127.0.0.1", 0), 2)
    port = group[0].getsockname()[1]
    group[1].close()
    clients: list[socket.socket] = []
    try:
        clients += [socket.create_connection(("127.0.0.1", port), timeout=5)
                    for _ in range(20)]
        accepted = accept_all(group[0])
        assert len(accepted) == 20  # every connection went to the worker that is there
        for sock in accepted:
            sock.close()
        group[1] = bind_tcp(Listen("127.0.0.1", port), reuse_port=True)  # the new process
        spread_over(group, port)
    finally:
        for sock in [*clients, *group]:
            sock.close()
