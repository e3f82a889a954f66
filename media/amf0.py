"""AMF0 codec (Adobe "Action Message Format -- AMF 0"), decoding AMF3 behind 0x11.

AMF3 (Adobe "Action Message Format -- AMF 3") is only decoded, for Flash clients that wrap
values in the avmplus-object switch (AMF0 §3.1). Pure functions over bytes; the one exception
raised for bad input is AmfError.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# References can make a small message expand into a huge tree (a "billion laughs"); this caps the
# bytes that resolved references add on top of the message itself, per decode call.
_MAX_REF_EXPANSION: Final = 4 << 20
# encode() recurses once per nesting level; this stays well inside the interpreter stack and
# turns a cyclic value into an AmfError instead of a RecursionError.
_MAX_ENCODE_DEPTH: Final = 256

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_DOUBLE: Final = struct.Struct(">d")
_OBJECT_END: Final = b"\x00\x00\x09"


class AmfError(Exception):
    """Malformed, truncated, too deep or unsupported AMF data, or a value AMF0 cannot carry."""


class Undefined(enum.Enum):
    """ActionScript `undefined` (AMF0 §2.8), distinct from null (None)."""

    UNDEFINED = "undefined"

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = Undefined.UNDEFINED


@dataclass(frozen=True, slots=True)
class Date:
    """AMF0 §2.13: milliseconds since the Unix epoch (UTC) and a reserved time-zone field."""

    ms: float
    tz: int = 0


class XmlDocument(str):
    """AMF0 §2.17 XML document (and AMF3 XMLDocument/XML), kept as its text."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"XmlDocument({str.__repr__(self)})"


