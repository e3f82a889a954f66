"""Fmp4Fragmenter: init segments, fragment structure and timing, checked by parsing the bytes
back (tests/mp4_parse.py) and, for real ffmpeg media, by decoding them with PyAV and ffmpeg."""

from __future__ import annotations

import itertools
import struct
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from egress.fmp4.fragmenter import (
    Fmp4Event,
    Fmp4Fragmenter,
    Fragment,
    InitSegment,
    Mp4WriteError,
    opus_packet_samples,
)
from media.codecs import avc, hevc
from media.mp4 import boxes
from tests.egress.media import SECONDS, ffmpeg_exe
from tests.media.test_hevc import FFMPEG_HVCC_MAIN
from tests.mp4_parse import find_all, handler, parse_boxes, parse_fragment, timescale, track_id

if TYPE_CHECKING:
    from pathlib import Path

KEY = StreamKey("live", "_definst_", "t")
AVCC_720P = bytes.fromhex(
    "0164001fffe1001a6764001facd9405005bb0110000003001000000303c0f183196001000668ebe3cb22c0fdf8f800"
)
ASC_44K_STEREO = b"\x12\x10"  # AAC-LC, 44.1 kHz, 2 channels
ASC_48K_960 = b"\x11\x94"  # AAC-LC, 48 kHz, 2 channels, frameLengthFlag = 1 (960)
OPUS_HEAD = bytes.fromhex("4f707573486561640102380180bb0000000000")
SYNC, NON_SYNC = boxes.SAMPLE_SYNC, boxes.SAMPLE_NON_SYNC


def baseline_avcc(width_mbs: int, height_mbs: int) -> bytes:
    """An avcC around a hand-built Baseline SPS (H.264 §7.3.2.1.1) of the given size."""
    bits = ""

    def ue(v: int) -> str:
        code = bin(v + 1)[2:]
        return "0" * (len(code) - 1) + code

    # sps_id 0, log2_max_frame_num-4 = 0, poc_type 2, 1 ref frame, no gaps, size,
    # frame_mbs_only, direct_8x8, no cropping, no VUI, stop bit.
    bits = ue(0) + ue(0) + ue(2) + ue(1) + "0" + ue(width_mbs - 1) + ue(height_mbs - 1)
    bits += "1" + "1" + "0" + "0" + "1"
    bits += "0" * (-len(bits) % 8)
    sps = bytes((0x67, 66, 0xC0, 30)) + int(bits, 2).to_bytes(len(bits) // 8, "big")
    return avc.build_avcc([sps], [b"\x68\xce\x38\x80"])


def config(kind: TrackKind, payload: bytes, codec: Codec | None = None) -> MediaPacket:
    codec = codec or (Codec.H264 if kind is TrackKind.VIDEO else Codec.AAC)
    return MediaPacket(stream=KEY, kind=kind, codec=codec, dts=0, pts=0, timescale=1000,
                       keyframe=True, is_config=True, payload=payload)


def video(dts: int, payload: bytes, *, key: bool = False, pts: int | None = None,
          timescale: int = 1000) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=dts,
                       pts=dts if pts is None else pts, timescale=timescale, keyframe=key,
                       is_config=False, payload=payload)


def audio(dts: int, payload: bytes = b"\x21\x00", codec: Codec = Codec.AAC) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=codec, dts=dts, pts=dts,
                       timescale=1000, keyframe=True, is_config=False, payload=payload)


@dataclass
class Parsed:
    """Every sample of every track as (decode time, duration, size, flags, cts, bytes)."""

    inits: list[InitSegment] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=list)
    timescales: dict[int, int] = field(default_factory=dict)
    samples: dict[int, list[tuple[int, int, int, int, int, bytes]]] = field(default_factory=dict)
    tfdts: dict[int, list[int]] = field(default_factory=dict)


