"""AVC (avcC, SPS) and AAC (AudioSpecificConfig) parsers: real vectors, edge cases, fuzzing.

The SPS/avcC vectors were produced by ffmpeg 9 / libx264 (imageio-ffmpeg) and extracted with
media.flv; the frame sizes are the ones requested on the ffmpeg command line.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.codecs import aac, avc
from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

# High, level 3.1, 1280x720, with the avcC chroma/bit-depth extension (fd f8 f8 00).
AVCC_720P = bytes.fromhex(
    "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800"
)
SPS_720P = bytes.fromhex("6764001facd9405005bb0110000003001000000303c0f1831960")
PPS_720P = bytes.fromhex("68ebe3cb22c0")
# High, level 4.0, 1920x1080: coded as 1088 lines with frame_crop_bottom_offset = 4.
SPS_1080P = bytes.fromhex("67640028acd940780227e5c044000003000400000300f03c60c658")
# Constrained Baseline 176x144: avcC has no extension.
AVCC_BASELINE = bytes.fromhex(
    "0142c00bffe100166742c00bd902c4ec0440000003004000000f03c50a9201000568cb83cb20"
)
SPS_444_ODD = bytes.fromhex("67f4000d919b282a10f1f1f80880000003008000001e078a14cb")  # 322x242
SPS_INTERLACED = bytes.fromhex("6764001eacd940b424d8088000000300800000190f8a14cb")  # 720x576
SPS_422 = bytes.fromhex("677a001ebcd940a02ff89c0440000003004000000c83c58b6580")  # 640x360
SPS_10BIT = bytes.fromhex("676e001ea6cd940a02ff97011000000300100000030320f162d960")  # 640x360


class BitWriter:
    """Test-side writer for hand-made parameter sets."""

    def __init__(self) -> None:
        self.bits: list[str] = []

    def u(self, n: int, v: int) -> BitWriter:
        if n:
            self.bits.append(format(v, f"0{n}b"))
        return self

    def ue(self, v: int) -> BitWriter:
        code = format(v + 1, "b")
        return self.u(len(code) - 1, 0).u(len(code), v + 1)

    def se(self, v: int) -> BitWriter:
        return self.ue(2 * v - 1 if v > 0 else -2 * v)

    def pack(self) -> bytes:
        """The bits zero-padded to a byte boundary (AudioSpecificConfig style)."""
        s = "".join(self.bits)
        return int(s + "0" * (-len(s) % 8), 2).to_bytes((len(s) + 7) // 8, "big")

    def rbsp(self) -> bytes:
        s = "".join(self.bits) + "1"  # rbsp_stop_one_bit
        s += "0" * (-len(s) % 8)
        return int(s, 2).to_bytes(len(s) // 8, "big")


def escape(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes (H.264 §7.4.1)."""
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def test_bit_reader_exp_golomb() -> None:
    w = BitWriter().ue(0).ue(1).ue(2).ue(254).se(1).se(-1).se(-7).u(3, 5)
    r = BitReader(w.rbsp())
    assert [r.ue(), r.ue(), r.ue(), r.ue(), r.se(), r.se(), r.se(), r.u(3)] == [
        0, 1, 2, 254, 1, -1, -7, 5,
    ]  # fmt: skip
    with pytest.raises(CodecError):
        BitReader(b"\x00\x00\x00\x00\x00").ue()  # prefix longer than 32 bits
    with pytest.raises(CodecError):
        BitReader(b"\xff").u(9)


def test_parse_avcc_720p() -> None:
    cfg = avc.parse_avcc(AVCC_720P)
    assert (cfg.profile, cfg.compatibility, cfg.level, cfg.nal_length_size) == (100, 0, 31, 4)
    assert cfg.sps == (SPS_720P,)
    assert cfg.pps == (PPS_720P,)
    assert (cfg.chroma_format, cfg.bit_depth_luma, cfg.bit_depth_chroma) == (1, 8, 8)
    assert avc.codec_string(cfg) == "avc1.64001f"


def test_build_avcc_matches_ffmpeg_byte_for_byte() -> None:
    assert avc.build_avcc([SPS_720P], [PPS_720P]) == AVCC_720P
    cfg = avc.parse_avcc(AVCC_BASELINE)
    assert cfg.chroma_format is None  # Baseline records carry no extension
    assert avc.build_avcc(list(cfg.sps), list(cfg.pps)) == AVCC_BASELINE
    assert avc.codec_string(cfg) == "avc1.42c00b"


