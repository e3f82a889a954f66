"""Event hooks: POSTs to the operator's URLs (on_connect, on_publish, ..., on_record_done).

Hooks never hold up media: each call runs in a task of its own, bounded in time; the events
that can be refused wait for the answer (the session waits, nothing else does), the others
are fire-and-forget. Bodies are JSON by default, or form-encoded. HTTP/1.1 over trio, http://
or https:// (the system's CA store).
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode, urlsplit

import trio

from control.access import Decision, decide

logger = logging.getLogger(__name__)

HOOK_TIMEOUT_S: Final = 5.0
MAX_RESPONSE_BYTES: Final = 64 << 10
FIRE_ATTEMPTS: Final = 3  # a *_done or record hook that fails is tried again, this often
FIRE_RETRY_S: Final = 1.0


class HookError(Exception):
    """The hook could not be delivered, or answered with an error status."""


def request_bytes(url: str, body: dict[str, object], *,
                  form: bool = False) -> tuple[str, int, bool, bytes]:
    """(host, port, tls, request) for POSTing `body` to an http(s) URL, as JSON or (nginx-rtmp's
    shape) form-encoded, where values that are not strings or numbers go as JSON text."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HookError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if form:
        data = urlencode({k: v if isinstance(v, str | int | float) else json.dumps(v)
                          for k, v in body.items()}).encode()
        kind = "application/x-www-form-urlencoded"
    else:
        data = json.dumps(body, separators=(",", ":")).encode()
        kind = "application/json"
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rtmpmate\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n")
    return parts.hostname, port, tls, head.encode("latin-1") + data


def status_of(head: bytes) -> int:
    """The status code of a response head."""
    line = head.split(b"\r\n", 1)[0].split(b" ")
    if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
        raise HookError(f"not an HTTP response: {head[:40]!r}")
    return int(line[1])


@dataclass(frozen=True, slots=True)
class HookResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def parse_response(data: bytes) -> HookResponse:
    """A whole response (the server closed the connection after it), body bounded."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise HookError("truncated HTTP response")
    status = status_of(head)
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    if length.isdigit():
        body = body[:int(length)]
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _unchunk(body)
    return HookResponse(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


async def post(url: str, body: dict[str, object], *, timeout_s: float = HOOK_TIMEOUT_S,
               form: bool = False) -> HookResponse:
    """POST and read the answer; HookError if it cannot be done in time."""
    host, port, tls, request = request_bytes(url, body, form=form)
    try:
        with trio.fail_after(timeout_s):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            if tls:
                stream = trio.SSLStream(stream, ssl.create_default_context(),
                                        server_hostname=host)
            async with stream:
                await stream.send_all(request)
                data = b""
                while len(data) < MAX_RESPONSE_BYTES:
                    chunk = await stream.receive_some(16384)
                    if not chunk:
                        break
                    data += chunk
                return parse_response(data)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
        raise HookError(f"{url}: {str(exc) or type(exc).__name__}") from exc


class Hooks:
    """Hook calls from a process's nursery: `ask` waits for the verdict of the events that
    can be refused; `fire` sends the others in the background, with a bounded retry."""

    def __init__(self, nursery: trio.Nursery | None = None) -> None:
        self.nursery = nursery

    async def ask(self, urls: tuple[str, ...], event: str, body: dict[str, object], *,
                  timeout_s: float = HOOK_TIMEOUT_S, failure: str = "refuse",
                  form: bool = False) -> Decision:
        """Each URL in order: the first that does not allow decides; options add up. A hook
        that fails or times out refuses, unless `failure` is "allow"."""
        options: dict[str, object] = {}
        for url in urls:
            try:
                answer = await post(url, {"event": event, **body}, timeout_s=timeout_s,
                                    form=form)
            except HookError as exc:
                logger.warning("hook %s: %s", event, exc)
                if failure == "allow":
                    continue
                return Decision("refuse", f"the {event} hook failed")
            decision = decide(answer.status, answer.headers.get("location", ""), answer.body,
                              answer.headers.get("content-type", ""))
            if not decision.allowed:
                return decision
            options.update(decision.options)
        return Decision("allow", options=options)

    def fire(self, urls: tuple[str, ...], event: str, body: dict[str, object], *,
             form: bool = False) -> None:
        if self.nursery is None:
            return
        for url in urls:
            self.nursery.start_soon(self._call, url, {"event": event, **body}, form)

    @staticmethod
    async def _call(url: str, body: dict[str, object], form: bool) -> None:
        for attempt in range(FIRE_ATTEMPTS):
            try:
                answer = await post(url, body, form=form)
            except HookError as exc:
                logger.warning("hook %s: %s", body.get("event"), exc)
            else:
                if answer.status < 500:
                    if answer.status >= 400:
                        logger.warning("hook %s: %s answered %d", body.get("event"), url,
                                       answer.status)
                    return
                logger.warning("hook %s: %s answered %d", body.get("event"), url,
                               answer.status)
            if attempt + 1 < FIRE_ATTEMPTS:
                await trio.sleep(FIRE_RETRY_S * (attempt + 1))
