"""The supervisor's control socket: one JSON request and one JSON answer per connection.

A Unix socket in the run directory, so access is governed by file permissions and nothing
listens on the network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 << 10
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def control_path(run_dir: str) -> str:
    return os.path.join(run_dir, "ctl.sock")


async def serve_control(path: str, handler: Handler, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    _unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(16)
    task_status.started()
    listener = trio.SocketListener(sock)
    try:
        await trio.serve_listeners(partial(_handle, handler), [listener])
    finally:
        _unlink(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _handle(handler: Handler, stream: trio.SocketStream) -> None:
    async with stream:
        data = b""
        with trio.move_on_after(5):
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST_BYTES:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
        try:
            request = json.loads(data)
            answer = await handler(request) if isinstance(request, dict) else {
                "ok": False, "error": "request must be a JSON object"}
        except json.JSONDecodeError as exc:
            answer = {"ok": False, "error": f"bad request: {exc}"}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(answer).encode() + b"\n")


def request(path: str, body: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Blocking client for rtmpmate-ctl."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(json.dumps(body).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise ValueError("bad answer from the supervisor")
    return answer