def check(events: list[Fmp4Event], *, contiguous: bool = True) -> Parsed:
    """Parse and check every event; contiguous: tfdt = previous tfdt + its durations."""
    out = Parsed()
    ends: dict[int, int] = {}
    for ev in events:
        if isinstance(ev, InitSegment):
            top = parse_boxes(ev.data)
            assert [b.type for b in top] == ["ftyp", "moov"]
            assert top[0].payload[:4] == b"iso6"
            traks = find_all(top[1].children, "trak")
            assert [track_id(t) for t in traks] == [i.track_id for i in ev.tracks]
            assert [handler(t) for t in traks] == [
                "vide" if i.kind is TrackKind.VIDEO else "soun" for i in ev.tracks]
            assert [timescale(t) for t in traks] == [i.timescale for i in ev.tracks]
            out.timescales = {i.track_id: i.timescale for i in ev.tracks}
            out.inits.append(ev)
            continue
        assert out.inits, "a fragment before the init segment"
        sequence, runs, end = parse_fragment(ev.data)
        assert end == len(ev.data)
        assert sequence == ev.sequence == len(out.fragments) + 1
        out.fragments.append(ev)
        assert [(r.track_id, r.tfdt, len(r.samples)) for r in runs] == [
            (s.track_id, s.start, s.samples) for s in ev.tracks]
        for run, span in zip(runs, ev.tracks, strict=True):
            assert sum(s.duration for s in run.samples) == span.duration
            if contiguous and run.track_id in ends:
                assert run.tfdt == ends[run.track_id]
            assert run.tfdt >= ends.get(run.track_id, 0)
            out.tfdts.setdefault(run.track_id, []).append(run.tfdt)
            time, pos = run.tfdt, 0
            for s in run.samples:
                out.samples.setdefault(run.track_id, []).append(
                    (time, s.duration, s.size, s.flags, s.cts, run.data[pos : pos + s.size]))
                time += s.duration
                pos += s.size
            ends[run.track_id] = time
            assert span.earliest_pts == min(run.tfdt + sum(x.duration for x in run.samples[:i])
                                            + s.cts for i, s in enumerate(run.samples))
            if span.kind is TrackKind.VIDEO:
                # Fragments are cut before keyframes, so a sync sample only comes first.
                assert all(s.flags == NON_SYNC for s in run.samples[1:])
                assert ev.keyframe == (run.samples[0].flags == SYNC)
    return out


def mux(fr: Fmp4Fragmenter, packets: list[MediaPacket], *, flush: bool = True) -> list[Fmp4Event]:
    events: list[Fmp4Event] = []
    for p in packets:
        events += fr.add(p)
    return events + (fr.flush() if flush else [])


# ---------------------------------------------------------------------------- init segments


def test_init_waits_for_every_declared_config() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True)
    assert fr.add(config(TrackKind.VIDEO, AVCC_720P)) == []
    sent_early = fr.init_sent
    (init,) = fr.add(config(TrackKind.AUDIO, ASC_44K_STEREO))
    assert isinstance(init, InitSegment)
    assert (sent_early, fr.init_sent) == (False, True)
    v, a = init.tracks
    assert (v.track_id, v.codec, v.timescale, v.width, v.height, v.codec_string) == (
        1, Codec.H264, 90000, 1280, 720, "avc1.64001f")
    assert (a.track_id, a.codec, a.timescale, a.channels, a.codec_string) == (
        2, Codec.AAC, 44100, 2, "mp4a.40.2")
    parsed = check([init])
    assert parsed.timescales == {1: 90000, 2: 44100}
    tkhd = parse_boxes(init.data)[1].find("trak/tkhd")
    assert struct.unpack_from(">II", tkhd.payload, 76) == (1280 << 16, 720 << 16)


def test_hevc_init_has_an_hvc1_sample_entry() -> None:
    fr = Fmp4Fragmenter(video=True, audio=False)
    (init,) = fr.add(config(TrackKind.VIDEO, FFMPEG_HVCC_MAIN, Codec.HEVC))
    assert isinstance(init, InitSegment)
    (v,) = init.tracks
    assert (v.codec, v.width, v.height, v.codec_string) == (
        Codec.HEVC, 320, 240, hevc.codec_string(hevc.parse_hvcc(FFMPEG_HVCC_MAIN)))
    assert v.codec_string.startswith("hvc1.1.6.L")
    stsd = parse_boxes(init.data)[1].find("trak/mdia/minf/stbl/stsd")
    assert b"hvc1" in stsd.payload
    assert b"hvcC" in stsd.payload


@pytest.mark.parametrize(("video_on", "audio_on"), [(True, False), (False, True)])
def test_single_track_init(video_on: bool, audio_on: bool) -> None:
    fr = Fmp4Fragmenter(video=video_on, audio=audio_on)
    events = fr.add(config(TrackKind.VIDEO, AVCC_720P)) + fr.add(
        config(TrackKind.AUDIO, ASC_44K_STEREO))
    (init,) = events
    assert isinstance(init, InitSegment)
    assert [(t.track_id, t.kind) for t in init.tracks] == [
        (1, TrackKind.VIDEO if video_on else TrackKind.AUDIO)]


