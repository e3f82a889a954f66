"""media.amf0: byte-exact vectors, every truncation point, depth limits and fuzzing."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.amf0 import (
    UNDEFINED,
    AmfError,
    Date,
    EcmaArray,
    Reader,
    TypedObject,
    Undefined,
    Value,
    XmlDocument,
    decode,
    encode,
    encode_value,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


def _d(x: float) -> bytes:
    return struct.pack(">d", x)


def _same(a: object, b: object) -> bool:
    """Equality that also checks types (dict vs EcmaArray, float vs int), order, NaN and -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or _d(a) == _d(b)
    if isinstance(a, Date) and isinstance(b, Date):
        return _same(a.ms, b.ms) and a.tz == b.tz
    if isinstance(a, TypedObject) and isinstance(b, TypedObject):
        return a.class_name == b.class_name and _same(a.props, b.props)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _decodes_or_amf_error(data: bytes) -> None:
    try:
        result = decode(data)
    except AmfError:
        return
    assert isinstance(result, list)


# --- byte-exact vectors -------------------------------------------------------------------

CONNECT = (
    b"\x02\x00\x07connect"
    b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
    b"\x03\x00\x03app\x02\x00\x04live\x00\x00\x09"
)

# What ffmpeg's RTMP muxer sends before the first frame (values for a 1080p30 H.264/AAC stream).
FFMPEG_METADATA = (
    b"\x02\x00\x0d@setDataFrame"
    b"\x02\x00\x0aonMetaData"
    b"\x08\x00\x00\x00\x0d"
    b"\x00\x08duration\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    b"\x00\x05width\x00\x40\x9e\x00\x00\x00\x00\x00\x00"
    b"\x00\x06height\x00\x40\x90\xe0\x00\x00\x00\x00\x00"
    b"\x00\x0dvideodatarate\x00\x40\xa3\x88\x00\x00\x00\x00\x00"
    b"\x00\x09framerate\x00\x40\x3e\x00\x00\x00\x00\x00\x00"
    b"\x00\x0cvideocodecid\x00\x40\x1c\x00\x00\x00\x00\x00\x00"
    b"\x00\x0daudiodatarate\x00\x40\x60\x00\x00\x00\x00\x00\x00"
    b"\x00\x0faudiosamplerate\x00\x40\xe5\x88\x80\x00\x00\x00\x00"
    b"\x00\x0faudiosamplesize\x00\x40\x30\x00\x00\x00\x00\x00\x00"
    b"\x00\x06stereo\x01\x01"
    b"\x00\x0caudiocodecid\x00\x40\x24\x00\x00\x00\x00\x00\x00"
    b"\x00\x07encoder\x02\x00\x0dLavf60.16.100"
    b"\x00\x08filesize\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    b"\x00\x00\x09"
)


def test_encode_connect_command() -> None:
    assert encode(["connect", 1.0, {"app": "live"}]) == CONNECT


def test_decode_connect_command() -> None:
    assert decode(CONNECT) == ["connect", 1.0, {"app": "live"}]


def test_ffmpeg_set_data_frame() -> None:
    values = decode(FFMPEG_METADATA)
    assert values[:2] == ["@setDataFrame", "onMetaData"]
    meta = values[2]
    assert isinstance(meta, EcmaArray)
    assert meta == {
        "duration": 0.0,
        "width": 1920.0,
        "height": 1080.0,
        "videodatarate": 2500.0,
        "framerate": 30.0,
        "videocodecid": 7.0,
        "audiodatarate": 128.0,
        "audiosamplerate": 44100.0,
        "audiosamplesize": 16.0,
        "stereo": True,
        "audiocodecid": 10.0,
        "encoder": "Lavf60.16.100",
        "filesize": 0.0,
    }
    assert encode(values) == FFMPEG_METADATA  # the real count (13) is written back


def test_ecma_array_count_is_ignored() -> None:
    body = b"\x00\x08duration\x00" + _d(0.0) + b"\x00\x00\x09"
    for count in (b"\x00\x00\x00\x00", b"\x00\x00\x00\x07", b"\xff\xff\xff\xff"):
        [value] = decode(b"\x08" + count + body)
        assert isinstance(value, EcmaArray)
        assert value == {"duration": 0.0}


