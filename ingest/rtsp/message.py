"""Sans-IO RTSP/1.0 messages (RFC 2326) on one TCP connection, as a server reads them.

Requests and interleaved binary frames (`$`, channel, 16-bit length, data: §10.12) share the
connection, so the reader looks at the first byte of what comes next. Everything is bounded:
a request head over `max_head_bytes` and a body over `max_body_bytes` are errors carrying
the status to answer with. Lines may end in CRLF or a bare LF (some cameras).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["NEED_DATA", "InterleavedFrame", "NeedData", "RtspProtocolError", "RtspReader",
           "RtspRequest", "interleaved", "response"]

VERSION: Final = "RTSP/1.0"
MAX_HEAD_BYTES: Final = 16 << 10
MAX_BODY_BYTES: Final = 64 << 10  # an SDP, or a GET_PARAMETER body
METHODS: Final = frozenset({"OPTIONS", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE",
                            "RECORD", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER"})
REASONS: Final = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 453: "Not Enough Bandwidth", 454: "Session Not Found",
    455: "Method Not Valid in This State", 459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "RTSP Version Not Supported",
}


class RtspProtocolError(Exception):
    """Input the connection cannot go on with; `status` is what to answer (if anything)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RtspRequest:
    method: str
    uri: str
    headers: dict[str, str] = field(repr=False)  # lower-case names; repeated ones joined
    body: bytes = b""

    @property
    def cseq(self) -> str | None:
        return self.headers.get("cseq")


@dataclass(frozen=True, slots=True)
class InterleavedFrame:
    channel: int
    data: bytes


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class RtspReader:
    """Feed bytes with receive_data(), pull events with next_event() until NEED_DATA.
    Errors are terminal: later calls raise the same error."""

    def __init__(self, *, max_head_bytes: int = MAX_HEAD_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._buf = bytearray()
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._error: RtspProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return len(self._buf)

    def next_event(self) -> RtspRequest | InterleavedFrame | NeedData:
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except RtspProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> RtspRequest | InterleavedFrame | NeedData:
        buf = self._buf
        skip = 0
        while skip < len(buf) and buf[skip] in (0x0D, 0x0A):
            skip += 1  # blank lines between messages are allowed
        del buf[:skip]
        if not buf:
            return NEED_DATA
        if buf[0] == 0x24:  # "$"
            if len(buf) < 4:
                return NEED_DATA
            size = int.from_bytes(buf[2:4], "big")
            if len(buf) < 4 + size:
                return NEED_DATA
            frame = InterleavedFrame(buf[1], bytes(buf[4:4 + size]))
            del buf[:4 + size]
            return frame
        end, sep = _head_end(buf)
        if end < 0:
            if len(buf) > self._max_head:
                raise RtspProtocolError("request head too large", 400)
            return NEED_DATA
        if end > self._max_head:
            raise RtspProtocolError("request head too large", 400)
        method, uri, headers = _parse_head(bytes(buf[:end]))
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise RtspProtocolError(f"bad Content-Length {length_text[:20]!r}")
        length = int(length_text)
        if length > self._max_body:
            raise RtspProtocolError(f"a body of {length} bytes is too large", 413)
        start = end + sep
        if len(buf) < start + length:
            return NEED_DATA
        body = bytes(buf[start:start + length])
        del buf[:start + length]
        return RtspRequest(method, uri, headers, body)


def _head_end(buf: bytearray) -> tuple[int, int]:
    """(end of the head, length of the blank line after it); -1 if not all there."""
    crlf, lf = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise RtspProtocolError("request head is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise RtspProtocolError(f"bad request line {lines[0][:80]!r}")
    method, uri, version = parts
    if not version.startswith("RTSP/"):
        raise RtspProtocolError(f"not an RTSP request: {lines[0][:80]!r}")
    if version != VERSION:
        raise RtspProtocolError(f"{version} is not supported", 505)
    if not method.isascii() or not method.replace("_", "").isalpha():
        raise RtspProtocolError(f"bad method {method[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RtspProtocolError(f"bad header line {line[:80]!r}")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, uri, headers


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"", *,
             cseq: str | None = None) -> bytes:
    """A response; CSeq (echoed from the request) goes first, Content-Length last."""
    lines = [f"{VERSION} {status} {REASONS.get(status, 'Unknown')}"]
    if cseq is not None:
        lines.append(f"CSeq: {cseq}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def interleaved(channel: int, data: bytes) -> bytes:
    """An interleaved frame (§10.12): "$", channel, 16-bit length, data."""
    if not 0 <= channel <= 255 or len(data) > 0xFFFF:
        raise ValueError("channel or size out of range")
    return b"$" + bytes((channel,)) + len(data).to_bytes(2, "big") + data