def test_rejects() -> None:
    with pytest.raises(ValueError, match="video or an audio"):
        Fmp4Fragmenter(video=False, audio=False)
    fr = Fmp4Fragmenter(video=True, audio=True)
    with pytest.raises(Mp4WriteError, match="before its configuration"):
        fr.add(video(0, b"x", key=True))
    with pytest.raises(Mp4WriteError, match="bad H264 configuration"):
        fr.add(config(TrackKind.VIDEO, b"\x01\x02"))
    with pytest.raises(Mp4WriteError, match="no fMP4 mapping"):
        fr.add(config(TrackKind.AUDIO, b"", Codec.MP3))
    fr.add(config(TrackKind.AUDIO, ASC_44K_STEREO))
    with pytest.raises(Mp4WriteError, match="OPUS frame on a AAC track"):
        fr.add(audio(0, b"\xfc", Codec.OPUS))


def test_frames_wait_for_the_other_config() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True)
    fr.add(config(TrackKind.VIDEO, AVCC_720P))
    assert fr.add(video(0, b"k", key=True)) == []
    assert fr.add(video(40, b"p")) == []
    events = fr.add(config(TrackKind.AUDIO, ASC_44K_STEREO))
    assert isinstance(events[0], InitSegment)
    assert isinstance(events[1], Fragment)  # frame 0, completed by frame 40
    parsed = check(events + fr.flush())
    assert [s[5] for s in parsed.samples[1]] == [b"k", b"p"]


# ---------------------------------------------------------------------------- timing


def av_stream(seconds: float = 2.0, *, gop: int = 30) -> list[MediaPacket]:
    """30 fps video (ms-rounded DTS) and 44.1 kHz AAC, interleaved by time, configs first."""
    packets = [config(TrackKind.VIDEO, AVCC_720P), config(TrackKind.AUDIO, ASC_44K_STEREO)]
    frames = [(round(i * 1000 / 30), 0, i) for i in range(int(seconds * 30))]
    blocks = [(round(i * 1024 * 1000 / 44100), 1, i) for i in range(int(seconds * 44100 / 1024))]
    for ms, kind, i in sorted(frames + blocks):
        packets.append(video(ms, b"V%d" % i, key=i % gop == 0) if kind == 0
                       else audio(ms, b"A%d" % i))
    return packets


def test_one_fragment_per_video_frame() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True)
    events = mux(fr, av_stream())
    parsed = check(events)
    assert len(parsed.fragments) == 60
    vs = parsed.samples[1]
    assert [s[5] for s in vs] == [b"V%d" % i for i in range(60)]
    # Durations follow the ms-rounded DTS at 90 kHz; the last repeats the previous one.
    expected = [round((i + 1) * 1000 / 30) * 90 - round(i * 1000 / 30) * 90 for i in range(59)]
    assert [s[1] for s in vs] == [*expected, expected[-1]]
    assert [s[0] for s in vs] == [round(i * 1000 / 30) * 90 for i in range(60)]
    assert [f.keyframe for f in parsed.fragments] == [i % 30 == 0 for i in range(60)]
    # Audio: a sample count from the first DTS, every sample 1024 long, nothing dropped.
    aud = parsed.samples[2]
    assert [s[1] for s in aud] == [1024] * len(aud)
    assert [s[0] for s in aud] == [1024 * i for i in range(len(aud))]
    assert [s[5] for s in aud] == [b"A%d" % i for i in range(len(aud))]
    assert all(s[3] == SYNC for s in aud)
    spans = parsed.fragments[5].tracks
    assert (spans[0].start, spans[0].end) == (vs[5][0], vs[6][0])
    assert parsed.fragments[5].start_s == pytest.approx(5 / 30, abs=1e-3)


def test_fragment_duration_groups_frames_and_cuts_at_keyframes() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True, fragment_duration_s=0.5)
    parsed = check(mux(fr, av_stream(4.0, gop=45)))
    counts = [f.tracks[0].samples for f in parsed.fragments]
    # 15 frames reach 0.5 s; a keyframe every 45 frames starts a fragment early or on time.
    assert counts == [15, 15, 15] * 2 + [15, 15]
    assert [f.keyframe for f in parsed.fragments] == [True, False, False] * 2 + [True, False]
    assert sum(f.tracks[-1].samples for f in parsed.fragments) == len(parsed.samples[2])


