"""The bus wire format: MediaPacket <-> one ZeroMQ frame (topic, msgpack header, raw payload).

A media message is one frame: ``topic | header length (1 byte) | header | payload``. The topic
is the stream key ending in NUL, so ZeroMQ's prefix filter selects streams; the header is a
msgpack array; the payload follows as it is, never re-encoded. One frame rather than three:
each ZeroMQ frame is a message of its own to the publisher, the proxy and every subscriber,
and for the benchmark's packets one frame cost half the CPU of three (the payload's copy
into the frame is a memcpy of a few KiB). Control messages (stream announcements, viewer
counts) travel on topics that start with ``$``, which no stream key can.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind

WIRE_VERSION = 2
CONTROL_TOPIC = b"$ctl\x00"

_KEYFRAME = 1
_CONFIG = 2
_packer = msgpack.Packer()  # one for every message: msgpack.packb makes one per call


def _pack(value: object) -> bytes:
    out: bytes = _packer.pack(value)
    return out


_LENGTH = [bytes([n]) for n in range(256)]


class WireError(Exception):
    """A frame on the bus did not decode; the consumer drops it (and counts a gap)."""


class Mark(enum.IntEnum):
    """In-band stream markers, ordered with the media on the stream's own topic."""

    MEDIA = 0
    END = 1  # the publisher left: players end cleanly or wait for a new publisher


@dataclass(frozen=True, slots=True)
class WirePacket:
    """A decoded bus message: the packet (None for a marker), its sequence number and session."""

    stream: StreamKey
    seq: int  # per stream and publishing session, from 0; a gap means ZeroMQ dropped something
    session: int  # changes when a new publisher takes the key
    mark: Mark
    packet: MediaPacket | None


def topic_of(frame: bytes) -> bytes:
    """The topic a frame starts with (NUL included); b"" if it has none."""
    return frame[:frame.find(b"\x00") + 1]


def _frame(topic: bytes, header: list[int], payload: bytes) -> bytes:
    packed = _pack(header)
    return b"".join((topic, _LENGTH[len(packed)], packed, payload))


def encode(pkt: MediaPacket, *, seq: int, session: int) -> bytes:
    flags = (_KEYFRAME if pkt.keyframe else 0) | (_CONFIG if pkt.is_config else 0)
    return _frame(pkt.stream.topic, [WIRE_VERSION, Mark.MEDIA, seq, session, pkt.kind,
                                     pkt.codec, pkt.dts, pkt.pts, pkt.timescale, flags],
                  pkt.payload)


def encode_mark(stream: StreamKey, mark: Mark, *, seq: int, session: int) -> bytes:
    return _frame(stream.topic, [WIRE_VERSION, mark, seq, session, 0, 0, 0, 0, 0, 0], b"")


def decode(frame: bytes, stream: StreamKey | None = None) -> WirePacket:
    """Decode one media/marker message; anything malformed raises WireError only.

    `stream` is the key whose topic the frame is known to start with (a subscriber's handler
    knows it), which spares parsing the topic of every packet.
    """
    try:
        if stream is not None and frame.startswith(stream.topic):
            start = len(stream.topic)
        else:
            topic = topic_of(frame)
            stream = StreamKey.from_topic(topic)
            start = len(topic)
        if start >= len(frame):
            raise WireError("no header")
        end = start + 1 + frame[start]
        if end > len(frame):
            raise WireError("truncated header")
        fields: Any = msgpack.unpackb(frame[start + 1:end])
    except (ValueError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise WireError(f"bad header: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 10:
        raise WireError("header is not a 10-item array")
    if not all(type(f) is int for f in fields):
        raise WireError("header fields must be integers")
    version, mark, seq, session, kind, codec, dts, pts, timescale, flags = fields
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version}")
    try:
        mark = _member(_MARKS, mark, "Mark")
        if mark is not Mark.MEDIA:
            return WirePacket(stream, seq, session, mark, None)
        if timescale <= 0:
            raise WireError("timescale must be positive")
        packet = MediaPacket(
            stream=stream, kind=_member(_KINDS, kind, "TrackKind"),
            codec=_member(_CODECS, codec, "Codec"), dts=dts, pts=pts,
            timescale=timescale, keyframe=bool(flags & _KEYFRAME),
            is_config=bool(flags & _CONFIG), payload=frame[end:],
        )
    except ValueError as exc:
        raise WireError(str(exc)) from exc
    return WirePacket(stream, seq, session, mark, packet)


# Enum lookups by value: calling an Enum class costs a few microseconds per packet.
_E = TypeVar("_E", Mark, TrackKind, Codec)
_MARKS: dict[int, Mark] = {m.value: m for m in Mark}
_KINDS: dict[int, TrackKind] = {k.value: k for k in TrackKind}
_CODECS: dict[int, Codec] = {c.value: c for c in Codec}


def _member(table: dict[int, _E], value: int, name: str) -> _E:
    member = table.get(value)
    if member is None:
        raise WireError(f"{value} is not a valid {name}")
    return member


def encode_control(kind: str, body: dict[str, object]) -> bytes:
    return CONTROL_TOPIC + _pack({"kind": kind, **body})


def decode_control(frame: bytes) -> dict[str, Any]:
    if not frame.startswith(CONTROL_TOPIC):
        raise WireError("not a control message")
    try:
        body: Any = msgpack.unpackb(frame[len(CONTROL_TOPIC):])
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"bad control message: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise WireError("control message without a kind")
    return body


def encode_snapshot(stream: StreamKey, session: int, last_seq: int,
                    packets: list[MediaPacket]) -> list[bytes]:
    """A late joiner's snapshot: its head, then every packet as a bus frame; the joiner then
    applies the updates after last_seq."""
    head = _pack([WIRE_VERSION, session, last_seq, len(packets)])
    return [stream.topic, head, *(encode(p, seq=last_seq, session=session) for p in packets)]


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream: StreamKey
    session: int
    last_seq: int
    packets: list[MediaPacket]


def decode_snapshot(frames: list[bytes]) -> Snapshot | None:
    """Decode a snapshot reply; None means the owner does not (or no longer) publish the key."""
    if len(frames) < 2:
        raise WireError("short snapshot reply")
    try:
        stream = StreamKey.from_topic(frames[0])
        head: Any = msgpack.unpackb(frames[1])
    except (ValueError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        raise WireError(f"bad snapshot header: {exc}") from exc
    if head is None:
        return None
    if not (isinstance(head, list) and len(head) == 4 and all(type(h) is int for h in head)):
        raise WireError("bad snapshot header")
    version, session, last_seq, count = head
    if version != WIRE_VERSION or len(frames) != 2 + count:
        raise WireError("snapshot frame count mismatch")
    packets = []
    for frame in frames[2:]:
        wp = decode(frame)
        if wp.stream != stream:
            raise WireError("snapshot packet of another stream")
        if wp.packet is not None:
            packets.append(wp.packet)
    return Snapshot(stream, session, last_seq, packets)


def encode_no_snapshot(stream: StreamKey) -> list[bytes]:
    return [stream.topic, _pack(None)]
