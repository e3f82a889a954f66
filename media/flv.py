"""FLV container and tag bodies (Video File Format Spec v10.1 Annex E; enhanced RTMP v2).

RTMP audio/video message payloads are FLV tag bodies, so the body codecs serve both.
SCRIPT (18) tag bodies are AMF0 values, normally "onMetaData" then an ECMA array; encode
them with media.amf0 (kept out of this module so the two stay independent).

Enhanced RTMP: ModEx prefixes are walked and dropped (their sub-millisecond timestamp
offsets are ignored); Multitrack, Metadata and MPEG2TSSequenceStart packets parse to None,
so callers skip them like FrameType 5 command frames. Only FlvError is raised on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Literal

VideoKind = Literal["config", "frame", "end"]
AudioKind = Literal["config", "frame"]

MAX_BODY_SIZE: Final = 0xFFFFFF  # DataSize is a UI24
_HDR = struct.Struct(">IIHB")  # TagType<<24|DataSize, Timestamp<<8|TimestampExtended, StreamID
_U32 = struct.Struct(">I")
_LEGACY_AVC = struct.Struct(">BI")  # FrameType|CodecID, AVCPacketType<<24|SI24 CTS
_EX_CTS = struct.Struct(">B4sBH")  # FrameType|PacketType, FourCC, SI24 CTS
_EX = struct.Struct(">B4s")  # FrameType|PacketType (or SoundFormat|PacketType), FourCC
_MAX_DATA_OFFSET = 1 << 16


class FlvError(Exception):
    """Malformed or unsupported FLV data."""


class TagType(IntEnum):
    """FLVTAG TagType (FLV v10.1 Annex E.4.1)."""

    AUDIO = 8
    VIDEO = 9
    SCRIPT = 18


class VideoFrameType(IntEnum):
    """VIDEODATA FrameType (FLV v10.1 E.4.3.1; 3 bits in enhanced RTMP)."""

    KEY = 1
    INTER = 2
    DISPOSABLE_INTER = 3
    GENERATED_KEY = 4
    COMMAND = 5


class VideoCodecId(IntEnum):
    """Legacy VIDEODATA CodecID (FLV v10.1 E.4.3.1); 12 is the non-standard "Chinese HEVC"."""

    SORENSON_H263 = 2
    SCREEN = 3
    VP6 = 4
    VP6_ALPHA = 5
    SCREEN_V2 = 6
    AVC = 7
    HEVC_NONSTANDARD = 12


class AvcPacketType(IntEnum):
    """AVCPacketType (FLV v10.1 E.4.3.1)."""

    SEQUENCE_HEADER = 0
    NALU = 1
    END_OF_SEQUENCE = 2


class VideoPacketType(IntEnum):
    """Enhanced RTMP v2 VideoPacketType (veovera enhanced-rtmp-v2, "Enhanced Video")."""

    SEQUENCE_START = 0
    CODED_FRAMES = 1
    SEQUENCE_END = 2
    CODED_FRAMES_X = 3
    METADATA = 4
    MPEG2TS_SEQUENCE_START = 5
    MULTITRACK = 6
    MOD_EX = 7


class SoundFormat(IntEnum):
    """AUDIODATA SoundFormat (FLV v10.1 E.4.2.1; 9 = ExHeader in enhanced RTMP v2)."""

    MP3 = 2
    EX_HEADER = 9
    AAC = 10
    MP3_8K = 14


class AacPacketType(IntEnum):
    """AACPacketType (FLV v10.1 E.4.2.1)."""

    SEQUENCE_HEADER = 0
    RAW = 1


class AudioPacketType(IntEnum):
    """Enhanced RTMP v2 AudioPacketType (veovera enhanced-rtmp-v2, "Enhanced Audio")."""

    SEQUENCE_START = 0
    CODED_FRAMES = 1
    SEQUENCE_END = 2
    MULTICHANNEL_CONFIG = 4
    MULTITRACK = 5
    MOD_EX = 7


# FourCCs whose CodedFrames carry an SI24 composition time offset.
_CTS_FOURCCS = frozenset({"avc1", "hvc1", "vvc1"})
_KEY_FRAME_TYPES = frozenset({VideoFrameType.KEY, VideoFrameType.GENERATED_KEY})
_VIDEO_PACKET = {"config": 0, "frame": 1, "end": 2}  # same numbers legacy and enhanced
_LEGACY_IDS = {f"legacy{n}": n for n in range(16)}


# ---------------------------------------------------------------------------- container


def header(*, audio: bool, video: bool) -> bytes:
    """FLV header plus PreviousTagSize0 (13 bytes). Flags must match the real tracks."""
    return b"FLV\x01" + bytes((audio << 2 | video,)) + b"\x00\x00\x00\x09\x00\x00\x00\x00"


def tag_header(tag_type: int, timestamp_ms: int, size: int) -> bytes:
    """The 11-byte tag header for a body of `size` bytes; timestamp taken mod 2**32."""
    if not 0 <= tag_type <= 0x1F:
        raise FlvError(f"tag type {tag_type} out of range")
    if not 0 <= size <= MAX_BODY_SIZE:
        raise FlvError(f"tag body of {size} bytes does not fit UI24")
    ts = timestamp_ms & 0xFFFFFFFF
    return _HDR.pack(tag_type << 24 | size, (ts & 0xFFFFFF) << 8 | ts >> 24, 0, 0)


def prev_tag_size(body_size: int) -> bytes:
    """The PreviousTagSize trailer that follows a tag whose body is `body_size` bytes."""
    return _U32.pack(11 + body_size)


def encode_tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """A complete tag: header, body, PreviousTagSize."""
    n = len(body)
    return b"".join((tag_header(tag_type, timestamp_ms, n), body, _U32.pack(11 + n)))


def metadata_body(values_bytes: bytes) -> bytes:
    """SCRIPT tag body: already-encoded AMF0 values ("onMetaData", ECMA array)."""
    return bytes(values_bytes)


@dataclass(frozen=True, slots=True)
class FlvHeader:
    audio: bool
    video: bool


@dataclass(frozen=True, slots=True)
class FlvTag:
    """One tag. timestamp_ms is the raw 32-bit value; offset is its byte position in the stream."""

    tag_type: int
    timestamp_ms: int
    body: bytes
    offset: int


class NeedData(Enum):
    """Typed sentinel: next_event() needs more bytes (test with `is NEED_DATA`)."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class FlvDecoder:
    """Incremental sans-IO FLV reader: feed bytes, then pull events until NEED_DATA.

    PreviousTagSize mismatches are tolerated and only counted (prev_size_mismatches):
    real-world muxers write wrong values, and DataSize alone frames the next tag.
    """

    def __init__(self, *, max_tag_size: int = 16 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._consumed = 0  # stream offset of _buf[0]
        self._max = max_tag_size
        self._got_header = False
        self._skip = 0  # bytes still to discard (oversized DataOffset)
        self._expect_prev: int | None = None  # a PreviousTagSize is due next
        self.prev_size_mismatches = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]  # front deletion is cheap for bytearray
        self._consumed += n
        return chunk

    def next_event(self) -> FlvHeader | FlvTag | NeedData:
        buf = self._buf
        if not self._got_header:
            if len(buf) < 9:
                if buf[:3] != b"FLV"[: len(buf)]:
                    raise FlvError("not an FLV stream (bad signature)")
                return NEED_DATA
            raw = self._take(9)
            if raw[:3] != b"FLV":
                raise FlvError("not an FLV stream (bad signature)")
            (data_offset,) = _U32.unpack_from(raw, 5)
            if not 9 <= data_offset <= _MAX_DATA_OFFSET:
                raise FlvError(f"bad FLV DataOffset {data_offset}")
            self._got_header, self._skip, self._expect_prev = True, data_offset - 9, 0
            return FlvHeader(audio=bool(raw[4] & 0x04), video=bool(raw[4] & 0x01))
        if self._skip:
            n = min(self._skip, len(buf))
            del buf[:n]
            self._consumed += n
            self._skip -= n
            if self._skip:
                return NEED_DATA
        if self._expect_prev is not None:
            if len(buf) < 4:
                return NEED_DATA
            if _U32.unpack(self._take(4))[0] != self._expect_prev:
                self.prev_size_mismatches += 1
            self._expect_prev = None
        if len(buf) < 11:
            return NEED_DATA
        type_size, ts, _, _ = _HDR.unpack_from(buf)
        tag_type, size = type_size >> 24, type_size & 0xFFFFFF
        if tag_type & 0x20:
            raise FlvError("encrypted (Filter=1) FLV tags are not supported")
        if size > self._max:
            raise FlvError(f"FLV tag of {size} bytes exceeds the {self._max}-byte limit")
        if len(buf) < 11 + size:
            return NEED_DATA
        offset = self._consumed
        del buf[:11]
        self._consumed += 11
        self._expect_prev = 11 + size
        return FlvTag(tag_type & 0x1F, ts >> 8 | (ts & 0xFF) << 24, self._take(size), offset)