@pytest.mark.parametrize("zero_first_cts", [False, True])
def test_b_frames_get_signed_cts_and_keep_presentation_times(zero_first_cts: bool) -> None:
    # Decode order I P B B P B B as x264 -bf 2 writes it: (decode index, presentation index).
    pattern = [(0, 2), (1, 5), (2, 3), (3, 4), (4, 8), (5, 6), (6, 7)]
    packets = [config(TrackKind.VIDEO, AVCC_720P)]
    packets += [video(3000 * d, b"F%d" % d, key=d == 0, pts=3000 * p, timescale=90000)
                for d, p in pattern]
    fr = Fmp4Fragmenter(video=True, audio=False, zero_first_cts=zero_first_cts)
    vs = check(mux(fr, packets)).samples[1]
    delay = 6000 if zero_first_cts else 0  # the first frame's pts - dts
    assert [s[0] for s in vs] == [3000 * d + delay for d, _ in pattern]
    assert [s[4] for s in vs] == [3000 * (p - d) - delay for d, p in pattern]
    assert [s[0] + s[4] for s in vs] == [3000 * p for _, p in pattern]
    if zero_first_cts:
        assert vs[0][4] == 0  # the first presented frame starts at tfdt
        assert min(s[4] for s in vs) == -3000


def test_source_negative_cts_round_trips() -> None:
    packets = [config(TrackKind.VIDEO, AVCC_720P), video(90, b"a", key=True, pts=0),
               video(123, b"b", pts=200), video(157, b"c", pts=100)]
    vs = check(mux(Fmp4Fragmenter(video=True, audio=False), packets)).samples[1]
    assert [s[4] for s in vs] == [-8100, 6930, -5130]
    assert [s[0] + s[4] for s in vs] == [0, 18000, 9000]


def test_non_keyframes_before_the_first_keyframe_are_dropped() -> None:
    packets = [config(TrackKind.VIDEO, AVCC_720P), video(0, b"p"), video(33, b"k", key=True),
               video(67, b"q")]
    parsed = check(mux(Fmp4Fragmenter(video=True, audio=False), packets))
    assert [s[5] for s in parsed.samples[1]] == [b"k", b"q"]
    assert parsed.fragments[0].keyframe


def test_video_dts_that_does_not_advance_keeps_the_cadence() -> None:
    packets = [config(TrackKind.VIDEO, AVCC_720P), video(0, b"a", key=True), video(40, b"b"),
               video(40, b"c"), video(20, b"d"), video(200, b"e"), video(240, b"f")]
    parsed = check(mux(Fmp4Fragmenter(video=True, audio=False), packets))
    vs = parsed.samples[1]
    assert [s[1] for s in vs] == [3600, 3600, 3600, 7200, 3600, 3600]
    assert [s[0] for s in vs] == [0, 3600, 7200, 10800, 18000, 21600]


def test_audio_ignores_ms_jitter_and_resyncs_after_a_gap() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    stamps = [0, 23, 46, 70, 93, 116]  # 1024/44.1 = 23.22 ms, rounded by RTMP
    packets = [config(TrackKind.AUDIO, ASC_44K_STEREO)] + [audio(ms) for ms in stamps]
    packets += [audio(1000), audio(1023)]  # 0.86 s gap: the audio-only tfdt jumps
    packets += [audio(1046 - 200)]  # 200 ms early: dropped (its time is already used)
    packets += [audio(1046), audio(1070)]
    parsed = check(mux(fr, packets), contiguous=False)
    aud = parsed.samples[1]
    assert all(s[1] == 1024 for s in aud)
    assert [s[0] for s in aud[:6]] == [1024 * i for i in range(6)]
    assert [s[0] for s in aud[6:]] == [44100 + 1024 * i for i in range(4)]
    assert len(parsed.fragments) == len(aud) == 10  # fragment_duration_s=0: one per frame


def test_audio_gap_inside_a_fragment_stretches_the_previous_sample() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True, fragment_duration_s=2.0)
    packets = [config(TrackKind.VIDEO, AVCC_720P), config(TrackKind.AUDIO, ASC_44K_STEREO),
               video(0, b"k", key=True), audio(0), audio(23), audio(500), video(600, b"p")]
    parsed = check(mux(fr, packets))
    assert [s[1] for s in parsed.samples[2]] == [1024, 22050 - 1024, 1024]


def test_audio_jump_back_rebases_the_count() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    packets = [config(TrackKind.AUDIO, ASC_44K_STEREO), audio(5000), audio(5023), audio(100),
               audio(123)]
    parsed = check(mux(fr, packets))
    assert [s[0] for s in parsed.samples[1]] == [220500 + 1024 * i for i in range(4)]


def test_audio_only_fragments_group_frames() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True, fragment_duration_s=0.1)
    packets = [config(TrackKind.AUDIO, ASC_48K_960)]
    packets += [audio(i * 20) for i in range(20)]  # 960 / 48 kHz = 20 ms
    parsed = check(mux(fr, packets, flush=False))
    # 5 frames x 960 = 4800 ticks = 0.1 s per fragment; all independent.
    assert [f.tracks[0].samples for f in parsed.fragments] == [5, 5, 5, 5]
    assert all(f.keyframe for f in parsed.fragments)
    assert all(s[1] == 960 for s in parsed.samples[1])
    assert parsed.timescales == {1: 48000}


