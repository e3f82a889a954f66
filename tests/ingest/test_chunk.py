"""RTMP chunk stream tests: hand-computed byte vectors plus Hypothesis properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.rtmp.chunk import (
    NEED_DATA,
    ChunkDecoder,
    ChunkEncoder,
    NeedData,
    RtmpMessage,
)
from ingest.rtmp.errors import RtmpProtocolError

H = bytes.fromhex


def drain(decoder: ChunkDecoder) -> list[RtmpMessage]:
    out: list[RtmpMessage] = []
    while not isinstance(event := decoder.next_event(), NeedData):
        out.append(event)
    return out


def decode(data: bytes, **kwargs: int) -> list[RtmpMessage]:
    decoder = ChunkDecoder(**kwargs)
    decoder.receive_data(data)
    return drain(decoder)


# --- header forms ----------------------------------------------------------------------------

MSG0 = RtmpMessage(csid=3, timestamp=0x000102, type_id=20, stream_id=1, payload=b"abc")
# fmt 0, csid 3 | ts 000102 | len 000003 | type 14 | msid 01000000 (little-endian) | payload
VEC0 = H("03 000102 000003 14 01000000") + b"abc"
# fmt 1 (0x43): delta 10, len 2, type 8; msid inherited
VEC1 = H("43 00000a 000002 08") + b"hi"
# fmt 2 (0x83): delta 5; len/type inherited
VEC2 = H("83 000005") + b"yo"
# fmt 3 (0xc3) starting a new message: repeats delta 5
VEC3 = H("c3") + b"ok"
MSGS_0123 = [
    MSG0,
    RtmpMessage(3, 0x10C, 8, 1, b"hi"),
    RtmpMessage(3, 0x111, 8, 1, b"yo"),
    RtmpMessage(3, 0x116, 8, 1, b"ok"),
]


def test_all_four_header_forms_decode() -> None:
    assert decode(VEC0 + VEC1 + VEC2 + VEC3) == MSGS_0123


def test_stateless_encoder_writes_type0() -> None:
    encoder = ChunkEncoder()
    assert encoder.encode(MSG0) == VEC0
    assert encoder.encode(MSG0) == VEC0  # no state: same bytes every time
    assert encoder.encode(MSGS_0123[1]) == H("03 00010c 000002 08 01000000") + b"hi"


def test_compress_encoder_uses_each_header_form() -> None:
    encoder = ChunkEncoder(compress=True)
    assert [encoder.encode(m) for m in MSGS_0123] == [VEC0, VEC1, VEC2, VEC3]


def test_compress_encoder_avoids_fmt3_right_after_type0() -> None:
    encoder = ChunkEncoder(compress=True)
    first = RtmpMessage(3, 100, 8, 1, b"x")
    encoder.encode(first)
    # Same shape, timestamp 200 = 100 + "delta" 100: fmt 2, not the ambiguous fmt 3.
    assert encoder.encode(RtmpMessage(3, 200, 8, 1, b"y")) == H("83 000064") + b"y"


def test_compress_encoder_falls_back_to_type0() -> None:
    encoder = ChunkEncoder(compress=True)
    encoder.encode(RtmpMessage(3, 100, 8, 1, b"x"))
    # timestamp going backwards and a different message stream both need a full header
    assert encoder.encode(RtmpMessage(3, 50, 8, 1, b"x"))[0] == 0x03
    assert encoder.encode(RtmpMessage(3, 60, 8, 2, b"x"))[0] == 0x03


@pytest.mark.parametrize(
    ("csid", "basic"),
    [(2, "02"), (63, "3f"), (64, "00 00"), (319, "00 ff"), (320, "01 00 01"), (65599, "01 ff ff")],
)
def test_basic_header_sizes(csid: int, basic: str) -> None:
    msg = RtmpMessage(csid, 0, 1, 0, H("00000080"))
    data = H(basic) + H("000000 000004 01 00000000 00000080")
    assert ChunkEncoder().encode(msg) == data
    assert decode(data) == [msg]


def test_three_byte_form_of_a_small_csid_is_accepted() -> None:
    data = H("01 05 00  000000 000001 08 00000000 ff")
    assert decode(data) == [RtmpMessage(69, 0, 8, 0, b"\xff")]


def test_message_stream_id_is_little_endian() -> None:
    (msg,) = decode(H("04 000000 000000 12 78563412"))
    assert msg.stream_id == 0x12345678


# --- extended timestamps ---------------------------------------------------------------------

EXT_PAYLOAD = bytes(range(200))
# ts 0x01000000 on csid 4, 200-byte video message, chunk size 128
EXT_HEAD = H("04 ffffff 0000c8 09 01000000 01000000")
EXT_WITH_REPEAT = EXT_HEAD + EXT_PAYLOAD[:128] + H("c4 01000000") + EXT_PAYLOAD[128:]
EXT_WITHOUT_REPEAT = EXT_HEAD + EXT_PAYLOAD[:128] + H("c4") + EXT_PAYLOAD[128:]
EXT_MSG = RtmpMessage(4, 0x01000000, 9, 1, EXT_PAYLOAD)


def test_extended_timestamp_encoding_repeats_on_continuations() -> None:
    assert ChunkEncoder().encode(EXT_MSG) == EXT_WITH_REPEAT


@pytest.mark.parametrize("data", [EXT_WITH_REPEAT, EXT_WITHOUT_REPEAT])
def test_extended_timestamp_with_and_without_repeat(data: bytes) -> None:
    assert decode(data) == [EXT_MSG]


def test_omitted_repeat_waits_for_four_bytes_before_deciding() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(EXT_WITHOUT_REPEAT[:-70])  # continuation header + 2 payload bytes
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(EXT_WITHOUT_REPEAT[-70:])
    assert drain(decoder) == [EXT_MSG]


def test_type3_new_message_after_extended_type0() -> None:
    # The repeated field is present; the new message adds the type-0 timestamp again.
    data = H("05 ffffff 000001 08 01000000 01000000 aa  c5 01000000 bb")
    assert decode(data) == [
        RtmpMessage(5, 0x01000000, 8, 1, b"\xaa"),
        RtmpMessage(5, 0x02000000, 8, 1, b"\xbb"),
    ]


def test_extended_delta_on_type1() -> None:
    data = H("05 000010 000001 08 00000000 aa  45 ffffff 000001 08 01000000 bb")
    assert decode(data)[1].timestamp == 0x01000010


def test_timestamp_wraps_mod_2_32() -> None:
    data = H("05 ffffff 000001 08 00000000 fffffff0 aa  85 000020 bb")
    assert decode(data)[1].timestamp == 0x10


def test_encoder_takes_timestamps_mod_2_32() -> None:
    msg = RtmpMessage(3, 2**32 + 7, 8, 0, b"")
    assert ChunkEncoder().encode(msg) == H("03 000007 000000 08 00000000")


# --- chunk streams ---------------------------------------------------------------------------


def test_interleaved_audio_and_video() -> None:
    audio = bytes([0xA0]) * 200
    video = bytes([0xB0]) * 300
    data = (
        H("04 000000 0000c8 08 01000000")
        + audio[:128]
        + H("06 000000 00012c 09 01000000")
        + video[:128]
        + H("c4")
        + audio[128:]
        + H("c6")
        + video[128:256]
        + H("c6")
        + video[256:]
    )
    assert decode(data) == [
        RtmpMessage(4, 0, 8, 1, audio),
        RtmpMessage(6, 0, 9, 1, video),
    ]


def test_abort_drops_partial_message() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(H("04 000000 0000c8 08 01000000") + bytes(128))
    assert decoder.next_event() is NEED_DATA
    decoder.abort(4)
    decoder.abort(99)  # unknown csid: nothing to drop
    decoder.receive_data(H("04 000010 000001 08 01000000 aa"))
    assert drain(decoder) == [RtmpMessage(4, 0x10, 8, 1, b"\xaa")]


def test_new_header_mid_message_is_an_error() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(H("04 000000 0000c8 08 01000000") + bytes(128))
    decoder.receive_data(H("04 000010 000001 08 01000000 aa"))
    with pytest.raises(RtmpProtocolError, match="before its message completed"):
        decoder.next_event()
    with pytest.raises(RtmpProtocolError):  # errors are terminal
        decoder.next_event()


def test_chunk_size_change_between_messages() -> None:
    encoder = ChunkEncoder()
    first = RtmpMessage(2, 0, 1, 0, (4096).to_bytes(4, "big"))  # Set Chunk Size 4096
    second = RtmpMessage(6, 0, 9, 1, bytes(3000))
    data = encoder.encode(first)
    encoder.set_chunk_size(4096)
    data += encoder.encode(second)
    assert data == H("02 000000 000004 01 00000000 00001000 06 000000 000bb8 09 01000000") + bytes(
        3000
    )
    decoder = ChunkDecoder()
    decoder.receive_data(data)
    assert decoder.next_event() == first
    decoder.set_chunk_size(4096)  # the decoder hasn't looked past the message that set it
    assert decoder.next_event() == second


def test_fresh_chunk_stream_may_start_with_fmt1() -> None:
    # librtmp's ping: User Control (type 4), 6 bytes, on csid 2 with a type-1 header.
    data = H("42 000000 000006 04 0006 00001234")
    assert decode(data) == [RtmpMessage(2, 0, 4, 0, H("0006 00001234"))]


@pytest.mark.parametrize("data", [H("c3 00"), H("83 000000 00")])
def test_fresh_chunk_stream_with_fmt2_or_3_is_an_error(data: bytes) -> None:
    with pytest.raises(RtmpProtocolError, match="new chunk stream 3"):
        decode(data)


@pytest.mark.parametrize("size", [0, -1, 2**31, 2**32])
def test_invalid_chunk_sizes(size: int) -> None:
    with pytest.raises(RtmpProtocolError, match="chunk size"):
        ChunkDecoder().set_chunk_size(size)
    with pytest.raises(ValueError, match="chunk size"):
        ChunkEncoder().set_chunk_size(size)


def test_huge_chunk_size_is_clamped() -> None:
    decoder = ChunkDecoder()
    decoder.set_chunk_size(0x7FFFFFFF)
    assert decoder.chunk_size == 0xFFFFFF
    decoder.set_chunk_size(1)
    assert decoder.chunk_size == 1


def test_message_over_limit_is_rejected_at_its_header() -> None:
    limit = 1 << 20
    data = H("04 000000") + (limit + 1).to_bytes(3, "big") + H("09 01000000")
    with pytest.raises(RtmpProtocolError, match="exceeds"):
        decode(data, max_message_bytes=limit)
    assert decode(H("04 000000") + limit.to_bytes(3, "big") + H("09 01000000")) == []


def test_sixteen_mib_plus_one_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="24-bit"):
        ChunkEncoder().encode(RtmpMessage(4, 0, 9, 1, bytes((16 << 20) + 1)))


def test_largest_message_round_trips() -> None:
    msg = RtmpMessage(4, 0, 9, 1, bytes(0xFFFFFF))
    encoder = ChunkEncoder(chunk_size=4096)
    decoder = ChunkDecoder()
    decoder.set_chunk_size(4096)
    decoder.receive_data(encoder.encode(msg))
    assert drain(decoder) == [msg]


def test_zero_length_messages() -> None:
    data = H("04 000005 000000 08 01000000  c4")
    assert decode(data) == [RtmpMessage(4, 5, 8, 1, b""), RtmpMessage(4, 10, 8, 1, b"")]


def test_eof_mid_message_is_an_error() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(VEC0[:-1])
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(RtmpProtocolError, match="closed mid-message"):
        decoder.next_event()


def test_clean_eof_keeps_returning_need_data() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(VEC0)
    decoder.receive_data(b"")
    assert drain(decoder) == [MSG0]
    assert decoder.next_event() is NEED_DATA


def test_bytes_received_counts_every_byte() -> None:
    decoder = ChunkDecoder()
    decoder.receive_data(VEC0[:5])
    decoder.receive_data(VEC0[5:])
    assert decoder.bytes_received == len(VEC0)


def test_encoder_rejects_bad_messages() -> None:
    encoder = ChunkEncoder()
    for bad in (
        RtmpMessage(1, 0, 8, 0, b""),
        RtmpMessage(65600, 0, 8, 0, b""),
        RtmpMessage(3, 0, 256, 0, b""),
        RtmpMessage(3, 0, 8, 2**32, b""),
    ):
        with pytest.raises(ValueError, match="out"):
            encoder.encode(bad)


# --- properties ------------------------------------------------------------------------------

CSIDS = st.one_of(
    st.sampled_from([2, 3, 63, 64, 65, 318, 319, 320, 321, 65598, 65599]),
    st.integers(2, 65599),
)
TIMESTAMPS = st.one_of(
    st.integers(0, 2**32 - 1),
    st.integers(0xFFFFFE, 0x1000001),
    st.integers(2**32 - 3, 2**32 + 3),
    st.integers(0, 5000),
)
MESSAGES = st.builds(
    RtmpMessage,
    csid=CSIDS,
    timestamp=TIMESTAMPS,
    type_id=st.integers(0, 255),
    stream_id=st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)),
    payload=st.binary(max_size=700),
)
CHUNK_SIZES = st.one_of(st.integers(1, 300), st.integers(1, 70000))


def normalized(msg: RtmpMessage) -> RtmpMessage:
    return RtmpMessage(msg.csid, msg.timestamp % 2**32, msg.type_id, msg.stream_id, msg.payload)


@st.composite
def encoded_streams(draw: st.DrawFn) -> tuple[bytes, list[RtmpMessage], list[int]]:
    """Messages (on a few csids, so compress mode finds fmt 1/2/3 chances), the chunk size in
    force for each, and the encoded bytes."""
    compress = draw(st.booleans())
    csids = draw(st.lists(CSIDS, min_size=1, max_size=3))
    msgs = draw(st.lists(MESSAGES, max_size=12))
    msgs = [
        RtmpMessage(draw(st.sampled_from(csids)), m.timestamp, m.type_id, m.stream_id, m.payload)
        for m in msgs
    ]
    sizes: list[int] = []
    size = draw(CHUNK_SIZES)
    for _ in msgs:
        size = draw(st.one_of(st.just(size), CHUNK_SIZES))
        sizes.append(size)
    encoder = ChunkEncoder(compress=compress)
    data = b""
    for msg, size in zip(msgs, sizes, strict=True):
        encoder.set_chunk_size(size)
        data += encoder.encode(msg)
    return data, msgs, sizes


def decode_with_sizes(pieces: list[bytes], sizes: list[int]) -> list[RtmpMessage]:
    decoder = ChunkDecoder()
    out: list[RtmpMessage] = []
    pending = iter(pieces)
    for size in sizes:
        decoder.set_chunk_size(size)
        while isinstance(event := decoder.next_event(), NeedData):
            decoder.receive_data(next(pending))
        out.append(event)
    for rest in pending:
        decoder.receive_data(rest)
    assert decoder.next_event() is NEED_DATA
    return out


@settings(max_examples=300)
@given(encoded_streams())
def test_round_trip(stream: tuple[bytes, list[RtmpMessage], list[int]]) -> None:
    data, msgs, sizes = stream
    assert decode_with_sizes([data] if data else [], sizes) == [normalized(m) for m in msgs]


@settings(max_examples=150)
@given(encoded_streams(), st.data())
def test_split_invariance(
    stream: tuple[bytes, list[RtmpMessage], list[int]], data: st.DataObject
) -> None:
    raw, _, sizes = stream
    whole = decode_with_sizes([raw] if raw else [], sizes)
    if len(raw) < 3000:
        assert decode_with_sizes([raw[i : i + 1] for i in range(len(raw))], sizes) == whole
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    bounds = [0, *cuts, len(raw)]
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds) if a != b]
    assert decode_with_sizes(pieces, sizes) == whole


def completion_offsets(raw: bytes, sizes: list[int]) -> list[int]:
    """The byte count of `raw` at which each message comes out, fed one byte at a time."""
    decoder = ChunkDecoder()
    ends: list[int] = []
    fed = 0
    for size in sizes:
        decoder.set_chunk_size(size)
        while isinstance(decoder.next_event(), NeedData):
            decoder.receive_data(raw[fed : fed + 1])
            fed += 1
        ends.append(fed)
    return ends


@settings(max_examples=200)
@given(encoded_streams(), st.data())
def test_missing_never_overstates_the_bytes_a_message_still_needs(
    stream: tuple[bytes, list[RtmpMessage], list[int]], data: st.DataObject
) -> None:
    raw, _, sizes = stream
    ends = completion_offsets(raw, sizes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    decoder = ChunkDecoder()
    done, fed = 0, 0
    if sizes:
        decoder.set_chunk_size(sizes[0])
    for a, b in itertools.pairwise([0, *cuts, len(raw)]):
        if a == b:
            continue  # b"" would be EOF
        decoder.receive_data(raw[a:b])
        fed = b
        while done < len(sizes) and not isinstance(decoder.next_event(), NeedData):
            done += 1
            if done < len(sizes):
                decoder.set_chunk_size(sizes[done])
        at_boundary = fed == (ends[done - 1] if done else 0)
        if done == len(sizes) or at_boundary:
            assert decoder.missing == 0
        else:  # the next message is under way: at least 1, never more than it lacks
            assert 1 <= decoder.missing <= ends[done] - fed


def test_missing_counts_a_first_chunk_cut_short() -> None:
    decoder = ChunkDecoder()
    decoder.set_chunk_size(4096)
    encoder = ChunkEncoder()
    encoder.set_chunk_size(4096)
    raw = encoder.encode(RtmpMessage(6, 0, 9, 1, bytes(10_000)))
    decoder.receive_data(raw[:112])  # the 12-byte header and 100 bytes of payload
    assert decoder.next_event() is NEED_DATA
    assert decoder.missing == 9_900
    decoder.receive_data(raw[112:4200])  # the first chunk whole, and part of the second
    assert decoder.next_event() is NEED_DATA
    assert decoder.missing == 10_000 - 4096 - (4200 - 4108)


def outcome(pieces: list[bytes]) -> tuple[list[RtmpMessage], str | None]:
    decoder = ChunkDecoder()
    out: list[RtmpMessage] = []
    try:
        for piece in pieces:
            decoder.receive_data(piece)
            while not isinstance(event := decoder.next_event(), NeedData):
                out.append(event)
    except RtmpProtocolError as exc:
        return out, str(exc)
    return out, None


@given(st.binary(max_size=200))
def test_split_invariance_with_omitted_extended_repeat(tail: bytes) -> None:
    raw = EXT_WITHOUT_REPEAT + EXT_WITH_REPEAT + tail
    whole = outcome([raw])
    assert whole[0][:2] == [EXT_MSG, EXT_MSG]
    assert outcome([raw[i : i + 1] for i in range(len(raw))]) == whole


def feed_garbage(prefix: bytes, junk: bytes, size: int, step: int) -> None:
    decoder = ChunkDecoder(max_message_bytes=1 << 16)
    try:
        decoder.set_chunk_size(size)
        data = prefix + junk
        for i in range(0, len(data), step):
            decoder.receive_data(data[i : i + step])
            drain(decoder)
        decoder.receive_data(b"")
        drain(decoder)
    except RtmpProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(1, 300), st.integers(1, 64))
def test_arbitrary_bytes_only_raise_protocol_error(junk: bytes, size: int, step: int) -> None:
    feed_garbage(b"", junk, size, step)


@settings(max_examples=300)
@given(MESSAGES, st.binary(max_size=2000), st.integers(1, 300), st.integers(1, 64))
def test_garbage_after_valid_header_only_raises_protocol_error(
    msg: RtmpMessage, junk: bytes, size: int, step: int
) -> None:
    empty = RtmpMessage(msg.csid, msg.timestamp, msg.type_id, msg.stream_id, b"")
    header_len = len(ChunkEncoder().encode(empty))
    feed_garbage(ChunkEncoder().encode(msg)[:header_len], junk, size, step)


def test_compress_round_trip_regular_cadence_uses_small_headers() -> None:
    # AAC-like cadence crossing the 24-bit timestamp boundary: mostly fmt 3 new messages.
    msgs = [RtmpMessage(4, 0xFFFF00 + 23 * i, 8, 1, bytes(200)) for i in range(40)]
    encoder = ChunkEncoder(compress=True)
    data = b"".join(encoder.encode(m) for m in msgs)
    assert decode(data) == msgs
    stateless = b"".join(ChunkEncoder().encode(m) for m in msgs)
    assert len(data) < len(stateless) - 10 * 38
