"""The one normalised media packet that every process exchanges, and the stream key."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

DEFAULT_INSTANCE = "_definst_"


class TrackKind(enum.IntEnum):
    """What a packet carries; the values are the FLV tag types (FLV spec v10.1 E.4.1)."""

    AUDIO = 8
    VIDEO = 9
    DATA = 18


class Codec(enum.IntEnum):
    """Codecs on the bus. H264/AAC/MP3 keep their FLV CodecID/SoundFormat numbers."""

    MP3 = 2
    H264 = 7
    AAC = 10
    HEVC = 12
    AV1 = 13
    OPUS = 14
    AMF0 = 18  # DATA packets: an AMF0-encoded script message such as onMetaData


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """app / instance / name, as in the seed config; the bus topic is derived from it."""

    app: str
    instance: str
    name: str
    # The bus topic, made once (every packet carries it). The NUL ends the key so that a
    # subscription to "live/_definst_/a" (ZeroMQ matches prefixes) does not also receive
    # "live/_definst_/ab".
    topic: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A key is always a valid topic: on the bus the first NUL ends it.
        for part in (self.app, self.instance, self.name):
            if not part or "/" in part or "\x00" in part:
                raise ValueError(f"not a stream key part: {part!r}")
        object.__setattr__(self, "topic", str(self).encode() + b"\x00")

    def __hash__(self) -> int:
        # Keys index per-stream tables on every packet: hash the topic, whose hash bytes cache.
        return hash(self.topic)

    def __str__(self) -> str:
        return f"{self.app}/{self.instance}/{self.name}"

    @classmethod
    def from_topic(cls, topic: bytes) -> StreamKey:
        if not topic.endswith(b"\x00"):
            raise ValueError("stream topic must end with NUL")
        return cls.parse(topic[:-1].decode())

    @classmethod
    def parse(cls, text: str) -> StreamKey:
        """Parse "app/instance/name"; raise ValueError otherwise."""
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"not a stream key: {text!r}")
        return cls(parts[0], parts[1], parts[2])


class MediaPacket(NamedTuple):
    """One access unit (or config record, or script message) of one track of one stream.

    Video payloads are AVCC (length-prefixed NAL units), never Annex-B; config packets carry
    the decoder configuration record (avcC, AudioSpecificConfig). DATA packets carry the AMF0
    values of a script message ("onMetaData", {...}) without @setDataFrame.

    An immutable named tuple rather than a frozen dataclass: every process makes one or two
    per packet, and a tuple is made in half the time. Build it with keywords.
    """

    stream: StreamKey
    kind: TrackKind
    codec: Codec
    dts: int  # ticks of `timescale`; RTMP uses 1000
    pts: int
    timescale: int
    keyframe: bool
    is_config: bool
    payload: bytes

    def retimed(self, dts: int, pts: int) -> MediaPacket:
        """The same packet with other timestamps."""
        return MediaPacket(self.stream, self.kind, self.codec, dts, pts, self.timescale,
                           self.keyframe, self.is_config, self.payload)


def rescale(ts: int, src: int, dst: int) -> int:
    """Convert a timestamp between timescales, rounding to the nearest tick."""
    if src == dst:
        return ts
    return (ts * dst + src // 2) // src
