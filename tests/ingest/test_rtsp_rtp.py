"""RTP/RTCP packets and H.264 over RTP: byte-level cases, round trips through the
packetizer and the depacketizer, and lost fragments."""

from __future__ import annotations

import base64
import contextlib
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtsp.h264 import H264Depacketizer, packetize, sprop_parameter_sets
from ingest.rtsp.rtp import (
    RtpError,
    RtpPacket,
    build_rtp,
    build_sender_report,
    parse_rtcp,
    parse_rtp,
)
from media.codecs import avc
from tests.egress.test_fragmenter import AVCC_720P

if TYPE_CHECKING:
    from collections.abc import Callable

_CONFIG = avc.parse_avcc(AVCC_720P)
SPS, PPS = _CONFIG.sps[0], _CONFIG.pps[0]


def test_rtp_header_fields_extension_and_padding() -> None:
    pkt = parse_rtp(build_rtp(96, True, 65535, 2**32 - 1, 0xDEADBEEF, b"abc"))
    assert pkt == RtpPacket(96, True, 65535, 2**32 - 1, 0xDEADBEEF, b"abc")
    # Two CSRCs, a one-word extension and 3 bytes of padding around "xyz".
    raw = bytes((0xB2, 0x60, 0, 1)) + bytes(8) + bytes(8) + b"\xbe\xde\x00\x01" + bytes(4)
    raw += b"xyz" + b"\x00\x00\x03"
    assert parse_rtp(raw).payload == b"xyz"


@pytest.mark.parametrize("raw", [b"", bytes(11), b"\x40" + bytes(11),
                                 bytes((0x90, 0)) + bytes(10),
                                 bytes((0xA0, 0)) + bytes(10) + b"\x00",
                                 bytes((0x8F, 0)) + bytes(10)])
def test_bad_rtp(raw: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(raw)


def test_sender_report_round_trip_in_a_compound_packet() -> None:
    receiver_report = bytes((0x80, 201, 0, 1)) + bytes(4)
    sr = build_sender_report(7, 1_764_576_000.25, 123456, 10, 2000)
    (report,) = parse_rtcp(receiver_report + sr)
    assert (report.ssrc, report.rtp_timestamp, report.packets, report.octets) == (
        7, 123456, 10, 2000)
    assert report.ntp_s == pytest.approx(1_764_576_000.25, abs=1e-6)
    with pytest.raises(RtpError):
        parse_rtcp(sr[:-4])


def test_sprop_parameter_sets() -> None:
    value = ",".join(base64.b64encode(n).decode() for n in (SPS, PPS))
    assert sprop_parameter_sets(value) == [SPS, PPS]
    annexb = base64.b64encode(b"\x00\x00\x00\x01" + SPS).decode()
    assert sprop_parameter_sets(annexb) == [SPS]
    with pytest.raises(RtpError):
        sprop_parameter_sets("not base64!")
    depacketizer = H264Depacketizer(value)
    assert depacketizer.config() == avc.build_avcc([SPS], [PPS])


def rtp_packets(units: list[list[bytes]], mtu: int, start_seq: int = 0, *,
                packetizer: Callable[[list[bytes], int], list[bytes]] = packetize,
                ) -> list[RtpPacket]:
    """RTP packets of access units (one per 3000 ticks), the marker on each unit's last."""
    out, seq = [], start_seq
    for i, nals in enumerate(units):
        payloads = packetizer(nals, mtu)
        for j, payload in enumerate(payloads):
            out.append(parse_rtp(build_rtp(96, j == len(payloads) - 1, seq, i * 3000, 1,
                                           payload)))
            seq += 1
    return out


nal_units = st.lists(st.binary(min_size=1, max_size=3000).map(
    lambda b: bytes((0x41 if b[0] % 2 else 0x65,)) + b[1:]), min_size=1, max_size=4)


@settings(max_examples=150)
@given(st.lists(nal_units, min_size=1, max_size=6), st.integers(20, 1400),
       st.integers(0, 65535), st.booleans())
def test_round_trip(units: list[list[bytes]], mtu: int, start: int, marker: bool) -> None:
    depacketizer = H264Depacketizer()
    got = []
    for pkt in rtp_packets(units, mtu, start):
        if not marker:  # a camera that never sets it: the next timestamp ends the unit
            pkt = RtpPacket(pkt.payload_type, False, pkt.sequence, pkt.timestamp, pkt.ssrc,
                            pkt.payload)
        got += depacketizer.add(pkt)
    if not marker:
        seq = (start + sum(len(packetize(u, mtu)) for u in units)) & 0xFFFF
        got += depacketizer.add(RtpPacket(96, True, seq, 10**6, 1, b"\x09\x10"))[:1]
    assert [list(u.nals) for u in got] == units
    assert [u.timestamp for u in got] == [i * 3000 for i in range(len(units))]


def test_stap_a_and_in_band_parameter_sets() -> None:
    stap = b"\x18" + b"".join(len(n).to_bytes(2, "big") + n for n in (SPS, PPS))
    depacketizer = H264Depacketizer()
    assert depacketizer.add(RtpPacket(96, False, 1, 0, 1, stap)) == []
    (unit,) = depacketizer.add(RtpPacket(96, True, 2, 0, 1, b"\x65idr"))
    assert unit.nals == (SPS, PPS, b"\x65idr")
    assert unit.keyframe
    assert unit.avcc() == b"\x00\x00\x00\x04\x65idr"  # parameter sets go to the avcC
    assert depacketizer.config() == avc.build_avcc([SPS], [PPS])


def test_a_lost_packet_drops_that_picture_only() -> None:
    big = b"\x65" + bytes(range(256)) * 10
    pkts = rtp_packets([[b"\x06sei", big], [b"\x41next"]], 500)
    depacketizer = H264Depacketizer()
    got = []
    for i, pkt in enumerate(pkts):
        if i != 3:  # a fragment in the middle
            got += depacketizer.add(pkt)
    assert [u.nals for u in got] == [(b"\x41next",)]  # not a torn first picture
    assert depacketizer.dropped == 1


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=20))
def test_garbage_raises_only_rtp_error(payloads: list[bytes]) -> None:
    depacketizer = H264Depacketizer()
    for i, payload in enumerate(payloads):
        with contextlib.suppress(RtpError):
            depacketizer.add(RtpPacket(96, i % 3 == 0, i, i // 2, 1, payload))
