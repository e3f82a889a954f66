"""AAC over RTP as mpeg4-generic (RFC 3640, AAC-hbr): depacketizer and packetizer.

A payload is a 16-bit AU-headers-length (in bits), the AU headers (AU-size, then AU-index
for the first and AU-index-delta for the others; sizes from the fmtp), padding to a byte,
then the access units back to back. Several frames may share a packet (each 1024 samples
after the one before); one frame larger than a packet is split over several, the marker on
the last. Interleaving (non-zero index deltas) is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ingest.rtsp.rtp import RtpError, RtpPacket
from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

__all__ = ["AacDepacketizer", "AacFrame", "AuHeaderSizes", "packetize"]

SAMPLES_PER_FRAME: Final = 1024
MAX_FRAME_BYTES: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class AuHeaderSizes:
    """The fmtp's sizelength, indexlength, indexdeltalength (AAC-hbr: 13, 3, 3)."""

    size: int = 13
    index: int = 3
    index_delta: int = 3

    @classmethod
    def from_fmtp(cls, fmtp: dict[str, str]) -> AuHeaderSizes:
        try:
            sizes = cls(int(fmtp["sizelength"]), int(fmtp.get("indexlength", "0")),
                        int(fmtp.get("indexdeltalength", "0")))
        except (KeyError, ValueError):
            raise RtpError("mpeg4-generic needs a numeric sizelength") from None
        if not 1 <= sizes.size <= 16 or not 0 <= sizes.index <= 8 or not (
                0 <= sizes.index_delta <= 8):
            raise RtpError("AU header sizes out of range")
        return sizes


@dataclass(frozen=True, slots=True)
class AacFrame:
    timestamp: int  # RTP clock (the sample rate)
    data: bytes


class AacDepacketizer:
    def __init__(self, sizes: AuHeaderSizes, samples_per_frame: int = SAMPLES_PER_FRAME) -> None:
        self.sizes = sizes
        self.samples = samples_per_frame
        self._partial: bytearray | None = None  # a frame split over packets
        self._partial_size = 0
        self._partial_ts = 0

    def add(self, pkt: RtpPacket) -> list[AacFrame]:
        """Raises RtpError for payloads that are not AAC-hbr."""
        headers = self._headers(pkt.payload)
        data_start = 2 + (sum(self._header_bits(i) for i in range(len(headers))) + 7) // 8
        data = pkt.payload[data_start:]
        if self._partial is not None:
            return self._continue(pkt, headers, data)
        frames: list[AacFrame] = []
        pos = 0
        for i, size in enumerate(headers):
            chunk = data[pos:pos + size]
            if len(chunk) < size:
                if i != len(headers) - 1 or len(headers) != 1 or pkt.marker:
                    raise RtpError("AAC access unit longer than the packet")
                self._partial, self._partial_size = bytearray(chunk), size
                self._partial_ts = pkt.timestamp
                return frames
            frames.append(AacFrame((pkt.timestamp + i * self.samples) & 0xFFFFFFFF, chunk))
            pos += size
        return frames

    def _continue(self, pkt: RtpPacket, headers: list[int], data: bytes) -> list[AacFrame]:
        partial = self._partial
        assert partial is not None
        if len(headers) != 1 or headers[0] != self._partial_size or (
                pkt.timestamp != self._partial_ts):
            self._partial = None  # a lost fragment: drop the frame, read this one afresh
            return self.add(pkt)
        partial += data
        if len(partial) > MAX_FRAME_BYTES:
            raise RtpError("AAC frame too large")
        if not pkt.marker:
            return []
        self._partial = None
        if len(partial) != self._partial_size:
            return []
        return [AacFrame(self._partial_ts, bytes(partial))]

    def _header_bits(self, i: int) -> int:
        return self.sizes.size + (self.sizes.index if i == 0 else self.sizes.index_delta)

    def _headers(self, payload: bytes) -> list[int]:
        if len(payload) < 2:
            raise RtpError("short mpeg4-generic payload")
        bits = int.from_bytes(payload[:2], "big")
        if bits == 0 or 2 + (bits + 7) // 8 > len(payload):
            raise RtpError("bad AU-headers-length")
        reader = BitReader(payload[2:2 + (bits + 7) // 8])
        sizes: list[int] = []
        used = 0
        try:
            while used + self._header_bits(len(sizes)) <= bits:
                index_bits = self._header_bits(len(sizes)) - self.sizes.size
                sizes.append(reader.u(self.sizes.size))
                if reader.u(index_bits) if index_bits else 0:
                    raise RtpError("interleaved AAC (AU-index) is not supported")
                used += self.sizes.size + index_bits
        except CodecError:
            raise RtpError("truncated AU headers") from None
        if not sizes:
            raise RtpError("no AU header")
        return sizes


def packetize(frames: list[bytes], sizes: AuHeaderSizes = AuHeaderSizes(),
              mtu: int = 1400) -> list[tuple[bytes, bool, int]]:
    """(payload, marker, index of its first frame) for consecutive frames: as many whole
    frames as fit in each packet; a frame larger than one is split (its AU header repeated,
    the marker only on its last piece). A packet's timestamp is its first frame's."""
    out: list[tuple[bytes, bool, int]] = []
    group: list[bytes] = []
    first = 0

    def header(frame_sizes: list[int]) -> bytes:
        bits, value = 0, 0
        for i, n in enumerate(frame_sizes):
            index_bits = sizes.index if i == 0 else sizes.index_delta
            value = (value << (sizes.size + index_bits)) | (n << index_bits)
            bits += sizes.size + index_bits
        pad = -bits % 8
        return bits.to_bytes(2, "big") + (value << pad).to_bytes((bits + pad) // 8, "big")

    def flush() -> None:
        if group:
            out.append((header([len(f) for f in group]) + b"".join(group), True, first))
            group.clear()

    for i, frame in enumerate(frames):
        if len(frame) >= 1 << sizes.size:
            raise ValueError("frame too large for the AU-size field")
        if group and len(header([len(f) for f in [*group, frame]])) + sum(
                map(len, group)) + len(frame) <= mtu:
            group.append(frame)
            continue
        flush()
        first = i
        head = header([len(frame)])
        if len(head) + len(frame) <= mtu:
            group.append(frame)
            continue
        step = mtu - len(head)
        pieces = range(0, len(frame), step)
        out += [(head + frame[pos:pos + step], pos + step >= len(frame), i) for pos in pieces]
    flush()
    return out
