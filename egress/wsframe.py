"""WebSocket framing (RFC 6455 §5) for the live fast path, sans-IO.

The server's own frames are built once per media packet and shared by every viewer (servers
do not mask); the client's frames (masked) are decoded only to answer pings and closes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import struct
from dataclasses import dataclass

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
# A viewer only ever sends control frames; anything bigger is not a player talking.
MAX_CLIENT_PAYLOAD = 64 << 10


class Opcode(enum.IntEnum):
    """RFC 6455 §5.2."""

    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class WsProtocolError(Exception):
    """The client broke RFC 6455; the connection is closed with 1002."""


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def frame_header(opcode: Opcode, length: int) -> bytes:
    """The header of a final, unmasked frame carrying `length` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return struct.pack(">BB", first, length)
    if length < 1 << 16:
        return struct.pack(">BBH", first, 126, length)
    return struct.pack(">BBQ", first, 127, length)


def frame(opcode: Opcode, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    # A control frame carries at most 125 bytes; cut the reason on a character boundary.
    text = reason.encode()[:120].decode("utf-8", "ignore").encode()
    return frame(Opcode.CLOSE, struct.pack(">H", code) + text)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    opcode: Opcode
    payload: bytes
    fin: bool


class ClientFrameDecoder:
    """Incremental decoder of masked client frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> ClientFrame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WsProtocolError("reserved bits set")
        try:
            opcode = Opcode(b0 & 0x0F)
        except ValueError:
            raise WsProtocolError(f"unknown opcode {b0 & 0x0F}") from None
        if not b1 & 0x80:
            raise WsProtocolError("client frames must be masked")
        length, pos = b1 & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = struct.unpack_from(">H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = struct.unpack_from(">Q", buf, 2)[0], 10
        if length > MAX_CLIENT_PAYLOAD:
            raise WsProtocolError(f"client frame of {length} bytes")
        if opcode >= Opcode.CLOSE and (length > 125 or not b0 & 0x80):
            raise WsProtocolError("bad control frame")
        if len(buf) < pos + 4 + length:
            return None
        mask = buf[pos:pos + 4]
        masked = buf[pos + 4:pos + 4 + length]
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(masked))
        del buf[:pos + 4 + length]
        return ClientFrame(opcode, payload, bool(b0 & 0x80))
