"""RTMP handshake tests. Digest checks are recomputed here with hmac directly, from constants
spelled out independently of the module under test."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.rtmp.errors import RtmpProtocolError
from ingest.rtmp.handshake import ClientHandshake, DigestSchema, ServerHandshake

MAGIC = bytes.fromhex("F0 EE C2 4A 80 68 BE E8 2E 00 D0 D1 02 9E 7E 57") + bytes.fromhex(
    "6E EC 5D 2D 29 80 6F AB 93 B8 E6 36 CF EB 31 AE"
)
PLAYER_KEY = b"Genuine Adobe Flash Player 001" + MAGIC
SERVER_KEY = b"Genuine Adobe Flash Media Server 001" + MAGIC


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_pos(packet: bytes, block: int) -> int:
    return (packet[block] + packet[block + 1] + packet[block + 2] + packet[block + 3]) % 728 + (
        block + 4
    )


def flash_c1(block: int, seed: int = 7) -> tuple[bytes, bytes]:
    """A Flash-Player-like C1 built by hand: returns (C1, its digest)."""
    rng = seeded(seed)
    c1 = bytearray(b"\x00\x00\x12\x34" + bytes((10, 0, 45, 2)) + rng.randbytes(1528))
    pos = digest_pos(bytes(c1), block)
    digest = hmac256(PLAYER_KEY[:30], bytes(c1[:pos] + c1[pos + 32 :]))
    c1[pos : pos + 32] = digest
    return bytes(c1), digest


def is_done(handshake: ServerHandshake | ClientHandshake) -> bool:
    """Read through a call so mypy doesn't narrow `done` across receive_data()."""
    return handshake.done


def run(server: ServerHandshake, client: ClientHandshake, extra: bytes = b"") -> None:
    server.receive_data(client.initial_data())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send() + extra)


def test_simple_handshake() -> None:
    server = ServerHandshake(random_bytes=seeded(1).randbytes, uptime_ms=0x01020304)
    client = ClientHandshake(random_bytes=seeded(2).randbytes)
    c0c1 = client.initial_data()
    assert len(c0c1) == 1537
    assert c0c1[0] == 3
    assert c0c1[5:9] == bytes(4)
    server.receive_data(c0c1)
    out = server.data_to_send()
    assert server.data_to_send() == b""
    assert len(out) == 1 + 2 * 1536
    s1, s2 = out[1:1537], out[1537:]
    assert out[0] == 3
    assert s1[:4] == bytes((1, 2, 3, 4))
    assert s1[4:8] == bytes(4)
    assert s2 == c0c1[1:]
    assert not is_done(server)
    client.receive_data(out)
    assert client.done
    assert not client.digest
    c2 = client.data_to_send()
    assert c2 == s1
    server.receive_data(c2)
    assert server.done
    assert not server.digest
    assert server.leftover == b""


@pytest.mark.parametrize("schema", list(DigestSchema))
def test_digest_handshake_between_our_peers(schema: DigestSchema) -> None:
    server = ServerHandshake()
    client = ClientHandshake(digest=True, schema=schema)
    run(server, client)
    assert server.done
    assert server.digest
    assert client.done
    assert client.digest


@pytest.mark.parametrize("block", [8, 772])
def test_server_digest_against_hand_computed_hmac(block: int) -> None:
    c1, client_digest = flash_c1(block)
    server = ServerHandshake(random_bytes=seeded(3).randbytes, uptime_ms=5)
    server.receive_data(b"\x03" + c1)
    assert server.digest
    out = server.data_to_send()
    s1, s2 = out[1:1537], out[1537:]
    assert s1[:8] == bytes((0, 0, 0, 5, 0x0D, 0x0E, 0x0A, 0x0D))
    # S1 is signed at the same schema's position with the 36-byte public FMS key.
    pos = digest_pos(s1, block)
    assert s1[pos : pos + 32] == hmac256(SERVER_KEY[:36], s1[:pos] + s1[pos + 32 :])
    # S2 is signed with a key derived from the client's digest and the full FMS key.
    assert s2[1504:] == hmac256(hmac256(SERVER_KEY, client_digest), s2[:1504])


@pytest.mark.parametrize("schema", list(DigestSchema))
def test_client_c1_and_c2_against_hand_computed_hmac(schema: DigestSchema) -> None:
    client = ClientHandshake(digest=True, schema=schema, random_bytes=seeded(4).randbytes)
    c1 = client.initial_data()[1:]
    assert c1[4:8] != bytes(4)
    pos = digest_pos(c1, int(schema))
    client_digest = c1[pos : pos + 32]
    assert client_digest == hmac256(PLAYER_KEY[:30], c1[:pos] + c1[pos + 32 :])
    server = ServerHandshake()
    server.receive_data(client.initial_data())
    out = server.data_to_send()
    client.receive_data(out)
    c2 = client.data_to_send()
    s1 = out[1:1537]
    spos = digest_pos(s1, int(schema))
    key = hmac256(PLAYER_KEY, s1[spos : spos + 32])
    assert c2[1504:] == hmac256(key, c2[:1504])


