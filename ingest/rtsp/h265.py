"""H.265 over RTP (RFC 7798) without decoding order numbers: depacketizer and packetizer.

The depacketizer takes single NAL unit packets, aggregation packets (AP) and fragmentation
units (FU) and gives access units (the NAL units of one picture, with their RTP timestamp)
when the marker bit ends one, or when the timestamp changes (some cameras never set the
marker). A gap in the sequence numbers (a lost packet) drops the picture it belonged to;
a fragment that does not continue the one before drops that NAL
unit only. Parameter sets come from `sprop-vps`/`sprop-sps`/`sprop-pps` and from the
stream; `config()` gives the hvcC once all three are known. Streams with DONL fields
(`sprop-max-don-diff` > 0) and PACI packets are refused.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from ingest.rtsp.rtp import RtpError, RtpPacket
from media.codecs import hevc
from media.codecs.errors import CodecError

__all__ = ["AccessUnit", "H265Depacketizer", "packetize", "sprop_fmtp"]

AP: Final = 48
FU: Final = 49
PACI: Final = 50
MAX_NAL_BYTES: Final = 8 << 20
MAX_NALS_PER_UNIT: Final = 256
DEFAULT_MTU: Final = 1400  # RTP payload bytes: within an Ethernet MTU with IP/TCP headers
_OUT_OF_BAND: Final = frozenset({hevc.NalType.VPS, hevc.NalType.SPS, hevc.NalType.PPS,
                                 hevc.NalType.AUD})


@dataclass(frozen=True, slots=True)
class AccessUnit:
    timestamp: int  # RTP clock (90 kHz), as sent: unwrapped by the caller
    nals: tuple[bytes, ...]  # each at least its 2-byte NAL header

    @property
    def keyframe(self) -> bool:
        return any(hevc.is_irap(hevc.nal_type(n)) for n in self.nals)

    def avcc(self) -> bytes:
        """The picture's NAL units with 4-byte lengths, as FLV and MP4 carry them; parameter
        sets and delimiters stay out (they travel in the hvcC)."""
        return b"".join(len(n).to_bytes(4, "big") + n for n in self.nals
                        if hevc.nal_type(n) not in _OUT_OF_BAND)


def sprop_nals(value: str, name: str = "sprop") -> list[bytes]:
    """The NAL units of an fmtp `sprop-vps`/`-sps`/`-pps` value (base64, comma-separated)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:  # some cameras drop the base64 padding
            data = base64.b64decode(item + "=" * (-len(item) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise RtpError(f"bad {name}") from None
        if data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")):
            # Some cameras send Annex B here; a NAL unit never ends in a zero byte, so the
            # zeros before each 00 00 01 belong to the start code.
            nals = [p.rstrip(b"\x00") for p in data.split(b"\x00\x00\x01")[1:]]
        else:
            nals = [data]
        for nal in nals:
            if len(nal) < 2:
                raise RtpError(f"{name} holds a NAL unit shorter than its header")
            out.append(nal)
    return out


def sprop_fmtp(config: bytes) -> dict[str, str]:
    """The fmtp `sprop-vps`/`sprop-sps`/`sprop-pps` parameters for an hvcC (DESCRIBE)."""
    try:
        cfg = hevc.parse_hvcc(config)
    except CodecError as exc:
        raise RtpError(f"bad hvcC: {exc}") from None
    arrays = (("sprop-vps", cfg.vps), ("sprop-sps", cfg.sps), ("sprop-pps", cfg.pps))
    return {name: ",".join(base64.b64encode(n).decode("ascii") for n in nals)
            for name, nals in arrays if nals}


class H265Depacketizer:
    def __init__(self, sprop_vps: str | None = None, sprop_sps: str | None = None,
                 sprop_pps: str | None = None, *, max_don_diff: int = 0) -> None:
        if max_don_diff > 0:
            raise RtpError("H.265 with DONL fields (sprop-max-don-diff > 0) is not supported")
        self.vps: bytes | None = None
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self._nals: list[bytes] = []
        self._ready: list[AccessUnit] = []  # finished, not yet returned
        self._timestamp: int | None = None
        self._fu: bytearray | None = None  # the NAL unit being reassembled
        self._fu_next: int | None = None  # the sequence number that must come next
        self._seq: int | None = None  # the last packet's sequence number
        self._damaged = False  # the unit being gathered lost a packet
        self.dropped = 0  # access units dropped for a lost packet
        for name, value in (("sprop-vps", sprop_vps), ("sprop-sps", sprop_sps),
                            ("sprop-pps", sprop_pps)):
            for nal in sprop_nals(value or "", name):
                self._parameter_set(nal)

    def config(self) -> bytes | None:
        """The hvcC of the parameter sets seen so far; None until there are all three.
        Raises RtpError if the SPS cannot be parsed."""
        if self.vps is None or self.sps is None or self.pps is None:
            return None
        try:
            return hevc.build_hvcc([self.vps], [self.sps], [self.pps])
        except CodecError as exc:
            raise RtpError(f"bad H.265 parameter sets: {exc}") from None

    def add(self, pkt: RtpPacket) -> list[AccessUnit]:
        """Raises RtpError for payloads that are not RFC 7798 without DONL/PACI. If such a
        packet's new timestamp finished a unit, that unit comes out of the next call."""
        if self._seq is not None and pkt.sequence != (self._seq + 1) & 0xFFFF:
            self._damaged = True  # a packet is missing: its picture is dropped, not shown torn
            self._fu = None
        self._seq = pkt.sequence
        if self._timestamp is not None and pkt.timestamp != self._timestamp:
            self._fu = None  # the fragments of a NAL unit share its timestamp
            self._finish()
        self._timestamp = pkt.timestamp
        payload = pkt.payload
        if len(payload) < 2:
            raise RtpError("H.265 payload shorter than its header")
        kind = hevc.nal_type(payload)
        if kind == FU:
            self._fragment(pkt)
        else:
            self._fu = None  # fragments are consecutive: whatever was open is lost
            if kind < AP:
                self._add([payload])
            elif kind == AP:
                self._aggregate(payload)
            else:
                raise RtpError(f"H.265 payload type {kind} (PACI or undefined) is not "
                               "supported")
        if pkt.marker:
            self._finish()
            self._damaged = False  # the unit ended, shown or not
        out, self._ready = self._ready, []
        return out

    def _aggregate(self, payload: bytes) -> None:
        nals: list[bytes] = []
        pos = 2
        while pos < len(payload):
            size = int.from_bytes(payload[pos:pos + 2], "big")
            pos += 2
            if size < 2 or pos + size > len(payload):
                raise RtpError("bad H.265 aggregation packet")
            nal = payload[pos:pos + size]
            if hevc.nal_type(nal) >= AP:
                raise RtpError("H.265 aggregation packet holds a packet, not a NAL unit")
            nals.append(nal)
            pos += size
        self._add(nals)  # all or nothing: a refused packet leaves the unit as it was

    def _fragment(self, pkt: RtpPacket) -> None:
        payload = pkt.payload
        if len(payload) < 4:
            raise RtpError("short H.265 fragmentation unit")
        header = payload[2]
        start, end, kind = header & 0x80, header & 0x40, header & 0x3F
        if kind >= AP:
            raise RtpError(f"H.265 fragmentation unit of payload type {kind}")
        if start:
            # The NAL header is the payload header with FuType for Type (RFC 7798 §4.4.3).
            self._fu = bytearray(((payload[0] & 0x81) | (kind << 1), payload[1]))
        elif self._fu is None or pkt.sequence != self._fu_next:
            self._fu = None  # joined mid-unit, or a fragment was lost: drop this NAL unit
            return
        self._fu += payload[3:]
        if len(self._fu) > MAX_NAL_BYTES:
            self._fu = None  # its later fragments are dropped, not buffered
            raise RtpError("H.265 NAL unit too large")
        self._fu_next = (pkt.sequence + 1) & 0xFFFF
        if end:
            nal, self._fu = bytes(self._fu), None
            self._add([nal])

    def _add(self, nals: list[bytes]) -> None:
        if len(self._nals) + len(nals) > MAX_NALS_PER_UNIT:
            raise RtpError("too many NAL units in one access unit")
        for nal in nals:
            self._parameter_set(nal)
        self._nals += nals

    def _parameter_set(self, nal: bytes) -> None:
        if (nal[0] & 0x01) or (nal[1] >> 3):
            return  # nuh_layer_id > 0: a scalable/multiview layer's, not the base layer's
        kind = hevc.nal_type(nal)
        if kind == hevc.NalType.VPS:
            self.vps = nal
        elif kind == hevc.NalType.SPS:
            self.sps = nal
        elif kind == hevc.NalType.PPS:
            self.pps = nal

    def _finish(self) -> None:
        if self._nals:
            assert self._timestamp is not None
            if self._damaged:
                self.dropped += 1
            else:
                self._ready.append(AccessUnit(self._timestamp, tuple(self._nals)))
            self._damaged = False
            self._nals = []


def packetize(nals: list[bytes], mtu: int = DEFAULT_MTU) -> list[bytes]:
    """RTP payloads for one access unit: a NAL unit that fits goes alone, a larger one as
    fragmentation units. The marker bit belongs on the last payload."""
    if mtu < 4:
        raise ValueError("an H.265 fragmentation unit needs an MTU of 4 bytes or more")
    out: list[bytes] = []
    for nal in nals:
        if len(nal) < 2 or hevc.nal_type(nal) >= AP:
            raise ValueError("not an H.265 NAL unit RFC 7798 can carry")
        if len(nal) <= mtu:
            out.append(nal)
            continue
        payload_header = bytes(((nal[0] & 0x81) | (FU << 1), nal[1]))
        kind = hevc.nal_type(nal)
        body, step = nal[2:], mtu - 3
        for pos in range(0, len(body), step):
            fu_header = kind | (0x80 if pos == 0 else 0) | (
                0x40 if pos + step >= len(body) else 0)
            out.append(payload_header + bytes((fu_header,)) + body[pos:pos + step])
    return out
