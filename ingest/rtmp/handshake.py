"""Sans-IO RTMP handshake: RTMP 1.0 §5.2 plus the Flash Player 9 "digest" variant.

The digest ("complex") handshake is not in the Adobe spec. Flash Player 9+ and FMLE put an
HMAC-SHA256 digest inside C1 and expect the server to answer with a digest in S1 and a signed
S2. We do it without the Diffie-Hellman part (as nginx-rtmp and SRS do), which is enough for
every unencrypted client. RTMPE (C0 = 6) is refused.

The one rule that matters for interop: S1's version bytes are either zero (simple handshake,
S2 echoes C1) or accompanied by a correct digest. ffmpeg-as-player and librtmp in FP9 mode
validate the S1 digest and the S2 signature whenever those bytes are non-zero.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from enum import IntEnum
from typing import TYPE_CHECKING

from ingest.rtmp.errors import RtmpProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ClientHandshake", "DigestSchema", "RtmpVersion", "ServerHandshake"]

PACKET_SIZE = 1536
"""Size of C1/S1/C2/S2 (RTMP 1.0 §5.2.3 - §5.2.4)."""

_DIGEST_SIZE = 32
_SIGNED_SIZE = PACKET_SIZE - _DIGEST_SIZE  # the C2/S2 signature covers the first 1504 bytes
_BLOCK_SIZE = 764  # each schema splits the 1528 random bytes into two 764-byte blocks
_OFFSET_RANGE = _BLOCK_SIZE - _DIGEST_SIZE - 4  # 728: the digest must fit inside its block

# The constant both Adobe keys end with; the handshake is keyed by public prefixes of these.
_MAGIC = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
_FP_KEY = b"Genuine Adobe Flash Player 001" + _MAGIC  # 62 bytes
_FMS_KEY = b"Genuine Adobe Flash Media Server 001" + _MAGIC  # 68 bytes
_FP_KEY_PUBLIC = _FP_KEY[:30]  # keys the C1 digest
_FMS_KEY_PUBLIC = _FMS_KEY[:36]  # keys the S1 digest

# Version bytes (C1/S1[4:8]); any non-zero value announces a digest.
_SERVER_VERSION = bytes((0x0D, 0x0E, 0x0A, 0x0D))  # what nginx-rtmp/FMS-alikes send
_CLIENT_VERSION = bytes((9, 0, 124, 2))  # Flash Player 9.0.124.2, as ffmpeg announces
_ZERO_VERSION = bytes(4)


class RtmpVersion(IntEnum):
    """The C0/S0 version byte (RTMP 1.0 §5.2.2)."""

    PLAIN = 3
    ENCRYPTED = 6  # RTMPE: Adobe's later extension, not in RTMP 1.0


class DigestSchema(IntEnum):
    """Layout of a digest-carrying C1/S1 (FP9 handshake; RTMP 1.0 §5.2.3 leaves these bytes
    as "random"). The value is where the 764-byte digest block starts."""

    KEY_FIRST = 772  # "schema 0": key block at 8, digest block at 772
    DIGEST_FIRST = 8  # "schema 1": digest block at 8, key block at 772


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _digest_offset(packet: bytes | bytearray, schema: DigestSchema) -> int:
    """Where the 32-byte digest sits: the block's first 4 bytes choose an offset inside it."""
    block = int(schema)
    return sum(packet[block : block + 4]) % _OFFSET_RANGE + block + 4


def _packet_digest(packet: bytes | bytearray, offset: int, key: bytes) -> bytes:
    """HMAC of the packet with the digest itself cut out."""
    return _hmac(key, bytes(packet[:offset]) + bytes(packet[offset + _DIGEST_SIZE :]))


def _find_digest(packet: bytes, key: bytes) -> tuple[DigestSchema, bytes] | None:
    """Return the schema and digest of a validly signed C1/S1, or None."""
    for schema in (DigestSchema.DIGEST_FIRST, DigestSchema.KEY_FIRST):
        offset = _digest_offset(packet, schema)
        digest = packet[offset : offset + _DIGEST_SIZE]
        if hmac.compare_digest(digest, _packet_digest(packet, offset, key)):
            return schema, digest
    return None


def _sign(packet: bytearray, schema: DigestSchema, key: bytes) -> bytes:
    """Write the digest into `packet` in place and return it."""
    offset = _digest_offset(packet, schema)
    digest = _packet_digest(packet, offset, key)
    packet[offset : offset + _DIGEST_SIZE] = digest
    return digest


def _response(peer_digest: bytes, key: bytes, random: bytes) -> bytes:
    """A digest-mode C2/S2: random bytes signed with a key derived from the peer's digest."""
    return random + _hmac(_hmac(key, peer_digest), random)


def _check_version(c0: int) -> None:
    if c0 == RtmpVersion.PLAIN:
        return
    if c0 == RtmpVersion.ENCRYPTED:
        raise RtmpProtocolError("encrypted RTMP (RTMPE) is not supported")
    raise RtmpProtocolError(f"unsupported RTMP version {c0} (only 3 is supported)")


class _Random:
    """Wraps the injected random source and checks it returns what was asked for."""

    def __init__(self, source: Callable[[int], bytes]) -> None:
        self._source = source

    def __call__(self, n: int) -> bytes:
        data = bytes(self._source(n))
        if len(data) != n:
            raise ValueError(f"random_bytes({n}) returned {len(data)} bytes")
        return data


def _time_field(uptime_ms: int) -> bytes:
    return (uptime_ms & 0xFFFFFFFF).to_bytes(4, "big")