def test_leftover_after_c2_is_kept() -> None:
    server = ServerHandshake()
    client = ClientHandshake(digest=True)
    first_chunk = bytes.fromhex("030000000000bf14000000000200") + b"connect"
    run(server, client, extra=first_chunk)
    assert server.done
    assert server.leftover == first_chunk
    server.receive_data(b"more")
    assert server.leftover == first_chunk + b"more"


def test_client_keeps_bytes_after_s2() -> None:
    server = ServerHandshake()
    client = ClientHandshake()
    server.receive_data(client.initial_data())
    client.receive_data(server.data_to_send() + b"\x02chunk")
    assert client.done
    assert client.leftover == b"\x02chunk"


def test_rtmpe_is_refused_on_first_byte() -> None:
    server = ServerHandshake()
    with pytest.raises(RtmpProtocolError, match="RTMPE"):
        server.receive_data(b"\x06")


@pytest.mark.parametrize("version", [0, 9, 0x47])
def test_unknown_version_is_named(version: int) -> None:
    server = ServerHandshake()
    with pytest.raises(RtmpProtocolError, match=f"version {version}"):
        server.receive_data(bytes((version,)) + bytes(1536))


def test_truncated_handshake_stays_not_done() -> None:
    server = ServerHandshake()
    client = ClientHandshake(digest=True)
    c0c1 = client.initial_data()
    server.receive_data(c0c1[:-1])
    assert server.data_to_send() == b""
    assert not is_done(server)
    server.receive_data(c0c1[-1:])
    out = server.data_to_send()
    assert len(out) == 3073
    client.receive_data(out[:-1])
    assert not is_done(client)
    assert client.data_to_send() == b""
    client.receive_data(out[-1:])
    c2 = client.data_to_send()
    server.receive_data(c2[:1000])
    assert not is_done(server)
    server.receive_data(c2[1000:])
    assert server.done
    assert server.digest


def test_byte_by_byte_feeding() -> None:
    server = ServerHandshake()
    client = ClientHandshake(digest=True)
    for b in client.initial_data():
        server.receive_data(bytes((b,)))
    for b in server.data_to_send():
        client.receive_data(bytes((b,)))
    for b in client.data_to_send():
        server.receive_data(bytes((b,)))
    assert server.done
    assert client.digest


def test_garbage_c1_with_version_falls_back_to_simple() -> None:
    rng = seeded(9)
    c1 = b"\x00\x00\x00\x00" + bytes((1, 2, 3, 4)) + rng.randbytes(1528)
    server = ServerHandshake()
    server.receive_data(b"\x03" + c1)
    out = server.data_to_send()
    assert not server.digest
    assert out[5:9] == bytes(4)  # never non-zero S1 version bytes without a digest
    assert out[1537:] == c1


def test_client_rejects_bad_s2_signature() -> None:
    server = ServerHandshake()
    client = ClientHandshake(digest=True)
    server.receive_data(client.initial_data())
    out = bytearray(server.data_to_send())
    out[-1] ^= 1
    with pytest.raises(RtmpProtocolError, match="S2"):
        client.receive_data(bytes(out))


def test_client_rejects_version_bytes_without_digest() -> None:
    client = ClientHandshake(digest=True)
    client.initial_data()
    s1 = b"\x00" * 4 + bytes((0x0D, 0x0E, 0x0A, 0x0D)) + bytes(1528)
    with pytest.raises(RtmpProtocolError, match="S1"):
        client.receive_data(b"\x03" + s1 + bytes(1536))


def test_digest_client_accepts_simple_server() -> None:
    client = ClientHandshake(digest=True)
    c1 = client.initial_data()[1:]
    s1 = bytes(8) + seeded(5).randbytes(1528)
    client.receive_data(b"\x03" + s1 + c1)
    assert client.done
    assert not client.digest
    assert client.data_to_send() == s1


def test_wrong_random_source_length_is_a_bug() -> None:
    server = ServerHandshake(random_bytes=lambda n: b"x")
    with pytest.raises(ValueError, match="random_bytes"):
        server.receive_data(b"\x03" + bytes(1536))


@given(st.binary(max_size=4000))
def test_server_arbitrary_bytes_only_raise_protocol_error(data: bytes) -> None:
    server = ServerHandshake()
    try:
        server.receive_data(data)
        server.data_to_send()
    except RtmpProtocolError:
        return
    assert data[:1] in (b"", b"\x03")


@given(st.binary(min_size=1536, max_size=1536))
def test_server_accepts_any_c1(c1: bytes) -> None:
    server = ServerHandshake()
    server.receive_data(b"\x03" + c1)
    out = server.data_to_send()
    assert len(out) == 3073
    if not server.digest:
        assert out[5:9] == bytes(4)
        assert out[1537:] == c1


@given(st.binary(max_size=4000))
def test_client_arbitrary_bytes_only_raise_protocol_error(data: bytes) -> None:
    client = ClientHandshake(digest=True)
    client.initial_data()
    with contextlib.suppress(RtmpProtocolError):
        client.receive_data(data)
