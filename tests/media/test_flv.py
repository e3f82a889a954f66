"""FLV container, incremental decoder and (enhanced) tag bodies."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import flv
from media.codecs import aac, avc
from media.flv import (
    NEED_DATA,
    AudioBody,
    FlvDecoder,
    FlvError,
    FlvHeader,
    FlvTag,
    TagType,
    VideoBody,
    build_audio_body,
    build_video_body,
    encode_tag,
    parse_audio_body,
    parse_video_body,
)

if TYPE_CHECKING:
    from pathlib import Path

AVCC = bytes.fromhex(
    "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800"
)
# Written by ffmpeg 9 for HEVC/AV1: a VideoPacketType.Metadata colorInfo packet, FrameType 5.
FFMPEG_HEVC_METADATA = bytes.fromhex(
    "d468766331020009636f6c6f72496e666f03000b636f6c6f72436f6e66696703000009000009"
)
OPUS_HEAD = bytes.fromhex("4f707573486561640101380180bb0000000000")


def decode_all(dec: FlvDecoder) -> list[FlvHeader | FlvTag]:
    events: list[FlvHeader | FlvTag] = []
    while (ev := dec.next_event()) is not NEED_DATA:
        events.append(ev)
    return events


def decode_bytes(data: bytes) -> list[FlvHeader | FlvTag]:
    dec = FlvDecoder()
    dec.receive_data(data)
    return decode_all(dec)


# ---------------------------------------------------------------------------- container


@pytest.mark.parametrize(
    ("audio", "video", "flags"), [(True, True, 5), (True, False, 4), (False, True, 1)]
)
def test_header(audio: bool, video: bool, flags: int) -> None:
    h = flv.header(audio=audio, video=video)
    assert h == b"FLV\x01" + bytes([flags]) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"
    assert decode_bytes(h) == [FlvHeader(audio=audio, video=video)]


def test_encode_tag_layout() -> None:
    tag = encode_tag(TagType.VIDEO, 0x12345678, b"abc")
    assert tag == bytes.fromhex("09 000003 345678 12 000000 616263 0000000e")
    assert tag == flv.tag_header(9, 0x12345678, 3) + b"abc" + flv.prev_tag_size(3)


@pytest.mark.parametrize(
    ("ts", "wire"),
    [
        (0xFFFFFF, "ffffff00"),
        (0x1000000, "00000001"),  # just past 24 bits: the extended byte takes over
        (0xDEADBEEF, "adbeefde"),
        ((1 << 32) + 5, "00000500"),  # mod 2**32
        (-1, "ffffffff"),
    ],
)
def test_encode_tag_timestamps(ts: int, wire: str) -> None:
    tag = encode_tag(TagType.AUDIO, ts, b"")
    assert tag[4:8].hex() == wire
    (ev,) = decode_bytes(flv.header(audio=True, video=False) + tag)[1:]
    assert isinstance(ev, FlvTag)
    assert ev.timestamp_ms == ts % (1 << 32)


def test_encode_tag_rejects() -> None:
    with pytest.raises(FlvError):
        flv.tag_header(0x20, 0, 0)
    with pytest.raises(FlvError):
        flv.tag_header(9, 0, 1 << 24)


def test_decoder_offsets_and_partial_input() -> None:
    tags = [encode_tag(18, 0, b"meta"), encode_tag(9, 0, b"\x17\x00"), encode_tag(8, 23, b"x")]
    stream = flv.header(audio=True, video=True) + b"".join(tags)
    dec = FlvDecoder()
    dec.receive_data(stream[:20])  # header + part of the first tag
    assert dec.next_event() == FlvHeader(audio=True, video=True)
    assert dec.next_event() is NEED_DATA
    dec.receive_data(stream[20:])
    events = decode_all(dec)
    assert [e.offset for e in events if isinstance(e, FlvTag)] == [13, 13 + 19, 13 + 19 + 17]
    assert events[1] == FlvTag(9, 0, b"\x17\x00", 32)
    for ev in events:
        assert isinstance(ev, FlvTag)
        assert stream[ev.offset] == ev.tag_type
    assert dec.prev_size_mismatches == 0


def test_decoder_tolerates_bad_previous_tag_size() -> None:
    tag = bytearray(encode_tag(9, 40, b"abc"))
    tag[-4:] = b"\x00\x00\x00\x00"  # some muxers write garbage here
    stream = flv.header(audio=False, video=True) + bytes(tag) + encode_tag(8, 41, b"d")
    dec = FlvDecoder()
    dec.receive_data(stream)
    assert [e.tag_type for e in decode_all(dec) if isinstance(e, FlvTag)] == [9, 8]
    assert dec.prev_size_mismatches == 1


def test_decoder_skips_larger_data_offset() -> None:
    head = b"FLV\x01\x01\x00\x00\x00\x0c" + b"xyz" + b"\x00\x00\x00\x00"
    events = decode_bytes(head + encode_tag(9, 7, b"v"))
    assert events == [FlvHeader(audio=False, video=True), FlvTag(9, 7, b"v", 16)]


@pytest.mark.parametrize(
    "data",
    [
        b"FLX",  # rejected before a full header arrives
        b"GIF89a\x00\x00\x00\x00",
        b"FLV\x01\x05\x00\x00\x00\x08\x00\x00\x00\x00",  # DataOffset < 9
        flv.header(audio=True, video=True) + b"\x28" + bytes(10),  # Filter bit (encrypted)
    ],
)
def test_decoder_rejects(data: bytes) -> None:
    dec = FlvDecoder()
    dec.receive_data(data)
    with pytest.raises(FlvError):
        decode_all(dec)


def test_decoder_tag_size_limit() -> None:
    dec = FlvDecoder(max_tag_size=1000)
    dec.receive_data(flv.header(audio=False, video=True) + flv.tag_header(9, 0, 1001))
    assert dec.next_event() == FlvHeader(audio=False, video=True)
    with pytest.raises(FlvError):
        dec.next_event()  # refused from the header alone, before buffering the body


# ---------------------------------------------------------------------------- video bodies


def test_legacy_avc_bodies() -> None:
    config = b"\x17\x00\x00\x00\x00" + AVCC
    assert parse_video_body(config) == VideoBody("avc1", True, "config", 0, AVCC)
    assert build_video_body("avc1", keyframe=True, kind="config", data=AVCC) == config
    frame = b"\x27\x01\xff\xff\xce" + b"\x00\x00\x00\x01\x41"  # CTS -50 ms
    assert parse_video_body(frame) == VideoBody("avc1", False, "frame", -50, frame[5:])
    assert build_video_body("avc1", keyframe=False, kind="frame", cts_ms=-50, data=frame[5:]) == (
        frame
    )
    assert parse_video_body(b"\x17\x02\x00\x00\x00") == VideoBody("avc1", True, "end", 0, b"")
    assert parse_video_body(b"\x17\x02") == VideoBody("avc1", True, "end", 0, b"")
    assert build_video_body("avc1", keyframe=True, kind="end") == b"\x17\x02\x00\x00\x00"
    assert parse_video_body(b"\x47\x01\x00\x00\x00x").keyframe  # type: ignore[union-attr]


def test_legacy_other_codecs() -> None:
    assert parse_video_body(b"\x1c\x01\x00\x00\x10hev") == VideoBody(
        "hvc1", True, "frame", 16, b"hev"
    )  # non-standard CodecID 12
    assert parse_video_body(b"\x22abc") == VideoBody("legacy2", False, "frame", 0, b"abc")
    assert parse_video_body(b"\x14vp6") == VideoBody("legacy4", True, "frame", 0, b"vp6")
    assert build_video_body("legacy4", keyframe=True, kind="frame", data=b"vp6") == b"\x14vp6"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x57\x00",  # legacy FrameType 5 (command frame)
        b"\xd1\x00",  # enhanced command frame: no FourCC follows
        FFMPEG_HEVC_METADATA,
        b"\x95hvc1\x00\x00\x00",  # MPEG2TSSequenceStart
        b"\x96\x00\x01hvc1\x00\x00\x00\x00",  # Multitrack
    ],
)
def test_video_bodies_to_skip(body: bytes) -> None:
    assert parse_video_body(body) is None


def test_enhanced_video_bodies() -> None:
    hvcc = b"\x01\x01\x60hvcC"
    config = build_video_body("hvc1", keyframe=True, kind="config", data=hvcc)
    assert config == b"\x90hvc1" + hvcc
    assert parse_video_body(config) == VideoBody("hvc1", True, "config", 0, hvcc)
    frame = build_video_body("hvc1", keyframe=False, kind="frame", cts_ms=-67, data=b"nal")
    assert frame == b"\xa1hvc1\xff\xff\xbdnal"
    assert parse_video_body(frame) == VideoBody("hvc1", False, "frame", -67, b"nal")
    # CodedFramesX as ffmpeg writes it when CTS is 0.
    assert parse_video_body(b"\xa3hvc1nal") == VideoBody("hvc1", False, "frame", 0, b"nal")
    av1 = build_video_body("av01", keyframe=True, kind="frame", data=b"\x12\x00obu")
    assert av1 == b"\x91av01\x12\x00obu"
    assert parse_video_body(av1) == VideoBody("av01", True, "frame", 0, b"\x12\x00obu")
    assert parse_video_body(b"\x92vp09") == VideoBody("vp09", True, "end", 0, b"")
    with pytest.raises(FlvError):
        build_video_body("av01", keyframe=True, kind="frame", cts_ms=33, data=b"")


def test_enhanced_video_mod_ex_is_walked() -> None:
    nano = b"\x07" + b"\x02" + b"\x0f\x42\x3f" + b"\x01"  # ModEx, size 3, 999999 ns, then 1
    body = bytes([0x80 | 0x10 | nano[0]]) + nano[1:] + b"hvc1\x00\x00\x21nal"
    assert parse_video_body(body) == VideoBody("hvc1", True, "frame", 33, b"nal")
    big = b"\x97\xff\x01\x2b" + bytes(300) + b"\x03av01obu"  # UI16 size escape: 299 + 1
    assert parse_video_body(big) == VideoBody("av01", True, "frame", 0, b"obu")


@pytest.mark.parametrize(
    "body",
    [
        b"\x17",
        b"\x17\x01\x00",
        b"\x17\x05\x00\x00\x00",  # unknown AVCPacketType
        b"\x91hv",
        b"\x91hvc1\x00",  # CTS cut short
        b"\x98hvc1",  # reserved VideoPacketType 8
        b"\x97",
        b"\x97\x05\x00",
        b"\x97\xff\x00",
    ],
)
def test_video_bodies_rejected(body: bytes) -> None:
    with pytest.raises(FlvError):
        parse_video_body(body)


@pytest.mark.parametrize(
    ("codec", "kind", "cts"),
    [("avc1", "bogus", 0), ("avc1", "frame", 1 << 23), ("ab", "frame", 0), ("legacy7", "frame", 0),
     ("legacy2", "config", 0), ("legacy16", "frame", 0)],
)  # fmt: skip
def test_build_video_body_rejects(codec: str, kind: str, cts: int) -> None:
    with pytest.raises(FlvError):
        build_video_body(codec, keyframe=True, kind=kind, cts_ms=cts, data=b"")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- audio bodies


def test_legacy_audio_bodies() -> None:
    assert parse_audio_body(b"\xaf\x00\x12\x10") == AudioBody("mp4a", "config", b"\x12\x10", 15)
    assert build_audio_body("mp4a", kind="config", data=b"\x12\x10") == b"\xaf\x00\x12\x10"
    assert parse_audio_body(b"\xae\x01raw") == AudioBody("mp4a", "frame", b"raw", 14)
    assert build_audio_body("mp4a", kind="frame", data=b"raw", sound_flags=14) == b"\xae\x01raw"
    assert parse_audio_body(b"\x2fmp3") == AudioBody("mp3", "frame", b"mp3", 15)
    assert build_audio_body("mp3", kind="frame", data=b"mp3") == b"\x2fmp3"
    assert parse_audio_body(b"\x72alaw") == AudioBody("legacy7", "frame", b"alaw", 2)
    assert parse_audio_body(b"") is None  # "silence" message (Wowza)


def test_enhanced_audio_bodies() -> None:
    config = build_audio_body("Opus", kind="config", data=OPUS_HEAD)
    assert config == b"\x90Opus" + OPUS_HEAD  # as ffmpeg 9 writes it
    assert parse_audio_body(config) == AudioBody("Opus", "config", OPUS_HEAD, 0)
    assert build_audio_body("Opus", kind="frame", data=b"\xfc") == b"\x91Opus\xfc"
    assert parse_audio_body(b"\x91Opus\xfc") == AudioBody("Opus", "frame", b"\xfc", 0)
    assert parse_audio_body(b"\x91.mp3frame") == AudioBody("mp3", "frame", b"frame", 0)
    assert parse_audio_body(b"\x90mp4a\x12\x10") == AudioBody("mp4a", "config", b"\x12\x10", 0)
    modex = b"\x97\x02\x00\x01\x00\x01fLaCx"
    assert parse_audio_body(modex) == AudioBody("fLaC", "frame", b"x", 0)


@pytest.mark.parametrize(
    "body",
    [
        b"\x92Opus",  # SequenceEnd
        bytes.fromhex("944f707573010100000004"),  # MultichannelConfig, as ffmpeg 9 writes it
        b"\x95\x00\x01Opus\x00",  # Multitrack
    ],
)
def test_audio_bodies_to_skip(body: bytes) -> None:
    assert parse_audio_body(body) is None


@pytest.mark.parametrize(
    "body", [b"\xaf", b"\xaf\x02\x00", b"\x91Op", b"\x93Opus", b"\x97\x02\x00"]
)
def test_audio_bodies_rejected(body: bytes) -> None:
    with pytest.raises(FlvError):
        parse_audio_body(body)


def test_build_audio_body_rejects() -> None:
    for codec, kind in (("mp3", "config"), ("legacy10", "frame"), ("Op", "frame"), ("x", "x")):
        with pytest.raises(FlvError):
            build_audio_body(codec, kind=kind, data=b"")  # type: ignore[arg-type]


def test_metadata_body_is_passthrough() -> None:
    assert flv.metadata_body(b"\x02\x00\x0aonMetaData") == b"\x02\x00\x0aonMetaData"


# ---------------------------------------------------------------------------- real files


def ffmpeg_flv(tmp_path: Path, *codec_args: str) -> bytes:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "out.flv"
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine",
        "-t", "2", *codec_args, "-f", "flv", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.skip(f"ffmpeg cannot produce this stream: {proc.stderr[-200:]!r}")
    return out.read_bytes()


def test_real_avc_aac_file(tmp_path: Path) -> None:
    data = ffmpeg_flv(tmp_path, "-c:v", "libx264", "-bf", "2", "-c:a", "aac")
    events = decode_bytes(data)
    assert events[0] == FlvHeader(audio=True, video=True)
    tags = [e for e in events[1:] if isinstance(e, FlvTag)]
    assert len(tags) == len(events) - 1
    assert tags[0].tag_type == TagType.SCRIPT
    assert {t.tag_type for t in tags} == {8, 9, 18}
    for t in tags:
        assert data[t.offset + 11 : t.offset + 11 + len(t.body)] == t.body
    assert tags[-1].offset + 11 + len(tags[-1].body) + 4 == len(data)
    video = [t for t in tags if t.tag_type == TagType.VIDEO]
    audio = [t for t in tags if t.tag_type == TagType.AUDIO]
    for track in (video, audio):
        stamps = [t.timestamp_ms for t in track]
        assert stamps == sorted(stamps)
    assert 1900 <= video[-1].timestamp_ms <= 2100

    first = parse_video_body(video[0].body)
    assert first is not None
    assert (first.codec, first.kind, first.keyframe) == ("avc1", "config", True)
    cfg = avc.parse_avcc(first.data)
    info = avc.parse_sps(cfg.sps[0])
    assert (info.width, info.height) == (320, 240)
    frames = [parse_video_body(t.body) for t in video[1:]]
    assert all(f is not None and f.codec == "avc1" for f in frames)
    assert any(f is not None and f.cts_ms > 0 for f in frames)  # B-frames reorder
    assert frames[0] is not None
    assert frames[0].keyframe
    for f in frames:
        if f is not None and f.kind == "frame":
            nals = avc.split_avcc(f.data, cfg.nal_length_size)
            assert nals
            assert all(n[0] & 0x80 == 0 for n in nals)  # forbidden_zero_bit

    asc = parse_audio_body(audio[0].body)
    assert asc is not None
    assert (asc.codec, asc.kind) == ("mp4a", "config")
    assert aac.parse_asc(asc.data).sample_rate == 44100
    assert all(parse_audio_body(t.body).kind == "frame" for t in audio[1:])  # type: ignore[union-attr]

    # Feeding the same file in awkward pieces yields the same events.
    dec = FlvDecoder()
    chunked: list[FlvHeader | FlvTag] = []
    for i in range(0, len(data), 997):
        dec.receive_data(data[i : i + 997])
        chunked.extend(decode_all(dec))
    assert chunked == events


def test_real_enhanced_hevc_opus_file(tmp_path: Path) -> None:
    data = ffmpeg_flv(tmp_path, "-c:v", "libx265", "-bf", "2", "-c:a", "libopus", "-ar", "48000")
    tags = [e for e in decode_bytes(data) if isinstance(e, FlvTag)]
    video = [parse_video_body(t.body) for t in tags if t.tag_type == TagType.VIDEO]
    audio = [parse_audio_body(t.body) for t in tags if t.tag_type == TagType.AUDIO]
    vbodies = [v for v in video if v is not None]
    abodies = [a for a in audio if a is not None]
    assert vbodies[0].codec == "hvc1"
    assert vbodies[0].kind == "config"
    assert vbodies[0].data[0] == 1  # HEVCDecoderConfigurationRecord version
    assert {v.codec for v in vbodies} == {"hvc1"}
    assert any(v.cts_ms > 0 for v in vbodies)
    assert abodies[0] == AudioBody("Opus", "config", abodies[0].data, 0)
    assert abodies[0].data.startswith(b"OpusHead")
    assert {a.kind for a in abodies[1:]} == {"frame"}


# ---------------------------------------------------------------------------- properties

tag_st = st.tuples(
    st.sampled_from([8, 9, 18]), st.integers(0, (1 << 32) - 1), st.binary(max_size=300)
)


@given(st.lists(tag_st, max_size=8), st.lists(st.integers(0, 4000), max_size=10))
def test_decoder_round_trip_and_split_invariance(
    tags: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = flv.header(audio=True, video=True) + b"".join(encode_tag(*t) for t in tags)
    whole = decode_bytes(stream)
    assert whole[0] == FlvHeader(audio=True, video=True)
    assert [(e.tag_type, e.timestamp_ms, e.body) for e in whole[1:] if isinstance(e, FlvTag)] == (
        tags
    )
    dec = FlvDecoder()
    pieces: list[FlvHeader | FlvTag] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in itertools.pairwise(bounds):
        dec.receive_data(stream[a:b])
        pieces.extend(decode_all(dec))
    assert pieces == whole


video_codec_st = st.sampled_from(["avc1", "hvc1", "vvc1", "av01", "vp09", "vp08"])


@given(
    video_codec_st,
    st.booleans(),
    st.sampled_from(["config", "frame", "end"]),
    st.integers(-0x800000, 0x7FFFFF),
    st.binary(max_size=64),
)
def test_video_body_round_trip(
    codec: str, keyframe: bool, kind: flv.VideoKind, cts: int, data: bytes
) -> None:
    if kind != "frame" or codec not in ("avc1", "hvc1", "vvc1"):
        cts = 0
    if kind == "end":
        data = b""
    body = build_video_body(codec, keyframe=keyframe, kind=kind, cts_ms=cts, data=data)
    assert parse_video_body(body) == VideoBody(codec, keyframe, kind, cts, data)


@given(st.integers(0, 15).filter(lambda n: n not in (7, 12)), st.booleans(), st.binary())
def test_legacy_video_round_trip(codec_id: int, keyframe: bool, data: bytes) -> None:
    body = build_video_body(f"legacy{codec_id}", keyframe=keyframe, kind="frame", data=data)
    assert parse_video_body(body) == VideoBody(f"legacy{codec_id}", keyframe, "frame", 0, data)


@given(
    st.sampled_from(["mp4a", "Opus", "fLaC", "ac-3", "ec-3", "mp3"]),
    st.sampled_from(["config", "frame"]),
    st.integers(0, 15),
    st.binary(max_size=64),
)
def test_audio_body_round_trip(codec: str, kind: flv.AudioKind, flags: int, data: bytes) -> None:
    if codec == "mp3":
        kind = "frame"
    body = build_audio_body(codec, kind=kind, data=data, sound_flags=flags)
    legacy = codec in ("mp4a", "mp3")
    assert parse_audio_body(body) == AudioBody(codec, kind, data, flags if legacy else 0)


@given(st.binary(max_size=64))
def test_body_parsers_raise_only_flv_error(data: bytes) -> None:
    for parse in (parse_video_body, parse_audio_body):
        with contextlib.suppress(FlvError):
            parse(data)


@given(st.binary(max_size=200), st.booleans())
def test_decoder_raises_only_flv_error(data: bytes, with_header: bool) -> None:
    dec = FlvDecoder(max_tag_size=100)
    dec.receive_data(flv.header(audio=True, video=True) + data if with_header else data)
    with contextlib.suppress(FlvError):
        decode_all(dec)