def test_parse_avcc_tolerates_missing_or_broken_extension() -> None:
    without_ext = AVCC_720P[:-4]
    assert avc.parse_avcc(without_ext).chroma_format is None
    broken = AVCC_720P[:-1] + b"\x05"  # claims 5 SPS-ext NALs that are not there
    assert avc.parse_avcc(broken).sps == (SPS_720P,)


@pytest.mark.parametrize(
    "record",
    [
        b"",
        AVCC_720P[:6],
        b"\x02" + AVCC_720P[1:],  # configurationVersion 2
        AVCC_720P[:20],  # SPS cut short
        AVCC_720P[: 8 + len(SPS_720P)],  # ends before numOfPictureParameterSets
        AVCC_720P[:4] + b"\xfe" + AVCC_720P[5:],  # lengthSizeMinusOne = 2
    ],
)
def test_parse_avcc_rejects(record: bytes) -> None:
    with pytest.raises(CodecError):
        avc.parse_avcc(record)


@pytest.mark.parametrize(
    ("sps", "expected"),
    [
        (SPS_720P, (100, 31, 1280, 720, 1, 8, True)),
        (SPS_1080P, (100, 40, 1920, 1080, 1, 8, True)),
        (avc.parse_avcc(AVCC_BASELINE).sps[0], (66, 11, 176, 144, 1, 8, True)),
        (SPS_444_ODD, (244, 13, 322, 242, 3, 8, True)),
        (SPS_INTERLACED, (100, 30, 720, 576, 1, 8, False)),
        (SPS_422, (122, 30, 640, 360, 2, 8, True)),
        (SPS_10BIT, (110, 30, 640, 360, 1, 10, True)),
    ],
)
def test_parse_sps_real(sps: bytes, expected: tuple[int, ...]) -> None:
    i = avc.parse_sps(sps)
    got = (i.profile_idc, i.level_idc, i.width, i.height, i.chroma_format_idc, i.bit_depth_luma)
    assert (*got, i.frame_mbs_only) == expected


