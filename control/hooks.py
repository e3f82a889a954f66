"""Event hooks: JSON POSTed to the operator's URLs (on_record, on_record_done, ...).

Hooks never hold up media: each POST runs in its own task, bounded in time, and a failure is
a log line. HTTP/1.1 over trio, http:// or https:// (the system's CA store).
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Final
from urllib.parse import urlsplit

import trio

logger = logging.getLogger(__name__)

HOOK_TIMEOUT_S: Final = 5.0
MAX_RESPONSE_HEAD: Final = 16 << 10


class HookError(Exception):
    """The hook could not be delivered, or answered with an error status."""


def request_bytes(url: str, body: dict[str, object]) -> tuple[str, int, bool, bytes]:
    """(host, port, tls, request) for POSTing `body` as JSON to an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HookError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = json.dumps(body, separators=(",", ":")).encode()
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rtmpmate\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n")
    return parts.hostname, port, tls, head.encode("latin-1") + data


def status_of(head: bytes) -> int:
    """The status code of a response head."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
        raise HookError(f"not an HTTP response: {head[:40]!r}")
    return int(line[1])


async def post(url: str, body: dict[str, object], *,
               timeout_s: float = HOOK_TIMEOUT_S) -> int:
    """POST and return the status code; HookError if it cannot be done in time."""
    host, port, tls, request = request_bytes(url, body)
    try:
        with trio.fail_after(timeout_s):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            if tls:
                stream = trio.SSLStream(stream, ssl.create_default_context(),
                                        server_hostname=host)
            async with stream:
                await stream.send_all(request)
                head = b""
                while b"\r\n" not in head and len(head) < MAX_RESPONSE_HEAD:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    head += chunk
                return status_of(head)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
        raise HookError(f"{url}: {str(exc) or type(exc).__name__}") from exc


class Hooks:
    """Fire-and-forget hook calls from a process's nursery."""

    def __init__(self, nursery: trio.Nursery | None = None) -> None:
        self.nursery = nursery

    def fire(self, urls: tuple[str, ...], event: str, body: dict[str, object]) -> None:
        if self.nursery is None:
            return
        for url in urls:
            self.nursery.start_soon(self._call, url, {"event": event, **body})

    @staticmethod
    async def _call(url: str, body: dict[str, object]) -> None:
        try:
            status = await post(url, body)
        except HookError as exc:
            logger.warning("hook %s: %s", body.get("event"), exc)
            return
        if status >= 400:
            logger.warning("hook %s: %s answered %d", body.get("event"), url, status)
