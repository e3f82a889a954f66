"""A struct-based ISOBMFF box writer for CMAF init segments and fragments.

Sections cited are ISO/IEC 14496-12:2015 (ISOBMFF) unless said otherwise; 14496-1 (MPEG-4
Systems) for the esds descriptors, 14496-14 (MP4) for mp4a/esds, 14496-15 for avcC/hvcC,
"Encapsulation of Opus in ISOBMFF" (opus-codec.org, v0.8.1) for dOps, and AV1-ISOBMFF for av1C.

Init segments follow RFC 8216 §3.3 and CMAF (ISO/IEC 23000-19) §7: empty sample tables, zero
durations, mvex after the last trak, one self-contained dref entry, no edit list. Fragments are
moof{mfhd, traf{tfhd(default-base-is-moof), tfdt v1, trun v1}...} + one mdat. Only
Mp4WriteError is raised.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence


class Mp4WriteError(ValueError):
    """Input that cannot be written as MP4 (out-of-range field, missing config, ...)."""


class TkhdFlags(IntFlag):
    """TrackHeaderBox flags (§8.3.2.3)."""

    ENABLED = 0x000001
    IN_MOVIE = 0x000002
    IN_PREVIEW = 0x000004


class TfhdFlags(IntFlag):
    """TrackFragmentHeaderBox tf_flags (§8.8.7.1)."""

    BASE_DATA_OFFSET = 0x000001
    SAMPLE_DESCRIPTION_INDEX = 0x000002
    DEFAULT_SAMPLE_DURATION = 0x000008
    DEFAULT_SAMPLE_SIZE = 0x000010
    DEFAULT_SAMPLE_FLAGS = 0x000020
    DURATION_IS_EMPTY = 0x010000
    DEFAULT_BASE_IS_MOOF = 0x020000  # offsets count from the moof: what CMAF requires (§7.5.16)


class TrunFlags(IntFlag):
    """TrackRunBox tr_flags (§8.8.8.1)."""

    DATA_OFFSET = 0x000001
    FIRST_SAMPLE_FLAGS = 0x000004
    SAMPLE_DURATION = 0x000100
    SAMPLE_SIZE = 0x000200
    SAMPLE_FLAGS = 0x000400
    SAMPLE_CTS_OFFSET = 0x000800  # signed in version 1


# Sample flags (§8.8.3.1): is_leading(2) depends_on(2) is_depended_on(2) has_redundancy(2)
# padding(3) is_non_sync_sample(1) degradation_priority(16).
SAMPLE_SYNC: Final = 0x02000000  # depends_on = 2 (an I picture), non-sync bit clear
SAMPLE_NON_SYNC: Final = 0x01010000  # depends_on = 1, is_non_sync_sample = 1

HANDLER_VIDEO: Final = b"vide"
HANDLER_AUDIO: Final = b"soun"

# ftyp: iso6 is the lowest brand with tfdt/default-base-is-moof semantics that RFC 8216 §3.3
# asks of fMP4 HLS; cmfc marks a CMAF track file (23000-19 §7.2); dash says the file obeys the
# DASH ISOBMFF segment format (23009-1 §6.3.4.2); mp41 lets older MP4 readers accept it. Not
# cmf2: it demands constraints (e.g. per-fragment styp) this writer does not promise.
MAJOR_BRAND: Final = b"iso6"
COMPATIBLE_BRANDS: Final = (b"iso6", b"cmfc", b"mp41", b"dash")

MOVIE_TIMESCALE: Final = 1000  # mvhd; durations are all 0 in a live init segment
_UNITY_MATRIX: Final = struct.pack(">9i", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
_LANGUAGE_UND: Final = 0x55C4  # "und" packed as three 5-bit letters (§8.4.2.3)
_U32_MAX: Final = 0xFFFFFFFF


# ---------------------------------------------------------------------------- primitives


def box(fourcc: bytes, *parts: bytes) -> bytes:
    """A box: 32-bit size (64-bit largesize when needed, §4.2), type, payload."""
    if len(fourcc) != 4:
        raise Mp4WriteError(f"box type {fourcc!r} is not four bytes")
    size = 8 + sum(len(p) for p in parts)
    if size > _U32_MAX:
        return b"".join((struct.pack(">I4sQ", 1, fourcc, size + 8), *parts))
    return b"".join((struct.pack(">I4s", size, fourcc), *parts))


def full_box(fourcc: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    """A FullBox (§4.2): version(8) and flags(24) before the payload."""
    if not 0 <= version <= 0xFF or not 0 <= flags <= 0xFFFFFF:
        raise Mp4WriteError(f"{fourcc!r}: version {version} / flags {flags:#x} out of range")
    return box(fourcc, struct.pack(">I", version << 24 | flags), *parts)


def _check(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise Mp4WriteError(f"{name} {value} out of range [{low}, {high}]")
    return value


# ---------------------------------------------------------------------------- init segment


@dataclass(frozen=True, slots=True)
class InitTrack:
    """One trak of an init segment; sample_entry is a built entry (avc1(...), mp4a(...))."""

    track_id: int
    handler: bytes  # HANDLER_VIDEO or HANDLER_AUDIO
    timescale: int
    sample_entry: bytes
    width: int = 0
    height: int = 0


def ftyp(major: bytes = MAJOR_BRAND, minor: int = 0,
         compatible: Sequence[bytes] = COMPATIBLE_BRANDS) -> bytes:
    """FileTypeBox (§4.3)."""
    return box(b"ftyp", major, struct.pack(">I", minor), *compatible)


def mvhd(next_track_id: int, timescale: int = MOVIE_TIMESCALE) -> bytes:
    """MovieHeaderBox v0 (§8.2.2): times and duration 0, rate 1.0, volume 1.0."""
    return full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIIIIH10x", 0, 0, timescale, 0, 0x00010000, 0x0100),
        _UNITY_MATRIX, bytes(24), struct.pack(">I", next_track_id),
    )  # fmt: skip


def tkhd(track: InitTrack) -> bytes:
    """TrackHeaderBox v0 (§8.3.2): enabled, in movie and preview; size as 16.16 fixed point."""
    volume = 0x0100 if track.handler == HANDLER_AUDIO else 0
    flags = TkhdFlags.ENABLED | TkhdFlags.IN_MOVIE | TkhdFlags.IN_PREVIEW
    return full_box(
        b"tkhd", 0, flags,
        struct.pack(">III4xI8xhhh2x", 0, 0, track.track_id, 0, 0, 0, volume),
        _UNITY_MATRIX,
        struct.pack(">II", _check("width", track.width, 0, 0xFFFF) << 16,
                    _check("height", track.height, 0, 0xFFFF) << 16),
    )  # fmt: skip


def mdhd(timescale: int) -> bytes:
    """MediaHeaderBox v0 (§8.4.2): the track's timescale, duration 0, language "und"."""
    _check("timescale", timescale, 1, _U32_MAX)
    return full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, 0, _LANGUAGE_UND, 0))


