"""RtspReader: requests and interleaved frames on one connection, bounds, bad input; and
the same events however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtsp.message import (
    NEED_DATA,
    InterleavedFrame,
    RtspProtocolError,
    RtspReader,
    RtspRequest,
    interleaved,
    response,
)

ANNOUNCE = (b"ANNOUNCE rtsp://127.0.0.1:8554/live/cam RTSP/1.0\r\n"
            b"Content-Type: application/sdp\r\nCSeq: 2\r\nUser-Agent: Lavf61.1.100\r\n"
            b"Content-Length: 14\r\n\r\nv=0\r\no=- 0 0 I")
OPTIONS = b"OPTIONS rtsp://127.0.0.1:8554/live/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n"


def events(*chunks: bytes) -> list[RtspRequest | InterleavedFrame]:
    reader = RtspReader()
    out: list[RtspRequest | InterleavedFrame] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while (ev := reader.next_event()) is not NEED_DATA:
            assert isinstance(ev, RtspRequest | InterleavedFrame)
            out.append(ev)
    return out


def test_requests_and_frames() -> None:
    frame = interleaved(0, b"\x80\x60rtp")
    got = events(OPTIONS + ANNOUNCE + frame + b"\r\n" + interleaved(1, b""))
    options, announce, rtp, rtcp = got
    assert isinstance(options, RtspRequest)
    assert (options.method, options.uri, options.cseq) == (
        "OPTIONS", "rtsp://127.0.0.1:8554/live/cam", "1")
    assert isinstance(announce, RtspRequest)
    assert announce.headers["content-type"] == "application/sdp"
    assert announce.body == b"v=0\r\no=- 0 0 I"
    assert rtp == InterleavedFrame(0, b"\x80\x60rtp")
    assert rtcp == InterleavedFrame(1, b"")


def test_bare_lf_and_repeated_headers() -> None:
    (req,) = events(b"GET_PARAMETER rtsp://h/x RTSP/1.0\nCSeq: 9\nX-A: 1\nx-a: 2\n\n")
    assert isinstance(req, RtspRequest)
    assert req.headers == {"cseq": "9", "x-a": "1, 2"}


@pytest.mark.parametrize(("data", "status"), [
    (b"HELLO\r\n\r\n", 400),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", 400),
    (b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505),
    (b"OPTIONS * RTSP/1.0\r\nno colon\r\n\r\n", 400),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: 2147483648\r\n\r\n", 413),
    (b"ANNOUNCE * RTSP/1.0\r\nContent-Length: -1\r\n\r\n", 400),
    (b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 20000, 400),
])
def test_bad_input(data: bytes, status: int) -> None:
    reader = RtspReader()
    reader.receive_data(data)
    with pytest.raises(RtspProtocolError) as exc:
        reader.next_event()
    assert exc.value.status == status
    with pytest.raises(RtspProtocolError):
        reader.next_event()  # terminal


def test_response_bytes() -> None:
    assert response(200, [("Public", "OPTIONS, ANNOUNCE")], cseq="3") == (
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nPublic: OPTIONS, ANNOUNCE\r\n\r\n")
    assert response(461, [], b"tcp only", cseq="4").endswith(
        b"Content-Length: 8\r\n\r\ntcp only")


@settings(max_examples=200)
@given(st.lists(st.integers(1, 60), max_size=20))
def test_split_invariance(cuts: list[int]) -> None:
    data = OPTIONS + interleaved(0, bytes(range(200))) + ANNOUNCE + interleaved(3, b"x" * 5)
    chunks, pos = [], 0
    for n in cuts:
        chunks.append(data[pos:pos + n])
        pos += n
    chunks.append(data[pos:])
    assert events(*chunks) == events(data)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_raises_only_the_protocol_error(data: bytes) -> None:
    reader = RtspReader(max_head_bytes=256, max_body_bytes=64)
    reader.receive_data(data)
    try:
        for _ in range(100):
            if reader.next_event() is NEED_DATA:
                break
    except RtspProtocolError:
        pass
