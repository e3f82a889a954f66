"""H.265/HEVC configuration: SPS (H.265 §7.3.2.2) and hvcC records (ISO/IEC 14496-15 §8.3.3).

Everything here is bounded by the input length; malformed input raises CodecError only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

__all__ = [
    "CodecError",
    "HevcConfig",
    "HevcSpsInfo",
    "NalType",
    "build_hvcc",
    "codec_string",
    "is_irap",
    "nal_type",
    "parse_hvcc",
    "parse_sps",
]


class NalType(IntEnum):
    """nal_unit_type values used here (H.265 Table 7-1)."""

    TRAIL_N = 0
    TRAIL_R = 1
    BLA_W_LP = 16
    BLA_W_RADL = 17
    BLA_N_LP = 18
    IDR_W_RADL = 19
    IDR_N_LP = 20
    CRA = 21
    VPS = 32
    SPS = 33
    PPS = 34
    AUD = 35
    EOS = 36
    EOB = 37
    FD = 38
    SEI_PREFIX = 39
    SEI_SUFFIX = 40


_HVCC_HEADER_BYTES: Final = 23
# bits of the sub_layer_profile_space .. sub_layer_inbld_flag run (H.265 §7.3.3)
_SUB_LAYER_PROFILE_BITS: Final = 88


def nal_type(nal: bytes) -> int:
    """The nal_unit_type of a NAL unit (or of an RFC 7798 payload header)."""
    if not nal:
        raise CodecError("empty NAL unit")
    return (nal[0] >> 1) & 0x3F


def is_irap(kind: int) -> bool:
    """BLA, IDR and CRA, plus the two reserved IRAP types (H.265 §3.73: 16..23)."""
    return 16 <= kind <= 23


@dataclass(frozen=True, slots=True, kw_only=True)
class HevcSpsInfo:
    """The SPS fields muxers and manifests need; width/height are after cropping."""

    general_profile_space: int
    general_tier_flag: bool
    general_profile_idc: int
    general_profile_compatibility_flags: int  # 32 bits, flag[0] is the most significant
    general_constraint_indicator_flags: int  # 48 bits, progressive_source_flag first
    general_level_idc: int
    chroma_format_idc: int
    width: int
    height: int
    bit_depth_luma: int
    bit_depth_chroma: int
    max_num_reorder_pics: int  # of the highest sub-layer: the B-frame delay of the stream
    max_sub_layers: int
    temporal_id_nesting: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HevcConfig:
    """HEVCDecoderConfigurationRecord; `other` holds NAL units of any other array (SEI)."""

    general_profile_space: int
    general_tier_flag: bool
    general_profile_idc: int
    general_profile_compatibility_flags: int
    general_constraint_indicator_flags: int
    general_level_idc: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    num_temporal_layers: int
    temporal_id_nested: bool
    nal_length_size: int
    vps: tuple[bytes, ...]
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    other: tuple[bytes, ...] = ()


def _unescape(rbsp: bytes) -> bytes:
    # Emulation prevention (H.265 §7.4.2): drop the 0x03 of every 00 00 03. Non-overlapping
    # replace matches the spec because the zero run restarts after each removed byte.
    return rbsp.replace(b"\x00\x00\x03", b"\x00\x00")


def _profile_tier_level(r: BitReader, max_sub_layers_minus1: int) -> tuple[int, ...]:
    """profile_tier_level(1, maxNumSubLayersMinus1) (H.265 §7.3.3): the general fields;
    the sub-layer ones are skipped."""
    general = (r.u(2), r.u(1), r.u(5), r.u(32), r.u(48), r.u(8))
    present = [(r.flag(), r.flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.skip(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits up to 8 entries
    for profile_present, level_present in present:
        r.skip(_SUB_LAYER_PROFILE_BITS * profile_present + 8 * level_present)
    return general


def parse_sps(nal: bytes) -> HevcSpsInfo:
    """Parse a sequence parameter set NAL unit (with its 2-byte NAL header) of layer 0."""
    if len(nal) < 3 or nal_type(nal) != NalType.SPS:
        raise CodecError("not an SPS NAL unit")
    if (nal[0] & 0x01) or (nal[1] >> 3):
        raise CodecError("SPS of a layer other than 0 is not supported")
    r = BitReader(_unescape(nal[2:]))
    r.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = r.u(3)
    if max_sub_layers_minus1 == 7:
        raise CodecError("sps_max_sub_layers_minus1 7 is reserved")
    nesting = r.flag()
    space, tier, profile, compat, constraints, level = _profile_tier_level(r, max_sub_layers_minus1)
    if r.ue() > 15:
        raise CodecError("sps_seq_parameter_set_id out of range")
    chroma = r.ue()
    if chroma > 3:
        raise CodecError(f"chroma_format_idc {chroma} out of range")
    if chroma == 3:
        r.skip(1)  # separate_colour_plane_flag: SubWidthC/SubHeightC stay 1 either way
    width, height = r.ue(), r.ue()
    if r.flag():  # conformance_window_flag; offsets in chroma units (H.265 Table 6-1)
        sub_width = 2 if chroma in (1, 2) else 1
        sub_height = 2 if chroma == 1 else 1
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
    if width <= 0 or height <= 0:
        raise CodecError("SPS picture size is empty after cropping")
    depth_luma, depth_chroma = r.ue() + 8, r.ue() + 8
    if depth_luma > 16 or depth_chroma > 16:
        raise CodecError("bit depth out of range")
    if r.ue() > 12:
        raise CodecError("log2_max_pic_order_cnt_lsb_minus4 out of range")
    # With sps_sub_layer_ordering_info_present_flag = 0 only the highest sub-layer is sent;
    # either way the last values read are the highest sub-layer's.
    reorder = 0
    for _ in range(0 if r.flag() else max_sub_layers_minus1, max_sub_layers_minus1 + 1):
        dpb_minus1, reorder = r.ue(), r.ue()
        r.ue()  # sps_max_latency_increase_plus1
        if dpb_minus1 > 15 or reorder > dpb_minus1:
            raise CodecError("SPS DPB size or reorder depth out of range")
    return HevcSpsInfo(
        general_profile_space=space,
        general_tier_flag=bool(tier),
        general_profile_idc=profile,
        general_profile_compatibility_flags=compat,
        general_constraint_indicator_flags=constraints,
        general_level_idc=level,
        chroma_format_idc=chroma,
        width=width,
        height=height,
        bit_depth_luma=depth_luma,
        bit_depth_chroma=depth_chroma,
        max_num_reorder_pics=reorder,
        max_sub_layers=max_sub_layers_minus1 + 1,
        temporal_id_nesting=nesting,
    )


def _array(kind: NalType, nals: list[bytes]) -> bytes:
    if not nals:
        raise CodecError(f"hvcC needs at least one {kind.name}")
    if len(nals) > 0xFFFF:
        raise CodecError(f"too many {kind.name} NAL units for an hvcC")
    parts = [bytes((0x80 | kind,)), len(nals).to_bytes(2, "big")]  # array_completeness 1
    for nal in nals:
        if len(nal) > 0xFFFF or nal_type(nal) != kind:
            raise CodecError(f"not a {kind.name} NAL unit of at most 65535 bytes")
        parts += (len(nal).to_bytes(2, "big"), nal)
    return b"".join(parts)


def build_hvcc(vps: list[bytes], sps: list[bytes], pps: list[bytes]) -> bytes:
    """Build an hvcC with 4-byte NAL lengths; the header restates the first SPS."""
    if not sps:
        raise CodecError("hvcC needs at least one SPS")
    info = parse_sps(sps[0])
    if info.bit_depth_luma > 15 or info.bit_depth_chroma > 15:
        raise CodecError("bit depths above 15 do not fit an hvcC")
    header = bytes((
        1,  # configurationVersion
        info.general_profile_space << 6 | info.general_tier_flag << 5
        | info.general_profile_idc,
        *info.general_profile_compatibility_flags.to_bytes(4, "big"),
        *info.general_constraint_indicator_flags.to_bytes(6, "big"),
        info.general_level_idc,
        0xF0, 0x00,  # reserved 1111, min_spatial_segmentation_idc 0 (no guarantee given)
        0xFC,  # reserved, parallelismType 0 (unknown), consistent with the line above
        0xFC | info.chroma_format_idc,
        0xF8 | (info.bit_depth_luma - 8),
        0xF8 | (info.bit_depth_chroma - 8),
        0, 0,  # avgFrameRate unspecified
        # constantFrameRate 0, numTemporalLayers, temporalIdNested, lengthSizeMinusOne 3
        info.max_sub_layers << 3 | info.temporal_id_nesting << 2 | 3,
        3,  # numOfArrays
    ))  # fmt: skip
    return header + _array(NalType.VPS, vps) + _array(NalType.SPS, sps) + _array(NalType.PPS, pps)


def parse_hvcc(record: bytes) -> HevcConfig:
    """Parse an HEVCDecoderConfigurationRecord (MP4 hvcC, enhanced-RTMP sequence start)."""
    if len(record) < _HVCC_HEADER_BYTES:
        raise CodecError(f"hvcC too short ({len(record)} bytes)")
    if record[0] != 1:
        raise CodecError(f"unsupported hvcC configurationVersion {record[0]}")
    if record[21] & 0x03 == 2:
        raise CodecError("hvcC lengthSizeMinusOne 2 is not allowed")
    arrays: dict[int, list[bytes]] = {NalType.VPS: [], NalType.SPS: [], NalType.PPS: []}
    other: list[bytes] = []
    pos = _HVCC_HEADER_BYTES
    for _ in range(record[22]):
        if pos + 3 > len(record):
            raise CodecError("hvcC truncated in an array header")
        kind, count = record[pos] & 0x3F, int.from_bytes(record[pos + 1 : pos + 3], "big")
        pos += 3
        for _ in range(count):
            if pos + 2 > len(record):
                raise CodecError("hvcC truncated in a NAL unit length")
            size = int.from_bytes(record[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > len(record):
                raise CodecError("hvcC NAL unit is empty or overruns the record")
            arrays.get(kind, other).append(record[pos : pos + size])
            pos += size
    return HevcConfig(
        general_profile_space=record[1] >> 6,
        general_tier_flag=bool(record[1] & 0x20),
        general_profile_idc=record[1] & 0x1F,
        general_profile_compatibility_flags=int.from_bytes(record[2:6], "big"),
        general_constraint_indicator_flags=int.from_bytes(record[6:12], "big"),
        general_level_idc=record[12],
        chroma_format_idc=record[16] & 0x03,
        bit_depth_luma=(record[17] & 0x07) + 8,
        bit_depth_chroma=(record[18] & 0x07) + 8,
        num_temporal_layers=(record[21] >> 3) & 0x07,
        temporal_id_nested=bool(record[21] & 0x04),
        nal_length_size=(record[21] & 0x03) + 1,
        vps=tuple(arrays[NalType.VPS]),
        sps=tuple(arrays[NalType.SPS]),
        pps=tuple(arrays[NalType.PPS]),
        other=tuple(other),
    )


def codec_string(info: HevcSpsInfo | HevcConfig, sample_entry: str = "hvc1") -> str:
    """RFC 6381 codecs parameter per ISO/IEC 14496-15 Annex E.3, e.g. "hvc1.1.6.L93.B0":
    profile space letter and idc, compatibility flags bit-reversed in hex, tier and level,
    then the constraint bytes with trailing zero bytes dropped."""
    space = ("", "A", "B", "C")[info.general_profile_space]
    compat = int(f"{info.general_profile_compatibility_flags:032b}"[::-1], 2)
    tier = "H" if info.general_tier_flag else "L"
    constraints = info.general_constraint_indicator_flags.to_bytes(6, "big").rstrip(b"\x00")
    return ".".join([
        sample_entry, f"{space}{info.general_profile_idc}", f"{compat:X}",
        f"{tier}{info.general_level_idc}", *(f"{b:02X}" for b in constraints),
    ])  # fmt: skip