def hdlr(handler: bytes) -> bytes:
    """HandlerBox (§8.4.3) with a NUL-terminated name."""
    name = b"VideoHandler" if handler == HANDLER_VIDEO else b"SoundHandler"
    return full_box(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, handler), name, b"\x00")


def _minf(track: InitTrack) -> bytes:
    if track.handler == HANDLER_VIDEO:
        media_header = full_box(b"vmhd", 0, 1, bytes(8))  # §12.1.2: flags must be 1
    else:
        media_header = full_box(b"smhd", 0, 0, bytes(4))  # §12.2.2: balance 0
    # One "url " entry with flag 1: the media is in this file (RFC 8216: no external refs).
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), track.sample_entry),
        full_box(b"stts", 0, 0, bytes(4)),  # entry_count 0: samples live in fragments
        full_box(b"stsc", 0, 0, bytes(4)),
        full_box(b"stsz", 0, 0, bytes(8)),  # sample_size 0, sample_count 0
        full_box(b"stco", 0, 0, bytes(4)),
    )
    return box(b"minf", media_header, dinf, stbl)


def trak(track: InitTrack) -> bytes:
    """TrackBox (§8.3.1): tkhd + mdia{mdhd, hdlr, minf}."""
    return box(b"trak", tkhd(track),
               box(b"mdia", mdhd(track.timescale), hdlr(track.handler), _minf(track)))