# ---------------------------------------------------------------------------- tag bodies


@dataclass(frozen=True, slots=True)
class VideoBody:
    """codec is a FourCC ("avc1", "hvc1", "av01", "vp09", ...) or f"legacy{CodecID}"."""

    codec: str
    keyframe: bool
    kind: VideoKind
    cts_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AudioBody:
    """codec is "mp4a", "mp3", a FourCC ("Opus", "fLaC", ...) or f"legacy{SoundFormat}".

    sound_flags is the legacy rate/size/type nibble (0 for enhanced bodies).
    """

    codec: str
    kind: AudioKind
    data: bytes
    sound_flags: int


def _si24(raw: int) -> int:
    return raw - 0x1000000 if raw & 0x800000 else raw


def _skip_mod_ex(body: bytes, packet_type: int) -> tuple[int, int]:
    """Walk ModEx prefixes; returns (position after them, the real packet type)."""
    pos = 1
    try:
        while packet_type == VideoPacketType.MOD_EX:  # 7 is ModEx for audio too
            size = body[pos] + 1
            pos += 1
            if size == 256:  # escape to a UI16 size
                size = (body[pos] << 8 | body[pos + 1]) + 1
                pos += 2
            pos += size
            packet_type = body[pos] & 0x0F  # high nibble: ModEx type (only nano offsets)
            pos += 1
    except IndexError:
        raise FlvError("truncated ModEx") from None
    return pos, packet_type