def test_ecma_array_end_is_structural() -> None:
    # The key "a" holds a string whose bytes are 00 00 09; a byte scan would stop there.
    data = b"\x08\x00\x00\x00\x00\x00\x01a\x02\x00\x03\x00\x00\x09\x00\x00\x09\x05"
    assert decode(data) == [EcmaArray({"a": "\x00\x00\x09"}), None]


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (1.5, b"\x00" + _d(1.5)),
        (True, b"\x01\x01"),
        (False, b"\x01\x00"),
        ("", b"\x02\x00\x00"),
        ("é", b"\x02\x00\x02\xc3\xa9"),
        (None, b"\x05"),
        (UNDEFINED, b"\x06"),
        ({}, b"\x03\x00\x00\x09"),
        ({"": 1.0}, b"\x03\x00\x00\x00" + _d(1.0) + b"\x00\x00\x09"),
        (EcmaArray(a=None), b"\x08\x00\x00\x00\x01\x00\x01a\x05\x00\x00\x09"),
        ([1.0, None], b"\x0a\x00\x00\x00\x02\x00" + _d(1.0) + b"\x05"),
        (Date(1.7e12, -60), b"\x0b" + _d(1.7e12) + b"\xff\xc4"),
        (XmlDocument("<a/>"), b"\x0f\x00\x00\x00\x04<a/>"),
        (TypedObject("P", {"x": None}), b"\x10\x00\x01P\x00\x01x\x05\x00\x00\x09"),
        (b"\x01\x02", b"\x11\x0c\x05\x01\x02"),
    ],
)
def test_value_vectors(value: Value, data: bytes) -> None:
    assert encode_value(value) == data
    [decoded] = decode(data)
    assert _same(decoded, value)


def test_encode_int_and_bool() -> None:
    assert encode_value(1) == b"\x00" + _d(1.0)
    assert encode_value(True) == b"\x01\x01"
    assert _same(decode(encode_value(-7)), [-7.0])


def test_long_string_threshold() -> None:
    short, long = "a" * 0xFFFF, "é" * 0x8000  # 65535 and 65536 UTF-8 bytes
    assert encode_value(short)[:3] == b"\x02\xff\xff"
    assert encode_value(long)[:5] == b"\x0c\x00\x01\x00\x00"
    assert decode(encode([short, long])) == [short, long]


def test_unsupported_marker_is_undefined() -> None:
    assert decode(b"\x0d\x05") == [UNDEFINED, None]


def test_value_types() -> None:
    assert repr(UNDEFINED) == "UNDEFINED"
    assert Undefined("undefined") is UNDEFINED
    assert EcmaArray(a=1.0) == {"a": 1.0}
    assert repr(EcmaArray(a=1.0)) == "EcmaArray({'a': 1.0})"
    assert XmlDocument("<a/>") == "<a/>"
    assert repr(XmlDocument("<a/>")) == "XmlDocument('<a/>')"


# --- references ---------------------------------------------------------------------------

OBJ_A = b"\x03\x00\x01a\x05\x00\x00\x09"


def test_reference_inside_array() -> None:
    # The strict array is complex value 0 and the object inside it is 1.
    [outer] = decode(b"\x0a\x00\x00\x00\x02" + OBJ_A + b"\x07\x00\x01")
    assert outer == [{"a": None}, {"a": None}]
    assert isinstance(outer, list)
    assert outer[0] is outer[1]


def test_reference_across_values() -> None:
    first, second = decode(OBJ_A + b"\x07\x00\x00")
    assert first is second


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x07\x00\x00", id="nothing-to-reference"),
        pytest.param(OBJ_A + b"\x07\x00\x01", id="out-of-range"),
        pytest.param(b"\x03\x00\x01a\x07\x00\x00\x00\x00\x09", id="circular"),
    ],
)
def test_bad_reference(data: bytes) -> None:
    with pytest.raises(AmfError, match="reference"):
        decode(data)


def _ref_chain(levels: int, fanout: int) -> bytes:
    # Value i is a strict array of `fanout` references to value i - 1.
    out = b"\x0a\x00\x00\x00\x00"
    for i in range(1, levels):
        out += b"\x0a" + struct.pack(">I", fanout) + (b"\x07" + struct.pack(">H", i - 1)) * fanout
    return out


def test_reference_bomb_is_refused() -> None:
    assert len(decode(_ref_chain(12, 2))) == 12
    with pytest.raises(AmfError, match="expand"):
        decode(_ref_chain(40, 2))


def test_references_count_towards_depth() -> None:
    assert len(decode(_ref_chain(64, 1))) == 64
    with pytest.raises(AmfError, match="max_depth"):
        decode(_ref_chain(65, 1))


