"""H.265 over RTP (RFC 7798): byte-level cases, round trips through the packetizer and the
depacketizer, lost fragments, and the RTP that ffmpeg's muxer sends."""

from __future__ import annotations

import base64
import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtsp import h265
from ingest.rtsp.h265 import H265Depacketizer, packetize, sprop_fmtp, sprop_nals
from ingest.rtsp.rtp import RtpError, RtpPacket, parse_rtp
from media.codecs import avc, hevc
from tests.ingest.test_rtsp_rtp import rtp_packets as h264_rtp_packets
from tests.media.test_hevc import FFMPEG_HVCC_MAIN, MAIN

VPS, SPS, PPS = MAIN.vps, MAIN.sps, MAIN.pps
IDR = b"\x26\x01" + bytes(range(200))  # IDR_W_RADL
TRAIL = b"\x02\x01\xaf\x01"  # TRAIL_R


def b64(nal: bytes) -> str:
    return base64.b64encode(nal).decode()


def pkt(payload: bytes, *, seq: int = 0, ts: int = 0, marker: bool = False) -> RtpPacket:
    return RtpPacket(96, marker, seq, ts, 1, payload)


def ap(*nals: bytes) -> bytes:
    return bytes((h265.AP << 1, 1)) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def test_sprop_parameter_sets_and_config() -> None:
    depacketizer = H265Depacketizer(b64(VPS), b64(SPS), b64(PPS))
    assert (depacketizer.vps, depacketizer.sps, depacketizer.pps) == (VPS, SPS, PPS)
    assert depacketizer.config() == FFMPEG_HVCC_MAIN
    assert H265Depacketizer(b64(VPS), b64(SPS)).config() is None
    # Annex B start codes, missing base64 padding and empty items are tolerated.
    annexb = base64.b64encode(b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS).decode()
    assert sprop_nals(annexb) == [SPS, PPS]
    assert sprop_nals(f"{b64(PPS).rstrip('=')}, ,") == [PPS]
    for bad in ("not base64!", "AA=="):  # the second decodes to a 1-byte NAL unit
        with pytest.raises(RtpError, match="sprop-sps"):
            H265Depacketizer(sprop_sps=bad)


def test_sprop_fmtp_round_trip() -> None:
    fmtp = sprop_fmtp(FFMPEG_HVCC_MAIN)
    assert fmtp == {"sprop-vps": b64(VPS), "sprop-sps": b64(SPS), "sprop-pps": b64(PPS)}
    depacketizer = H265Depacketizer(fmtp["sprop-vps"], fmtp["sprop-sps"], fmtp["sprop-pps"])
    assert depacketizer.config() == FFMPEG_HVCC_MAIN
    with pytest.raises(RtpError, match="bad hvcC"):
        sprop_fmtp(FFMPEG_HVCC_MAIN[:30])


def test_aggregation_packet_and_in_band_parameter_sets() -> None:
    depacketizer = H265Depacketizer()
    assert depacketizer.add(pkt(ap(VPS, SPS, PPS), seq=1)) == []
    (unit,) = depacketizer.add(pkt(IDR, seq=2, marker=True))
    assert unit.nals == (VPS, SPS, PPS, IDR)
    assert unit.keyframe
    assert unit.avcc() == len(IDR).to_bytes(4, "big") + IDR  # parameter sets go to the hvcC
    assert depacketizer.config() == FFMPEG_HVCC_MAIN
    (unit,) = depacketizer.add(pkt(b"\x46\x01\x50" + TRAIL, seq=3, ts=3000, marker=True))
    assert not unit.keyframe  # an AUD is not a picture


