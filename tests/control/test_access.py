"""Signed URLs, network lists, hook answers and redirect targets (control.access/.admission)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.packet import StreamKey
from control.access import check_signature, decide, parse_networks, permitted, sign, stream_path
from control.admission import peer_address, redirect_key

NOW = 1_800_000_000


def test_the_documented_scheme() -> None:
    """HMAC-SHA256 of path + expires, lower-case hex: what the README tells operators."""
    expected = hmac.new(b"s3cret", b"/live/cam1800000600", hashlib.sha256).hexdigest()
    assert sign("s3cret", "/live/cam", NOW + 600) == expected
    assert stream_path("live", "_definst_", "cam", "_definst_") == "/live/cam"
    assert stream_path("live", "east", "cam", "_definst_") == "/live/east/cam"


def query(path: str, expires: int, secret: str = "s3cret") -> str:
    return f"expires={expires}&token={sign(secret, path, expires)}"


def test_signature_good_expired_tampered() -> None:
    assert check_signature("s3cret", "/live/cam", query("/live/cam", NOW + 60), NOW) is None
    assert check_signature("s3cret", "/live/cam", "a=1&" + query("/live/cam", NOW + 60),
                           NOW) is None
    assert check_signature("s3cret", "/live/cam", query("/live/cam", NOW - 1), NOW) == (
        "the signature has expired")
    assert check_signature("s3cret", "/live/other", query("/live/cam", NOW + 60), NOW) == (
        "bad signature")
    assert check_signature("s3cret", "/live/cam", query("/live/cam", NOW + 60, "x"), NOW) == (
        "bad signature")
    longer = query("/live/cam", NOW + 60).replace(f"expires={NOW + 60}", f"expires={NOW + 61}")
    assert check_signature("s3cret", "/live/cam", longer, NOW) == "bad signature"
    assert check_signature("s3cret", "/live/cam", "", NOW) is not None
    assert check_signature("s3cret", "/live/cam", "expires=x&token=y", NOW) is not None


@given(st.text(max_size=80))
def test_garbage_queries_never_pass(text: str) -> None:
    assert check_signature("s3cret", "/live/cam", text, NOW) is not None


def test_networks() -> None:
    allow = parse_networks(("10.0.0.0/8", "127.0.0.1"))
    deny = parse_networks(("10.9.0.0/16",))
    assert permitted("10.1.2.3", allow, deny)
    assert not permitted("10.9.2.3", allow, deny)  # deny wins
    assert not permitted("192.168.1.1", allow, deny)  # not allowed
    assert permitted("::ffff:127.0.0.1", allow, deny)  # IPv4-mapped IPv6
    assert permitted("192.168.1.1", (), ())
    assert not permitted("127.0.0.2", (), parse_networks(("127.0.0.2/32",)))
    assert not permitted("fe80::1", parse_networks(("::1",)), ())
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_networks(("10.0.0.0/33",))


def test_hook_answers() -> None:
    assert decide(200, "", b"", "text/plain").allowed
    ok = decide(200, "", b'{"record": false, "cache": 64}', "application/json")
    assert ok.options == {"record": False, "cache": 64}
    assert decide(204, "", b"[1]", "application/json").options == {}
    moved = decide(302, "rtmp://x/live/other", b"", "")
    assert (moved.verdict, moved.target) == ("redirect", "rtmp://x/live/other")
    assert decide(302, "", b"", "").verdict == "refuse"  # no Location: nowhere to go
    assert decide(403, "", b"", "").verdict == "refuse"
    assert decide(500, "", b"", "").reason == "the hook answered 500"


@pytest.mark.parametrize(("target", "expected"), [
    ("cam2", "live/_definst_/cam2"),
    ("other/cam2", "other/_definst_/cam2"),
    ("rtmp://h:1935/other/cam2?x=1", "other/_definst_/cam2"),
    ("http://h:8080/live/cam2.flv", "live/_definst_/cam2"),
    ("/live/cam2/index.m3u8", "live/_definst_/cam2"),
    ("", None),
])
def test_redirect_targets(target: str, expected: str | None) -> None:
    key = redirect_key(StreamKey("live", "_definst_", "cam"), target)
    assert (str(key) if key else None) == expected


def test_peer_address() -> None:
    assert peer_address("127.0.0.1:5000") == "127.0.0.1"
    assert peer_address("::1:5000") == "::1"