class EcmaArray(dict[str, "Value"]):
    """AMF0 §2.10 ECMA (associative) array; a dict that re-encodes as 0x08, not as an object."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"EcmaArray({dict.__repr__(self)})"


@dataclass(slots=True)
class TypedObject:
    """AMF0 §2.18 typed object (and an AMF3 object with a class name)."""

    class_name: str
    props: dict[str, Value] = field(default_factory=dict)


# float covers int (encode writes ints as doubles); bytes only arrives through AMF3.
Value: TypeAlias = (
    "float | bool | str | bytes | Undefined | Date | XmlDocument | TypedObject | EcmaArray"
    " | dict[str, Value] | list[Value] | None"
)


class _M(enum.IntEnum):
    """AMF0 type markers (AMF0 §2.1); 0x04 movieclip and 0x0E recordset are reserved."""

    NUMBER = 0x00
    BOOLEAN = 0x01
    STRING = 0x02
    OBJECT = 0x03
    NULL = 0x05
    UNDEFINED = 0x06
    REFERENCE = 0x07
    ECMA_ARRAY = 0x08
    OBJECT_END = 0x09
    STRICT_ARRAY = 0x0A
    DATE = 0x0B
    LONG_STRING = 0x0C
    UNSUPPORTED = 0x0D
    XML_DOCUMENT = 0x0F
    TYPED_OBJECT = 0x10
    AVMPLUS = 0x11


class Reader:
    """A cursor over bytes whose pulls raise AmfError (naming `what`) when the data runs out."""

    __slots__ = ("_data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def _take(self, n: int, what: str) -> int:
        start = self.pos
        if not 0 <= n <= len(self._data) - start:
            left = len(self._data) - start
            raise AmfError(f"truncated {what} at offset {start}: need {n} bytes, {left} left")
        self.pos = start + n
        return start

    def pull_u8(self, what: str = "u8") -> int:
        return self._data[self._take(1, what)]

    def pull_u16(self, what: str = "u16") -> int:
        return int(_U16.unpack_from(self._data, self._take(2, what))[0])

    def pull_u32(self, what: str = "u32") -> int:
        return int(_U32.unpack_from(self._data, self._take(4, what))[0])

    def pull_double(self, what: str = "double") -> float:
        return float(_DOUBLE.unpack_from(self._data, self._take(8, what))[0])

    def pull_bytes(self, n: int, what: str = "bytes") -> bytes:
        start = self._take(n, what)
        return self._data[start : start + n]


# A finished complex value with its nesting height and the input bytes it stands for, so that a
# reference to it can be charged against max_depth and _MAX_REF_EXPANSION. None in a table
# marks a value still being decoded: a reference to it would build a cycle.
_Entry: TypeAlias = "tuple[Value, int, int] | None"
_D = TypeVar("_D", bound="dict[str, Value]")


class _Traits(NamedTuple):
    class_name: str
    names: list[str]
    dynamic: bool
    cost: int


class _Decoder:
    """One decode call: the cursor, nesting state and the reference tables it owns."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.r = Reader(data)
        self.max_depth = max_depth
        self.depth = 0  # containers open right now
        self.deepest = 0  # deepest self.depth reached inside the innermost open container
        self.extra = 0  # bytes added by resolved references
        self.refs0: list[_Entry] = []
        self.strings3: list[tuple[str, int]] = []
        self.objects3: list[_Entry] = []
        self.traits3: list[_Traits] = []

    def _text(self, n: int, what: str) -> str:
        try:
            return self.r.pull_bytes(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise AmfError(f"invalid UTF-8 in {what} ending at offset {self.r.pos}") from None

    def _count(self, n: int, what: str) -> int:
        # Every element takes at least one byte; rejecting early avoids a long doomed loop.
        if n > self.r.remaining:
            raise AmfError(f"truncated {what}: {n} elements but {self.r.remaining} bytes left")
        return n

    def _expand(self, cost: int) -> None:
        self.extra += cost
        if self.extra > _MAX_REF_EXPANSION:
            raise AmfError(f"references expand the message by over {_MAX_REF_EXPANSION} bytes")

    def _resolve(self, table: list[_Entry], index: int, kind: str) -> Value:
        if index >= len(table):
            raise AmfError(f"{kind} reference {index} out of range ({len(table)} known)")
        entry = table[index]
        if entry is None:
            raise AmfError(f"{kind} reference {index} is circular")
        value, height, cost = entry
        if self.depth + height > self.max_depth:
            raise AmfError(f"{kind} reference {index} nests deeper than max_depth")
        self.deepest = max(self.deepest, self.depth + height)
        self._expand(cost)
        return value

    def _complex(self, table: list[_Entry], read: Callable[[], Value]) -> Value:
        """Number a container before its contents (AMF0 §2.9, AMF3 §2.1), then read it."""
        index = len(table)
        table.append(None)
        self.depth += 1
        if self.depth > self.max_depth:
            raise AmfError(f"nesting deeper than max_depth={self.max_depth}")
        outer_deepest, pos, extra = self.deepest, self.r.pos, self.extra
        self.deepest = self.depth
        value: Value = read()
        height = self.deepest - self.depth + 1
        table[index] = (value, height, self.r.pos - pos + self.extra - extra)
        self.deepest = max(outer_deepest, self.deepest)
        self.depth -= 1
        return value

    # AMF0 (AMF0 §2)

    def value0(self) -> Value:
        return self._body0(self.r.pull_u8("AMF0 marker"))

    def _body0(self, marker: int) -> Value:
        r = self.r
        match marker:
            case _M.NUMBER:
                return r.pull_double("number")
            case _M.BOOLEAN:
                return r.pull_u8("boolean") != 0
            case _M.STRING:
                return self._text(r.pull_u16("string length"), "string")
            case _M.LONG_STRING:
                return self._text(r.pull_u32("long string length"), "long string")
            case _M.XML_DOCUMENT:
                return XmlDocument(self._text(r.pull_u32("XML length"), "XML document"))
            case _M.NULL:
                return None
            case _M.UNDEFINED | _M.UNSUPPORTED:
                return UNDEFINED
            case _M.REFERENCE:
                return self._resolve(self.refs0, r.pull_u16("reference index"), "AMF0")
            case _M.DATE:
                ms = r.pull_double("date")
                tz = r.pull_u16("date time zone")
                return Date(ms, tz - 0x10000 if tz & 0x8000 else tz)
            case _M.OBJECT:
                return self._complex(self.refs0, lambda: self._members0({}))
            case _M.ECMA_ARRAY:
                return self._complex(self.refs0, self._ecma0)
            case _M.STRICT_ARRAY:
                return self._complex(self.refs0, self._strict0)
            case _M.TYPED_OBJECT:
                return self._complex(self.refs0, self._typed0)
            case _M.AVMPLUS:
                return self.value3()
            case _M.OBJECT_END:
                raise AmfError(f"object-end marker outside an object at offset {r.pos - 1}")
            case _:
                raise AmfError(f"unsupported AMF0 marker 0x{marker:02x} at offset {r.pos - 1}")

    def _ecma0(self) -> EcmaArray:
        self.r.pull_u32("ECMA array count")  # advisory only: Flash and FMLE write 0
        return self._members0(EcmaArray())

    def _strict0(self) -> list[Value]:
        count = self._count(self.r.pull_u32("strict array count"), "strict array")
        return [self.value0() for _ in range(count)]

    def _typed0(self) -> TypedObject:
        name = self._text(self.r.pull_u16("class name length"), "class name")
        return TypedObject(name, self._members0({}))

    def _members0(self, into: _D) -> _D:
        # Only an empty name followed by the object-end marker ends the list (§2.5, §2.11),
        # so an empty name with a real value is just a property called "".
        while True:
            key = self._text(self.r.pull_u16("property name length"), "property name")
            marker = self.r.pull_u8("property value marker")
            if marker == _M.OBJECT_END:
                if key:
                    raise AmfError(f"property {key!r} has no value")
                return into
            into[key] = self._body0(marker)

    # AMF3 (AMF3 §1.3, §3), entered through the avmplus switch for exactly one value

    def _u29(self, what: str) -> int:
        value = 0
        for _ in range(3):
            byte = self.r.pull_u8(what)
            if byte < 0x80:
                return (value << 7) | byte
            value = (value << 7) | (byte & 0x7F)
        return (value << 8) | self.r.pull_u8(what)  # the fourth byte carries all 8 bits

    def _string3(self, what: str) -> str:
        header = self._u29(what)
        if not header & 1:
            if header >> 1 >= len(self.strings3):
                raise AmfError(f"AMF3 string reference {header >> 1} out of range")
            text, cost = self.strings3[header >> 1]
            self._expand(cost)
            return text
        text = self._text(header >> 1, what)
        if text:  # the empty string is never sent by reference (AMF3 §3.8)
            self.strings3.append((text, header >> 1))
        return text

    def value3(self) -> Value:
        r = self.r
        marker = r.pull_u8("AMF3 marker")
        if marker <= 0x03:  # undefined, null, false, true
            return (UNDEFINED, None, False, True)[marker]
        if marker == 0x04:  # integer: U29 holding 29-bit two's complement
            n = self._u29("AMF3 integer")
            return float(n - (1 << 29) if n & (1 << 28) else n)
        if marker == 0x05:
            return r.pull_double("AMF3 double")
        if marker == 0x06:
            return self._string3("AMF3 string")
        if not 0x07 <= marker <= 0x0C:  # vectors (0x0D-0x10), dictionary (0x11), unknown
            raise AmfError(f"unsupported AMF3 type 0x{marker:02x} at offset {r.pos - 1}")
        # The rest share the object reference table (AMF3 §2.1) and a U29O-ref header.
        start, extra = r.pos, self.extra
        header = self._u29("AMF3 object header")
        if not header & 1:
            return self._resolve(self.objects3, header >> 1, "AMF3 object")
        if marker == 0x09:
            return self._complex(self.objects3, lambda: self._array3(header >> 1))
        if marker == 0x0A:
            return self._complex(self.objects3, lambda: self._object3(header))
        value: Value
        if marker == 0x08:  # date: the header's remaining bits are unused; always UTC
            value = Date(r.pull_double("AMF3 date"))
        elif marker == 0x0C:
            value = r.pull_bytes(header >> 1, "AMF3 byte array")
        else:  # 0x07 XMLDocument, 0x0B XML
            value = XmlDocument(self._text(header >> 1, "AMF3 XML"))
        self.objects3.append((value, 0, r.pos - start + self.extra - extra))
        return value

    def _array3(self, dense_count: int) -> Value:
        assoc = EcmaArray()
        while key := self._string3("AMF3 array key"):
            assoc[key] = self.value3()
        dense = [self.value3() for _ in range(self._count(dense_count, "AMF3 array"))]
        if not assoc:
            return dense
        # A mixed array: dense indexes become string keys, as in ActionScript.
        mixed = EcmaArray((str(i), item) for i, item in enumerate(dense))
        for key, item in assoc.items():
            mixed.setdefault(key, item)
        return mixed

    def _object3(self, header: int) -> Value:
        traits = self._traits3(header)
        props = {name: self.value3() for name in traits.names}
        if traits.dynamic:
            while key := self._string3("AMF3 dynamic member name"):
                props[key] = self.value3()
        return TypedObject(traits.class_name, props) if traits.class_name else props

    def _traits3(self, header: int) -> _Traits:
        if not header & 2:
            if header >> 2 >= len(self.traits3):
                raise AmfError(f"AMF3 traits reference {header >> 2} out of range")
            traits = self.traits3[header >> 2]
            self._expand(traits.cost)  # the member names are reused in full
            return traits
        if header & 4:
            raise AmfError("unsupported AMF3 type: externalizable object")
        start, extra = self.r.pos, self.extra
        class_name = self._string3("AMF3 class name")
        count = self._count(header >> 4, "AMF3 sealed member names")
        names = [self._string3("AMF3 sealed member name") for _ in range(count)]
        cost = self.r.pos - start + self.extra - extra
        traits = _Traits(class_name, names, bool(header & 8), cost)
        self.traits3.append(traits)
        return traits


def decode(data: bytes, *, max_depth: int = 64) -> list[Value]:
    """Decode every AMF0 value in `data` (AMF0 §2); references resolve within this call."""
    decoder = _Decoder(bytes(data), max_depth)
    values: list[Value] = []
    try:
        while decoder.r.remaining:
            values.append(decoder.value0())
    except RecursionError:
        # Only reachable when a caller raises max_depth past what the interpreter stack holds.
        raise AmfError("nesting too deep for the interpreter stack") from None
    return values


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise AmfError("string is not valid Unicode (lone surrogate)") from None


def _u29(n: int) -> bytes:
    """AMF3 §1.3.1 U29: 7 bits per byte with a continuation flag, all 8 in a fourth byte."""
    if n >= 1 << 29:
        raise AmfError(f"{n} does not fit an AMF3 U29")
    if n >= 1 << 21:
        return bytes((n >> 22 | 0x80, n >> 15 & 0x7F | 0x80, n >> 8 & 0x7F | 0x80, n & 0xFF))
    groups = [n & 0x7F]
    while n := n >> 7:
        groups.append(n & 0x7F | 0x80)
    return bytes(reversed(groups))


def _write_name(out: bytearray, name: object) -> None:
    if not isinstance(name, str):
        raise AmfError(f"property names must be str, not {type(name).__name__}")
    raw = _utf8(name)
    out += _U16.pack(len(raw)) + raw  # struct.error past 65535 bytes becomes AmfError


def _write(out: bytearray, v: object, depth: int) -> None:
    # Takes `object`, not Value: callers may hand anything in, and that must be an AmfError.
    if v is None:
        out.append(_M.NULL)
    elif v is UNDEFINED:
        out.append(_M.UNDEFINED)
    elif isinstance(v, bool):  # before int: bool is an int subclass
        out += bytes((_M.BOOLEAN, v))
    elif isinstance(v, int | float):
        out += struct.pack(">Bd", _M.NUMBER, v)
    elif isinstance(v, XmlDocument):  # before str: XmlDocument is a str subclass
        raw = _utf8(v)
        out += struct.pack(">BI", _M.XML_DOCUMENT, len(raw)) + raw
    elif isinstance(v, str):
        raw = _utf8(v)
        if len(raw) <= 0xFFFF:
            out += struct.pack(">BH", _M.STRING, len(raw)) + raw
        else:
            out += struct.pack(">BI", _M.LONG_STRING, len(raw)) + raw
    elif isinstance(v, bytes):
        # AMF0 has no byte string; the avmplus switch to an AMF3 ByteArray (0x0C) carries it.
        out += bytes((_M.AVMPLUS, 0x0C)) + _u29(len(v) << 1 | 1) + v
    elif isinstance(v, Date):
        out += struct.pack(">Bdh", _M.DATE, v.ms, v.tz)
    elif depth >= _MAX_ENCODE_DEPTH:
        raise AmfError(f"value nested deeper than {_MAX_ENCODE_DEPTH} levels (or cyclic)")
    elif isinstance(v, list):
        out += struct.pack(">BI", _M.STRICT_ARRAY, len(v))
        for item in v:
            _write(out, item, depth + 1)
    else:
        members: dict[Any, Any]
        if isinstance(v, EcmaArray):
            out += struct.pack(">BI", _M.ECMA_ARRAY, len(v))
            members = v
        elif isinstance(v, dict):
            out.append(_M.OBJECT)
            members = v
        elif isinstance(v, TypedObject):
            out.append(_M.TYPED_OBJECT)
            _write_name(out, v.class_name)
            members = v.props
        else:
            raise AmfError(f"{type(v).__name__} is not an AMF0 value")
        for name, item in members.items():
            _write_name(out, name)
            _write(out, item, depth + 1)
        out += _OBJECT_END


def encode(values: Iterable[Value]) -> bytes:
    """Encode values back to back (AMF0 §2), as in an RTMP command or data message body.

    str becomes a string, or a long string when its UTF-8 exceeds 65535 bytes (§2.14).
    """
    out = bytearray()
    try:
        for v in values:
            _write(out, v, 0)
    except (struct.error, OverflowError) as exc:
        # A number, length or time zone outside what its AMF0 field can hold.
        raise AmfError(f"value out of range for AMF0: {exc}") from None
    return bytes(out)


def encode_value(v: Value) -> bytes:
    """Encode one value; see encode()."""
    return encode((v,))