def trex(track_id: int, default_sample_flags: int) -> bytes:
    """TrackExtendsBox (§8.8.3): sample description 1; durations/sizes always come in trun."""
    return full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, default_sample_flags))


def moov(tracks: Sequence[InitTrack]) -> bytes:
    """MovieBox: mvhd, one trak per track, then mvex with a trex per track."""
    if not tracks:
        raise Mp4WriteError("an init segment needs at least one track")
    default_flags = {HANDLER_VIDEO: SAMPLE_NON_SYNC, HANDLER_AUDIO: SAMPLE_SYNC}
    return box(
        b"moov",
        mvhd(max(t.track_id for t in tracks) + 1),
        *(trak(t) for t in tracks),
        box(b"mvex", *(trex(t.track_id, default_flags.get(t.handler, SAMPLE_SYNC))
                       for t in tracks)),
    )


def init_segment(tracks: Sequence[InitTrack]) -> bytes:
    """ftyp + moov: the CMAF header that precedes every fragment."""
    return ftyp() + moov(tracks)


# ---------------------------------------------------------------------------- sample entries


def visual_sample_entry(fourcc: bytes, width: int, height: int, *children: bytes) -> bytes:
    """VisualSampleEntry (§12.1.3): 72 dpi, one frame per sample, depth 24."""
    return box(
        fourcc,
        struct.pack(">6xH16xHHIIIH32xHh", 1, _check("width", width, 0, 0xFFFF),
                    _check("height", height, 0, 0xFFFF), 0x00480000, 0x00480000, 0, 1,
                    0x0018, -1),
        *children,
    )  # fmt: skip


def audio_sample_entry(fourcc: bytes, channels: int, sample_rate: int, *children: bytes) -> bytes:
    """AudioSampleEntry v0 (§12.2.3); samplerate is 16.16, so rates above 65535 write 0."""
    rate = sample_rate << 16 if 0 < sample_rate <= 0xFFFF else 0
    return box(
        fourcc,
        struct.pack(">6xH8xHHHHI", 1, _check("channel count", channels, 0, 0xFFFF), 16, 0, 0,
                    rate),
        *children,
    )  # fmt: skip


def avc1(avcc: bytes, width: int, height: int) -> bytes:
    """H.264 sample entry with the AVCDecoderConfigurationRecord as carried on the bus."""
    return visual_sample_entry(b"avc1", width, height, box(b"avcC", avcc))


def hvc1(hvcc: bytes, width: int, height: int) -> bytes:
    """H.265 sample entry (14496-15 §8.4.1): hvc1 = parameter sets in hvcC only (Apple's rule)."""
    return visual_sample_entry(b"hvc1", width, height, box(b"hvcC", hvcc))


def av01(av1c: bytes, width: int, height: int) -> bytes:
    """AV1 sample entry with the AV1CodecConfigurationRecord (AV1-ISOBMFF §2.3)."""
    return visual_sample_entry(b"av01", width, height, box(b"av1C", av1c))


def mp4a(asc: bytes, channels: int, sample_rate: int) -> bytes:
    """AAC sample entry (14496-14 §5.6): channel count 2 when a PCE defines the layout."""
    return audio_sample_entry(b"mp4a", channels or 2, sample_rate, esds(asc))