class _Handshake:
    """State and accessors both sides share."""

    def __init__(self, random_bytes: Callable[[int], bytes], uptime_ms: int) -> None:
        self._random = _Random(random_bytes)
        self._uptime_ms = uptime_ms
        self._buf = bytearray()
        self._out = bytearray()
        self._done = False
        self._digest = False
        self._leftover = b""

    @property
    def done(self) -> bool:
        return self._done

    @property
    def digest(self) -> bool:
        """True when the digest (Flash Player 9) handshake was used and verified."""
        return self._digest

    @property
    def leftover(self) -> bytes:
        """Bytes that came after the handshake; they belong to the chunk decoder."""
        return self._leftover

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out


class ServerHandshake(_Handshake):
    """Server side: wait for C0+C1, answer S0+S1+S2 in one write, then wait for C2.

    C2 is not checked (clients in the wild get it wrong and production servers don't care).
    """

    def __init__(
        self, *, random_bytes: Callable[[int], bytes] = os.urandom, uptime_ms: int = 0
    ) -> None:
        super().__init__(random_bytes, uptime_ms)
        self._answered = False

    def receive_data(self, data: bytes) -> None:
        if self._done:
            self._leftover += data
            return
        self._buf += data
        if not self._answered:
            if self._buf:
                _check_version(self._buf[0])  # fail on the first byte, not after 1537
            if len(self._buf) < 1 + PACKET_SIZE:
                return
            c1 = bytes(self._buf[1 : 1 + PACKET_SIZE])
            del self._buf[: 1 + PACKET_SIZE]
            self._out += bytes((RtmpVersion.PLAIN,)) + self._answer(c1)
            self._answered = True
        if len(self._buf) >= PACKET_SIZE:
            self._leftover = bytes(self._buf[PACKET_SIZE:])
            self._buf.clear()
            self._done = True

    def _answer(self, c1: bytes) -> bytes:
        found = _find_digest(c1, _FP_KEY_PUBLIC) if c1[4:8] != _ZERO_VERSION else None
        time = _time_field(self._uptime_ms)
        if found is None:
            # Simple handshake: zero version bytes so no client goes looking for a digest.
            return time + _ZERO_VERSION + self._random(PACKET_SIZE - 8) + c1
        schema, client_digest = found
        s1 = bytearray(time + _SERVER_VERSION + self._random(PACKET_SIZE - 8))
        _sign(s1, schema, _FMS_KEY_PUBLIC)
        self._digest = True
        return bytes(s1) + _response(client_digest, _FMS_KEY, self._random(_SIGNED_SIZE))


class ClientHandshake(_Handshake):
    """Client side: C0+C1 from `initial_data()`, then S0+S1+S2 in, C2 out.

    With `digest=True`, C1 carries a Flash-style digest; if the server answers with one, the
    S1 digest and S2 signature are verified and C2 is the signed digest response. A server
    answering with zero S1 version bytes gets the simple echo (as librtmp does).
    """

    def __init__(
        self,
        *,
        digest: bool = False,
        schema: DigestSchema = DigestSchema.DIGEST_FIRST,
        random_bytes: Callable[[int], bytes] = os.urandom,
        uptime_ms: int = 0,
    ) -> None:
        super().__init__(random_bytes, uptime_ms)
        self._want_digest = digest
        self._schema = schema
        self._c0c1: bytes | None = None
        self._c1_digest = b""

    def initial_data(self) -> bytes:
        """C0+C1; the same bytes on every call."""
        if self._c0c1 is None:
            version = _CLIENT_VERSION if self._want_digest else _ZERO_VERSION
            c1 = bytearray(_time_field(self._uptime_ms) + version + self._random(PACKET_SIZE - 8))
            if self._want_digest:
                self._c1_digest = _sign(c1, self._schema, _FP_KEY_PUBLIC)
            self._c0c1 = bytes((RtmpVersion.PLAIN,)) + bytes(c1)
        return self._c0c1


    def receive_data(self, data: bytes) -> None:
        if self._done:
            self._leftover += data
            return
        self.initial_data()  # our C1 digest must exist before S2 can be checked
        self._buf += data
        if self._buf:
            _check_version(self._buf[0])
        if len(self._buf) < 1 + 2 * PACKET_SIZE:
            return
        s1 = bytes(self._buf[1 : 1 + PACKET_SIZE])
        s2 = bytes(self._buf[1 + PACKET_SIZE : 1 + 2 * PACKET_SIZE])
        self._leftover = bytes(self._buf[1 + 2 * PACKET_SIZE :])
        self._buf.clear()
        if self._want_digest and s1[4:8] != _ZERO_VERSION:
            self._out += self._digest_c2(s1, s2)
            self._digest = True
        else:
            self._out += s1
        # The simple handshake does not check S2 == C1 (lenient, like the server with C2).
        self._done = True

    def _digest_c2(self, s1: bytes, s2: bytes) -> bytes:
        found = _find_digest(s1, _FMS_KEY_PUBLIC)
        if found is None:
            raise RtmpProtocolError("server S1 has non-zero version bytes but no valid digest")
        _, server_digest = found
        expected = _response(self._c1_digest, _FMS_KEY, s2[:_SIGNED_SIZE])
        if not hmac.compare_digest(expected, s2):
            raise RtmpProtocolError("server S2 signature does not match our C1 digest")
        return _response(server_digest, _FP_KEY, self._random(_SIGNED_SIZE))
