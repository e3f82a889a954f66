"""Sans-IO RTMP chunk stream (RTMP 1.0 §5.3): reassembles chunks into messages and back.

Decoder quirks handled on purpose (see docs/notes protocol-pitfalls §1.2):

* A type-3 chunk that starts a new message reuses the previous delta; after a type-0 header
  that "delta" is the type-0 timestamp itself (what SRS and ffmpeg do).
* Type-3 chunks should repeat the 4-byte extended timestamp when the last type 0/1/2 header
  on the chunk stream had one (§5.3.1.3), but some clients omit it. Like SRS we peek: if the
  next 4 bytes equal the extended timestamp we consume them, otherwise they are payload. The
  decision waits until 4 bytes are buffered so it never depends on how the input was split.
* A fresh chunk stream may start with fmt=1 (librtmp's ping): message stream id 0 is assumed.
* Extended timestamps on fmt 1/2 are deltas (ossrs/srs#4356).

A type 0/1/2 header arriving while a message on that chunk stream is incomplete is an error
(the spec has no meaning for it; ffmpeg silently drops the partial message, we refuse).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, final

from ingest.rtmp.errors import RtmpProtocolError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CSID",
    "NEED_DATA",
    "ChunkDecoder",
    "ChunkEncoder",
    "ChunkFormat",
    "NeedData",
    "RtmpMessage",
]

DEFAULT_CHUNK_SIZE: Final = 128  # §5.4.1: both directions start here
MIN_CSID: Final = 2
MAX_CSID: Final = 65599  # 64 + 0xFFFF, the 3-byte basic header
MAX_CHUNK_SIZE_FIELD: Final = 0x7FFFFFFF  # §5.4.1: 31 bits, the top bit must be zero
MAX_EFFECTIVE_CHUNK_SIZE: Final = 0xFFFFFF  # no message is longer, so larger sizes are moot
MAX_MESSAGE_LENGTH: Final = 0xFFFFFF  # 24-bit length field
_EXTENDED: Final = 0xFFFFFF  # 24-bit timestamp value announcing an extended timestamp
_MASK32: Final = 0xFFFFFFFF

_U32BE = struct.Struct(">I")
_U32LE = struct.Struct("<I")


class ChunkFormat(IntEnum):
    """The fmt bits of the chunk basic header, selecting the message header (RTMP 1.0
    §5.3.1.2)."""

    FULL = 0  # 11 bytes: timestamp, length, type id, message stream id
    SAME_STREAM = 1  # 7 bytes: timestamp delta, length, type id
    DELTA_ONLY = 2  # 3 bytes: timestamp delta
    CONTINUATION = 3  # no message header


@dataclass(frozen=True, slots=True)
class RtmpMessage:
    csid: int  # chunk stream id (2..65599)
    timestamp: int  # 32-bit ms as carried (after delta accumulation, mod 2**32)
    type_id: int
    stream_id: int  # message stream id
    payload: bytes


@final
class NeedData:
    """Sentinel returned by `ChunkDecoder.next_event` when more bytes are needed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


def _check_chunk_size(size: int) -> int:
    """Validate a Set Chunk Size value (§5.4.1) and return the effective size."""
    if size < 1:
        raise RtmpProtocolError(f"chunk size {size} is invalid (must be at least 1)")
    if size > MAX_CHUNK_SIZE_FIELD:
        raise RtmpProtocolError(f"chunk size {size:#x} is invalid (top bit must be zero)")
    return min(size, MAX_EFFECTIVE_CHUNK_SIZE)