def test_fragmentation_unit_rebuilds_the_nal_header() -> None:
    # TRAIL_R with F=1, nuh_layer_id 33 (its top bit shares the type byte) and TemporalId 2.
    nal = bytes((0x80 | 1 << 1 | 1, 1 << 3 | 3)) + bytes(range(10))
    payloads = packetize([nal], mtu=7)
    assert payloads == [
        bytes((0x80 | 49 << 1 | 1, 0x0B, 0x81)) + bytes(range(4)),  # S, FuType 1
        bytes((0xE3, 0x0B, 0x01)) + bytes(range(4, 8)),
        bytes((0xE3, 0x0B, 0x41)) + bytes(range(8, 10)),  # E
    ]
    depacketizer = H265Depacketizer()
    seqs = [65535, 0, 1]  # across the wrap
    assert [u for p, n in zip(payloads, seqs, strict=True)
            for u in depacketizer.add(pkt(p, seq=n))] == []  # no marker yet
    (unit,) = depacketizer.add(pkt(TRAIL, seq=2, marker=True))
    assert unit.nals == (nal, TRAIL)


def rtp_packets(units: list[list[bytes]], mtu: int, start_seq: int = 0) -> list[RtpPacket]:
    return h264_rtp_packets(units, mtu, start_seq, packetizer=packetize)


def test_a_lost_packet_drops_that_picture_only() -> None:
    big = b"\x26\x01" + bytes(range(256)) * 10
    pkts = rtp_packets([[b"\x4e\x01sei", big, TRAIL], [TRAIL]], 500)
    depacketizer = H265Depacketizer()
    got = [u for i, p in enumerate(pkts) if i != 3 for u in depacketizer.add(p)]
    assert [u.nals for u in got] == [(TRAIL,)]  # the second picture, not a torn first
    assert depacketizer.dropped == 1


def test_a_fragment_without_its_start_is_dropped() -> None:
    pkts = rtp_packets([[IDR + bytes(1000), TRAIL]], 400)
    depacketizer = H265Depacketizer()
    got = [u for p in pkts[1:] for u in depacketizer.add(p)]
    assert [u.nals for u in got] == [(TRAIL,)]


def test_a_timestamp_change_ends_the_unit_and_the_open_fragment() -> None:
    fu_start, fu_end = packetize([IDR], mtu=150)
    depacketizer = H265Depacketizer()
    assert depacketizer.add(pkt(TRAIL, seq=1, ts=0)) == []
    assert depacketizer.add(pkt(fu_start, seq=2, ts=0)) == []
    (unit,) = depacketizer.add(pkt(fu_end, seq=3, ts=3000))  # cannot finish the NAL unit
    assert (unit.timestamp, unit.nals) == (0, (TRAIL,))
    assert depacketizer.add(pkt(TRAIL, seq=4, ts=6000)) == []  # 3000 had no whole NAL unit
    units = depacketizer.add(pkt(TRAIL, seq=5, ts=9000, marker=True))
    assert [(u.timestamp, u.nals) for u in units] == [(6000, (TRAIL,)), (9000, (TRAIL,))]


@pytest.mark.parametrize(("payload", "message"), [
    (b"\x02", "shorter than its header"),
    (bytes((50 << 1, 1)) + bytes(8), "PACI"),
    (bytes((55 << 1, 1)) + bytes(8), "payload type 55"),
    (ap(VPS) + b"\x00", "bad H.265 aggregation"),  # a lone byte after the last unit
    (ap(VPS)[:-1], "bad H.265 aggregation"),
    (ap(b"\x01"), "bad H.265 aggregation"),  # a unit shorter than a NAL header
    (ap(bytes((49 << 1, 1, 0x81, 0))), "holds a packet"),
    (bytes((49 << 1, 1, 0x80 | 48)) + b"x", "fragmentation unit of payload type 48"),
    (bytes((49 << 1, 1, 0x81)), "short H.265 fragmentation unit"),
])
def test_refused_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        H265Depacketizer().add(pkt(payload))


def test_a_refused_packet_keeps_the_unit_its_timestamp_finished() -> None:
    depacketizer = H265Depacketizer()
    assert depacketizer.add(pkt(TRAIL, seq=1, ts=0)) == []
    with pytest.raises(RtpError):
        depacketizer.add(pkt(ap(TRAIL, b"\x01"), seq=2, ts=3000))  # refused as a whole
    units = depacketizer.add(pkt(TRAIL, seq=3, ts=3000, marker=True))
    assert [(u.timestamp, u.nals) for u in units] == [(0, (TRAIL,)), (3000, (TRAIL,))]


