"""A small ISOBMFF reader for tests: walks boxes and decodes the few the muxer writes.

Independent of media/mp4/boxes.py on purpose (struct layouts written out again from
ISO/IEC 14496-12), so a mistake in the writer is not mirrored by the reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Boxes that hold only boxes; stsd/dref hold a count first, sample entries a fixed header.
CONTAINERS = frozenset({"moov", "trak", "mdia", "minf", "dinf", "stbl", "mvex", "moof", "traf",
                        "edts", "udta"})
CHILD_OFFSET = {"stsd": 8, "dref": 8, "avc1": 78, "hvc1": 78, "av01": 78, "mp4a": 28,
                "Opus": 28}


@dataclass
class Box:
    type: str
    offset: int  # of the box header, in the parsed buffer
    size: int
    payload: bytes
    children: list[Box] = field(default_factory=list)

    def find(self, path: str) -> Box:
        """The first descendant along a "/"-separated path of types."""
        found = find_all(self.children, path)
        if not found:
            raise KeyError(f"no {path} in {self.type}")
        return found[0]

    @property
    def version(self) -> int:
        return self.payload[0]

    @property
    def flags(self) -> int:
        return int.from_bytes(self.payload[1:4], "big")


def find_all(boxes: list[Box], path: str) -> list[Box]:
    head, _, rest = path.partition("/")
    matches = [b for b in boxes if b.type == head]
    if not rest:
        return matches
    return [d for b in matches for d in find_all(b.children, rest)]


def parse_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """Parse boxes in data[start:end]; raises ValueError on a box that overruns."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos < end:
        if end - pos < 8:
            raise ValueError(f"truncated box header at {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {kind!r} at {pos} has a bad size {size}")
        name = kind.decode("latin-1")
        b = Box(name, pos, size, data[pos + header : pos + size])
        if name in CONTAINERS:
            b.children = parse_boxes(data, pos + header, pos + size)
        elif name in CHILD_OFFSET:
            b.children = parse_boxes(data, pos + header + CHILD_OFFSET[name], pos + size)
        out.append(b)
        pos += size
    return out


# ---------------------------------------------------------------------------- decoders


def timescale(trak: Box) -> int:
    mdhd = trak.find("mdia/mdhd")
    fmt = ">QQI" if mdhd.version == 1 else ">III"
    return int(struct.unpack_from(fmt, mdhd.payload, 4)[2])


def handler(trak: Box) -> str:
    return trak.find("mdia/hdlr").payload[8:12].decode()


def track_id(trak: Box) -> int:
    return int(struct.unpack_from(">I", trak.find("tkhd").payload, 12)[0])


@dataclass(frozen=True)
class TrunSample:
    duration: int
    size: int
    flags: int
    cts: int


@dataclass(frozen=True)
class Run:
    track_id: int
    tfdt: int
    data_offset: int
    samples: list[TrunSample]
    data: bytes  # the samples' bytes, found through data_offset


def parse_trun(trun: Box, default_flags: int = 0) -> tuple[int, list[TrunSample]]:
    p, flags = trun.payload, trun.flags
    (count,) = struct.unpack_from(">I", p, 4)
    pos, data_offset = 8, 0
    if flags & 0x1:
        (data_offset,) = struct.unpack_from(">i", p, pos)
        pos += 4
    first_flags = None
    if flags & 0x4:
        (first_flags,) = struct.unpack_from(">I", p, pos)
        pos += 4
    samples = []
    for i in range(count):
        vals = []
        for bit, signed in ((0x100, False), (0x200, False), (0x400, False), (0x800, True)):
            if flags & bit:
                fmt = ">i" if signed and trun.version == 1 else ">I"
                vals.append(struct.unpack_from(fmt, p, pos)[0])
                pos += 4
            else:
                vals.append(None)
        duration, size, sflags, cts = vals
        if sflags is None:
            sflags = first_flags if i == 0 and first_flags is not None else default_flags
        samples.append(TrunSample(duration or 0, size or 0, sflags, cts or 0))
    if pos != len(p):
        raise ValueError("trun has trailing bytes")
    return data_offset, samples


def parse_fragment(data: bytes, start: int = 0) -> tuple[int, list[Run], int]:
    """(mfhd sequence, runs, end offset) of the moof+mdat at `start` in `data`."""
    moof, mdat = parse_boxes(data, start, start + _two_box_size(data, start))
    if (moof.type, mdat.type) != ("moof", "mdat"):
        raise ValueError(f"expected moof+mdat, got {moof.type}+{mdat.type}")
    (sequence,) = struct.unpack_from(">I", moof.find("mfhd").payload, 4)
    runs = []
    for traf in find_all(moof.children, "traf"):
        tfhd = traf.find("tfhd")
        if tfhd.flags != 0x020000:
            raise ValueError(f"tfhd flags {tfhd.flags:#x}")
        (tid,) = struct.unpack_from(">I", tfhd.payload, 4)
        tfdt = traf.find("tfdt")
        (base,) = struct.unpack_from(">Q" if tfdt.version == 1 else ">I", tfdt.payload, 4)
        offset, samples = parse_trun(traf.find("trun"))
        begin = moof.offset + offset
        size = sum(s.size for s in samples)
        mdat_data_start = mdat.offset + (mdat.size - len(mdat.payload))
        if not mdat_data_start <= begin <= begin + size <= mdat.offset + mdat.size:
            raise ValueError(f"track {tid} data [{begin}, {begin + size}) is outside the mdat")
        runs.append(Run(tid, base, offset, samples, data[begin : begin + size]))
    return sequence, runs, mdat.offset + mdat.size


def _two_box_size(data: bytes, start: int) -> int:
    first = struct.unpack_from(">I", data, start)[0]
    second = struct.unpack_from(">I", data, start + first)[0]
    return int(first + second)
