"""The http_file handler through a real rtmpmate: static files with Range, conditional
requests, HEAD, CORS preflight, sub-domain folders, paths that try to leave the root, and a
recording played while it is being written."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.harness import cleanup, kill, publish, start_server, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.harness import Server

ORIGIN = "http://player.example"
BODY = bytes(range(256)) * 40  # 10 KiB


def configure(doc: dict[str, Any]) -> None:
    doc["http"]["cors"] = ORIGIN
    doc["http"]["server_name"] = r"([a-z0-9-]+)\.example\.com"
    for dvr in doc["rtmp"]["location"][0]["dvr"]:
        if dvr["name"] == "DVR_FLV":  # recordings under the root: playable as they grow
            dvr.update(mode="all", directory=doc["http"]["root"] + "/rec/$(app)")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = start_server(ingest=1, egress=1, tweak=configure)
    www = srv.workdir / "www"
    (www / "blob.bin").write_bytes(BODY)
    (www / "site").mkdir()
    (www / "site" / "index.html").write_text("<h1>site</h1>")
    (srv.workdir / "secret.txt").write_text("secret")
    yield srv
    cleanup(srv)


def raw_get(server: Server, target: str) -> tuple[int, bytes]:
    """A request line sent as it is (HTTP clients normalise dot segments away)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def test_files_ranges_and_conditional_requests(server: Server) -> None:
    url = server.http("/blob.bin")
    with httpx.Client(timeout=10) as client:
        whole = client.get(url)
        assert whole.status_code == 200
        assert whole.content == BODY
        assert whole.headers["accept-ranges"] == "bytes"
        etag, modified = whole.headers["etag"], whole.headers["last-modified"]
        head = client.head(url)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == len(BODY)
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == BODY[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(BODY)}"
        tail = client.get(url, headers={"Range": "bytes=-10"})
        assert tail.content == BODY[-10:]
        assert client.get(url, headers={"Range": "bytes=99999-"}).status_code == 416
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
        assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        page = client.get(server.http("/site/"))
        assert page.text == "<h1>site</h1>"
        assert page.headers["content-type"].startswith("text/html")
        # A sub-domain is a folder of the root.
        mapped = client.get(server.http("/index.html"), headers={"Host": "site.example.com"})
        assert mapped.text == "<h1>site</h1>"


@pytest.mark.parametrize("target", ["/../secret.txt", "/%2e%2e/secret.txt",
                                    "/site/%2E%2E/%2e%2e/secret.txt", "/..%2fsecret.txt"])
def test_paths_that_leave_the_root_are_not_found(server: Server, target: str) -> None:
    status, body = raw_get(server, target)
    assert status in (400, 404)
    assert b"secret" not in body


def test_nul_in_a_path_is_a_bad_request(server: Server) -> None:
    assert raw_get(server, "/blob.bin%00.html")[0] == 400


def test_cors_preflight_and_headers(server: Server) -> None:
    url = server.http("/blob.bin")
    with httpx.Client(timeout=10) as client:
        allowed = client.options(url, headers={"Origin": ORIGIN,
                                               "Access-Control-Request-Method": "GET",
                                               "Access-Control-Request-Headers": "range"})
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "GET" in allowed.headers["access-control-allow-methods"]
        assert allowed.headers["access-control-allow-headers"] == "range"
        other = client.options(url, headers={"Origin": "http://evil.example",
                                             "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers
        got = client.get(url, headers={"Origin": ORIGIN})
        assert got.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-origin" not in client.get(
            url, headers={"Origin": "http://evil.example"}).headers


def test_recording_plays_while_it_is_written(server: Server, long_av_media: Path) -> None:
    path = server.workdir / "www" / "rec" / "live" / "sample.flv"
    publisher = publish(server, long_av_media)
    received = bytearray()
    try:
        wait_until(lambda: path.exists() and path.stat().st_size > 50_000, 15, "a recording")
        size_at_start = path.stat().st_size
        started = time.monotonic()
        with httpx.stream("GET", server.http("/rec/live/sample.flv"), timeout=15) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "video/x-flv"
            for chunk in response.iter_bytes():
                received += chunk
                if time.monotonic() - started > 4:
                    break
    finally:
        kill(publisher)
    assert received[:3] == b"FLV"
    # It followed the live edge: more than the file held when the request came.
    assert len(received) > size_at_start + 100_000
    # Once finished, the file is a whole one served with ranges.
    wait_until(lambda: b"keyframes" in path.read_bytes()[:4096], 15, "the finished file")
    ranged = httpx.get(server.http("/rec/live/sample.flv"), headers={"Range": "bytes=0-2"})
    assert ranged.status_code == 206
    assert ranged.content == b"FLV"
