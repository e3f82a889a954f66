"""AAC as MP4A-LATM (RFC 6416): configs as ffmpeg's `-rtpflags latm` writes them, elements
split over packets, and bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.rtsp.latm import LatmDepacketizer, packetize, stream_mux_config_asc
from ingest.rtsp.rtp import RtpError, RtpPacket


def rtp(payload: bytes, ts: int = 1000, marker: bool = True, seq: int = 1) -> RtpPacket:
    return RtpPacket(97, marker, seq, ts, 5, payload)


# fmtp configs from ffmpeg 9 (`-c:a aac -f rtp -rtpflags latm -sdp_file ...`).
@pytest.mark.parametrize(("config", "asc"), [
    ("400024203fc0", "1210"),  # AAC-LC 44.1 kHz stereo
    ("400023103fc0", "1188"),  # AAC-LC 48 kHz mono
])
def test_stream_mux_config_gives_the_asc(config: str, asc: str) -> None:
    got = stream_mux_config_asc({"cpresent": "0", "config": config, "profile-level-id": "41"})
    assert got.hex() == asc


@pytest.mark.parametrize(("fmtp", "message"), [
    ({"cpresent": "1", "config": "400024203fc0"}, "cpresent=1"),
    ({"config": "400024203fc0"}, "cpresent=1"),  # RFC 6416: absent means 1
    ({"cpresent": "0", "config": "c00024203fc0"}, "single-program"),  # audioMuxVersion 1
    ({"cpresent": "0", "config": "4000"}, "unusable"),
    ({"cpresent": "0", "config": "zz"}, "unusable"),
])
def test_stream_mux_config_refusals(fmtp: dict[str, str], message: str) -> None:
    with pytest.raises(RtpError, match=message):
        stream_mux_config_asc(fmtp)


def test_elements_whole_and_split() -> None:
    d = LatmDepacketizer()
    frame = bytes(range(256)) * 2  # 512 bytes: a length of 255 + 255 + 2
    element = packetize(frame)
    assert element[:3] == b"\xff\xff\x02"
    got = d.add(rtp(element))
    assert [(f.timestamp, f.data) for f in got] == [(1000, frame)]
    # Split over three packets: the marker ends it.
    parts = [element[:100], element[100:300], element[300:]]
    assert d.add(rtp(parts[0], 2024, False, 2)) == []
    assert d.add(rtp(parts[1], 2024, False, 3)) == []
    assert [f.data for f in d.add(rtp(parts[2], 2024, True, 4))] == [frame]
    # Two elements in one packet: the second frame is one frame later.
    two = d.add(rtp(packetize(b"a" * 10) + packetize(b"b" * 20), 5000))
    assert [(f.timestamp, len(f.data)) for f in two] == [(5000, 10), (6024, 20)]


def test_a_lost_piece_drops_only_its_element() -> None:
    d = LatmDepacketizer()
    element = packetize(b"x" * 600)
    assert d.add(rtp(element[:200], 1000, False)) == []
    # The end never came; the next element (new timestamp) comes whole.
    assert [f.data for f in d.add(rtp(packetize(b"y" * 30), 2024))] == [b"y" * 30]


@given(st.binary(max_size=600))
def test_garbage_only_raises_rtp_error(payload: bytes) -> None:
    with contextlib.suppress(RtpError):
        LatmDepacketizer().add(rtp(payload))