def parse_video_body(body: bytes) -> VideoBody | None:
    """Decode a VIDEODATA body; None for payloads to skip (command frames, metadata, ...)."""
    if not body:
        return None
    b0 = body[0]
    if b0 & 0x80:
        frame_type = b0 >> 4 & 0x07
        pos, packet = _skip_mod_ex(body, b0 & 0x0F)
        if packet in (4, 5, 6) or frame_type == VideoFrameType.COMMAND:
            return None  # Metadata, MPEG2TSSequenceStart, Multitrack, command frame
        if len(body) < pos + 4:
            raise FlvError("truncated enhanced video header")
        codec = body[pos : pos + 4].decode("latin-1")
        keyframe = frame_type in _KEY_FRAME_TYPES
        pos += 4
        if packet == VideoPacketType.SEQUENCE_START:
            return VideoBody(codec, keyframe, "config", 0, body[pos:])
        if packet == VideoPacketType.CODED_FRAMES and codec in _CTS_FOURCCS:
            if len(body) < pos + 3:
                raise FlvError("truncated composition time")
            cts = _si24(int.from_bytes(body[pos : pos + 3], "big"))
            return VideoBody(codec, keyframe, "frame", cts, body[pos + 3 :])
        if packet in (VideoPacketType.CODED_FRAMES, VideoPacketType.CODED_FRAMES_X):
            return VideoBody(codec, keyframe, "frame", 0, body[pos:])
        if packet == VideoPacketType.SEQUENCE_END:
            return VideoBody(codec, keyframe, "end", 0, b"")
        raise FlvError(f"unknown enhanced VideoPacketType {packet}")
    frame_type, codec_id = b0 >> 4, b0 & 0x0F
    if frame_type == VideoFrameType.COMMAND:
        return None
    keyframe = frame_type in _KEY_FRAME_TYPES
    if codec_id not in (VideoCodecId.AVC, VideoCodecId.HEVC_NONSTANDARD):
        return VideoBody(f"legacy{codec_id}", keyframe, "frame", 0, body[1:])
    codec = "avc1" if codec_id == VideoCodecId.AVC else "hvc1"
    if len(body) >= 2 and body[1] == AvcPacketType.END_OF_SEQUENCE:
        return VideoBody(codec, keyframe, "end", 0, b"")
    if len(body) < 5:
        raise FlvError("truncated AVC video header")
    packet_cts = _LEGACY_AVC.unpack_from(body)[1]
    packet = packet_cts >> 24
    if packet == AvcPacketType.SEQUENCE_HEADER:
        return VideoBody(codec, keyframe, "config", 0, body[5:])
    if packet == AvcPacketType.NALU:
        return VideoBody(codec, keyframe, "frame", _si24(packet_cts & 0xFFFFFF), body[5:])
    raise FlvError(f"unknown AVCPacketType {packet}")


