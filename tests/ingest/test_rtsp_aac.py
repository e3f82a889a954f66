"""AAC over RTP (RFC 3640 AAC-hbr): exact bytes, round trips, split frames, bad payloads."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtsp.aac import AacDepacketizer, AacFrame, AuHeaderSizes, packetize
from ingest.rtsp.rtp import RtpError, RtpPacket

HBR = AuHeaderSizes(13, 3, 3)


def test_exact_bytes_of_two_frames() -> None:
    (payload, marker, first), = packetize([b"abc", b"de"], HBR)
    # 32 bits of headers: size 3 index 0, size 2 delta 0.
    assert payload == bytes.fromhex("0020") + bytes.fromhex("00180010") + b"abcde"
    assert (marker, first) == (True, 0)
    frames = AacDepacketizer(HBR).add(RtpPacket(97, True, 1, 1000, 1, payload))
    assert frames == [AacFrame(1000, b"abc"), AacFrame(2024, b"de")]


def test_fmtp_sizes() -> None:
    assert AuHeaderSizes.from_fmtp({"sizelength": "13", "indexlength": "3",
                                    "indexdeltalength": "3"}) == HBR
    assert AuHeaderSizes.from_fmtp({"sizelength": "6"}) == AuHeaderSizes(6, 0, 0)
    with pytest.raises(RtpError):
        AuHeaderSizes.from_fmtp({"mode": "AAC-hbr"})


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
       st.integers(100, 1400), st.sampled_from([HBR, AuHeaderSizes(13, 0, 0),
                                                 AuHeaderSizes(16, 3, 3)]))
def test_round_trip(frames: list[bytes], mtu: int, sizes: AuHeaderSizes) -> None:
    depacketizer = AacDepacketizer(sizes)
    got: list[AacFrame] = []
    for seq, (payload, marker, first) in enumerate(packetize(frames, sizes, mtu)):
        got += depacketizer.add(RtpPacket(97, marker, seq, first * 1024, 1, payload))
    assert [f.data for f in got] == frames
    assert [f.timestamp for f in got] == [i * 1024 for i in range(len(frames))]


def test_a_lost_piece_drops_that_frame_only() -> None:
    frames = [b"x" * 3000, b"small"]
    packets = packetize(frames, HBR, 1000)
    depacketizer = AacDepacketizer(HBR)
    got = []
    for seq, (payload, marker, first) in enumerate(packets):
        if seq != 1:
            got += depacketizer.add(RtpPacket(97, marker, seq, first * 1024, 1, payload))
    assert got == [AacFrame(1024, b"small")]


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x00", b"\x00\x10\x00",
                                     b"\x00\x10\x00\x1f"])
def test_bad_payloads(payload: bytes) -> None:
    with pytest.raises(RtpError):
        AacDepacketizer(HBR).add(RtpPacket(97, True, 0, 0, 1, payload))


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_garbage_raises_only_rtp_error(payloads: list[bytes]) -> None:
    depacketizer = AacDepacketizer(HBR)
    for i, payload in enumerate(payloads):
        with contextlib.suppress(RtpError):
            depacketizer.add(RtpPacket(97, i % 2 == 0, i, 0, 1, payload))
