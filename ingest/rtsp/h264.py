"""H.264 over RTP (RFC 6184), packetization mode 1: depacketizer and packetizer.

The depacketizer takes single NAL units, STAP-A aggregates and FU-A fragments and gives
access units (the NAL units of one picture, with their RTP timestamp) when the marker bit
ends one, or when the timestamp changes (some cameras never set the marker). A fragment
that does not continue the one before (a lost packet) drops that NAL unit only. Parameter
sets come from `sprop-parameter-sets` and from the stream; `config()` gives the avcC once
both are known. STAP-B, MTAP and FU-B (interleaved mode) are refused.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from ingest.rtsp.rtp import RtpError, RtpPacket
from media.codecs import avc

__all__ = ["AccessUnit", "H264Depacketizer", "packetize"]

STAP_A: Final = 24
FU_A: Final = 28
MAX_NAL_BYTES: Final = 8 << 20
MAX_NALS_PER_UNIT: Final = 256
DEFAULT_MTU: Final = 1400  # RTP payload bytes: within an Ethernet MTU with IP/TCP headers


@dataclass(frozen=True, slots=True)
class AccessUnit:
    timestamp: int  # RTP clock (90 kHz), as sent: unwrapped by the caller
    nals: tuple[bytes, ...]

    @property
    def keyframe(self) -> bool:
        return any(n[0] & 0x1F == avc.NalType.IDR for n in self.nals)

    def avcc(self) -> bytes:
        """The picture's NAL units with 4-byte lengths, as FLV and MP4 carry them; parameter
        sets and delimiters stay out (they travel in the avcC)."""
        return b"".join(len(n).to_bytes(4, "big") + n for n in self.nals
                        if n[0] & 0x1F not in (avc.NalType.SPS, avc.NalType.PPS,
                                               avc.NalType.AUD))


def sprop_parameter_sets(value: str) -> list[bytes]:
    """The NAL units of an fmtp `sprop-parameter-sets` (base64, comma-separated)."""
    out = []
    for item in value.split(","):
        try:
            nal = base64.b64decode(item.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise RtpError("bad sprop-parameter-sets") from None
        if nal.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")):
            nal = nal.split(b"\x00\x00\x01", 1)[1]  # some cameras send Annex B here
        if nal:
            out.append(nal)
    return out


class H264Depacketizer:
    def __init__(self, sprop: str | None = None) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self._nals: list[bytes] = []
        self._timestamp: int | None = None
        self._fu: bytearray | None = None  # the NAL unit being reassembled
        self._fu_next: int | None = None  # the sequence number that must come next
        self._ready: list[AccessUnit] = []  # finished, not returned yet
        self._seq: int | None = None  # the last packet's sequence number
        self._damaged = False  # the unit being gathered lost a packet
        self.dropped = 0  # access units dropped for a lost packet
        if sprop:
            for nal in sprop_parameter_sets(sprop):
                self._parameter_set(nal)

    def config(self) -> bytes | None:
        """The avcC of the parameter sets seen so far; None until there are both."""
        if self.sps is None or self.pps is None:
            return None
        return avc.build_avcc([self.sps], [self.pps])

    def add(self, pkt: RtpPacket) -> list[AccessUnit]:
        """Raises RtpError for payloads that are not H.264 of mode 0 or 1; a unit that the
        refused packet ended comes out of the next call."""
        if self._seq is not None and pkt.sequence != (self._seq + 1) & 0xFFFF:
            self._damaged = True  # a packet is missing: its picture is dropped, not shown torn
            self._fu = None
        self._seq = pkt.sequence
        if self._timestamp is not None and pkt.timestamp != self._timestamp and self._nals:
            self._ready += self._finish()
        self._timestamp = pkt.timestamp
        payload = pkt.payload
        if not payload:
            raise RtpError("empty H.264 payload")
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self._nal(payload)
        elif kind == STAP_A:
            pos = 1
            while pos + 2 <= len(payload):
                size = int.from_bytes(payload[pos:pos + 2], "big")
                pos += 2
                if size == 0 or pos + size > len(payload):
                    raise RtpError("bad STAP-A")
                self._nal(payload[pos:pos + size])
                pos += size
        elif kind == FU_A:
            self._fragment(pkt)
        else:
            raise RtpError(f"H.264 payload type {kind} (interleaved mode) is not supported")
        if pkt.marker:
            if self._nals:
                self._ready += self._finish()
            self._damaged = False  # the unit ended, shown or not
        out, self._ready = self._ready, []
        return out

    def _fragment(self, pkt: RtpPacket) -> None:
        payload = pkt.payload
        if len(payload) < 3:
            raise RtpError("short FU-A")
        indicator, header = payload[0], payload[1]
        start, end = header & 0x80, header & 0x40
        if start:
            self._fu = bytearray(((indicator & 0xE0) | (header & 0x1F),))
        elif self._fu is None or pkt.sequence != self._fu_next:
            self._fu = None  # joined mid-unit, or a fragment was lost: drop this NAL unit
            return
        self._fu += payload[2:]
        if len(self._fu) > MAX_NAL_BYTES:
            self._fu = None
            raise RtpError("H.264 NAL unit too large")
        self._fu_next = (pkt.sequence + 1) & 0xFFFF
        if end:
            self._nal(bytes(self._fu))
            self._fu = None

    def _nal(self, nal: bytes) -> None:
        self._parameter_set(nal)
        if len(self._nals) >= MAX_NALS_PER_UNIT:
            raise RtpError("too many NAL units in one access unit")
        self._nals.append(nal)

    def _parameter_set(self, nal: bytes) -> None:
        kind = nal[0] & 0x1F
        if kind == avc.NalType.SPS:
            self.sps = nal
        elif kind == avc.NalType.PPS:
            self.pps = nal

    def _finish(self) -> list[AccessUnit]:
        nals, self._nals = self._nals, []
        assert self._timestamp is not None
        if self._damaged:
            self._damaged = False
            self.dropped += 1
            return []
        return [AccessUnit(self._timestamp, tuple(nals))]


def packetize(nals: list[bytes], mtu: int = DEFAULT_MTU) -> list[bytes]:
    """RTP payloads for one access unit: a NAL unit that fits goes alone, a larger one as
    FU-A fragments. The marker bit belongs on the last payload."""
    out: list[bytes] = []
    for nal in nals:
        if len(nal) <= mtu:
            out.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | FU_A
        kind = nal[0] & 0x1F
        body, step = nal[1:], mtu - 2
        for pos in range(0, len(body), step):
            header = kind | (0x80 if pos == 0 else 0) | (
                0x40 if pos + step >= len(body) else 0)
            out.append(bytes((indicator, header)) + body[pos:pos + step])
    return out