def test_decoding_order_numbers_are_refused() -> None:
    with pytest.raises(RtpError, match="DONL"):
        H265Depacketizer(max_don_diff=2)


def test_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    depacketizer = H265Depacketizer()
    for i in range(h265.MAX_NALS_PER_UNIT):
        depacketizer.add(pkt(TRAIL, seq=i))
    with pytest.raises(RtpError, match="too many NAL units"):
        depacketizer.add(pkt(TRAIL, seq=h265.MAX_NALS_PER_UNIT))
    monkeypatch.setattr(h265, "MAX_NAL_BYTES", 50)
    first_fragment = packetize([IDR], 100)[0]
    depacketizer = H265Depacketizer()
    with pytest.raises(RtpError, match="too large"):
        depacketizer.add(pkt(first_fragment))
    assert depacketizer.add(pkt(packetize([IDR], 100)[1], seq=1)) == []  # the rest dropped


def test_parameter_sets_of_other_layers_are_not_the_config() -> None:
    layer1_sps = bytes((SPS[0], SPS[1] | 1 << 3)) + SPS[2:]
    depacketizer = H265Depacketizer(b64(VPS), b64(SPS), b64(PPS))
    (unit,) = depacketizer.add(pkt(layer1_sps, marker=True))
    assert unit.nals == (layer1_sps,)  # still passed on
    assert depacketizer.sps == SPS


def test_config_with_a_broken_sps_raises_rtp_error() -> None:
    depacketizer = H265Depacketizer(b64(VPS), b64(SPS[:12]), b64(PPS))
    with pytest.raises(RtpError, match=r"bad H\.265 parameter sets"):
        depacketizer.config()


def test_packetize() -> None:
    assert packetize([VPS, SPS, PPS, IDR]) == [VPS, SPS, PPS, IDR]  # each fits
    assert packetize([IDR], mtu=len(IDR)) == [IDR]
    assert len(packetize([IDR], mtu=len(IDR) - 1)) == 2
    for bad, mtu in (([IDR], 3), ([b"\x26"], 1400), ([ap(VPS)], 1400)):
        with pytest.raises(ValueError, match=r"H\.265"):
            packetize(bad, mtu)


def test_ffmpeg_rtp_muxer_output() -> None:
    """PyAV encodes 1 s of libx265 and muxes it as RTP (600-byte packets: APs for the
    parameter sets, FUs for the pictures); the depacketizer gives back every access unit."""
    av = pytest.importorskip("av")

    class Sink(io.RawIOBase):  # ffmpeg's RTP muxer flushes once per packet
        def __init__(self) -> None:
            self.packets: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            self.packets.append(bytes(b))
            return len(b)

    source = av.open("testsrc2=size=320x240:rate=25:duration=1", format="lavfi")
    sink = Sink()
    out = av.open(sink, "w", format="rtp", container_options={"packetsize": "600"})
    stream = out.add_stream("libx265", rate=25, options={"x265-params": "log-level=error"})
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    frames: list[bytes] = []
    for frame in [*source.decode(video=0), None]:
        for packet in stream.encode(frame):
            frames.append(bytes(packet))  # Annex B
            out.mux(packet)
    out.close()
    source.close()
    depacketizer = H265Depacketizer()
    units = [u for p in sink.packets if not 200 <= p[1] <= 204  # skip RTCP
             for u in depacketizer.add(parse_rtp(p))]
    assert [u.nals for u in units] == [tuple(avc.split_avcc(avc.annexb_to_avcc(f)))
                                       for f in frames]
    assert units[0].keyframe
    assert max(len(p) for p in sink.packets) == 600
    config = depacketizer.config()
    assert config is not None
    assert hevc.codec_string(hevc.parse_hvcc(config)) == "hvc1.1.6.L60.90"