def test_audio_without_video_goes_alone_after_a_while() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True)
    packets = [config(TrackKind.VIDEO, AVCC_720P), config(TrackKind.AUDIO, ASC_44K_STEREO)]
    packets += [audio(round(i * 1024000 / 44100)) for i in range(50)]
    parsed = check(mux(fr, packets, flush=False))
    (frag,) = parsed.fragments
    assert not frag.keyframe
    assert [s.kind for s in frag.tracks] == [TrackKind.AUDIO]
    assert frag.tracks[0].duration >= 44100


def test_config_change_sends_pending_fragment_then_new_init() -> None:
    fr = Fmp4Fragmenter(video=True, audio=False)
    events = mux(fr, [config(TrackKind.VIDEO, AVCC_720P), video(0, b"a", key=True),
                      video(40, b"b"), config(TrackKind.VIDEO, AVCC_720P)], flush=False)
    assert [type(e) for e in events] == [InitSegment, Fragment]  # a repeated header is ignored
    events += mux(fr, [config(TrackKind.VIDEO, baseline_avcc(40, 30)),
                       video(80, b"c", key=True), video(120, b"d")])
    assert [type(e) for e in events] == [InitSegment, Fragment, Fragment, InitSegment,
                                         Fragment, Fragment]
    new_init = events[3]
    assert isinstance(new_init, InitSegment)
    assert (new_init.tracks[0].width, new_init.tracks[0].height) == (640, 480)
    assert new_init.tracks[0].codec_string == "avc1.42c01e"
    parsed = check(events)
    assert [s[0] for s in parsed.samples[1]] == [0, 3600, 7200, 10800]
    assert [s[1] for s in parsed.samples[1]] == [3600] * 4


def test_new_sample_rate_carries_the_timeline_over() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    events = mux(fr, [config(TrackKind.AUDIO, ASC_44K_STEREO), audio(1000), audio(1023),
                      config(TrackKind.AUDIO, ASC_48K_960), audio(1046), audio(1066)])
    parsed = check(events, contiguous=False)
    assert [i.tracks[0].timescale for i in parsed.inits] == [44100, 48000]
    times = [s[0] for s in parsed.samples[1]]
    assert times[:2] == [44100, 45124]
    assert times[2] == -(-46148 * 48000 // 44100)  # where the 44.1 kHz samples ended
    assert times[3] == times[2] + 960


def test_audio_config_change_keeps_the_held_video_frame() -> None:
    fr = Fmp4Fragmenter(video=True, audio=True)
    packets = [config(TrackKind.VIDEO, AVCC_720P), config(TrackKind.AUDIO, ASC_44K_STEREO),
               video(0, b"k", key=True), audio(0), audio(23), video(40, b"p"), audio(46),
               config(TrackKind.AUDIO, ASC_48K_960), audio(70), video(80, b"q")]
    events = mux(fr, packets)
    assert [type(e) for e in events] == [InitSegment, Fragment, Fragment, InitSegment,
                                         Fragment, Fragment]
    parsed = check(events, contiguous=False)
    assert [f.tracks[0].kind for f in parsed.fragments] == [
        TrackKind.VIDEO, TrackKind.AUDIO, TrackKind.VIDEO, TrackKind.VIDEO]
    # p's duration still comes from q's DTS: the audio change did not flush it.
    assert [s[0:2] for s in parsed.samples[1]] == [(0, 3600), (3600, 3600), (7200, 3600)]


def test_a_jump_below_zero_after_the_start_is_clamped() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    events = mux(fr, [config(TrackKind.AUDIO, ASC_44K_STEREO), audio(0), audio(-5000)])
    assert [s[0] for s in check(events).samples[1]] == [0, 1024]


def test_negative_decode_time_is_refused() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    fr.add(config(TrackKind.AUDIO, ASC_44K_STEREO))
    with pytest.raises(Mp4WriteError, match="negative"):
        fr.add(audio(-100))


# ---------------------------------------------------------------------------- Opus


@pytest.mark.parametrize(("packet", "samples"), [
    (b"\x78", 960),  # config 15 (hybrid 20 ms), code 0
    (b"\xfc", 960),  # config 31 (CELT 20 ms), one frame
    (b"\xf9", 1920),  # CELT 20 ms, code 1: two frames
    (b"\x83\x03", 360),  # config 16 (CELT 2.5 ms), code 3 with three frames
    (b"\x1b\x02", 5760),  # config 3 (SILK 60 ms), code 3 with two frames
])
def test_opus_packet_samples(packet: bytes, samples: int) -> None:
    assert opus_packet_samples(packet) == samples


def test_opus_track() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True)
    packets = [config(TrackKind.AUDIO, OPUS_HEAD, Codec.OPUS)]
    packets += [audio(i * 20, b"\xfc\x00", Codec.OPUS) for i in range(5)]
    events = mux(fr, packets)
    parsed = check(events)
    init = parsed.inits[0]
    assert (init.tracks[0].codec_string, init.tracks[0].channels) == ("opus", 2)
    assert parsed.timescales == {1: 48000}
    assert [s[1] for s in parsed.samples[1]] == [960] * 5
    entry = parse_boxes(init.data)[1].find("trak/mdia/minf/stbl/stsd/Opus")
    assert entry.children[0].type == "dOps"
    with pytest.raises(Mp4WriteError):
        opus_packet_samples(b"")