def build_video_body(
    codec: str, *, keyframe: bool, kind: VideoKind, cts_ms: int = 0, data: bytes = b""
) -> bytes:
    """Encode a VIDEODATA body: legacy layout for avc1 (every player reads it), enhanced
    RTMP for other FourCCs (SI24 CTS only for hvc1/vvc1), legacyN passthrough for frames."""
    packet = _VIDEO_PACKET.get(kind)
    if packet is None:
        raise FlvError(f"unknown video body kind {kind!r}")
    frame_type = VideoFrameType.KEY if keyframe else VideoFrameType.INTER
    cts = cts_ms if kind == "frame" else 0
    if not -0x800000 <= cts <= 0x7FFFFF:
        raise FlvError(f"composition time {cts} ms does not fit SI24")
    if codec == "avc1":
        head = _LEGACY_AVC.pack(frame_type << 4 | VideoCodecId.AVC, packet << 24 | cts & 0xFFFFFF)
        return b"".join((head, data))
    if codec.startswith("legacy"):
        codec_id = _LEGACY_IDS.get(codec, -1)
        if kind != "frame" or codec_id in (-1, 7, 12):
            raise FlvError(f"cannot build a {kind} body for {codec}")
        return b"".join((bytes((frame_type << 4 | codec_id,)), data))
    fourcc = codec.encode("latin-1", "replace")
    if len(fourcc) != 4:
        raise FlvError(f"bad video FourCC {codec!r}")
    b0 = 0x80 | frame_type << 4 | packet
    if kind == "frame" and codec in _CTS_FOURCCS:
        head = _EX_CTS.pack(b0, fourcc, cts >> 16 & 0xFF, cts & 0xFFFF)
    elif cts:
        raise FlvError(f"{codec} frames carry no composition time offset")
    else:
        head = _EX.pack(b0, fourcc)
    return b"".join((head, data))


def parse_audio_body(body: bytes) -> AudioBody | None:
    """Decode an AUDIODATA body; None for payloads to skip (silence, sequence end, ...)."""
    if not body:
        return None  # the undocumented "audio silence" message (e.g. Wowza)
    b0 = body[0]
    fmt, low = b0 >> 4, b0 & 0x0F
    if fmt == SoundFormat.AAC:
        if len(body) < 2:
            raise FlvError("truncated AAC audio header")
        if body[1] == AacPacketType.SEQUENCE_HEADER:
            return AudioBody("mp4a", "config", body[2:], low)
        if body[1] == AacPacketType.RAW:
            return AudioBody("mp4a", "frame", body[2:], low)
        raise FlvError(f"unknown AACPacketType {body[1]}")
    if fmt != SoundFormat.EX_HEADER:
        codec = "mp3" if fmt == SoundFormat.MP3 else f"legacy{fmt}"
        return AudioBody(codec, "frame", body[1:], low)
    pos, packet = _skip_mod_ex(body, low)
    if packet in (2, 4, 5):
        return None  # SequenceEnd, MultichannelConfig, Multitrack
    if packet not in (AudioPacketType.SEQUENCE_START, AudioPacketType.CODED_FRAMES):
        raise FlvError(f"unknown AudioPacketType {packet}")
    if len(body) < pos + 4:
        raise FlvError("truncated enhanced audio header")
    codec = body[pos : pos + 4].decode("latin-1")
    kind: AudioKind = "config" if packet == AudioPacketType.SEQUENCE_START else "frame"
    return AudioBody("mp3" if codec == ".mp3" else codec, kind, body[pos + 4 :], 0)


def build_audio_body(codec: str, *, kind: AudioKind, data: bytes, sound_flags: int = 0x0F) -> bytes:
    """Encode an AUDIODATA body: legacy for mp4a (0xAF = AAC; rate/size/type are ignored by
    AAC decoders), mp3 (0x2F) and legacyN; enhanced ExHeader for FourCCs such as "Opus"."""
    if kind not in ("config", "frame"):
        raise FlvError(f"unknown audio body kind {kind!r}")
    flags = sound_flags & 0x0F
    if codec == "mp4a":
        packet = AacPacketType.SEQUENCE_HEADER if kind == "config" else AacPacketType.RAW
        return b"".join((bytes((SoundFormat.AAC << 4 | flags, packet)), data))
    if codec == "mp3" or codec.startswith("legacy"):
        fmt = SoundFormat.MP3 if codec == "mp3" else _LEGACY_IDS.get(codec, -1)
        if kind != "frame" or fmt in (-1, 9, 10):
            raise FlvError(f"cannot build a {kind} body for {codec}")
        return b"".join((bytes((fmt << 4 | flags,)), data))
    fourcc = codec.encode("latin-1", "replace")
    if len(fourcc) != 4:
        raise FlvError(f"bad audio FourCC {codec!r}")
    ex_packet = AudioPacketType.SEQUENCE_START if kind == "config" else AudioPacketType.CODED_FRAMES
    return b"".join((_EX.pack(SoundFormat.EX_HEADER << 4 | ex_packet, fourcc), data))
