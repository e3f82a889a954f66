"""Bus wire format: Hypothesis round-trips, and arbitrary frames raise only WireError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import wire
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind, rescale

WIRE_SETTINGS = settings(deadline=None, max_examples=100,
                         suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------------

# A key part: non-empty, no "/" (the separator), no NUL (it ends the topic), no surrogates
# (not UTF-8 encodable).
key_parts = st.text(
    alphabet=st.characters(exclude_characters="/\x00", exclude_categories=["Cs"]),
    min_size=1, max_size=16)
stream_keys = st.builds(StreamKey, key_parts, key_parts, key_parts)

timestamps = st.integers(min_value=-(2**62), max_value=2**62)
seqs = st.integers(min_value=0, max_value=2**62)
sessions = st.integers(min_value=0, max_value=2**52)  # secrets.randbits(52), as zsock does

media_packets = st.builds(
    MediaPacket,
    stream=stream_keys,
    kind=st.sampled_from(TrackKind),
    codec=st.sampled_from(Codec),
    dts=timestamps,
    pts=timestamps,
    timescale=st.integers(min_value=1, max_value=2**32),
    keyframe=st.booleans(),
    is_config=st.booleans(),
    payload=st.binary(max_size=4096),
)

# Plain msgpack values (no NaN: it never compares equal to itself).
msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                   | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _packb(value: object) -> bytes:
    out = msgpack.packb(value)
    assert isinstance(out, bytes)
    return out


# Frames that look plausible enough to get past the first checks of each decoder.
header_like = st.lists(st.integers(-3, 20) | st.integers(-(2**63), 2**64 - 1) | msgpack_scalars,
                       min_size=0, max_size=11).map(_packb)
fuzz_parts = st.one_of(
    st.binary(max_size=64),
    stream_keys.map(lambda k: k.topic),
    st.just(wire.CONTROL_TOPIC),
    st.just(b""),
    header_like,
    msgpack_values.map(_packb),
    st.builds(lambda ints: _packb(ints), st.lists(st.integers(-2, 12), min_size=4, max_size=4)),
    st.builds(lambda ints: _packb([wire.WIRE_VERSION, *ints]),
              st.lists(st.integers(-2, 20), min_size=9, max_size=9)),
)
frame_lists = st.lists(fuzz_parts, min_size=0, max_size=4)


def _with_length(header: bytes) -> bytes:
    return bytes([len(header) % 256]) + header


# One frame: plausible parts glued together, sometimes with a header length byte before a part.
fuzz_frames = st.lists(st.one_of(fuzz_parts, fuzz_parts.map(_with_length)),
                       max_size=4).map(b"".join)


def split(frame: bytes) -> tuple[bytes, bytes, bytes]:
    """(topic, header, payload) of an encoded frame."""
    topic = wire.topic_of(frame)
    end = len(topic) + 1 + frame[len(topic)]
    return topic, frame[len(topic) + 1:end], frame[end:]


def join(topic: bytes, header: bytes, payload: bytes) -> bytes:
    return topic + _with_length(header) + payload


# --- media and marker round-trips ------------------------------------------------------------


@WIRE_SETTINGS
@given(pkt=media_packets, seq=seqs, session=sessions)
def test_media_round_trip(pkt: MediaPacket, seq: int, session: int) -> None:
    frame = wire.encode(pkt, seq=seq, session=session)
    topic, _, payload = split(frame)
    assert topic == pkt.stream.topic
    assert payload == pkt.payload  # the payload goes as it is, never re-encoded
    wp = wire.decode(frame)
    assert wp == wire.WirePacket(pkt.stream, seq, session, wire.Mark.MEDIA, pkt)
    assert wp.packet is not None
    # Narrowed to the enums, not merely equal ints.
    assert type(wp.packet.kind) is TrackKind
    assert type(wp.packet.codec) is Codec
    assert type(wp.mark) is wire.Mark


@WIRE_SETTINGS
@given(pkt=media_packets, other=stream_keys)
def test_decode_with_the_known_key_checks_it_against_the_topic(pkt: MediaPacket,
                                                                other: StreamKey) -> None:
    frame = wire.encode(pkt, seq=1, session=2)
    wp = wire.decode(frame, pkt.stream)
    assert wp.packet == pkt
    assert wp.stream is pkt.stream  # taken as it is, not parsed again
    # A key whose topic is not the frame's is not trusted: the topic decides.
    assert wire.decode(frame, other).stream == pkt.stream


@WIRE_SETTINGS
@given(stream=stream_keys, seq=seqs, session=sessions)
def test_end_marker_round_trip(stream: StreamKey, seq: int, session: int) -> None:
    frame = wire.encode_mark(stream, wire.Mark.END, seq=seq, session=session)
    assert split(frame)[2] == b""
    assert wire.decode(frame) == wire.WirePacket(stream, seq, session, wire.Mark.END, None)


def test_encode_uses_header_array_with_version_first() -> None:
    key = StreamKey("live", "_definst_", "a")
    pkt = MediaPacket(stream=key, kind=TrackKind.VIDEO, codec=Codec.H264, dts=1, pts=2,
                      timescale=1000, keyframe=True, is_config=True, payload=b"x")
    frame = wire.encode(pkt, seq=5, session=6)
    assert frame.startswith(b"live/_definst_/a\x00")
    header = msgpack.unpackb(split(frame)[1])
    assert header == [wire.WIRE_VERSION, 0, 5, 6, 9, 7, 1, 2, 1000, 3]


# --- snapshots -------------------------------------------------------------------------------


@WIRE_SETTINGS
@given(stream=stream_keys, session=sessions, last_seq=st.integers(-1, 2**62),
       packets=st.lists(media_packets, max_size=6))
def test_snapshot_round_trip(stream: StreamKey, session: int, last_seq: int,
                             packets: list[MediaPacket]) -> None:
    packets = [p._replace(stream=stream) for p in packets]
    frames = wire.encode_snapshot(stream, session, last_seq, packets)
    assert len(frames) == 2 + len(packets)  # a head, then one bus frame per packet
    assert wire.decode_snapshot(frames) == wire.Snapshot(stream, session, last_seq, packets)


def test_snapshot_packet_of_another_stream_is_wire_error() -> None:
    key, other = StreamKey("live", "_definst_", "a"), StreamKey("live", "_definst_", "b")
    pkt = MediaPacket(stream=other, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0, pts=0,
                      timescale=1000, keyframe=True, is_config=False, payload=b"a")
    with pytest.raises(wire.WireError, match="another stream"):
        wire.decode_snapshot(wire.encode_snapshot(key, 1, 0, [pkt]))


@given(stream=stream_keys)
def test_no_snapshot_decodes_to_none(stream: StreamKey) -> None:
    assert wire.decode_snapshot(wire.encode_no_snapshot(stream)) is None


def test_snapshot_frame_count_mismatch_is_wire_error() -> None:
    key = StreamKey("live", "_definst_", "a")
    pkt = MediaPacket(stream=key, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0, pts=0,
                      timescale=1000, keyframe=True, is_config=False, payload=b"a")
    frames = wire.encode_snapshot(key, 1, 0, [pkt, pkt])
    with pytest.raises(wire.WireError, match="frame count"):
        wire.decode_snapshot(frames[:-1])
    with pytest.raises(wire.WireError, match="short"):
        wire.decode_snapshot(frames[:1])


# --- control messages ------------------------------------------------------------------------


@WIRE_SETTINGS
@given(kind=st.text(max_size=20),
       body=st.dictionaries(st.text(max_size=10).filter(lambda k: k != "kind"),
                            msgpack_values, max_size=6))
def test_control_round_trip(kind: str, body: dict[str, Any]) -> None:
    frame = wire.encode_control(kind, body)
    assert wire.topic_of(frame) == wire.CONTROL_TOPIC
    assert wire.decode_control(frame) == {"kind": kind, **body}


@pytest.mark.parametrize("frame", [
    b"",
    wire.CONTROL_TOPIC,
    b"live/_definst_/a\x00" + _packb({"kind": "stream"}),
    wire.CONTROL_TOPIC + _packb({"kind": 3}),
    wire.CONTROL_TOPIC + _packb(["kind", "stream"]),
    wire.CONTROL_TOPIC + b"\xc1",
    wire.CONTROL_TOPIC + _packb({"kind": "x"}) + b"\x00",
])
def test_bad_control_is_wire_error(frame: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_control(frame)


# --- malformed input raises WireError only ---------------------------------------------------


@WIRE_SETTINGS
@given(frame=fuzz_frames, key=stream_keys)
def test_decode_arbitrary_frames_raises_only_wire_error(frame: bytes, key: StreamKey) -> None:
    for known in (None, key):
        with contextlib.suppress(wire.WireError):
            assert isinstance(wire.decode(key.topic + frame, known), wire.WirePacket)
    try:
        wp = wire.decode(frame)
    except wire.WireError:
        return
    assert isinstance(wp, wire.WirePacket)


@WIRE_SETTINGS
@given(frames=frame_lists)
def test_decode_snapshot_arbitrary_frames_raises_only_wire_error(frames: list[bytes]) -> None:
    try:
        snap = wire.decode_snapshot(frames)
    except wire.WireError:
        return
    assert snap is None or isinstance(snap, wire.Snapshot)


@WIRE_SETTINGS
@given(frame=fuzz_frames)
def test_decode_control_arbitrary_frames_raises_only_wire_error(frame: bytes) -> None:
    try:
        body = wire.decode_control(frame)
    except wire.WireError:
        return
    assert isinstance(body, dict)
    assert isinstance(body["kind"], str)


@WIRE_SETTINGS
@given(pkt=media_packets, index=st.integers(0, 200), byte=st.integers(0, 255))
def test_corrupted_header_raises_only_wire_error(pkt: MediaPacket, index: int,
                                                 byte: int) -> None:
    frame = wire.encode(pkt, seq=1, session=2)
    topic, header, payload = split(frame)
    mutated = bytearray(header)
    mutated[index % len(mutated)] = byte
    truncated = frame[: index % len(frame)]
    corrupted = bytearray(frame)
    corrupted[index % len(frame)] = byte
    for bad in (join(topic, bytes(mutated), payload), join(topic, header[: index % len(header)],
                                                           payload), truncated, bytes(corrupted)):
        with contextlib.suppress(wire.WireError):
            wire.decode(bad)
            wire.decode(bad, pkt.stream)


@pytest.mark.parametrize(("header", "message"), [
    ([1, 0, 0, 0, 9, 7, 0, 0, 1000, 0], "version"),
    ([2, 0, 0, 0, 9, 7, 0, 0, 0, 0], "timescale"),
    ([2, 0, 0, 0, 9, 7, 0, 0, -1, 0], "timescale"),
    ([2, 0, 0, 0, 10, 7, 0, 0, 1000, 0], "TrackKind"),
    ([2, 0, 0, 0, 9, 99, 0, 0, 1000, 0], "Codec"),
    ([2, 7, 0, 0, 9, 7, 0, 0, 1000, 0], "Mark"),
    ([2, 0, 0, 0, 9, 7, 0, 0, 1000], "10-item"),
    ([2, 0, 0, 0, 9, 7, 0, 0, 1000, True], "integers"),
    ([2, 0, 0, 0, 9, 7, 0.0, 0, 1000, 0], "integers"),
    ({"v": 1}, "10-item"),
])
def test_bad_header_messages(header: object, message: str) -> None:
    frame = join(b"live/_definst_/a\x00", _packb(header), b"")
    with pytest.raises(wire.WireError, match=message):
        wire.decode(frame)


@pytest.mark.parametrize(("frame", "message"), [
    (b"live/_definst_/a\x00", "no header"),
    (b"live/_definst_/a\x00\x05\x94", "truncated header"),
])
def test_short_frames(frame: bytes, message: str) -> None:
    for known in (None, StreamKey("live", "_definst_", "a")):
        with pytest.raises(wire.WireError, match=message):
            wire.decode(frame, known)


@pytest.mark.parametrize("topic", [b"live/_definst_/a", b"live/a\x00", b"\xff/b/c\x00",
                                   wire.CONTROL_TOPIC, b""])
def test_bad_topic_is_wire_error(topic: bytes) -> None:
    key = StreamKey("live", "_definst_", "a")
    _, header, payload = split(wire.encode_mark(key, wire.Mark.END, seq=0, session=0))
    with pytest.raises(wire.WireError, match="bad header"):
        wire.decode(join(topic, header, payload))


# --- StreamKey -------------------------------------------------------------------------------


def test_topic_is_nul_terminated_key() -> None:
    key = StreamKey("live", "_definst_", "a")
    assert str(key) == "live/_definst_/a"
    assert key.topic == b"live/_definst_/a\x00"
    assert StreamKey.from_topic(key.topic) == key


def test_topic_is_not_a_prefix_of_a_longer_name() -> None:
    a = StreamKey.parse("live/_definst_/a")
    ab = StreamKey.parse("live/_definst_/ab")
    assert str(ab).startswith(str(a))  # the plain keys are prefixes ...
    assert not ab.topic.startswith(a.topic)  # ... the topics are not
    assert not a.topic.startswith(ab.topic)


@given(a=stream_keys, b=stream_keys)
def test_distinct_topics_are_never_prefixes(a: StreamKey, b: StreamKey) -> None:
    if a != b:
        assert not b.topic.startswith(a.topic)
        assert not b.topic.startswith(wire.CONTROL_TOPIC)


@given(key=stream_keys)
def test_key_text_and_topic_round_trip(key: StreamKey) -> None:
    assert StreamKey.parse(str(key)) == key
    assert StreamKey.from_topic(key.topic) == key


@pytest.mark.parametrize("text", ["", "live", "live/a", "live/_definst_/a/b", "/_definst_/a",
                                  "live//a", "live/_definst_/", "//", "live/_definst_/a/"])
def test_parse_rejects_malformed_keys(text: str) -> None:
    with pytest.raises(ValueError, match="not a stream key"):
        StreamKey.parse(text)


@pytest.mark.parametrize("topic", [b"live/_definst_/a", b"live/_definst_/a\x00\x01", b""])
def test_from_topic_requires_trailing_nul(topic: bytes) -> None:
    with pytest.raises(ValueError, match="NUL"):
        StreamKey.from_topic(topic)


@pytest.mark.parametrize("topic", [wire.CONTROL_TOPIC, b"\xff\xfe/b/c\x00", b"a/b\x00"])
def test_from_topic_rejects_non_keys(topic: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - UnicodeDecodeError or the parse error
        StreamKey.from_topic(topic)


@pytest.mark.parametrize("parts", [("", "i", "n"), ("a/b", "i", "n"), ("a", "i", "n\x00x")])
def test_a_key_part_is_never_empty_and_has_no_slash_or_nul(parts: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="not a stream key part"):
        StreamKey(*parts)


def test_stream_keys_order_and_hash() -> None:
    keys = [StreamKey("b", "i", "n"), StreamKey("a", "i", "z"), StreamKey("a", "i", "n")]
    assert sorted(keys) == [keys[2], keys[1], keys[0]]
    assert len({StreamKey("a", "b", "c"), StreamKey.parse("a/b/c")}) == 1


# --- rescale ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("ts", "src", "dst", "out"), [
    (90000, 90000, 1000, 1000),
    (45, 90000, 1000, 1),  # 0.5 ms rounds up
    (44, 90000, 1000, 0),
    (1, 1000, 90000, 90),
    (1234, 1000, 1000, 1234),
    (1024, 48000, 1000, 21),
])
def test_rescale(ts: int, src: int, dst: int, out: int) -> None:
    assert rescale(ts, src, dst) == out


@given(ts=st.integers(0, 2**40), scale=st.integers(1, 10**6))
def test_rescale_to_finer_and_back_is_identity(ts: int, scale: int) -> None:
    assert rescale(rescale(ts, 1000, 1000 * scale), 1000 * scale, 1000) == ts