# ---------------------------------------------------------------------------- properties

video_samples = st.lists(
    st.tuples(st.integers(1, 9000), st.integers(1, 40), st.booleans(),
              st.integers(-6000, 12000)),
    min_size=1, max_size=40)


@settings(max_examples=150)
@given(video_samples, st.sampled_from([0.0, 0.05, 0.2, 1.0]), st.integers(0, 10**9),
       st.booleans())
def test_video_samples_round_trip(samples: list[tuple[int, int, bool, int]],
                                  fragment_s: float, base: int, zero_first_cts: bool) -> None:
    packets = [config(TrackKind.VIDEO, AVCC_720P)]
    dts = base
    for i, (duration, size, key, cts) in enumerate(samples):
        packets.append(video(dts, bytes([i % 256]) * size, key=key or i == 0, pts=dts + cts,
                             timescale=90000))
        dts += duration
    fr = Fmp4Fragmenter(video=True, audio=False, fragment_duration_s=fragment_s,
                        zero_first_cts=zero_first_cts)
    parsed = check(mux(fr, packets))
    delay = max(0, samples[0][3]) if zero_first_cts else 0
    durations = [d for d, *_ in samples[:-1]]
    durations.append(durations[-1] if durations else 3000)
    expected = []
    time = base + delay
    for i, ((_, size, key, cts), duration) in enumerate(zip(samples, durations, strict=True)):
        flags = SYNC if key or i == 0 else NON_SYNC
        expected.append((time, duration, size, flags, cts - delay, bytes([i % 256]) * size))
        time += duration
    assert parsed.samples[1] == expected
    # A fragment ends as soon as its video reaches the target (0: after every frame).
    target, pos = round(fragment_s * 90000), 0
    for frag in parsed.fragments:
        count = frag.tracks[0].samples
        assert sum(s[1] for s in parsed.samples[1][pos : pos + count - 1]) < max(target, 1)
        pos += count



@settings(max_examples=150)
@given(video_samples, st.sampled_from([0.0, 0.05, 0.2]), st.integers(0, 10**9), st.booleans())
def test_low_latency_video_is_gapless_and_close_to_its_timestamps(
        samples: list[tuple[int, int, bool, int]], fragment_s: float, base: int,
        zero_first_cts: bool) -> None:
    """low_latency: a frame goes out on arrival (after the first), with a guessed duration;
    the timeline stays gapless and each frame moves by at most the interval jitter."""
    packets, dts, times = [config(TrackKind.VIDEO, AVCC_720P)], base, []
    fr = Fmp4Fragmenter(video=True, audio=False, fragment_duration_s=fragment_s,
                        zero_first_cts=zero_first_cts, low_latency=True)
    out: list[Fmp4Event] = fr.add(packets[0])
    for i, (duration, size, key, cts) in enumerate(samples):
        events = fr.add(video(dts, bytes([i % 256]) * size, key=key or i == 0, pts=dts + cts,
                              timescale=90000))
        if i and fragment_s == 0:
            assert events, "every frame after the first goes out as it arrives"
        out += events
        times.append(dts)
        dts += duration
    parsed = check(out + fr.flush())  # contiguous: tfdt = previous end
    delay = max(0, samples[0][3]) if zero_first_cts else 0
    got = parsed.samples[1]
    assert [(s[2], s[3], s[4], s[5]) for s in got] == [
        (size, SYNC if key or i == 0 else NON_SYNC, cts - delay, bytes([i % 256]) * size)
        for i, (_, size, key, cts) in enumerate(samples)]
    intervals = [d for d, *_ in samples[:-1]]
    jitter = max(intervals) - min(intervals) if intervals else 0
    assert got[0][0] == base + delay
    assert all(abs(s[0] - (t + delay)) <= jitter for s, t in zip(got, times, strict=True))