class _InStream:
    """Per-chunk-stream decoder state: the last header's fields plus the message being built."""

    __slots__ = (
        "delta",
        "ext",
        "length",
        "parts",
        "remaining",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.ext: int | None = None  # raw extended field of the last type 0/1/2 header
        self.parts: bytearray | None = None  # payload so far, while a message is incomplete
        self.remaining = 0


class ChunkDecoder:
    """Turns the peer's chunk stream into `RtmpMessage`s, one per `next_event` call.

    Nothing is parsed beyond the message returned, so a Set Chunk Size the session applies
    after receiving it affects exactly the chunks that follow.

    EOF is `receive_data(b"")`. After it, `next_event` raises RtmpProtocolError("connection
    closed mid-message") if any partial chunk or message is pending, else returns NEED_DATA.
    Errors are terminal: later calls re-raise the same error.
    """

    def __init__(self, *, max_message_bytes: int = 16 << 20) -> None:
        self._max_message = max_message_bytes
        self._chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._pos = 0
        self._streams: dict[int, _InStream] = {}
        self._received = 0
        self._eof = False
        self._error: RtmpProtocolError | None = None
        self._short = 0  # payload of the message at the buffer's head not here yet

    @property
    def bytes_received(self) -> int:
        """Bytes handed to `receive_data` so far (not mod 2**32), for Acknowledgements.

        Counted on arrival rather than on parse: a peer waiting for an Ack before sending the
        rest of one large chunk would otherwise deadlock with us.
        """
        return self._received

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> None:
        """Apply the peer's Set Chunk Size (after the message carrying it was returned)."""
        self._chunk_size = _check_chunk_size(size)

    def abort(self, csid: int) -> None:
        """Abort Message (§5.4.2): drop the partial message on `csid`, keep its header state."""
        stream = self._streams.get(csid)
        if stream is not None:
            stream.parts = None
            stream.remaining = 0

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            if data:
                raise RuntimeError("receive_data() called after EOF")
            return
        if not data:
            self._eof = True
            return
        # CPython deletes from the front of a bytearray in O(1), so compacting on every feed
        # is cheap and keeps the buffer at roughly one chunk.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        self._received += len(data)

    def next_event(self) -> RtmpMessage | NeedData:
        if self._error is not None:
            raise self._error
        try:
            while True:
                result = self._read_chunk()
                if result is NEED_DATA and self._eof and self._pending():
                    raise RtmpProtocolError("connection closed mid-message")
                if result is not None:
                    return result
        except RtmpProtocolError as exc:
            self._error = exc
            raise

    @property
    def pending(self) -> bool:
        """Bytes of a chunk or message that is not complete yet are buffered."""
        return self._pending()

    def _pending(self) -> bool:
        return self._pos < len(self._buf) or any(
            s.parts is not None for s in self._streams.values()
        )

    @property
    def missing(self) -> int:
        """After NEED_DATA: how many more bytes must arrive, at least, before a message now
        half received can be complete (0 if none is). A peer sends a message's chunks one
        after another, so waiting for them costs nothing that could be used sooner."""
        if not self._pending():
            return 0
        buffered = len(self._buf) - self._pos
        wants = [s.remaining - buffered for s in self._streams.values() if s.parts is not None]
        if self._short:
            wants.append(self._short)
        return max(1, min(wants, default=1))

    def _read_chunk(self) -> RtmpMessage | NeedData | None:
        """Consume one whole chunk. Returns the message it completed, None if it only added
        to a partial message, or NEED_DATA (nothing consumed) if it isn't all buffered."""
        buf = self._buf
        end = len(buf)
        p = self._pos
        self._short = 0
        if p >= end:
            return NEED_DATA
        b0 = buf[p]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p += 1
        if csid == 0:  # 2-byte basic header
            if p + 1 > end:
                return NEED_DATA
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:  # 3-byte basic header, second byte is the high one
            if p + 2 > end:
                return NEED_DATA
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2

        stream = self._streams.get(csid)
        if fmt != ChunkFormat.CONTINUATION and stream is not None and stream.parts is not None:
            raise RtmpProtocolError(
                f"type-{fmt} header on chunk stream {csid} before its message completed"
            )

        # Parse into locals; state changes only once the whole chunk is buffered.
        ext: int | None = None
        if fmt == ChunkFormat.FULL:
            if p + 11 > end:
                return NEED_DATA
            ts = _U32BE.unpack_from(buf, p)[0] >> 8
            length = _U32BE.unpack_from(buf, p + 3)[0] >> 8
            type_id = buf[p + 6]
            stream_id = _U32LE.unpack_from(buf, p + 7)[0]
            p += 11
        elif fmt == ChunkFormat.SAME_STREAM:
            if p + 7 > end:
                return NEED_DATA
            ts = _U32BE.unpack_from(buf, p)[0] >> 8
            length = _U32BE.unpack_from(buf, p + 3)[0] >> 8
            type_id = buf[p + 6]
            stream_id = stream.stream_id if stream is not None else 0  # librtmp's fresh fmt=1
            p += 7
        elif stream is None:
            raise RtmpProtocolError(f"type-{fmt} chunk on new chunk stream {csid}")
        elif fmt == ChunkFormat.DELTA_ONLY:
            if p + 3 > end:
                return NEED_DATA
            ts = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length, type_id, stream_id = stream.length, stream.type_id, stream.stream_id
            p += 3
        else:
            ts = 0
            length, type_id, stream_id = stream.length, stream.type_id, stream.stream_id
            if stream.ext is not None:
                if p + 4 > end:
                    return NEED_DATA  # can't tell yet whether the repeated field is there
                if _U32BE.unpack_from(buf, p)[0] == stream.ext:
                    p += 4
        if fmt != ChunkFormat.CONTINUATION:
            if ts == _EXTENDED:
                if p + 4 > end:
                    return NEED_DATA
                ext = ts = _U32BE.unpack_from(buf, p)[0]
                p += 4
            if length > self._max_message:
                raise RtmpProtocolError(
                    f"message of {length} bytes on chunk stream {csid} exceeds the "
                    f"{self._max_message}-byte limit"
                )

        starting = stream is None or stream.parts is None
        remaining = stream.remaining if stream is not None and not starting else length
        n = min(self._chunk_size, remaining)
        if p + n > end:
            self._short = remaining - (end - p)
            return NEED_DATA

        # Commit.
        if stream is None:
            stream = self._streams[csid] = _InStream()
        if fmt == ChunkFormat.FULL:
            stream.timestamp = ts
            stream.delta = ts  # a type-3 message after this one adds it again (SRS, ffmpeg)
        elif fmt != ChunkFormat.CONTINUATION:
            stream.delta = ts
            stream.timestamp = (stream.timestamp + ts) & _MASK32
        elif starting:
            stream.timestamp = (stream.timestamp + stream.delta) & _MASK32
        if fmt != ChunkFormat.CONTINUATION:
            stream.length, stream.type_id, stream.stream_id = length, type_id, stream_id
            stream.ext = ext
        self._pos = p + n

        with memoryview(buf) as view:
            if starting and n == remaining:  # the common single-chunk message: one copy
                return RtmpMessage(
                    csid, stream.timestamp, type_id, stream_id, view[p : p + n].tobytes()
                )
            # One growing bytearray per message: a list of tiny chunks would let a peer using
            # chunk size 1 make us hold ~40 bytes of objects per payload byte.
            parts = stream.parts if stream.parts is not None else bytearray()
            parts += view[p : p + n]
        if n < remaining:
            stream.parts = parts
            stream.remaining = remaining - n
            return None
        stream.parts = None
        stream.remaining = 0
        return RtmpMessage(csid, stream.timestamp, type_id, stream_id, bytes(parts))


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes(((fmt << 6) | 1, rest & 0xFF, rest >> 8))


class _OutStream:
    """What the peer's decoder remembers about one chunk stream (compress mode only)."""

    __slots__ = ("delta", "delta_reusable", "length", "stream_id", "timestamp", "type_id")

    def __init__(self, msg: RtmpMessage, timestamp: int) -> None:
        self.stream_id = msg.stream_id
        self.length = len(msg.payload)
        self.type_id = msg.type_id
        self.timestamp = timestamp
        self.delta = 0
        self.delta_reusable = False


class ChunkEncoder:
    """Turns messages into chunks with our outgoing chunk size.

    Default: every message gets a type-0 header, so the output depends only on the message
    and the chunk size and can be shared by many viewers. With `compress=True` it keeps
    per-chunk-stream state and uses fmt 1/2/3 headers where the peer can infer the rest.
    Extended timestamps are repeated on every type-3 continuation chunk (ffmpeg needs them).

    Invalid messages are caller bugs and raise ValueError, not RtmpProtocolError.
    """

    def __init__(self, *, chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = False) -> None:
        self._chunk_size = self._validated(chunk_size)
        self._compress = compress
        self._streams: dict[int, _OutStream] = {}

    @staticmethod
    def _validated(size: int) -> int:
        try:
            return _check_chunk_size(size)
        except RtmpProtocolError as exc:
            raise ValueError(str(exc)) from None

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> None:
        """Our outgoing chunk size; call it right after encoding the Set Chunk Size message."""
        self._chunk_size = self._validated(size)

    def encode(self, msg: RtmpMessage) -> bytes:
        csid = msg.csid
        payload = msg.payload
        length = len(payload)
        if not MIN_CSID <= csid <= MAX_CSID:
            raise ValueError(f"chunk stream id {csid} outside {MIN_CSID}..{MAX_CSID}")
        if length > MAX_MESSAGE_LENGTH:
            raise ValueError(f"message of {length} bytes exceeds RTMP's 24-bit length")
        if not 0 <= msg.type_id <= 0xFF or not 0 <= msg.stream_id <= _MASK32:
            raise ValueError(f"type id {msg.type_id} or stream id {msg.stream_id} out of range")
        ts = msg.timestamp & _MASK32

        fmt, field = ChunkFormat.FULL, ts
        if self._compress:
            fmt, field = self._choose_header(msg, ts)

        # Only type-0 headers ever carry an extended field here: compress mode falls back to
        # fmt 0 for large deltas, sidestepping the delta-vs-absolute ambiguity on fmt 1/2.
        extended = field >= _EXTENDED
        header = bytearray(_basic_header(fmt, csid))
        if fmt != ChunkFormat.CONTINUATION:
            header += (_EXTENDED if extended else field).to_bytes(3, "big")
        if fmt in (ChunkFormat.FULL, ChunkFormat.SAME_STREAM):
            header += length.to_bytes(3, "big")
            header.append(msg.type_id)
        if fmt == ChunkFormat.FULL:
            header += _U32LE.pack(msg.stream_id)
        ext_bytes = _U32BE.pack(field) if extended else b""
        header += ext_bytes

        size = self._chunk_size
        if length <= size:
            return bytes(header) + payload
        continuation = _basic_header(ChunkFormat.CONTINUATION, csid) + ext_bytes
        view = memoryview(payload)
        parts: list[bytes | bytearray | memoryview] = [header, view[:size]]
        for offset in range(size, length, size):
            parts.append(continuation)
            parts.append(view[offset : offset + size])
        return b"".join(parts)

    def _choose_header(self, msg: RtmpMessage, ts: int) -> tuple[ChunkFormat, int]:
        """Pick the smallest header the peer can decode; returns (fmt, 24/32-bit field)."""
        prev = self._streams.get(msg.csid)
        if prev is None or prev.stream_id != msg.stream_id or ts < prev.timestamp:
            self._streams[msg.csid] = _OutStream(msg, ts)
            return ChunkFormat.FULL, ts
        delta = ts - prev.timestamp
        if delta >= _EXTENDED:
            self._streams[msg.csid] = _OutStream(msg, ts)
            return ChunkFormat.FULL, ts
        same_shape = prev.length == len(msg.payload) and prev.type_id == msg.type_id
        # Reusing a delta right after a type-0 header is read differently by different
        # decoders (delta vs. absolute), so fmt 3 is only used after fmt 1/2.
        if same_shape and prev.delta_reusable and delta == prev.delta:
            fmt = ChunkFormat.CONTINUATION
        elif same_shape:
            fmt = ChunkFormat.DELTA_ONLY
        else:
            fmt = ChunkFormat.SAME_STREAM
        prev.length, prev.type_id = len(msg.payload), msg.type_id
        prev.timestamp, prev.delta, prev.delta_reusable = ts, delta, True
        return fmt, delta