# --- AMF3 behind the avmplus switch -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x06\x0bhello", "hello"),
        (b"\x06\x01", ""),
        (b"\x04\x05", 5.0),
        (b"\x04\x7f", 127.0),
        (b"\x04\x81\x00", 128.0),
        (b"\x04\xbf\xff\xff\xff", 268435455.0),
        (b"\x04\xff\xff\xff\xff", -1.0),
        (b"\x04\xc0\x80\x80\x00", -268435456.0),
        (b"\x05" + _d(2.5), 2.5),
        (b"\x00", UNDEFINED),
        (b"\x01", None),
        (b"\x02", False),
        (b"\x03", True),
        (b"\x08\x01" + _d(1.7e12), Date(1.7e12)),
        (b"\x0c\x07\x01\x02\x03", b"\x01\x02\x03"),
        (b"\x0b\x09<a/>", XmlDocument("<a/>")),
        (b"\x07\x09<a/>", XmlDocument("<a/>")),
        (b"\x09\x05\x01\x06\x07abc\x06\x00", ["abc", "abc"]),  # string reference
        (b"\x09\x03\x03k\x06\x03v\x01\x04\x07", EcmaArray({"0": 7.0, "k": "v"})),
        (b"\x0a\x0b\x01\x03a\x04\x01\x01", {"a": 1.0}),  # anonymous, dynamic
        (b"\x0a\x13\x05Pt\x03x\x04\x02", TypedObject("Pt", {"x": 2.0})),  # sealed
    ],
)
def test_amf3_values(data: bytes, expected: Value) -> None:
    [value] = decode(b"\x11" + data)
    assert _same(value, expected)


def test_amf3_switch_is_not_sticky() -> None:
    # 0x05 after the AMF3 integer is an AMF0 null, not an AMF3 double.
    assert decode(b"\x11\x04\x05\x05") == [5.0, None]


def test_amf3_trait_and_object_references() -> None:
    # [Pt{x: 2}, Pt{x: 3} via trait reference 0, object reference 1 (the first Pt)]
    data = b"\x11\x09\x07\x01\x0a\x13\x05Pt\x03x\x04\x02\x0a\x01\x04\x03\x0a\x02"
    [items] = decode(data)
    assert isinstance(items, list)
    assert items == [TypedObject("Pt", {"x": 2.0}), TypedObject("Pt", {"x": 3.0}), items[0]]
    assert items[2] is items[0]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x0a\x07\x01", "externalizable"),
        (b"\x0d\x01\x00", "unsupported AMF3 type"),
        (b"\x10\x01\x00\x01", "unsupported AMF3 type"),
        (b"\x11\x01\x00", "unsupported AMF3 type"),
        (b"\x06\x02", "string reference"),
        (b"\x0a\x01", "traits reference"),
        (b"\x09\x03\x01\x09\x00", "circular"),
        (b"\x06\x03\xff", "UTF-8"),
    ],
)
def test_amf3_errors(data: bytes, match: str) -> None:
    with pytest.raises(AmfError, match=match):
        decode(b"\x11" + data)


# --- malformed AMF0 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x04", "unsupported AMF0 marker"),
        (b"\x0e", "unsupported AMF0 marker"),
        (b"\xff", "unsupported AMF0 marker"),
        (b"\x09", "object-end"),
        (b"\x03\x00\x01a\x09", "has no value"),
        (b"\x02\x00\x01\xff", "UTF-8"),
        (b"\x0a\xff\xff\xff\xff\x05", "truncated strict array"),
    ],
)
def test_malformed(data: bytes, match: str) -> None:
    with pytest.raises(AmfError, match=match):
        decode(data)


# --- truncation ---------------------------------------------------------------------------

SAMPLE: list[Value] = [
    "connect",
    1.0,
    {"app": "live", "caps": [31.0, True, None]},
    EcmaArray(duration=0.0),
    Date(0.0),
    UNDEFINED,
    XmlDocument("<x/>"),
    TypedObject("T", {"k": "v"}),
    b"\x01\x02",
]
SAMPLE_BYTES = encode(SAMPLE)
# Prefix length -> how many whole values it holds, for the prefixes that end between values.
BOUNDARIES = {len(encode(SAMPLE[:n])): n for n in range(len(SAMPLE) + 1)}


@pytest.mark.parametrize("cut", range(len(SAMPLE_BYTES) + 1))
def test_every_truncation_point(cut: int) -> None:
    prefix = SAMPLE_BYTES[:cut]
    if cut in BOUNDARIES:
        assert _same(decode(prefix), SAMPLE[: BOUNDARIES[cut]])
    else:
        with pytest.raises(AmfError, match="truncated"):
            decode(prefix)


def test_truncation_message_names_the_field() -> None:
    with pytest.raises(AmfError, match="truncated string at offset 3"):
        decode(b"\x02\x00\x05ab")


