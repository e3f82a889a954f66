"""HEVC parsers (SPS, hvcC) and the codec string: real vectors, hand-made edge cases, fuzzing.

The parameter sets were made once with imageio-ffmpeg's ffmpeg 9.0.2 and libx265 4.3 (build
217) and are the first VPS/SPS/PPS of each stream:

    ffmpeg -f lavfi -i testsrc2=size=WxH:rate=25 -t 1 [-pix_fmt P] -c:v libx265 \
           [-x265-params X] -f hevc out.h265

The hvcC bytes are what `ffmpeg -i out.h265 -c copy -tag:v hvc1 out.mp4` wrote. x265's
defaults (bframes=4 with b-pyramid) give sps_max_num_reorder_pics 2; PyAV agrees on the
profile, level and size of each stream.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.codecs import hevc
from media.codecs.errors import CodecError
from tests.media.test_codecs import BitWriter, escape


@dataclass(frozen=True)
class Stream:
    vps: bytes
    sps: bytes
    pps: bytes
    hvcc_header: bytes  # the first 23 bytes of ffmpeg's hvcC, up to numOfArrays
    codec: str
    # profile_idc, level_idc, width, height, chroma_format_idc, bit depths,
    # max_num_reorder_pics, max_sub_layers, temporal_id_nesting, tier
    fields: tuple[int, ...]


def _stream(vps: str, sps: str, pps: str, header: str, codec: str, *fields: int) -> Stream:
    return Stream(bytes.fromhex(vps), bytes.fromhex(sps), bytes.fromhex(pps),
                  bytes.fromhex(header), codec, fields)


STREAMS = {
    # 320x240, default settings: Main, level 2 (60).
    "main": _stream(
        "40010c01ffff01600000030090000003000003003c959809",
        "42010101600000030090000003000003003ca00a080f165959a4932bc05a020000030002000003003210",
        "4401c172b46240",
        "0101600000009000000000003cf000fcfdf8f800000f03",
        "hvc1.1.6.L60.90", 1, 60, 320, 240, 1, 8, 8, 2, 1, 1, 0),
    # 640x360, -pix_fmt yuv420p10le: Main 10.
    "main10": _stream(
        "40010c01ffff02200000030090000003000003003f959809",
        "42010102200000030090000003000003003fa005020169365959a4932bc05a020000030002000003003210",
        "4401c172b46240",
        "0102200000009000000000003ff000fcfdfafa00000f03",
        "hvc1.2.4.L63.90", 2, 63, 640, 360, 1, 10, 10, 2, 1, 1, 0),
    # 650x362, -pix_fmt yuv422p10le: RExt (Main 4:2:2 10), coded 656x368 and cropped.
    "422_10": _stream(
        "40010c01ffff0408000003009d0800000300003f959809",
        "4201010408000003009d0800000300003fb005220171c93b65959a4932bc05a02000000300200000030321",
        "4401c172b46240",
        "0104080000009d08000000003ff000fcfefafa00000f03",
        "hvc1.4.10.L63.9D.08", 4, 63, 650, 362, 2, 10, 10, 2, 1, 1, 0),
    # 330x250, -pix_fmt yuv444p: RExt (Main 4:4:4), cropped in luma units.
    "444": _stream(
        "40010c01ffff0408000003009e0800000300003c959809",
        "4201010408000003009e0800000300003c9001510080e79f2cacd24995e02d010000030001000003001908",
        "4401c172860c4624",
        "0104080000009e08000000003cf000fcfff8f800000f03",
        "hvc1.4.10.L60.9E.08", 4, 60, 330, 250, 3, 8, 8, 2, 1, 1, 0),
    # 320x240, -x265-params temporal-layers=3: sub-layer PTL fields, no temporal nesting.
    "temporal": _stream(
        "40010c04ffff01600000030090000003000003003c00009594aca5650240",
        "42010401600000030090000003000003003c0000a00a080f1659594aca565924caf016808000000300800000"
        "0c84",
        "4401c172b46240",
        "0101600000009000000000003cf000fcfdf8f800001b03",
        "hvc1.1.6.L60.90", 1, 60, 320, 240, 1, 8, 8, 2, 3, 0, 0),
    # 192x108, -x265-params bframes=0:level-idc=4.1:high-tier=1: no reordering, cropped.
    "high_tier": _stream(
        "40010c01ffff21600000030090000003000003007b928090",
        "42010121600000030090000003000003007ba0182071f7964a924caf016808000003000800000300c840",
        "4401c172b46240",
        "0121600000009000000000007bf000fcfdf8f800000f03",
        "hvc1.1.6.H123.90", 1, 123, 192, 108, 1, 8, 8, 0, 1, 1, 1),
}
MAIN = STREAMS["main"]
# ffmpeg's whole hvcC for "main": header, then the VPS, SPS and PPS arrays.
FFMPEG_HVCC_MAIN = bytes.fromhex(
    "0101600000009000000000003cf000fcfdf8f800000f03a00001001840010c01ffff01600000030090000003"
    "000003003c959809a10001002a42010101600000030090000003000003003ca00a080f165959a4932bc05a02"
    "0000030002000003003210a2000100074401c172b46240"
)


def test_nal_type_and_irap() -> None:
    assert [hevc.nal_type(s) for s in (MAIN.vps, MAIN.sps, MAIN.pps)] == [32, 33, 34]
    assert hevc.nal_type(b"\x26\x01") == hevc.NalType.IDR_W_RADL
    assert [k for k in range(64) if hevc.is_irap(k)] == list(range(16, 24))
    with pytest.raises(CodecError):
        hevc.nal_type(b"")


@pytest.mark.parametrize("name", STREAMS)
def test_parse_sps_real(name: str) -> None:
    s = STREAMS[name]
    i = hevc.parse_sps(s.sps)
    assert (i.general_profile_idc, i.general_level_idc, i.width, i.height, i.chroma_format_idc,
            i.bit_depth_luma, i.bit_depth_chroma, i.max_num_reorder_pics, i.max_sub_layers,
            i.temporal_id_nesting, i.general_tier_flag) == s.fields
    assert i.general_profile_space == 0
    assert hevc.codec_string(i) == s.codec


@pytest.mark.parametrize("name", STREAMS)
def test_build_hvcc_matches_ffmpeg(name: str) -> None:
    s = STREAMS[name]
    record = hevc.build_hvcc([s.vps], [s.sps], [s.pps])
    assert record[:23] == s.hvcc_header
    cfg = hevc.parse_hvcc(record)
    assert (cfg.vps, cfg.sps, cfg.pps, cfg.other) == ((s.vps,), (s.sps,), (s.pps,), ())
    assert hevc.codec_string(cfg) == s.codec
    info = hevc.parse_sps(s.sps)
    for field in ("general_profile_space", "general_tier_flag", "general_profile_idc",
                  "general_profile_compatibility_flags", "general_constraint_indicator_flags",
                  "general_level_idc", "chroma_format_idc", "bit_depth_luma",
                  "bit_depth_chroma"):
        assert getattr(cfg, field) == getattr(info, field), field
    assert (cfg.num_temporal_layers, cfg.temporal_id_nested, cfg.nal_length_size) == (
        info.max_sub_layers, info.temporal_id_nesting, 4)


def test_build_hvcc_matches_ffmpeg_byte_for_byte() -> None:
    assert hevc.build_hvcc([MAIN.vps], [MAIN.sps], [MAIN.pps]) == FFMPEG_HVCC_MAIN


def test_parse_hvcc_other_arrays_and_length_size() -> None:
    sei = bytes.fromhex("4e01050380a0b0")  # a prefix SEI NAL unit (user data, 3 bytes)
    record = bytearray(FFMPEG_HVCC_MAIN + b"\x27\x00\x01" + len(sei).to_bytes(2, "big") + sei)
    record[21] = (record[21] & 0xFC) | 1  # lengthSizeMinusOne 1
    record[22] = 4
    cfg = hevc.parse_hvcc(bytes(record))
    assert (cfg.other, cfg.nal_length_size, cfg.sps) == ((sei,), 2, (MAIN.sps,))
    assert hevc.parse_hvcc(FFMPEG_HVCC_MAIN + b"\x00\x00").pps == (MAIN.pps,)  # trailing pad


def test_parse_hvcc_rejects_every_truncation() -> None:
    for end in range(len(FFMPEG_HVCC_MAIN)):
        with pytest.raises(CodecError):
            hevc.parse_hvcc(FFMPEG_HVCC_MAIN[:end])


@pytest.mark.parametrize(("patch", "message"), [
    ({0: 0}, "configurationVersion"),
    ({21: 0x0E}, "lengthSizeMinusOne 2"),
    ({26: 0, 27: 0}, "empty"),  # the VPS's nalUnitLength
])
def test_parse_hvcc_rejects(patch: dict[int, int], message: str) -> None:
    record = bytearray(FFMPEG_HVCC_MAIN)
    for offset, value in patch.items():
        record[offset] = value
    with pytest.raises(CodecError, match=message):
        hevc.parse_hvcc(bytes(record))


def test_build_hvcc_rejects() -> None:
    with pytest.raises(CodecError, match="SPS"):
        hevc.build_hvcc([MAIN.vps], [], [MAIN.pps])
    with pytest.raises(CodecError, match="VPS"):
        hevc.build_hvcc([], [MAIN.sps], [MAIN.pps])
    with pytest.raises(CodecError, match="not a PPS"):
        hevc.build_hvcc([MAIN.vps], [MAIN.sps], [MAIN.vps])
    with pytest.raises(CodecError, match="65535"):
        hevc.build_hvcc([MAIN.vps], [MAIN.sps], [MAIN.pps + bytes(0x10000)])


# ------------------------------------------------------------------- hand-made SPS


def make_sps(*, sub_layers: tuple[tuple[int, int], ...] = (), ordering: bool = True,
             chroma: int = 1, separate_planes: int = 0, size: tuple[int, int] = (64, 64),
             crop: tuple[int, int, int, int] | None = None, depth: int = 8,
             space: int = 0, tier: int = 0, constraints: int = 0, layer_id: int = 0) -> bytes:
    """An SPS up to the sub-layer ordering info (all parse_sps reads). `sub_layers` gives
    (profile_present, level_present) per extra sub-layer; sub-layer i has reorder depth i."""
    w = BitWriter().u(4, 0).u(3, len(sub_layers)).u(1, 1)
    w.u(2, space).u(1, tier).u(5, 1).u(32, 0x60000000).u(48, constraints).u(8, 93)
    for profile_present, level_present in sub_layers:
        w.u(1, profile_present).u(1, level_present)
    if sub_layers:
        w.u(2 * (8 - len(sub_layers)), 0)
    for profile_present, level_present in sub_layers:
        w.u(88 * profile_present, (1 << 88) - 1).u(8 * level_present, 0xFF)  # all ones
    w.ue(0).ue(chroma)
    if chroma == 3:
        w.u(1, separate_planes)
    w.ue(size[0]).ue(size[1]).u(1, crop is not None)
    for offset in crop or ():
        w.ue(offset)
    w.ue(depth - 8).ue(depth - 8).ue(4).u(1, ordering)
    for i in range(0 if ordering else len(sub_layers), len(sub_layers) + 1):
        w.ue(i + 1).ue(i).ue(0)  # max_dec_pic_buffering_minus1, num_reorder, latency
    header = bytes((0x42 | layer_id >> 5, (layer_id & 0x1F) << 3 | 1))
    return header + escape(w.rbsp())


@pytest.mark.parametrize("ordering", [True, False])
@pytest.mark.parametrize("sub_layers", [(), ((1, 1),), ((1, 0), (0, 1), (0, 0)),
                                        ((1, 1),) * 6])
def test_parse_sps_sub_layers(sub_layers: tuple[tuple[int, int], ...], ordering: bool) -> None:
    info = hevc.parse_sps(make_sps(sub_layers=sub_layers, ordering=ordering))
    assert (info.width, info.height, info.general_level_idc) == (64, 64, 93)
    assert info.max_sub_layers == len(sub_layers) + 1
    assert info.max_num_reorder_pics == len(sub_layers)  # the highest sub-layer's


@pytest.mark.parametrize(("chroma", "separate", "crop", "expected"), [
    (0, 0, (1, 2, 3, 4), (61, 57)),  # monochrome: luma units
    (1, 0, (1, 2, 3, 4), (58, 50)),
    (2, 0, (1, 2, 3, 4), (58, 57)),  # 4:2:2 halves only the width
    (3, 0, (1, 2, 3, 4), (61, 57)),
    (3, 1, (1, 2, 3, 4), (61, 57)),  # separate planes: each a monochrome picture
])
def test_parse_sps_conformance_window(chroma: int, separate: int,
                                      crop: tuple[int, int, int, int],
                                      expected: tuple[int, int]) -> None:
    info = hevc.parse_sps(make_sps(chroma=chroma, separate_planes=separate, crop=crop))
    assert (info.width, info.height, info.chroma_format_idc) == (*expected, chroma)


def test_codec_string_profile_space_tier_and_zero_constraints() -> None:
    info = hevc.parse_sps(make_sps(space=2, tier=1))
    assert hevc.codec_string(info, "hev1") == "hev1.B1.6.H93"  # all constraint bytes dropped
    info = hevc.parse_sps(make_sps(constraints=0x00_01_00_00_00_00))
    assert hevc.codec_string(info) == "hvc1.1.6.L93.00.01"


def test_parse_sps_emulation_prevention() -> None:
    # Zero compatibility/constraint flags and a 2**24-1 width make long zero runs.
    sps = make_sps(size=((1 << 24) - 1, 8))
    assert sps.count(b"\x00\x00\x03") >= 3
    assert hevc.parse_sps(sps).width == (1 << 24) - 1


@pytest.mark.parametrize(("nal", "message"), [
    (b"", "not an SPS"),
    (MAIN.pps, "not an SPS"),
    (MAIN.sps[:2], "not an SPS"),
    (make_sps(layer_id=1), "layer"),
    (make_sps(chroma=4), "chroma_format_idc"),
    (make_sps(crop=(32, 32, 0, 0)), "empty"),
    (make_sps(size=(0, 64)), "empty"),
    (make_sps(depth=17), "bit depth"),
    (MAIN.sps[:20], "truncated"),
])
def test_parse_sps_rejects(nal: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        hevc.parse_sps(nal)


def test_parse_sps_rejects_reserved_sub_layer_count() -> None:
    sps = bytearray(MAIN.sps)
    sps[2] |= 0x0E  # sps_max_sub_layers_minus1 = 7
    with pytest.raises(CodecError, match="reserved"):
        hevc.parse_sps(bytes(sps))


def test_parse_sps_rejects_every_truncation_before_the_ordering_info() -> None:
    # The real SPS's ordering info ends in its 26th byte; nothing after it is read.
    for end in range(26):
        with pytest.raises(CodecError):
            hevc.parse_sps(MAIN.sps[:end])
    assert hevc.parse_sps(MAIN.sps[:26]).max_num_reorder_pics == 2


# ----------------------------------------------------------------------- properties


@given(st.binary(max_size=80))
def test_parsers_raise_only_codec_error(data: bytes) -> None:
    for parse in (hevc.parse_sps, hevc.parse_hvcc, hevc.nal_type):
        with contextlib.suppress(CodecError):
            parse(data)
    with contextlib.suppress(CodecError):
        hevc.parse_sps(b"\x42\x01" + data)
    with contextlib.suppress(CodecError):
        hevc.parse_hvcc(FFMPEG_HVCC_MAIN[:23] + data)


@given(st.sampled_from(sorted(STREAMS)), st.integers(2, 60), st.integers(0, 255))
def test_mutated_sps_and_hvcc_raise_only_codec_error(name: str, pos: int, value: int) -> None:
    s = STREAMS[name]
    sps = bytearray(s.sps)
    sps[pos % len(sps)] = value
    try:
        info = hevc.parse_sps(bytes(sps))
    except CodecError:
        pass
    else:
        assert info.width > 0
        assert info.height > 0
    record = bytearray(hevc.build_hvcc([s.vps], [s.sps], [s.pps]))
    record[pos % len(record)] = value
    with contextlib.suppress(CodecError):
        hevc.parse_hvcc(bytes(record))


def _nals(kind: hevc.NalType) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.binary(max_size=40).map(lambda b: bytes((kind << 1, 1)) + b),
                    min_size=1, max_size=3)


@given(st.sampled_from(sorted(STREAMS)), _nals(hevc.NalType.VPS), _nals(hevc.NalType.PPS),
       st.integers(1, 3))
def test_hvcc_round_trip(name: str, vps: list[bytes], pps: list[bytes], copies: int) -> None:
    sps = [STREAMS[name].sps] * copies
    cfg = hevc.parse_hvcc(hevc.build_hvcc(vps, sps, pps))
    assert (list(cfg.vps), list(cfg.sps), list(cfg.pps)) == (vps, sps, pps)
    assert hevc.codec_string(cfg) == STREAMS[name].codec
