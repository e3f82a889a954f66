"""egress/live.py: parse_head, the pure HTTP/1.1 request-head reader of the fast path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.live import RequestHead, http_response, parse_head


def test_get_with_headers() -> None:
    head = (b"GET /live/sample.flv HTTP/1.1\r\n"
            b"Host: 127.0.0.1:8080\r\n"
            b"User-Agent: Lavf/61.1.100\r\n"
            b"Accept: */*\r\n\r\n")
    assert parse_head(head) == RequestHead(
        "GET", "/live/sample.flv",
        {"host": "127.0.0.1:8080", "user-agent": "Lavf/61.1.100", "accept": "*/*"}, len(head))


def test_header_names_are_lower_cased_and_values_stripped() -> None:
    got = parse_head(b"GET / HTTP/1.1\r\nUpGrade:   WebSocket  \r\nSec-WebSocket-Key:k==\r\n\r\n")
    assert got is not None
    assert got.headers == {"upgrade": "WebSocket", "sec-websocket-key": "k=="}


def test_query_is_stripped_from_the_path_and_the_path_decoded() -> None:
    got = parse_head(b"GET /live/a%20b.flv?token=x&y=%2F HTTP/1.1\r\n\r\n")
    assert got is not None
    assert got.path == "/live/a b.flv"
    assert got.method == "GET"
    assert got.headers == {}


def test_size_counts_the_blank_line_and_not_what_follows() -> None:
    head = b"HEAD /live/sample.flv HTTP/1.0\r\nHost: x\r\n\r\n"
    got = parse_head(head + b"GET /next HTTP/1.1\r\n\r\n")  # a pipelined request after it
    assert got is not None
    assert got.method == "HEAD"
    assert got.size == len(head)
    assert (head + b"more")[got.size:] == b"more"


def test_a_head_without_headers() -> None:
    head = b"GET /x HTTP/1.1\r\n\r\n"
    assert parse_head(head) == RequestHead("GET", "/x", {}, len(head))


@pytest.mark.parametrize("data", [
    b"",
    b"GET /live/sample.flv HTTP/1.1",
    b"GET /live/sample.flv HTTP/1.1\r\n",
    b"GET /live/sample.flv HTTP/1.1\r\nHost: x\r\n",
    b"GET /live/sample.flv HTTP/1.1\r\nHost: x\r\n\r",
    b"GET /live/sample.flv HTTP/1.1\n\n",  # bare LFs are not an HTTP head here
])
def test_head_without_its_blank_line_is_none(data: bytes) -> None:
    assert parse_head(data) is None


@pytest.mark.parametrize("line", [
    b"GET /live/sample.flv",  # no version
    b"GET  /live/sample.flv HTTP/1.1",  # two spaces
    b"GET /live/sample.flv HTTP/1.1 extra",
    b"GET /live/sample.flv HTTP/2.0",
    b"GET /live/sample.flv RTSP/1.0",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"",
])
def test_bad_request_line_is_none(line: bytes) -> None:
    assert parse_head(line + b"\r\nHost: x\r\n\r\n") is None


def test_header_line_without_colon_is_none() -> None:
    assert parse_head(b"GET /x HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n") is None


def test_http_response_lengths() -> None:
    assert http_response("404 Not Found", {"Connection": "close"}, b"gone\n") == (
        b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 5\r\n\r\ngone\n")
    # A streaming 200 and a 101 have no length: the body follows until the end.
    assert http_response("200 OK", {"Transfer-Encoding": "chunked"}) == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert http_response("101 Switching Protocols", {}) == (
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert http_response("400 Bad Request", {}) == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_head_or_none(data: bytes) -> None:
    got = parse_head(data)
    assert got is None or isinstance(got, RequestHead)


_token = st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(_token, max_size=6), st.binary(max_size=50))
def test_head_shaped_bytes_give_a_head_or_none(lines: list[str], tail: bytes) -> None:
    data = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + tail
    got = parse_head(data)
    if got is not None:
        assert isinstance(got, RequestHead)
        assert got.size == data.find(b"\r\n\r\n") + 4
        assert all(name == name.lower() for name in got.headers)
        assert "?" not in got.path or "%3f" in data.lower().decode("latin-1")