def test_reader() -> None:
    r = Reader(b"\x01\x00\x02\x00\x00\x00\x03" + _d(0.5) + b"xy")
    assert (r.pull_u8(), r.pull_u16(), r.pull_u32(), r.pull_double()) == (1, 2, 3, 0.5)
    assert r.pull_bytes(2) == b"xy"
    assert r.remaining == 0
    with pytest.raises(AmfError, match="truncated widget"):
        r.pull_u8("widget")


# --- nesting limits -----------------------------------------------------------------------

DEEP = 10_000


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x03\x00\x01a" * DEEP + b"\x05" + b"\x00\x00\x09" * DEEP, id="object"),
        pytest.param(b"\x0a\x00\x00\x00\x01" * DEEP + b"\x05", id="strict-array"),
        pytest.param(b"\x08\x00\x00\x00\x00\x00\x01a" * DEEP + b"\x05", id="ecma-array"),
        pytest.param(b"\x10\x00\x01T\x00\x01a" * DEEP + b"\x05", id="typed-object"),
        pytest.param(b"\x11" + b"\x09\x03\x01" * DEEP + b"\x01", id="amf3-array"),
        pytest.param(b"\x11" + b"\x0a\x0b\x01\x03a" * DEEP + b"\x01", id="amf3-object"),
    ],
)
@pytest.mark.parametrize("max_depth", [64, 100_000])
def test_deep_nesting_is_an_amf_error(data: bytes, max_depth: int) -> None:
    # A huge max_depth must still end in AmfError, never RecursionError.
    with pytest.raises(AmfError, match="deep"):
        decode(data, max_depth=max_depth)


@pytest.mark.parametrize("max_depth", [0, 1, 5, 64])
def test_max_depth_boundary(max_depth: int) -> None:
    def nested(n: int) -> bytes:
        return b"\x0a\x00\x00\x00\x01" * n + b"\x05"

    assert len(decode(nested(max_depth), max_depth=max_depth)) == 1
    with pytest.raises(AmfError, match="max_depth"):
        decode(nested(max_depth + 1), max_depth=max_depth)


def test_encode_too_deep_or_cyclic() -> None:
    deep: list[Value] = []
    for _ in range(DEEP):
        deep = [deep]
    with pytest.raises(AmfError, match="deeper"):
        encode_value(deep)
    cyclic: dict[str, Value] = {}
    cyclic["self"] = cyclic
    with pytest.raises(AmfError, match="deeper"):
        encode_value(cyclic)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param({1.0, 2.0}, id="set"),
        pytest.param((1.0, 2.0), id="tuple"),
        pytest.param({1: 2.0}, id="int-key"),
        pytest.param([{"ok": [object()]}], id="nested"),
        pytest.param(10**400, id="huge-int"),
        pytest.param(Date(0.0, 40_000), id="time-zone"),
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param({"k" * 0x10000: None}, id="long-name"),
    ],
)
def test_encode_rejects_non_values(value: object) -> None:
    with pytest.raises(AmfError):
        encode([value])  # type: ignore[list-item]


# --- properties ---------------------------------------------------------------------------

_names = st.text(max_size=6)
_scalars: st.SearchStrategy[Value] = st.one_of(
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.none(),
    st.just(UNDEFINED),
    st.builds(Date, st.floats(), st.integers(-0x8000, 0x7FFF)),
    st.text(max_size=12).map(XmlDocument),
    st.binary(max_size=12),
)


def _containers(children: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
    members = st.dictionaries(_names, children, max_size=4)
    return st.one_of(
        st.lists(children, max_size=4),
        members,
        members.map(EcmaArray),
        st.builds(TypedObject, _names, members),
    )


_values = st.recursive(_scalars, _containers, max_leaves=16)


@given(st.lists(_values, max_size=4))
def test_round_trip(values: list[Value]) -> None:
    assert _same(decode(encode(values)), values)


@given(st.integers(-(2**53), 2**53))
def test_ints_round_trip_as_floats(n: int) -> None:
    assert _same(decode(encode_value(n)), [float(n)])


@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _decodes_or_amf_error(data)


@pytest.mark.parametrize(
    "prefix", [b"\x11", b"\x03", b"\x08\x00\x00\x00\x00", b"\x11\x09", b"\x11\x0a"]
)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_after_prefix(prefix: bytes, data: bytes) -> None:
    _decodes_or_amf_error(prefix + data)


@given(st.lists(_values, min_size=1, max_size=4), st.data())
def test_mutated_encodings(values: Sequence[Value], data: st.DataObject) -> None:
    raw = bytearray(encode(values))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _decodes_or_amf_error(bytes(raw))
