"""egress/wsframe.py: the handshake key, server frame headers and the masked client decoder."""

from __future__ import annotations

import itertools
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.wsframe import (
    MAX_CLIENT_PAYLOAD,
    ClientFrame,
    ClientFrameDecoder,
    Opcode,
    WsProtocolError,
    accept_key,
    close_frame,
    frame,
    frame_header,
)

CONTROL = (Opcode.CLOSE, Opcode.PING, Opcode.PONG)
DATA = (Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY)


def encode_client(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x37\xfa!=",
                  rsv: int = 0, masked: bool = True, length: int | None = None) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out; `length` overrides the declared length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack(">BB", b0, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", b0, mask_bit | 126, n)
    else:
        head = struct.pack(">BBQ", b0, mask_bit | 127, n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def decode_all(data: bytes, cuts: list[int] | None = None) -> list[ClientFrame]:
    """Feed `data` (cut at `cuts`), pulling frames after every piece."""
    dec = ClientFrameDecoder()
    bounds = [0, *sorted(cuts or []), len(data)]
    out: list[ClientFrame] = []
    for a, b in itertools.pairwise(bounds):
        dec.receive_data(data[a:b])
        while (f := dec.next_frame()) is not None:
            out.append(f)
    return out


# -- handshake and server frames -------------------------------------------------------------------

def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(("length", "expected"), [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_frame_header_uses_the_shortest_length_form(length: int, expected: bytes) -> None:
    assert frame_header(Opcode.BINARY, length) == expected


def test_frame_header_is_final_and_unmasked_for_every_opcode() -> None:
    for opcode in Opcode:
        head = frame_header(opcode, 5)
        assert head == bytes([0x80 | opcode, 5])


def test_frame_and_close_frame() -> None:
    assert frame(Opcode.PONG, b"abc") == b"\x8a\x03abc"
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    assert close_frame(1000, "stream ended") == b"\x88\x0e\x03\xe8stream ended"
    long = close_frame(1001, "x" * 500)
    assert long[1] == 122  # a control frame carries at most 125 bytes
    assert len(long) == 2 + 122


# -- the client frame decoder ----------------------------------------------------------------------

@pytest.mark.parametrize("opcode", list(Opcode))
def test_masked_frame_of_each_opcode_decodes(opcode: Opcode) -> None:
    payload = b"\x03\xe8bye" if opcode is Opcode.CLOSE else b"hello"
    assert decode_all(encode_client(opcode, payload)) == [ClientFrame(opcode, payload, True)]


@pytest.mark.parametrize("opcode", DATA)
def test_non_final_data_frames_decode_with_fin_false(opcode: Opcode) -> None:
    assert decode_all(encode_client(opcode, b"part", fin=False)) == [
        ClientFrame(opcode, b"part", False)]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_every_length_form_decodes(size: int) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    assert decode_all(encode_client(Opcode.BINARY, payload)) == [
        ClientFrame(Opcode.BINARY, payload, True)]


def test_a_frame_waits_for_all_its_bytes_then_is_consumed() -> None:
    data = encode_client(Opcode.PING, b"ping!") + encode_client(Opcode.CLOSE, b"")
    dec = ClientFrameDecoder()
    first_len = len(data) - 6
    for i in range(first_len):
        dec.receive_data(data[i:i + 1])
        if i < first_len - 1:
            assert dec.next_frame() is None
    assert dec.next_frame() == ClientFrame(Opcode.PING, b"ping!", True)
    assert dec.next_frame() is None
    dec.receive_data(data[first_len:])
    assert dec.next_frame() == ClientFrame(Opcode.CLOSE, b"", True)
    assert dec.next_frame() is None


def test_extended_length_waits_for_its_bytes() -> None:
    data = encode_client(Opcode.BINARY, bytes(300))
    for n in (2, 3):  # the 16-bit length is not all there yet
        dec = ClientFrameDecoder()
        dec.receive_data(data[:n])
        assert dec.next_frame() is None
    data = encode_client(Opcode.BINARY, bytes(65536))
    for n in range(2, 10):  # nor the 64-bit one
        dec = ClientFrameDecoder()
        dec.receive_data(data[:n])
        assert dec.next_frame() is None


frames_strategy = st.lists(st.one_of(
    st.tuples(st.sampled_from(DATA), st.binary(max_size=300), st.booleans()),
    st.tuples(st.sampled_from(CONTROL), st.binary(max_size=125), st.just(True)),
), max_size=8)


@settings(max_examples=200, deadline=None)
@given(frames=frames_strategy, masks=st.lists(st.binary(min_size=4, max_size=4), min_size=8,
                                              max_size=8), data=st.data())
def test_split_invariance(frames: list[tuple[Opcode, bytes, bool]], masks: list[bytes],
                          data: st.DataObject) -> None:
    wire = b"".join(encode_client(op, payload, fin=fin, mask=mask)
                    for (op, payload, fin), mask in zip(frames, masks, strict=False))
    expected = [ClientFrame(op, payload, fin) for op, payload, fin in frames]
    assert decode_all(wire) == expected
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    assert decode_all(wire, cuts) == expected
    assert decode_all(wire, list(range(len(wire)))) == expected  # a byte at a time


# -- protocol errors -------------------------------------------------------------------------------

def assert_error(data: bytes, message: str) -> None:
    dec = ClientFrameDecoder()
    dec.receive_data(data)
    with pytest.raises(WsProtocolError, match=f"^{re.escape(message)}$"):
        dec.next_frame()


@pytest.mark.parametrize("opcode", list(Opcode))
def test_unmasked_client_frame_is_an_error(opcode: Opcode) -> None:
    assert_error(encode_client(opcode, b"hi", masked=False), "client frames must be masked")


def test_unmasked_frame_is_refused_from_its_first_two_bytes() -> None:
    assert_error(encode_client(Opcode.BINARY, bytes(1000), masked=False)[:2],
                 "client frames must be masked")


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_an_error(rsv: int) -> None:
    assert_error(encode_client(Opcode.BINARY, b"x", rsv=rsv), "reserved bits set")


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_unknown_opcode_is_an_error(opcode: int) -> None:
    assert_error(encode_client(opcode, b"x"), f"unknown opcode {opcode}")


def test_oversized_payload_is_refused_before_it_arrives() -> None:
    n = MAX_CLIENT_PAYLOAD + 1
    head = encode_client(Opcode.BINARY, b"", length=n)  # the header only
    assert_error(head, f"client frame of {n} bytes")
    assert_error(encode_client(Opcode.TEXT, b"", length=(1 << 64) - 1),
                 f"client frame of {(1 << 64) - 1} bytes")


def test_largest_allowed_payload_is_not_an_error() -> None:
    head = encode_client(Opcode.BINARY, b"", length=MAX_CLIENT_PAYLOAD)
    dec = ClientFrameDecoder()
    dec.receive_data(head)
    assert dec.next_frame() is None  # waits for the payload


@pytest.mark.parametrize("opcode", CONTROL)
def test_fragmented_control_frame_is_an_error(opcode: Opcode) -> None:
    assert_error(encode_client(opcode, b"x", fin=False), "bad control frame")


@pytest.mark.parametrize("opcode", CONTROL)
def test_control_frame_over_125_bytes_is_an_error(opcode: Opcode) -> None:
    assert_error(encode_client(opcode, bytes(126)), "bad control frame")


@pytest.mark.parametrize("opcode", CONTROL)
def test_control_frame_of_125_bytes_is_fine(opcode: Opcode) -> None:
    assert decode_all(encode_client(opcode, bytes(125))) == [ClientFrame(opcode, bytes(125), True)]


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_arbitrary_bytes_only_raise_ws_protocol_error(data: bytes, cuts: list[int]) -> None:
    try:
        frames = decode_all(data, [c for c in cuts if c <= len(data)])
    except WsProtocolError:
        return
    for f in frames:
        assert isinstance(f.opcode, Opcode)
        assert len(f.payload) <= MAX_CLIENT_PAYLOAD


@settings(max_examples=300, deadline=None)
@given(head=st.binary(min_size=2, max_size=2), rest=st.binary(max_size=40))
def test_arbitrary_frame_headers_only_raise_ws_protocol_error(head: bytes, rest: bytes) -> None:
    dec = ClientFrameDecoder()
    dec.receive_data(head + rest)
    try:
        while dec.next_frame() is not None:
            pass
    except WsProtocolError:
        pass
