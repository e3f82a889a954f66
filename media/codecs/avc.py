"""H.264/AVC configuration: avcC records (ISO/IEC 14496-15 §5.3.3) and SPS (H.264 §7.3.2.1.1,
with the reorder depth from its VUI, §E.1.1).

Everything here is bounded by the input length; malformed input raises CodecError only.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from enum import IntEnum

from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

__all__ = [
    "AvcConfig",
    "CodecError",
    "NalType",
    "SpsInfo",
    "annexb_to_avcc",
    "build_avcc",
    "codec_string",
    "parse_avcc",
    "parse_sps",
    "reorder_depth",
    "split_avcc",
]


class NalType(IntEnum):
    """nal_unit_type values used here (H.264 Table 7-1)."""

    SLICE = 1
    IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9
    END_OF_SEQUENCE = 10
    SPS_EXT = 13


# Profiles whose SPS carries chroma/bit-depth/scaling fields (H.264 §7.3.2.1.1).
_HIGH_SPS_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# Profiles whose avcC carries the chroma/bit-depth extension (ISO/IEC 14496-15 §5.3.3.1.2).
_AVCC_EXT_PROFILES = frozenset({100, 110, 122, 144})
# Profile whose pictures are never reordered: Baseline has no B slices (H.264 §A.2.1).
_BASELINE = 66
# max_num_reorder_frames <= max_dec_frame_buffering <= MaxDpbFrames <= 16 (H.264 §E.2.1, A.3.1).
_MAX_REORDER_FRAMES = 16
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """AVCDecoderConfigurationRecord. Extension fields are None when the record omits them."""

    profile: int
    compatibility: int
    level: int
    nal_length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    chroma_format: int | None = None
    bit_depth_luma: int | None = None
    bit_depth_chroma: int | None = None
    sps_ext: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SpsInfo:
    """The SPS fields muxers and status pages need; width/height are after cropping."""

    profile_idc: int
    level_idc: int
    width: int
    height: int
    chroma_format_idc: int
    constraint_flags: int = 0
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8
    frame_mbs_only: bool = True
    # VUI bitstream_restriction: how many frames decode order may run ahead of output order.
    max_num_reorder_frames: int | None = None


def _read_nals(record: bytes, pos: int, count: int) -> tuple[tuple[bytes, ...], int]:
    nals = []
    for _ in range(count):
        if pos + 2 > len(record):
            raise CodecError("avcC truncated in a parameter set length")
        (size,) = _U16.unpack_from(record, pos)
        pos += 2
        if pos + size > len(record):
            raise CodecError("avcC parameter set overruns the record")
        nals.append(record[pos : pos + size])
        pos += size
    return tuple(nals), pos


def parse_avcc(record: bytes) -> AvcConfig:
    """Parse an AVCDecoderConfigurationRecord (the legacy FLV AVC sequence header body)."""
    if len(record) < 7:
        raise CodecError(f"avcC too short ({len(record)} bytes)")
    if record[0] != 1:
        raise CodecError(f"unsupported avcC configurationVersion {record[0]}")
    profile, compat, level = record[1], record[2], record[3]
    nal_length_size = (record[4] & 0x03) + 1
    if nal_length_size == 3:
        raise CodecError("avcC lengthSizeMinusOne 2 is not allowed")
    sps, pos = _read_nals(record, 6, record[5] & 0x1F)
    if pos >= len(record):
        raise CodecError("avcC truncated before numOfPictureParameterSets")
    pps, pos = _read_nals(record, pos + 1, record[pos])
    cfg = AvcConfig(profile, compat, level, nal_length_size, sps, pps)
    if profile in _AVCC_EXT_PROFILES and len(record) - pos >= 4:
        # Many encoders omit or truncate this extension; it only restates the SPS, so a
        # broken one is ignored rather than failing the whole stream.
        try:
            ext, _ = _read_nals(record, pos + 4, record[pos + 3])
        except CodecError:
            return cfg
        return AvcConfig(
            profile, compat, level, nal_length_size, sps, pps,
            chroma_format=record[pos] & 0x03,
            bit_depth_luma=(record[pos + 1] & 0x07) + 8,
            bit_depth_chroma=(record[pos + 2] & 0x07) + 8,
            sps_ext=ext,
        )  # fmt: skip
    return cfg


def build_avcc(sps: list[bytes], pps: list[bytes]) -> bytes:
    """Build an avcC with 4-byte NAL lengths; high profiles get the chroma/bit-depth extension."""
    if not sps or len(sps[0]) < 4:
        raise CodecError("avcC needs at least one SPS of 4+ bytes")
    if len(sps) > 31 or len(pps) > 255:
        raise CodecError("too many parameter sets for avcC")
    if any(len(nal) > 0xFFFF for nal in (*sps, *pps)):
        raise CodecError("parameter set larger than 65535 bytes")
    first = sps[0]
    parts = [bytes((1, first[1], first[2], first[3], 0xFF, 0xE0 | len(sps)))]
    parts.extend(_U16.pack(len(nal)) + nal for nal in sps)
    parts.append(bytes((len(pps),)))
    parts.extend(_U16.pack(len(nal)) + nal for nal in pps)
    if first[1] in _AVCC_EXT_PROFILES:
        info = parse_sps(first)
        parts.append(
            bytes(
                (
                    0xFC | info.chroma_format_idc,
                    0xF8 | (info.bit_depth_luma - 8),
                    0xF8 | (info.bit_depth_chroma - 8),
                    0,
                )
            )
        )
    return b"".join(parts)


def codec_string(cfg: AvcConfig) -> str:
    """RFC 6381 codecs parameter, e.g. "avc1.64001f" (for HLS/DASH manifests)."""
    return f"avc1.{cfg.profile:02x}{cfg.compatibility:02x}{cfg.level:02x}"


def _unescape(nal_payload: bytes) -> bytes:
    # Emulation prevention (H.264 §7.4.1): drop the 0x03 of every 00 00 03. Non-overlapping
    # replace matches the spec because the zero run restarts after each removed byte.
    return nal_payload.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se()) & 0xFF
        last = nxt or last


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse a sequence parameter set NAL unit (with its 1-byte NAL header)."""
    if len(nal) < 4 or nal[0] & 0x1F != NalType.SPS:
        raise CodecError("not an SPS NAL unit")
    rbsp = _unescape(nal[1:])
    profile, constraints, level = rbsp[0], rbsp[1], rbsp[2]
    r = BitReader(rbsp[3:])
    if r.ue() > 31:
        raise CodecError("seq_parameter_set_id out of range")
    chroma, separate_planes, depth_luma, depth_chroma = 1, False, 8, 8
    if profile in _HIGH_SPS_PROFILES:
        chroma = r.ue()
        if chroma > 3:
            raise CodecError(f"chroma_format_idc {chroma} out of range")
        if chroma == 3:
            separate_planes = r.flag()
        depth_luma, depth_chroma = r.ue() + 8, r.ue() + 8
        if depth_luma > 14 or depth_chroma > 14:
            raise CodecError("bit depth out of range")
        r.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.flag():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    if r.ue() > 12:
        raise CodecError("log2_max_frame_num_minus4 out of range")
    poc_type = r.ue()
    if poc_type == 0:
        if r.ue() > 12:
            raise CodecError("log2_max_pic_order_cnt_lsb_minus4 out of range")
    elif poc_type == 1:
        r.skip(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()
        if cycle > 255:
            raise CodecError("num_ref_frames_in_pic_order_cnt_cycle out of range")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise CodecError(f"pic_order_cnt_type {poc_type} out of range")
    r.ue()  # max_num_ref_frames
    r.skip(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs, height_units = r.ue() + 1, r.ue() + 1
    frame_mbs_only = r.flag()
    if not frame_mbs_only:
        r.skip(1)  # mb_adaptive_frame_field_flag
    r.skip(1)  # direct_8x8_inference_flag
    width, height = width_mbs * 16, height_units * 16 * (2 - frame_mbs_only)
    if r.flag():  # frame_cropping_flag; crop units from H.264 Table 6-1 and eq. 7-19..7-22
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        if chroma == 0 or separate_planes:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            unit_x = 1 if chroma == 3 else 2
            unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise CodecError("SPS cropping exceeds the picture size")
    reorder = None
    # The fields above stand on their own; a cut or garbled VUI only loses the reorder depth.
    with contextlib.suppress(CodecError):
        if r.flag():  # vui_parameters_present_flag
            reorder = _vui_reorder_frames(r)
    return SpsInfo(
        profile, level, width, height, chroma, constraints,
        depth_luma, depth_chroma, frame_mbs_only, reorder,
    )  # fmt: skip


def _skip_hrd_parameters(r: BitReader) -> None:
    """H.264 §E.1.2."""
    cpb_count = r.ue() + 1
    if cpb_count > 32:
        raise CodecError("cpb_cnt_minus1 out of range")
    r.skip(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(cpb_count):
        r.ue()  # bit_rate_value_minus1
        r.ue()  # cpb_size_value_minus1
        r.skip(1)  # cbr_flag
    r.skip(20)  # four delay/offset lengths of 5 bits each


def _vui_reorder_frames(r: BitReader) -> int | None:
    """max_num_reorder_frames from vui_parameters() (H.264 §E.1.1); None without
    bitstream_restriction."""
    if r.flag() and r.u(8) == 255:  # aspect_ratio_info_present_flag, aspect_ratio_idc
        r.skip(32)  # Extended_SAR: sar_width, sar_height
    if r.flag():  # overscan_info_present_flag
        r.skip(1)  # overscan_appropriate_flag
    if r.flag():  # video_signal_type_present_flag
        r.skip(4)  # video_format, video_full_range_flag
        if r.flag():  # colour_description_present_flag
            r.skip(24)  # colour_primaries, transfer_characteristics, matrix_coefficients
    if r.flag():  # chroma_loc_info_present_flag
        r.ue()
        r.ue()
    if r.flag():  # timing_info_present_flag
        r.skip(65)  # num_units_in_tick, time_scale, fixed_frame_rate_flag
    nal_hrd = r.flag()
    if nal_hrd:
        _skip_hrd_parameters(r)
    vcl_hrd = r.flag()
    if vcl_hrd:
        _skip_hrd_parameters(r)
    if nal_hrd or vcl_hrd:
        r.skip(1)  # low_delay_hrd_flag
    r.skip(1)  # pic_struct_present_flag
    if not r.flag():  # bitstream_restriction_flag
        return None
    r.skip(1)  # motion_vectors_over_pic_boundaries_flag
    for _ in range(4):
        r.ue()  # max_bytes_per_pic_denom, max_bits_per_mb_denom, log2_max_mv_length_{h,v}
    reorder = r.ue()
    r.ue()  # max_dec_frame_buffering: must be >= reorder, but a larger reorder is the safer hint
    if reorder > _MAX_REORDER_FRAMES:
        raise CodecError(f"max_num_reorder_frames {reorder} out of range")
    return reorder


def reorder_depth(sps: SpsInfo) -> int | None:
    """How many frames decode order may run ahead of output order; None when the SPS does
    not say (the DTS rebuilder then learns it from the stream)."""
    if sps.max_num_reorder_frames is not None:
        return sps.max_num_reorder_frames
    return 0 if sps.profile_idc == _BASELINE else None


def split_avcc(data: bytes, nal_length_size: int = 4) -> list[bytes]:
    """Split length-prefixed NAL units (FLV/MP4 sample data); empty NALs are dropped."""
    if not 1 <= nal_length_size <= 4:
        raise CodecError(f"bad NAL length size {nal_length_size}")
    nals = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos + nal_length_size
        if start > end:
            raise CodecError("truncated NAL length prefix")
        size = int.from_bytes(data[pos:start], "big")
        pos = start + size
        if pos > end:
            raise CodecError("NAL unit overruns the sample")
        if size:
            nals.append(data[start:pos])
    return nals


def annexb_to_avcc(data: bytes) -> bytes:
    """Convert an Annex B byte stream (00 00 01 start codes) to 4-byte length prefixes."""
    pieces = data.split(b"\x00\x00\x01")
    if len(pieces) == 1 or pieces[0].strip(b"\x00"):
        raise CodecError("data does not start with an Annex B start code")
    out = []
    for piece in pieces[1:]:
        # Trailing zeros belong to the next 4-byte start code or trailing_zero_8bits.
        nal = piece.rstrip(b"\x00")
        if nal:
            out.append(_U32.pack(len(nal)))
            out.append(nal)
    return b"".join(out)
