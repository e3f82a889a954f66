"""RTP and RTCP packets (RFC 3550): what the depacketizers read and the packetizers write.

Sender reports map RTP time to the sender's wall clock (NTP) and are what aligns the tracks
of a stream; receiver reports and other RTCP packets are walked over and ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["RtpError", "RtpPacket", "SenderReport", "build_rtp", "build_sender_report",
           "parse_rtcp", "parse_rtp"]

RTCP_SR: Final = 200
NTP_EPOCH_OFFSET: Final = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_HEADER = struct.Struct(">BBHII")
_SR = struct.Struct(">IIIIII")  # ssrc, ntp msw, ntp lsw, rtp ts, packets, octets


class RtpError(ValueError):
    """Not an RTP/RTCP packet we can read."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_s: float  # the sender's wall clock, seconds since 1970
    rtp_timestamp: int
    packets: int
    octets: int


def parse_rtp(data: bytes) -> RtpPacket:
    if len(data) < 12:
        raise RtpError("RTP packet shorter than its header")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}")
    pos = 12 + 4 * (first & 0x0F)  # CSRCs
    if first & 0x10:  # header extension (ONVIF cameras): profile, length in words
        if len(data) < pos + 4:
            raise RtpError("truncated RTP header extension")
        pos += 4 + 4 * int.from_bytes(data[pos + 2:pos + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: its length is the last byte
        if end == 0 or data[-1] == 0 or data[-1] > end - pos:
            raise RtpError("bad RTP padding")
        end -= data[-1]
    if pos > end:
        raise RtpError("RTP header longer than the packet")
    return RtpPacket(second & 0x7F, bool(second & 0x80), seq, ts, ssrc, data[pos:end])


def build_rtp(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int,
              payload: bytes) -> bytes:
    return _HEADER.pack(0x80, payload_type | (0x80 if marker else 0), sequence & 0xFFFF,
                        timestamp & 0xFFFFFFFF, ssrc) + payload


def parse_rtcp(data: bytes) -> list[SenderReport]:
    """The sender reports of a compound RTCP packet."""
    reports, pos = [], 0
    while pos + 4 <= len(data):
        first, packet_type = data[pos], data[pos + 1]
        if first >> 6 != 2:
            raise RtpError("RTCP version is not 2")
        size = 4 * (int.from_bytes(data[pos + 2:pos + 4], "big") + 1)
        if pos + size > len(data):
            raise RtpError("truncated RTCP packet")
        if packet_type == RTCP_SR and size >= 28:
            ssrc, msw, lsw, ts, packets, octets = _SR.unpack_from(data, pos + 4)
            reports.append(SenderReport(ssrc, msw - NTP_EPOCH_OFFSET + lsw / 2**32, ts,
                                        packets, octets))
        pos += size
    return reports


def build_sender_report(ssrc: int, wall_s: float, rtp_timestamp: int, packets: int,
                        octets: int) -> bytes:
    ntp = wall_s + NTP_EPOCH_OFFSET
    msw = int(ntp)
    lsw = int((ntp - msw) * 2**32) & 0xFFFFFFFF
    body = _SR.pack(ssrc, msw & 0xFFFFFFFF, lsw, rtp_timestamp & 0xFFFFFFFF,
                    packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)
    return bytes((0x80, RTCP_SR)) + (len(body) // 4).to_bytes(2, "big") + body
