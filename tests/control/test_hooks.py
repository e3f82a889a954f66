"""Hook requests: the bytes of a POST and the reading of an answer."""

from __future__ import annotations

import json

import pytest

from control.hooks import HookError, parse_response, request_bytes, status_of


def test_request_bytes() -> None:
    host, port, tls, data = request_bytes("http://hooks.test:8000/on/record?k=1", {"a": 1})
    assert (host, port, tls) == ("hooks.test", 8000, False)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /on/record?k=1 HTTP/1.1"
    assert "Host: hooks.test:8000" in lines
    assert "Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"a": 1}
    assert request_bytes("https://h.test", {})[1:3] == (443, True)


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///nohost", "hooks.test/x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(HookError):
        request_bytes(url, {})


def test_status_of() -> None:
    assert status_of(b"HTTP/1.1 204 No Content\r\n\r\n") == 204
    assert status_of(b"HTTP/1.0 500 Oops\r\n") == 500
    with pytest.raises(HookError):
        status_of(b"SSH-2.0-OpenSSH\r\n")


def test_form_bodies_as_nginx_rtmp_sends_them() -> None:
    _, _, _, data = request_bytes("http://h/x", {"app": "live", "name": "a b", "n": 3,
                                                 "params": {"k": 1}}, form=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Type: application/x-www-form-urlencoded" in head
    assert body == b"app=live&name=a+b&n=3&params=%7B%22k%22%3A+1%7D"


def test_parse_response_lengths_and_chunks() -> None:
    plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 2\r\n\r\n{}trailing")
    assert (plain.status, plain.headers["content-type"], plain.body) == (
        200, "application/json", b"{}")
    chunked = parse_response(b"HTTP/1.1 302 Found\r\nLocation: /live/b\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (chunked.status, chunked.headers["location"], chunked.body) == (
        302, "/live/b", b"abcde")
    with pytest.raises(HookError):
        parse_response(b"HTTP/1.1 200 OK\r\n")