# ----------------------------------------------------------------------- properties


@st.composite
def nal_units(draw: st.DrawFn, max_body: int = 3000) -> bytes:
    kind = draw(st.integers(0, 47))
    layer, tid_plus1 = draw(st.integers(0, 63)), draw(st.integers(1, 7))
    header = bytes((kind << 1 | layer >> 5, (layer & 0x1F) << 3 | tid_plus1))
    return header + draw(st.binary(max_size=max_body))


access_units = st.lists(st.lists(nal_units(1500), min_size=1, max_size=4), min_size=1,
                        max_size=4)


@settings(max_examples=150, deadline=None)
@given(access_units, st.integers(4, 1400), st.integers(0, 65535), st.booleans())
def test_round_trip(units: list[list[bytes]], mtu: int, start: int, marker: bool) -> None:
    depacketizer = H265Depacketizer()
    got = []
    for p in rtp_packets(units, mtu, start):
        if not marker:  # a camera that never sets it: the next timestamp ends the unit
            p = RtpPacket(p.payload_type, False, p.sequence, p.timestamp, p.ssrc, p.payload)
        got += depacketizer.add(p)
    if not marker:
        seq = (start + sum(len(packetize(u, mtu)) for u in units)) & 0xFFFF
        got += depacketizer.add(pkt(TRAIL, seq=seq, ts=10**6, marker=True))[:1]
    assert [list(u.nals) for u in got] == units
    assert [u.timestamp for u in got] == [i * 3000 for i in range(len(units))]


def mixed_payloads(nals: list[bytes], data: st.DataObject) -> list[bytes]:
    """Any legal packetization: runs of NAL units in APs, others alone or cut into FUs at
    arbitrary points (not just where packetize() would cut)."""
    out, i = [], 0
    while i < len(nals):
        how = data.draw(st.sampled_from(["single", "ap", "fu"]))
        if how == "ap":
            count = data.draw(st.integers(1, len(nals) - i))
            out.append(ap(*nals[i:i + count]))
            i += count
            continue
        nal = nals[i]
        i += 1
        if how == "single" or len(nal) < 4:
            out.append(nal)
            continue
        body = nal[2:]
        cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=5)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        header = bytes(((nal[0] & 0x81) | h265.FU << 1, nal[1]))
        for j, piece in enumerate(pieces):
            fu = hevc.nal_type(nal) | (0x80 if j == 0 else 0) | (
                0x40 if j == len(pieces) - 1 else 0)
            out.append(header + bytes((fu,)) + piece)
    return out


@settings(max_examples=150, deadline=None)
@given(access_units, st.data())
def test_split_invariance(units: list[list[bytes]], data: st.DataObject) -> None:
    depacketizer = H265Depacketizer()
    got, seq = [], data.draw(st.integers(0, 65535))
    for i, nals in enumerate(units):
        payloads = mixed_payloads(nals, data)
        for j, payload in enumerate(payloads):
            got += depacketizer.add(pkt(payload, seq=seq & 0xFFFF, ts=i * 3000,
                                        marker=j == len(payloads) - 1))
            seq += 1
    assert [list(u.nals) for u in got] == units


payloads = st.one_of(
    st.binary(max_size=60),
    st.binary(max_size=60).map(lambda b: bytes((h265.AP << 1, 1)) + b),
    st.binary(max_size=60).map(lambda b: bytes((h265.FU << 1, 1)) + b),
)


@settings(max_examples=300)
@given(st.lists(payloads, max_size=20))
def test_garbage_raises_only_rtp_error(items: list[bytes]) -> None:
    depacketizer = H265Depacketizer()
    for i, payload in enumerate(items):
        with contextlib.suppress(RtpError):
            for unit in depacketizer.add(pkt(payload, seq=i, ts=i // 2, marker=i % 3 == 0)):
                assert unit.keyframe in (True, False)
                unit.avcc()
    with contextlib.suppress(RtpError):
        depacketizer.config()
