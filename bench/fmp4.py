"""Just enough of a fragmented-MP4 reader for the sampled fMP4 players (ISO/IEC 14496-12).

From the init segment it learns each track's id, handler and timescale (tkhd, mdhd, hdlr,
trex); from each moof it learns the video samples' decode times and sync flags (tfhd, tfdt,
trun). A fragment's samples count as received once its mdat is complete: that is when a
player could decode them. Decode times in ms are what the publisher sent as FLV timestamps,
since rtmpmate's fragmenter keeps the stream clock (90 kHz video).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_BOX = 64 << 20
NON_SYNC = 0x00010000  # sample_is_non_sync_sample (§8.8.3.1)
CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"mvex", b"moof", b"traf"})


class Fmp4Error(Exception):
    """Not an fMP4 stream this reader understands."""


@dataclass
class _Track:
    timescale: int = 1000
    video: bool = False
    default_flags: int = 0  # from trex
    default_duration: int = 0


@dataclass(frozen=True, slots=True)
class VideoSample:
    dts_ms: int
    keyframe: bool


def _boxes(data: bytes | memoryview) -> list[tuple[bytes, memoryview]]:
    """The (type, payload) of each box in `data`, which must hold whole boxes."""
    view = memoryview(data)
    out, pos = [], 0
    while pos + 8 <= len(view):
        size, kind = struct.unpack_from(">I4s", view, pos)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", view, pos + 8)[0], 16
        if size < head or pos + size > len(view):
            raise Fmp4Error(f"bad {kind!r} box size {size}")
        out.append((kind, view[pos + head : pos + size]))
        pos += size
    return out


class Fmp4Reader:
    def __init__(self) -> None:
        self._buf = bytearray()
        self._tracks: dict[int, _Track] = {}
        self._pending: list[VideoSample] = []  # of the last moof, until its mdat is whole

    def receive(self, data: bytes) -> list[VideoSample]:
        """Video samples whose fragment is now complete."""
        self._buf += data
        done: list[VideoSample] = []
        while len(self._buf) >= 8:
            size, kind = struct.unpack_from(">I4s", self._buf)
            if size == 1 and len(self._buf) >= 16:
                size = struct.unpack_from(">Q", self._buf, 8)[0]
            if size < 8 or size > MAX_BOX:
                raise Fmp4Error(f"bad top-level {kind!r} box size {size}")
            if len(self._buf) < size:
                break
            box = bytes(self._buf[:size])
            del self._buf[:size]
            try:
                ((_, payload),) = _boxes(box)
                if kind == b"moov":
                    self._walk(payload)
                elif kind == b"moof":
                    self._pending = []
                    self._walk(payload)
            except (struct.error, KeyError, IndexError) as exc:
                raise Fmp4Error(f"malformed {kind!r}: {exc!r}") from None
            if kind == b"mdat":
                done += self._pending
                self._pending = []
        return done

    def _walk(self, data: memoryview) -> None:
        for kind, payload in _boxes(data):
            if kind == b"trak":
                self._trak(payload)
            elif kind == b"traf":
                self._traf(payload)
            elif kind == b"trex":
                t = self._tracks.setdefault(struct.unpack_from(">I", payload, 4)[0], _Track())
                t.default_duration, _, t.default_flags = struct.unpack_from(">III", payload, 12)
            elif kind in CONTAINERS:
                self._walk(payload)

    def _trak(self, data: memoryview) -> None:
        found: dict[bytes, memoryview] = {}

        def collect(d: memoryview) -> None:
            for kind, payload in _boxes(d):
                found[kind] = payload
                if kind in CONTAINERS:
                    collect(payload)

        collect(data)
        tkhd, mdhd, hdlr = found[b"tkhd"], found[b"mdhd"], found[b"hdlr"]
        track_id = struct.unpack_from(">I", tkhd, 20 if tkhd[0] == 1 else 12)[0]
        t = self._tracks.setdefault(track_id, _Track())
        t.timescale = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)[0]
        t.video = bytes(hdlr[8:12]) == b"vide"

    def _traf(self, data: memoryview) -> None:
        parts = dict(_boxes(data))
        tfhd = parts[b"tfhd"]
        flags = struct.unpack_from(">I", tfhd)[0] & 0xFFFFFF
        track = self._tracks.get(struct.unpack_from(">I", tfhd, 4)[0])
        if track is None or not track.video or b"trun" not in parts:
            return
        pos, duration, sample_flags = 8, track.default_duration, track.default_flags
        for bit, size in ((0x1, 8), (0x2, 4), (0x8, 4), (0x10, 4), (0x20, 4)):
            if flags & bit:
                if bit == 0x8:
                    duration = struct.unpack_from(">I", tfhd, pos)[0]
                elif bit == 0x20:
                    sample_flags = struct.unpack_from(">I", tfhd, pos)[0]
                pos += size
        tfdt = parts.get(b"tfdt")
        time = 0
        if tfdt is not None:
            time = struct.unpack_from(">Q" if tfdt[0] == 1 else ">I", tfdt, 4)[0]
        self._trun(parts[b"trun"], track, time, duration, sample_flags)

    def _trun(self, trun: memoryview, track: _Track, time: int, duration: int,
              default_flags: int) -> None:
        flags = struct.unpack_from(">I", trun)[0] & 0xFFFFFF
        count = struct.unpack_from(">I", trun, 4)[0]
        pos = 8 + 4 * bool(flags & 0x1)
        first_flags = None
        if flags & 0x4:
            first_flags = struct.unpack_from(">I", trun, pos)[0]
            pos += 4
        for i in range(count):
            d, f = duration, default_flags if i or first_flags is None else first_flags
            if flags & 0x100:
                d = struct.unpack_from(">I", trun, pos)[0]
                pos += 4
            if flags & 0x200:
                pos += 4
            if flags & 0x400:
                f = struct.unpack_from(">I", trun, pos)[0]
                pos += 4
            if flags & 0x800:
                pos += 4
            ms = (time * 1000 + track.timescale // 2) // track.timescale
            self._pending.append(VideoSample(ms, not f & NON_SYNC))
            time += d
