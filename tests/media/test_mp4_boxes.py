"""ISOBMFF box writer: exact bytes for known inputs, and structure through tests/mp4_parse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.mp4 import boxes
from media.mp4.boxes import Mp4WriteError, Sample, TrackRun
from tests.mp4_parse import find_all, parse_boxes, parse_fragment, parse_trun

MATRIX = "00010000" "00000000" "00000000" "00000000" "00010000" "00000000" "00000000" "00000000" \
    "40000000"
AVCC = bytes.fromhex(
    "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800"
)
OPUS_HEAD = bytes.fromhex("4f707573486561640101380180bb0000000000")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_box_and_full_box() -> None:
    assert boxes.box(b"free") == h("00000008 66726565")
    assert boxes.box(b"abcd", b"\x01", b"\x02\x03") == h("0000000b 61626364 010203")
    assert boxes.full_box(b"url ", 0, 1) == h("0000000c 75726c20 00000001")
    assert boxes.full_box(b"tfdt", 1, 0x020000, b"\xff") == h("0000000d 74666474 01020000 ff")


def test_box_rejects() -> None:
    with pytest.raises(Mp4WriteError, match="four bytes"):
        boxes.box(b"abc")
    with pytest.raises(Mp4WriteError, match="out of range"):
        boxes.full_box(b"abcd", 256, 0)
    with pytest.raises(Mp4WriteError, match="out of range"):
        boxes.full_box(b"abcd", 0, 1 << 24)


def test_mdat_header_uses_largesize_past_4_gib() -> None:
    assert boxes.mdat_header(10) == h("00000012 6d646174")
    assert boxes.mdat_header(0xFFFFFFF7) == h("ffffffff 6d646174")
    assert boxes.mdat_header(0xFFFFFFF8) == h("00000001 6d646174 0000000100000008")


def test_ftyp() -> None:
    assert boxes.ftyp() == h("00000020 66747970 69736f36 00000000"
                             "69736f36 636d6663 6d703431 64617368")


def test_mvhd() -> None:
    assert boxes.mvhd(3) == h(
        "0000006c 6d766864 00000000"
        "00000000 00000000 000003e8 00000000 00010000 0100 0000 0000000000000000"
        + MATRIX + "00" * 24 + "00000003"
    )


def test_tkhd_video_and_audio() -> None:
    video = boxes.InitTrack(1, boxes.HANDLER_VIDEO, 90000, b"", 320, 240)
    assert boxes.tkhd(video) == h(
        "0000005c 746b6864 00000007"
        "00000000 00000000 00000001 00000000 00000000 0000000000000000"
        "0000 0000 0000 0000" + MATRIX + "01400000 00f00000"
    )
    audio = boxes.InitTrack(2, boxes.HANDLER_AUDIO, 44100, b"")
    assert boxes.tkhd(audio)[12:] == h(
        "00000000 00000000 00000002 00000000 00000000 0000000000000000"
        "0000 0000 0100 0000" + MATRIX + "00000000 00000000"
    )


def test_mdhd_hdlr() -> None:
    assert boxes.mdhd(44100) == h("00000020 6d646864 00000000"
                                  "00000000 00000000 0000ac44 00000000 55c4 0000")
    assert boxes.hdlr(b"soun") == h("0000002d 68646c72 00000000 00000000 736f756e"
                                    "000000000000000000000000") + b"SoundHandler\x00"


def test_trex() -> None:
    assert boxes.trex(1, boxes.SAMPLE_NON_SYNC) == h(
        "00000020 74726578 00000000 00000001 00000001 00000000 00000000 01010000")


def test_tfhd_tfdt_mfhd() -> None:
    assert boxes.tfhd(1) == h("00000010 74666864 00020000 00000001")
    assert boxes.tfdt(2**33 + 5) == h("00000014 74666474 01000000 0000000200000005")
    assert boxes.mfhd(7) == h("00000010 6d666864 00000000 00000007")
    with pytest.raises(Mp4WriteError):
        boxes.tfdt(-1)
    with pytest.raises(Mp4WriteError):
        boxes.mfhd(0)


def test_trun_v1_signed_cts() -> None:
    samples = [Sample(3000, 100, boxes.SAMPLE_SYNC, 6000),
               Sample(3000, 50, boxes.SAMPLE_NON_SYNC, -3000)]
    assert boxes.trun(samples, 0x70) == h(
        "00000034 7472756e 01000f01 00000002 00000070"
        "00000bb8 00000064 02000000 00001770"
        "00000bb8 00000032 01010000 fffff448"
    )


def test_trun_without_cts_omits_the_field() -> None:
    assert boxes.trun([Sample(1024, 9)], 8) == h(
        "00000020 7472756e 01000701 00000001 00000008 00000400 00000009 02000000")


def test_trun_rejects_out_of_range() -> None:
    with pytest.raises(Mp4WriteError, match="trun"):
        boxes.trun([Sample(1 << 32, 1)], 0)
    with pytest.raises(Mp4WriteError, match="trun"):
        boxes.trun([Sample(1, 1, cts=-(1 << 31) - 1)], 0)


@pytest.mark.parametrize(("n", "encoded"), [
    (0, "00"), (5, "05"), (127, "7f"), (128, "8100"), (200, "8148"), (16383, "ff7f"),
    (16384, "818000"), ((1 << 28) - 1, "ffffff7f"),
])
def test_expandable_size(n: int, encoded: str) -> None:
    assert boxes.expandable_size(n) == h(encoded)


def test_expandable_size_limit() -> None:
    with pytest.raises(Mp4WriteError):
        boxes.expandable_size(1 << 28)


def test_esds_aac_lc() -> None:
    assert boxes.esds(b"\x12\x10") == h(
        "00000027 65736473 00000000"
        "03 19 0000 00"
        "04 11 40 15 000000 00000000 00000000"
        "05 02 1210"
        "06 01 02"
    )


def test_esds_long_config_uses_multibyte_sizes() -> None:
    asc = bytes(range(200))
    data = boxes.esds(asc)
    assert data[12:15] == h("03 8161")
    assert data[18:21] == h("04 8158")
    assert data[34:37] == h("05 8148")
    assert data[37:237] == asc
    assert data[237:] == h("06 01 02")
    assert len(data) == struct.unpack(">I", data[:4])[0] == 240


def test_dops_from_opus_head() -> None:
    assert boxes.dops(OPUS_HEAD) == h("00000013 644f7073 00 01 0138 0000bb80 0000 00")
    # Mapping family 1: stream count, coupled count and one byte per channel follow.
    head = OPUS_HEAD[:9] + h("06 3801 80bb0000 0000 01") + h("04 02 00 04 01 02 03 05")
    assert boxes.dops(head)[8:] == h("00 06 0138 0000bb80 0000 01 04 02 000401020305")
    with pytest.raises(Mp4WriteError):
        boxes.dops(b"OpusTags" + bytes(11))
    with pytest.raises(Mp4WriteError, match="truncated"):
        boxes.dops(head[:-1])


def test_sample_entries_structure() -> None:
    avc1 = parse_boxes(boxes.avc1(AVCC, 1280, 720))[0]
    assert avc1.type == "avc1"
    assert struct.unpack_from(">HH", avc1.payload, 24) == (1280, 720)
    assert struct.unpack_from(">H", avc1.payload, 6) == (1,)  # data_reference_index
    assert [c.type for c in avc1.children] == ["avcC"]
    assert avc1.children[0].payload == AVCC
    mp4a = parse_boxes(boxes.mp4a(b"\x12\x10", 2, 44100))[0]
    assert struct.unpack_from(">HHHHI", mp4a.payload, 16) == (2, 16, 0, 0, 44100 << 16)
    assert [c.type for c in mp4a.children] == ["esds"]
    hi_rate = parse_boxes(boxes.mp4a(b"\x11\x80", 0, 96000))[0]
    assert struct.unpack_from(">HHHHI", hi_rate.payload, 16) == (2, 16, 0, 0, 0)
    opus = parse_boxes(boxes.opus(OPUS_HEAD))[0]
    assert struct.unpack_from(">HHHHI", opus.payload, 16) == (1, 16, 0, 0, 48000 << 16)
    assert [c.type for c in opus.children] == ["dOps"]
    for entry, config in ((boxes.hvc1(b"\x01hvcc", 640, 360), "hvcC"),
                          (boxes.av01(b"\x81av1c", 640, 360), "av1C")):
        parsed = parse_boxes(entry)[0]
        assert [c.type for c in parsed.children] == [config]
        assert struct.unpack_from(">HH", parsed.payload, 24) == (640, 360)


def test_init_segment_tree() -> None:
    tracks = [boxes.InitTrack(1, boxes.HANDLER_VIDEO, 90000, boxes.avc1(AVCC, 1280, 720),
                              1280, 720),
              boxes.InitTrack(2, boxes.HANDLER_AUDIO, 44100, boxes.mp4a(b"\x12\x10", 2, 44100))]
    top = parse_boxes(boxes.init_segment(tracks))
    assert [b.type for b in top] == ["ftyp", "moov"]
    moov = top[1]
    assert [b.type for b in moov.children] == ["mvhd", "trak", "trak", "mvex"]
    for trak in find_all(moov.children, "trak"):
        assert [b.type for b in trak.find("mdia").children] == ["mdhd", "hdlr", "minf"]
        stbl = trak.find("mdia/minf/stbl")
        assert [b.type for b in stbl.children] == ["stsd", "stts", "stsc", "stsz", "stco"]
        for empty in ("stts", "stsc", "stco"):
            assert stbl.find(empty).payload == bytes(8)
        assert stbl.find("stsz").payload == bytes(12)
        url = trak.find("mdia/minf/dinf/dref/url ")
        assert url.flags == 1
    minfs = find_all(moov.children, "trak/mdia/minf")
    assert [minfs[0].children[0].type, minfs[1].children[0].type] == ["vmhd", "smhd"]
    assert find_all(moov.children, "trak/mdia/minf/vmhd")[0].flags == 1
    trexes = find_all(moov.children, "mvex/trex")
    assert [struct.unpack_from(">II", t.payload, 4) for t in trexes] == [(1, 1), (2, 1)]
    assert [struct.unpack_from(">I", t.payload, 20)[0] for t in trexes] == [
        boxes.SAMPLE_NON_SYNC, boxes.SAMPLE_SYNC]
    with pytest.raises(Mp4WriteError):
        boxes.moov([])


def test_fragment_data_offsets_cover_earlier_tracks() -> None:
    video = TrackRun(1, 9000, [Sample(3000, 3, boxes.SAMPLE_SYNC, 3000),
                               Sample(3000, 2, boxes.SAMPLE_NON_SYNC, -3000)], b"abcde")
    audio = TrackRun(2, 4410, [Sample(1024, 4), Sample(1024, 1)], b"WXYZ!")
    data = boxes.fragment(3, [video, audio])
    sequence, runs, end = parse_fragment(data)
    assert (sequence, end) == (3, len(data))
    assert [(r.track_id, r.tfdt, r.data) for r in runs] == [(1, 9000, b"abcde"),
                                                             (2, 4410, b"WXYZ!")]
    assert runs[1].data_offset == runs[0].data_offset + 5
    assert data[-10:] == b"abcdeWXYZ!"
    with pytest.raises(Mp4WriteError, match="add up"):
        boxes.fragment(1, [TrackRun(1, 0, [Sample(1, 2)], b"x")])
    with pytest.raises(Mp4WriteError):
        boxes.fragment(1, [])


samples_st = st.lists(
    st.builds(Sample, st.integers(0, 0xFFFFFFFF), st.integers(0, 64),
              st.sampled_from([boxes.SAMPLE_SYNC, boxes.SAMPLE_NON_SYNC]),
              st.integers(-(1 << 31), (1 << 31) - 1)),
    min_size=1, max_size=20)


@given(samples_st, st.integers(0, (1 << 64) - 1))
def test_trun_round_trip(samples: list[Sample], base: int) -> None:
    payload = b"".join(bytes([i % 256]) * s.size for i, s in enumerate(samples))
    data = boxes.fragment(1, [TrackRun(5, base, samples, payload)])
    _, (run,), _ = parse_fragment(data)
    assert run.tfdt == base
    assert run.data == payload
    assert [(s.duration, s.size, s.flags, s.cts) for s in run.samples] == [
        (s.duration, s.size, s.flags, s.cts) for s in samples]
    traf = parse_boxes(data)[0].find("traf")
    _, again = parse_trun(traf.find("trun"))
    assert again == run.samples