def high_sps(*, poc_type: int, crop: tuple[int, int, int, int] | None) -> bytes:
    """High-profile SPS with explicit scaling lists, including one cut short by a zero scale."""
    w = BitWriter().u(8, 100).u(8, 0).u(8, 31).ue(0)  # profile, constraints, level, sps_id
    w.ue(1).ue(0).ue(0).u(1, 0)  # 4:2:0, 8-bit, no transform bypass
    w.u(1, 1)  # seq_scaling_matrix_present_flag
    for i in range(8):
        w.u(1, i in (0, 6))
        if i == 0:
            w.se(1).se(2).se(-11)  # 9, 11, then 0: the rest of the 4x4 list is implicit
        elif i == 6:
            for _ in range(64):
                w.se(-3)
    w.ue(0).ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0).se(-2).se(3).ue(2).se(4).se(-5)
    w.ue(3).u(1, 0).ue(1280 // 16 - 1).ue(720 // 16 - 1).u(1, 1).u(1, 1)
    if crop is None:
        w.u(1, 0)
    else:
        w.u(1, 1)
        for v in crop:
            w.ue(v)
    w.u(1, 0)  # no VUI
    return b"\x67" + escape(w.rbsp())


@pytest.mark.parametrize("poc_type", [0, 1, 2])
def test_parse_sps_scaling_lists_and_poc_types(poc_type: int) -> None:
    sps = high_sps(poc_type=poc_type, crop=None)
    info = avc.parse_sps(sps)
    assert (info.width, info.height, info.profile_idc, info.level_idc) == (1280, 720, 100, 31)


def test_parse_sps_cropping_units() -> None:
    info = avc.parse_sps(high_sps(poc_type=2, crop=(1, 2, 3, 4)))
    assert (info.width, info.height) == (1280 - 2 * 3, 720 - 2 * 7)  # 4:2:0 crop units are 2
    with pytest.raises(CodecError):
        avc.parse_sps(high_sps(poc_type=2, crop=(640, 0, 0, 0)))


def test_parse_sps_emulation_prevention() -> None:
    # A 2**24-1 Exp-Golomb value is a 24-bit zero run, which forces 00 00 03 escapes.
    w = BitWriter().u(8, 66).u(8, 0).u(8, 30).ue(0).ue(3).ue(2).ue(1).u(1, 0)
    w.ue(0).ue((1 << 24) - 1).u(1, 1).u(1, 0).u(1, 0).u(1, 0)
    rbsp = w.rbsp()
    nal = b"\x67" + escape(rbsp)
    assert len(nal) == 1 + len(rbsp) + 2  # two escapes inserted
    info = avc.parse_sps(nal)
    assert (info.profile_idc, info.width, info.height) == (66, 16, 16 << 24)


@pytest.mark.parametrize(
    "nal",
    [b"", b"\x68\x64\x00\x1f\xac", b"\x67\x64\x00", SPS_720P[:6], b"\x67\x64\x00\x1f\x00\x00\x00"],
)
def test_parse_sps_rejects(nal: bytes) -> None:
    with pytest.raises(CodecError):
        avc.parse_sps(nal)


def test_split_avcc_and_annexb() -> None:
    sample = b"\x00\x00\x00\x02\x09\xf0" + b"\x00\x00\x00\x03\x65\x88\x84"
    assert avc.split_avcc(sample) == [b"\x09\xf0", b"\x65\x88\x84"]
    assert avc.split_avcc(b"\x00\x02ab\x00\x00", 2) == [b"ab"]
    annexb = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x65\x88\x84\x00\x00\x00\x01\x06\x05\x00"
    assert avc.annexb_to_avcc(annexb) == sample + b"\x00\x00\x00\x02\x06\x05"
    with pytest.raises(CodecError):
        avc.split_avcc(b"\x00\x00\x00\x05abc")
    with pytest.raises(CodecError):
        avc.split_avcc(b"\x00\x00", 4)
    with pytest.raises(CodecError):
        avc.annexb_to_avcc(b"\x65\x88\x84")
    with pytest.raises(CodecError):
        avc.annexb_to_avcc(b"\x65\x00\x00\x01\x65")


def test_build_avcc_rejects() -> None:
    with pytest.raises(CodecError):
        avc.build_avcc([], [PPS_720P])
    with pytest.raises(CodecError):
        avc.build_avcc([SPS_720P] * 32, [PPS_720P])


# ------------------------------------------------------------------------------------ AAC


@pytest.mark.parametrize(
    ("asc", "expected"),
    [
        (b"\x12\x10", aac.AacConfig(2, 44100, 2)),
        (b"\x11\x90", aac.AacConfig(2, 48000, 2)),
        (b"\x12\x08\x56\xe5\x00", aac.AacConfig(2, 44100, 1)),  # ffmpeg: sync ext, no SBR
        (b"\x12\x14", aac.AacConfig(2, 44100, 2, frame_length=960)),
        (b"\x13\x98", aac.AacConfig(2, 22050, 3)),
        (b"\x11\xb8", aac.AacConfig(2, 48000, 8)),  # channelConfiguration 7 = 7.1
        (b"\x2b\x11\x88\x00", aac.AacConfig(5, 24000, 2, sbr_sample_rate=48000)),  # HE-AAC
        (b"\xeb\x09\x88\x00", aac.AacConfig(29, 24000, 1, sbr_sample_rate=48000, ps=True)),
        (b"\xf8\x38\x00", aac.AacConfig(33, 7350, 0)),  # escaped object type, PCE layout
    ],
)
def test_parse_asc(asc: bytes, expected: aac.AacConfig) -> None:
    assert aac.parse_asc(asc) == expected


def test_parse_asc_explicit_frequency() -> None:
    asc = BitWriter().u(5, 2).u(4, 15).u(24, 44000).u(4, 2).u(3, 0).pack()
    assert len(asc) == 5
    assert aac.parse_asc(asc) == aac.AacConfig(2, 44000, 2)


def test_parse_asc_implicit_sbr_and_ps() -> None:
    # AAC-LC 22.05 kHz + sync extension 0x2b7: SBR at 44.1 kHz, then 0x548: PS.
    w = BitWriter().u(5, 2).u(4, 7).u(4, 1).u(3, 0)
    w.u(11, 0x2B7).u(5, 5).u(1, 1).u(4, 4).u(11, 0x548).u(1, 1)
    cfg = aac.parse_asc(w.pack())
    assert cfg == aac.AacConfig(2, 22050, 1, sbr_sample_rate=44100, ps=True)
    assert aac.codec_string(cfg) == "mp4a.40.2"


@pytest.mark.parametrize(
    "asc",
    [
        b"",
        b"\x12",
        b"\x00\x10",  # object type 0
        b"\x16\x90",  # samplingFrequencyIndex 13 (reserved)
        b"\x12\x40",  # channelConfiguration 8 (reserved)
        b"\x17\x80\x00\x00\x10",  # explicit frequency 0
    ],
)
def test_parse_asc_rejects(asc: bytes) -> None:
    with pytest.raises(CodecError):
        aac.parse_asc(asc)


def test_build_asc() -> None:
    assert aac.build_asc(2, 44100, 2) == b"\x12\x10"
    assert aac.build_asc(2, 48000, 2) == b"\x11\x90"
    assert aac.build_asc(2, 48000, 8) == b"\x11\xb8"
    assert aac.parse_asc(aac.build_asc(2, 44000, 1)) == aac.AacConfig(2, 44000, 1)
    assert aac.parse_asc(aac.build_asc(42, 16000, 6)).object_type == 42
    assert aac.codec_string(aac.parse_asc(aac.build_asc(1, 8000, 1))) == "mp4a.40.1"
    for bad in ((5, 44100, 2), (29, 44100, 2), (2, 44100, 7), (2, 0, 2), (0, 44100, 2)):
        with pytest.raises(CodecError):
            aac.build_asc(*bad)


@given(
    st.sampled_from([1, 2, 3, 4, 17, 23, 32, 40, 95]),
    st.one_of(st.sampled_from(aac.SAMPLE_RATES), st.integers(1, (1 << 24) - 1)),
    st.sampled_from([1, 2, 3, 4, 5, 6, 8]),
)
def test_asc_round_trip(object_type: int, rate: int, channels: int) -> None:
    cfg = aac.parse_asc(aac.build_asc(object_type, rate, channels))
    assert (cfg.object_type, cfg.sample_rate, cfg.channels) == (object_type, rate, channels)


@given(st.binary(max_size=64))
def test_parsers_raise_only_codec_error(data: bytes) -> None:
    for parse in (avc.parse_avcc, avc.parse_sps, aac.parse_asc, avc.annexb_to_avcc):
        with contextlib.suppress(CodecError):
            parse(data)
    with contextlib.suppress(CodecError):
        avc.split_avcc(data, 1 + len(data) % 4)


@given(st.binary(max_size=48))
def test_parse_sps_fuzz_with_valid_header(tail: bytes) -> None:
    for head in (b"\x67\x64\x00\x1f", b"\x67\x42\xc0\x1e", b"\x67\xf4\x00\x0d"):
        try:
            info = avc.parse_sps(head + tail)
        except CodecError:
            continue
        assert info.width > 0
        assert info.height > 0


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_avcc_split_round_trip(nals: list[bytes]) -> None:
    sample = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
    assert avc.split_avcc(sample) == nals


# ------------------------------------------------------------- VUI: max_num_reorder_frames

# 320x240 yuv420p, made with imageio-ffmpeg's ffmpeg 9 / libx264 and cut out of the Annex B
# output: `ffmpeg -f lavfi -i testsrc=size=320x240:rate=25 -frames:v 10 -pix_fmt yuv420p
# -c:v libx264 [options] -f h264 out.h264`. The options are noted per vector.
SPS_X264_BFRAMES = bytes.fromhex(  # no options: 3 B-frames with b-pyramid
    "6764000dacd94141fb011000000300100000030320f1429960"
)
SPS_X264_NO_B = bytes.fromhex("6764000dacb20283f60220000003002000000641e28549")  # -bf 0
SPS_X264_BASELINE = bytes.fromhex(  # -profile:v baseline
    "6742c00dd90141fb011000000300100000030320f142a480"
)
SPS_X264_HRD = bytes.fromhex(  # -b:v 500k -maxrate 500k -bufsize 1M -x264-params nal-hrd=vbr
    "6764000dacd94141fb01100000030010000003032604001e840007a129b0c01e28532c"
)


@pytest.mark.parametrize(
    ("sps", "profile", "reorder"),
    [
        (SPS_X264_BFRAMES, 100, 2),
        (SPS_X264_NO_B, 100, 0),
        (SPS_X264_BASELINE, 66, 0),
        (SPS_X264_HRD, 100, 2),  # the NAL HRD parameters sit before bitstream_restriction
        (SPS_720P, 100, 2),
        (SPS_INTERLACED, 100, 2),
        (SPS_444_ODD, 244, 2),
    ],
)
def test_parse_sps_reorder_frames_real(sps: bytes, profile: int, reorder: int) -> None:
    info = avc.parse_sps(sps)
    assert (info.profile_idc, info.max_num_reorder_frames) == (profile, reorder)
    assert avc.reorder_depth(info) == reorder


# A High 1280x720 SPS up to and including vui_parameters_present_flag = 1.
SPS_HEAD = (BitWriter().u(8, 100).u(8, 0).u(8, 31).ue(0).ue(1).ue(0).ue(0).u(1, 0).u(1, 0)
            .ue(0).ue(2).ue(3).u(1, 0).ue(79).ue(44).u(1, 1).u(1, 1).u(1, 0).u(1, 1))


def hrd(w: BitWriter, cpbs: int) -> None:
    w.ue(cpbs - 1).u(4, 3).u(4, 5)  # cpb_cnt_minus1, bit_rate_scale, cpb_size_scale
    for i in range(cpbs):
        w.ue(1000 * i + 999).ue(3000 * i + 2999).u(1, i & 1)
    w.u(5, 23).u(5, 23).u(5, 23).u(5, 24)


def vui(*, full: bool, hrds: tuple[int, int] = (0, 0), reorder: int | None = 3) -> BitWriter:
    """VUI bits; `full` sets every optional part; hrds = CPB counts of NAL/VCL HRD (0: none)."""
    w = BitWriter()
    if full:
        w.u(1, 1).u(8, 255).u(16, 4).u(16, 3)  # Extended_SAR 4:3
        w.u(1, 1).u(1, 1)  # overscan
        w.u(1, 1).u(3, 5).u(1, 0).u(1, 1).u(8, 1).u(8, 1).u(8, 1)  # BT.709 colour
        w.u(1, 1).ue(1).ue(1)  # chroma sample location
        w.u(1, 1).u(32, 1).u(32, 50).u(1, 1)  # timing: 25 fps, fixed
    else:
        w.u(1, 0).u(1, 0).u(1, 0).u(1, 0).u(1, 0)
    for cpbs in hrds:
        w.u(1, cpbs > 0)
        if cpbs:
            hrd(w, cpbs)
    if any(hrds):
        w.u(1, 0)  # low_delay_hrd_flag
    w.u(1, full)  # pic_struct_present_flag
    if reorder is None:
        return w.u(1, 0)
    return w.u(1, 1).u(1, 1).ue(2).ue(1).ue(16).ue(15).ue(reorder).ue(reorder + 1)


def with_vui(v: BitWriter) -> bytes:
    w = BitWriter()
    w.bits = SPS_HEAD.bits + v.bits
    return b"\x67" + escape(w.rbsp())


@pytest.mark.parametrize(
    ("v", "expected"),
    [
        (vui(full=False), 3),
        (vui(full=True), 3),
        (vui(full=True, hrds=(1, 0)), 3),
        (vui(full=True, hrds=(0, 2)), 3),
        (vui(full=True, hrds=(3, 32), reorder=16), 16),
        (vui(full=False, hrds=(1, 1), reorder=0), 0),
        (vui(full=True, hrds=(2, 2), reorder=None), None),
        (vui(full=True, reorder=17), None),  # above the DPB's 16 frames: garbage
    ],
)
def test_parse_sps_reorder_frames_every_vui_part(v: BitWriter, expected: int | None) -> None:
    info = avc.parse_sps(with_vui(v))
    assert (info.width, info.height, info.max_num_reorder_frames) == (1280, 720, expected)


def test_reorder_depth_without_vui() -> None:
    assert avc.parse_sps(high_sps(poc_type=0, crop=None)).max_num_reorder_frames is None
    assert avc.reorder_depth(avc.SpsInfo(100, 31, 1280, 720, 1)) is None  # unknown: learn it
    assert avc.reorder_depth(avc.SpsInfo(66, 30, 176, 144, 1)) == 0  # Baseline has no B slices
    assert avc.reorder_depth(avc.SpsInfo(66, 30, 176, 144, 1, max_num_reorder_frames=1)) == 1


def test_parse_sps_cut_in_the_vui_keeps_the_other_fields() -> None:
    nal = with_vui(vui(full=True, hrds=(2, 1)))
    full = avc.parse_sps(nal)
    assert full.max_num_reorder_frames == 3
    head_bytes = 1 + -(-len("".join(SPS_HEAD.bits)) // 8)  # no escapes before the VUI
    for cut in range(head_bytes, len(nal) - 1):
        info = avc.parse_sps(nal[:cut])
        assert info == replace(full, max_num_reorder_frames=None), cut
