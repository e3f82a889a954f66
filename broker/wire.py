"""The bus wire format: MediaPacket <-> ZeroMQ multipart frames (msgpack header + raw payload).

A media message is three frames, ``[topic, header, payload]``: the topic is the stream key (so
ZeroMQ's prefix filter selects streams), the header a msgpack array, and the payload goes as its
own frame so it is never re-encoded. Control messages (stream announcements, viewer counts)
travel on topics that start with ``$``, which no stream key can.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind

WIRE_VERSION = 1
CONTROL_TOPIC = b"$ctl\x00"

_KEYFRAME = 1
_CONFIG = 2


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


def encode(pkt: MediaPacket, *, seq: int, session: int) -> list[bytes]:
    flags = (_KEYFRAME if pkt.keyframe else 0) | (_CONFIG if pkt.is_config else 0)
    header = msgpack.packb(
        [WIRE_VERSION, Mark.MEDIA, seq, session, pkt.kind, pkt.codec, pkt.dts, pkt.pts,
         pkt.timescale, flags]
    )
    return [pkt.stream.topic, header, pkt.payload]


def encode_mark(stream: StreamKey, mark: Mark, *, seq: int, session: int) -> list[bytes]:
    header = msgpack.packb([WIRE_VERSION, mark, seq, session, 0, 0, 0, 0, 0, 0])
    return [stream.topic, header, b""]


def decode(frames: list[bytes], stream: StreamKey | None = None) -> WirePacket:
    """Decode one media/marker message; anything malformed raises WireError only.

    `stream` is the key whose topic frames[0] is known to be (a subscriber's handler knows
    it), which spares parsing the topic of every packet.
    """
    if len(frames) != 3:
        raise WireError(f"expected 3 frames, got {len(frames)}")
    topic, header, payload = frames
    try:
        if stream is None or stream.topic != topic:
            stream = StreamKey.from_topic(topic)
        fields: Any = msgpack.unpackb(header)
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
        mark = Mark(mark)
        if mark is not Mark.MEDIA:
            return WirePacket(stream, seq, session, mark, None)
        if timescale <= 0:
            raise WireError("timescale must be positive")
        packet = MediaPacket(
            stream=stream, kind=TrackKind(kind), codec=Codec(codec), dts=dts, pts=pts,
            timescale=timescale, keyframe=bool(flags & _KEYFRAME),
            is_config=bool(flags & _CONFIG), payload=payload,
        )
    except ValueError as exc:
        raise WireError(str(exc)) from exc
    return WirePacket(stream, seq, session, mark, packet)


def encode_control(kind: str, body: dict[str, object]) -> list[bytes]:
    return [CONTROL_TOPIC, msgpack.packb({"kind": kind, **body})]


def decode_control(frames: list[bytes]) -> dict[str, Any]:
    if len(frames) != 2 or frames[0] != CONTROL_TOPIC:
        raise WireError("not a control message")
    try:
        body: Any = msgpack.unpackb(frames[1])
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"bad control message: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise WireError("control message without a kind")
    return body


def encode_snapshot(stream: StreamKey, session: int, last_seq: int,
                    packets: list[MediaPacket]) -> list[bytes]:
    """A late joiner's snapshot: every packet as header+payload, then apply updates > last_seq."""
    frames = [stream.topic, msgpack.packb([WIRE_VERSION, session, last_seq, len(packets)])]
    for pkt in packets:
        _, header, payload = encode(pkt, seq=last_seq, session=session)
        frames += (header, payload)
    return frames


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
    if version != WIRE_VERSION or len(frames) != 2 + 2 * count:
        raise WireError("snapshot frame count mismatch")
    packets = []
    for i in range(count):
        wp = decode([frames[0], frames[2 + 2 * i], frames[3 + 2 * i]])
        if wp.packet is not None:
            packets.append(wp.packet)
    return Snapshot(stream, session, last_seq, packets)


def encode_no_snapshot(stream: StreamKey) -> list[bytes]:
    return [stream.topic, msgpack.packb(None)]