def opus(opus_head: bytes) -> bytes:
    """Opus sample entry: channels from the OpusHead, samplerate always 48000 (Opus §4.3.1)."""
    dops_box = dops(opus_head)
    return audio_sample_entry(b"Opus", dops_box[9], 48000, dops_box)


# ---------------------------------------------------------------------------- esds, dOps


class DescriptorTag(IntEnum):
    """Descriptor class tags (14496-1 §7.2.2.1, Table 1)."""

    ES = 0x03
    DECODER_CONFIG = 0x04
    DECODER_SPECIFIC_INFO = 0x05
    SL_CONFIG = 0x06


OBJECT_TYPE_AAC: Final = 0x40  # objectTypeIndication "Audio ISO/IEC 14496-3" (14496-1 Table 5)
STREAM_TYPE_AUDIO: Final = 0x05  # AudioStream (14496-1 Table 6)
SL_PREDEFINED_MP4: Final = 0x02  # SLConfigDescriptor predefined: reserved for MP4 files


def expandable_size(n: int) -> bytes:
    """sizeOfInstance (14496-1 §8.3.3): 7 bits a byte, high bit = more bytes follow."""
    _check("descriptor size", n, 0, (1 << 28) - 1)
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | n & 0x7F)
        n >>= 7
    return bytes(reversed(out))


def descriptor(tag: int, *parts: bytes) -> bytes:
    """An MPEG-4 Systems descriptor: tag, expandable size, payload."""
    payload = b"".join(parts)
    return bytes((tag,)) + expandable_size(len(payload)) + payload


def esds(asc: bytes, *, max_bitrate: int = 0, avg_bitrate: int = 0) -> bytes:
    """ES_Descriptor{DecoderConfig{0x40, AudioStream, DecoderSpecificInfo=ASC}, SLConfig{2}}.

    ES_ID is 0: 14496-14 §3.1.2 says it is stored as 0 and the track ID stands for it.
    """
    decoder_config = descriptor(
        DescriptorTag.DECODER_CONFIG,
        # streamType(6) upStream(1) reserved(1) = 1 -> 0x15; bufferSizeDB 0 (unknown).
        struct.pack(">BB3sII", OBJECT_TYPE_AAC, STREAM_TYPE_AUDIO << 2 | 1, bytes(3),
                    max_bitrate, avg_bitrate),
        descriptor(DescriptorTag.DECODER_SPECIFIC_INFO, asc),
    )
    es = descriptor(DescriptorTag.ES, struct.pack(">HB", 0, 0), decoder_config,
                    descriptor(DescriptorTag.SL_CONFIG, bytes((SL_PREDEFINED_MP4,))))
    return full_box(b"esds", 0, 0, es)


def dops(opus_head: bytes) -> bytes:
    """OpusSpecificBox from an OpusHead (RFC 7845 §5.1): same fields, but big-endian."""
    if len(opus_head) < 19 or opus_head[:8] != b"OpusHead":
        raise Mp4WriteError("not an OpusHead identification header")
    channels, pre_skip, rate, gain, family = struct.unpack_from("<BHIhB", opus_head, 9)
    fields = struct.pack(">BBHIhB", 0, channels, pre_skip, rate, gain, family)
    if family != 0:
        table = opus_head[19 : 21 + channels]  # StreamCount, CoupledCount, ChannelMapping
        if len(table) != 2 + channels:
            raise Mp4WriteError("OpusHead channel mapping table truncated")
        fields += table
    return box(b"dOps", fields)


# ---------------------------------------------------------------------------- fragments


@dataclass(frozen=True, slots=True)
class Sample:
    """One trun entry; cts = composition minus decode time, signed (trun v1)."""

    duration: int
    size: int
    flags: int = SAMPLE_SYNC
    cts: int = 0