@settings(max_examples=150)
@given(video_samples, st.sampled_from([0.0, 0.05, 0.2, 1.0]), st.booleans())
def test_capped_fragments_never_pass_the_target(samples: list[tuple[int, int, bool, int]],
                                                fragment_s: float, with_audio: bool) -> None:
    """cap_fragments: a fragment is at most the target unless one frame alone is longer, and
    it ends only when the next frame would pass the target or is a keyframe."""
    packets = [config(TrackKind.VIDEO, AVCC_720P)]
    if with_audio:
        packets.append(config(TrackKind.AUDIO, ASC_44K_STEREO))
    dts = 0
    for i, (duration, size, key, _) in enumerate(samples):
        packets.append(video(dts, b"v" * size, key=key or i == 0, timescale=90000))
        if with_audio:
            packets.append(audio(dts // 90))
        dts += duration
    fr = Fmp4Fragmenter(video=True, audio=with_audio, fragment_duration_s=fragment_s,
                        cap_fragments=True)
    parsed = check(mux(fr, packets), contiguous=not with_audio)  # audio has gaps here
    target, pos = round(fragment_s * 90000), 0
    video_samples_out = parsed.samples[1]
    assert [s[1] for s in video_samples_out[:-1]] == [d for d, *_ in samples[:-1]]
    for frag in parsed.fragments:
        span = frag.tracks[0]
        if span.kind is not TrackKind.VIDEO:
            continue
        assert span.duration <= target or span.samples == 1
        pos += span.samples
        if pos < len(video_samples_out):
            following = video_samples_out[pos]
            assert following[3] == SYNC or span.duration + following[1] > target


def test_capped_audio_only_fragments() -> None:
    fr = Fmp4Fragmenter(video=False, audio=True, fragment_duration_s=0.1, cap_fragments=True)
    parsed = check(mux(fr, [config(TrackKind.AUDIO, ASC_44K_STEREO)]
                       + [audio(round(i * 1024 / 44.1)) for i in range(20)]))
    # 4 frames are 4096 ticks (0.093 s); a fifth would pass 4410.
    assert [f.tracks[0].samples for f in parsed.fragments] == [4] * 5


def test_low_latency_stall_stays_a_gap() -> None:
    """A publisher's pause (over REBASE_S) is not a frame interval: no frame is moved."""
    fr = Fmp4Fragmenter(video=True, audio=False, low_latency=True)
    times = [0, 3000, 6000, 9000, 450000, 453000, 456000]
    parsed = check(mux(fr, [config(TrackKind.VIDEO, AVCC_720P)]
                       + [video(t, b"x", key=t == 0, timescale=90000) for t in times]),
                   contiguous=False)
    assert [s[0] for s in parsed.samples[1]] == times
    assert [s[1] for s in parsed.samples[1]] == [3000] * len(times)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10**7), st.integers(-500, 500),
                          st.booleans(), st.integers(0, 3)), max_size=60),
       st.sampled_from([0.0, 0.3]), st.booleans(), st.booleans())
def test_any_timestamps_give_growing_decode_times(
        frames: list[tuple[bool, int, int, bool, int]], fragment_s: float,
        zero_first_cts: bool, low_latency: bool) -> None:
    """Publisher timestamps may jump anywhere; tfdt and decode times still only grow."""
    packets = [config(TrackKind.VIDEO, AVCC_720P), config(TrackKind.AUDIO, ASC_44K_STEREO)]
    for is_video, dts, cts, key, size in frames:
        packets.append(video(dts, b"v" * size, key=key, pts=dts + cts) if is_video
                       else audio(dts, b"a" * size))
    fr = Fmp4Fragmenter(video=True, audio=True, fragment_duration_s=fragment_s,
                        zero_first_cts=zero_first_cts, low_latency=low_latency)
    parsed = check(mux(fr, packets), contiguous=False)
    for samples in parsed.samples.values():
        assert all(s[1] > 0 for s in samples)
        assert all(b[0] >= a[0] + a[1] for a, b in itertools.pairwise(samples))

# ---------------------------------------------------------------------------- real media

@dataclass
class Decoded:
    codecs: dict[str, str]
    video_frames: int = 0
    audio_frames: int = 0
    audio_samples: int = 0
    video_dts: list[int] = field(default_factory=list)
    video_pts: list[float] = field(default_factory=list)  # seconds
    first_audio_pts: float | None = None


