"""AAC over RTP as MP4A-LATM (RFC 6416 §6), the form some cameras and ffmpeg's
`-rtpflags latm` use: the depacketizer, for the out-of-band configuration only.

With `cpresent=0` the fmtp `config` is a StreamMuxConfig (ISO/IEC 14496-3 §1.7.3) holding
the AudioSpecificConfig, and each RTP payload carries AudioMuxElements: a PayloadLengthInfo
(bytes of 255 summed, then the last byte) and that many bytes of one AAC frame. An element
may span packets; the marker bit ends the last. One program, one layer, one subframe and
frameLengthType 0 are what RFC 6416 senders use; anything else is refused.
"""

from __future__ import annotations

import binascii
from typing import Final

from ingest.rtsp.aac import AacFrame
from ingest.rtsp.rtp import RtpError, RtpPacket
from media.codecs import aac
from media.codecs.bits import BitReader
from media.codecs.errors import CodecError

__all__ = ["LatmDepacketizer", "stream_mux_config_asc"]

MAX_ELEMENT_BYTES: Final = 1 << 16
# Bits before the ASC: audioMuxVersion, allStreamsSameTimeFraming, numSubFrames, numProgram,
# numLayer.
_ASC_BIT: Final = 15


def stream_mux_config_asc(fmtp: dict[str, str]) -> bytes:
    """The AudioSpecificConfig in an fmtp's StreamMuxConfig; RtpError if it has none we
    can use."""
    if fmtp.get("cpresent", "1") != "0":
        raise RtpError("MP4A-LATM with in-band configuration (cpresent=1) is not supported")
    try:
        config = binascii.unhexlify(fmtp.get("config", ""))
        r = BitReader(config)
        version, same_framing, subframes, programs, layers = (
            r.u(1), r.u(1), r.u(6), r.u(4), r.u(3))
        if version or not same_framing or subframes or programs or layers:
            raise RtpError("only single-program, single-layer LATM is supported")
        # The ASC starts at bit 15, not on a byte: move the rest of the config up to it.
        rest = int.from_bytes(config, "big") & ((1 << (8 * len(config) - _ASC_BIT)) - 1)
        aligned = (rest << _ASC_BIT).to_bytes(len(config), "big")
        cfg = aac.parse_asc(aligned)
        return aac.build_asc(cfg.object_type, cfg.sample_rate, cfg.channels)
    except (binascii.Error, CodecError) as exc:
        raise RtpError(f"unusable MP4A-LATM config: {exc}") from None


class LatmDepacketizer:
    def __init__(self, samples_per_frame: int = 1024) -> None:
        self.samples = samples_per_frame
        self._buf = bytearray()
        self._timestamp: int | None = None

    def add(self, pkt: RtpPacket) -> list[AacFrame]:
        """Frames completed by this packet; a lost piece (a timestamp change without a
        marker) drops the element it belonged to."""
        if self._timestamp is not None and pkt.timestamp != self._timestamp:
            self._buf.clear()
        self._timestamp = pkt.timestamp
        self._buf += pkt.payload
        if len(self._buf) > MAX_ELEMENT_BYTES:
            self._buf.clear()
            raise RtpError("LATM element too large")
        if not pkt.marker:
            return []
        data, self._buf = bytes(self._buf), bytearray()
        self._timestamp = None
        frames: list[AacFrame] = []
        pos = 0
        while pos < len(data):
            size = 0
            while pos < len(data) and data[pos] == 0xFF:
                size += 0xFF
                pos += 1
            if pos >= len(data):
                raise RtpError("truncated LATM length")
            size += data[pos]
            pos += 1
            if pos + size > len(data):
                raise RtpError("LATM frame longer than its element")
            ts = (pkt.timestamp + len(frames) * self.samples) & 0xFFFFFFFF
            frames.append(AacFrame(ts, data[pos:pos + size]))
            pos += size
        return frames


def packetize(frame: bytes) -> bytes:
    """One AudioMuxElement (for tests and senders): the length, then the frame."""
    return b"\xff" * (len(frame) // 255) + bytes((len(frame) % 255,)) + frame