@dataclass(frozen=True, slots=True)
class TrackRun:
    """One traf: the samples of one track in a fragment and their bytes, back to back."""

    track_id: int
    base_decode_time: int  # tfdt, in the track's timescale
    samples: Sequence[Sample]
    data: bytes


def mfhd(sequence: int) -> bytes:
    """MovieFragmentHeaderBox (§8.8.5); sequence numbers start at 1 and increase."""
    return full_box(b"mfhd", 0, 0, struct.pack(">I", _check("sequence", sequence, 1, _U32_MAX)))


def tfhd(track_id: int) -> bytes:
    """TrackFragmentHeaderBox with default-base-is-moof and no defaults (CMAF §7.5.16)."""
    return full_box(b"tfhd", 0, TfhdFlags.DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))


def tfdt(base_decode_time: int) -> bytes:
    """TrackFragmentBaseMediaDecodeTimeBox v1: 64 bits, as 32 overflow after 13 h at 90 kHz."""
    _check("baseMediaDecodeTime", base_decode_time, 0, (1 << 64) - 1)
    return full_box(b"tfdt", 1, 0, struct.pack(">Q", base_decode_time))


def trun(samples: Sequence[Sample], data_offset: int) -> bytes:
    """TrackRunBox v1 with data offset, duration, size, flags; signed CTS only when needed."""
    with_cts = any(s.cts for s in samples)
    flags = (TrunFlags.DATA_OFFSET | TrunFlags.SAMPLE_DURATION | TrunFlags.SAMPLE_SIZE
             | TrunFlags.SAMPLE_FLAGS | (TrunFlags.SAMPLE_CTS_OFFSET if with_cts else 0))
    entry = struct.Struct(">IIIi" if with_cts else ">III")
    try:
        entries = [entry.pack(s.duration, s.size, s.flags, s.cts) if with_cts
                   else entry.pack(s.duration, s.size, s.flags) for s in samples]
        head = struct.pack(">Ii", len(samples), data_offset)
    except struct.error as exc:
        raise Mp4WriteError(f"trun field out of range: {exc}") from None
    return full_box(b"trun", 1, flags, head, *entries)


def _traf(run: TrackRun, data_offset: int) -> bytes:
    return box(b"traf", tfhd(run.track_id), tfdt(run.base_decode_time),
               trun(run.samples, data_offset))


def mdat_header(payload_size: int) -> bytes:
    """The 8-byte mdat header, or 16 bytes with a 64-bit largesize (§4.2)."""
    if payload_size + 8 <= _U32_MAX:
        return struct.pack(">I4s", payload_size + 8, b"mdat")
    return struct.pack(">I4sQ", 1, b"mdat", payload_size + 16)


def moof(sequence: int, runs: Sequence[TrackRun]) -> bytes:
    """MovieFragmentBox for runs whose data follow in one mdat, in the order given.

    Each trun's data_offset counts from the first byte of this moof (default-base-is-moof)
    to its track's first sample, past the mdat header and the earlier tracks' data.
    """
    if not runs:
        raise Mp4WriteError("a fragment needs at least one track run")
    for run in runs:
        if sum(s.size for s in run.samples) != len(run.data):
            raise Mp4WriteError(f"track {run.track_id}: sample sizes do not add up to its data")
    # Offsets never change the moof's size, so size it once with zeros, then write it.
    size = len(box(b"moof", mfhd(sequence), *(_traf(run, 0) for run in runs)))
    offset = size + len(mdat_header(sum(len(run.data) for run in runs)))
    trafs = []
    for run in runs:
        trafs.append(_traf(run, offset))
        offset += len(run.data)
    return box(b"moof", mfhd(sequence), *trafs)


def fragment(sequence: int, runs: Sequence[TrackRun]) -> bytes:
    """moof + mdat: one CMAF chunk/fragment."""
    total = sum(len(run.data) for run in runs)
    return b"".join((moof(sequence, runs), mdat_header(total), *(run.data for run in runs)))