def decode(path: Path) -> Decoded:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        out = Decoded({s.type: s.codec_context.name for s in container.streams})
        for packet in container.demux():
            kind = packet.stream.type
            if kind == "video" and packet.dts is not None:
                assert packet.pts is not None
                assert packet.pts >= packet.dts
                out.video_dts.append(packet.dts)
            for frame in packet.decode():
                if kind == "video":
                    out.video_frames += 1
                    out.video_pts.append(float(frame.pts * frame.time_base))
                else:
                    out.audio_frames += 1
                    out.audio_samples += frame.samples
                    if out.first_audio_pts is None:
                        out.first_audio_pts = float(frame.pts * frame.time_base)
    return out


def write_mp4(path: Path, events: list[Fmp4Event]) -> Path:
    path.write_bytes(b"".join(e.data for e in events))
    return path


def ffmpeg_errors(path: Path) -> str:
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "null",
                           "-"], capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0
    return proc.stderr.decode(errors="replace")


@pytest.mark.parametrize(("video_on", "audio_on", "fragment_s", "zero_first_cts", "low_latency"), [
    (True, True, 0.0, False, False), (True, True, 1.0, False, False),
    (True, True, 0.0, True, False), (True, True, 0.0, False, True),
    (True, False, 0.0, False, False), (False, True, 0.0, False, False),
    (False, True, 0.5, False, False),
])
def test_real_aac_h264(tmp_path: Path, real_flv: dict[str, list[MediaPacket]], video_on: bool,
                       audio_on: bool, fragment_s: float, zero_first_cts: bool,
                       low_latency: bool) -> None:
    packets = real_flv["aac"]
    fr = Fmp4Fragmenter(video=video_on, audio=audio_on, fragment_duration_s=fragment_s,
                        zero_first_cts=zero_first_cts, low_latency=low_latency)
    events = mux(fr, packets)
    parsed = check(events)
    assert len(parsed.inits) == 1
    ids = {i.kind: i.track_id for i in parsed.inits[0].tracks}
    in_video = [p for p in packets if p.kind is TrackKind.VIDEO and not p.is_config]
    in_audio = [p for p in packets if p.kind is TrackKind.AUDIO and not p.is_config]
    if audio_on:
        aud = parsed.samples[ids[TrackKind.AUDIO]]
        assert [s[1] for s in aud] == [1024] * len(in_audio)  # sample-accurate, none dropped
    ffmpeg_shift = 0.0
    if video_on:
        vs = parsed.samples[ids[TrackKind.VIDEO]]
        assert len(vs) == len(in_video) == SECONDS * 30
        assert any(s[4] < 0 for s in vs) == zero_first_cts  # B-frames
        # ffmpeg's mov demuxer adds max(-CTS) to the PTS of fragmented files.
        ffmpeg_shift = max(0, -min(s[4] for s in vs)) / 90000

    got = decode(write_mp4(tmp_path / "out.mp4", events))
    assert got.codecs == ({"video": "h264"} if video_on else {}) | (
        {"audio": "aac"} if audio_on else {})
    if video_on:
        assert got.video_frames == SECONDS * 30
        assert all(b > a for a, b in itertools.pairwise(got.video_dts))
        pts = sorted(got.video_pts)
        # Presentation times are the FLV's: first frame at its CTS, frames 1/30 s apart.
        first = in_video[0]
        assert pts[0] == pytest.approx(first.pts / 1000 + ffmpeg_shift, abs=1e-3)
        assert pts[-1] - pts[0] + 1 / 30 == pytest.approx(SECONDS, abs=0.02)
    if audio_on:
        assert abs(got.audio_frames - len(in_audio)) <= 1
        assert got.audio_samples / 44100 == pytest.approx(SECONDS, abs=0.1)
        assert got.first_audio_pts == pytest.approx(in_audio[0].dts / 1000, abs=1e-3)
    assert ffmpeg_errors(tmp_path / "out.mp4") == ""


def test_real_opus_h264(tmp_path: Path, real_flv: dict[str, list[MediaPacket]]) -> None:
    if "opus" not in real_flv:
        pytest.skip("this ffmpeg cannot write Opus into FLV")
    packets = real_flv["opus"]
    events = mux(Fmp4Fragmenter(video=True, audio=True), packets)
    parsed = check(events)
    assert parsed.timescales == {1: 90000, 2: 48000}
    in_audio = [p for p in packets if p.kind is TrackKind.AUDIO and not p.is_config]
    assert [s[1] for s in parsed.samples[2]] == [opus_packet_samples(p.payload)
                                                 for p in in_audio]
    got = decode(write_mp4(tmp_path / "opus.mp4", events))
    assert got.codecs == {"video": "h264", "audio": "opus"}
    assert got.video_frames == SECONDS * 30
    assert abs(got.audio_frames - len(in_audio)) <= 1
    assert ffmpeg_errors(tmp_path / "opus.mp4") == ""
