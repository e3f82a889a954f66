"""An RTSP publication, sans-IO: the announced media's RTP and RTCP in, MediaPackets out.

Each announced media that the bus can carry becomes an `InTrack`: a depacketizer for its
codec, a clock that unwraps the 32-bit RTP time and places the track on the stream's
timeline, and for video a DtsRebuilder (RTP carries presentation times only). Tracks are
aligned by the sender's RTCP reports when the first packet of a track comes after one
(ffmpeg sends one before its first packet); otherwise by arrival time.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from ingest.rtsp import aac as rtp_aac
from ingest.rtsp import h264 as rtp_h264
from ingest.rtsp import h265 as rtp_h265
from ingest.rtsp import latm
from ingest.rtsp.dts import DtsRebuilder
from ingest.rtsp.rtp import RtpError, RtpPacket, parse_rtcp, parse_rtp
from media.codecs import aac, avc, hevc
from media.codecs.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingest.rtsp.sdp import Media, SessionDescription

__all__ = ["InTrack", "MediaError", "Publication", "opus_head"]

VIDEO_CLOCK: Final = 90_000
# Stream time starts this far after the first packet's, so that a track whose sender clock
# puts its first packet a little earlier than the first track's never goes below zero.
START_MARGIN_S: Final = 0.2
DEFAULT_FRAME_STEP: Final = VIDEO_CLOCK // 30  # a frame at 30 fps, until real ones are seen
OPUS_PRE_SKIP: Final = 312  # samples at 48 kHz; what libopus encoders report


class MediaError(ValueError):
    """An announced stream the bus cannot carry."""


def opus_head(channels: int) -> bytes:
    """The Opus identification header (RFC 7845 §5.1) that the bus carries as Opus config."""
    return (b"OpusHead" + bytes((1, channels)) + OPUS_PRE_SKIP.to_bytes(2, "little")
            + (48_000).to_bytes(4, "little") + b"\x00\x00\x00")


@dataclass(frozen=True, slots=True)
class Frame:
    """One depacketized access unit: RTP time, payload as the bus carries it."""

    timestamp: int
    payload: bytes
    keyframe: bool = True


class _Depacketizer(Protocol):
    def add(self, pkt: RtpPacket) -> list[Frame]: ...
    def config(self) -> bytes | None: ...
    def reorder(self) -> int | None: ...  # B-frame depth from the parameter sets, if known


class _Video:
    """What H.264 and H.265 share: access units in, AVCC frames out."""

    d: rtp_h264.H264Depacketizer | rtp_h265.H265Depacketizer

    def add(self, pkt: RtpPacket) -> list[Frame]:
        return [Frame(au.timestamp, au.avcc(), au.keyframe) for au in self.d.add(pkt)]

    def config(self) -> bytes | None:
        return self.d.config()


class _H264(_Video):
    def __init__(self, media: Media) -> None:
        mode = media.fmtp.get("packetization-mode", "0")
        if mode not in ("0", "1"):
            raise MediaError(f"H.264 packetization-mode {mode} is not supported")
        try:
            self.d = rtp_h264.H264Depacketizer(media.fmtp.get("sprop-parameter-sets"))
        except RtpError as exc:
            raise MediaError(str(exc)) from None

    def reorder(self) -> int | None:
        assert self.d.sps is not None
        return avc.reorder_depth(avc.parse_sps(self.d.sps))


class _H265(_Video):
    def __init__(self, media: Media) -> None:
        f = media.fmtp
        if int(f.get("sprop-max-don-diff", "0") or 0) > 0:
            raise MediaError("H.265 with decoding order numbers is not supported")
        try:
            self.d = rtp_h265.H265Depacketizer(f.get("sprop-vps"), f.get("sprop-sps"),
                                               f.get("sprop-pps"))
        except RtpError as exc:
            raise MediaError(str(exc)) from None

    def reorder(self) -> int | None:
        assert self.d.sps is not None
        return hevc.parse_sps(self.d.sps).max_num_reorder_pics


class _AacFrames:
    """What both AAC payload formats share: an out-of-band ASC, frames in."""

    asc: bytes
    d: rtp_aac.AacDepacketizer | latm.LatmDepacketizer

    def add(self, pkt: RtpPacket) -> list[Frame]:
        return [Frame(f.timestamp, f.data) for f in self.d.add(pkt)]

    def config(self) -> bytes | None:
        return self.asc

    def reorder(self) -> int | None:
        return None

    @staticmethod
    def rtp_frame(media: Media, asc: bytes) -> int:
        """RTP ticks per frame: RTP time runs at the rtpmap's rate, which for HE-AAC is the
        output rate, twice the core's."""
        cfg = aac.parse_asc(asc)
        return cfg.frame_length * media.clock_rate // cfg.sample_rate


class _Aac(_AacFrames):
    def __init__(self, media: Media) -> None:
        try:
            self.asc = binascii.unhexlify(media.fmtp.get("config", ""))
            per_frame = self.rtp_frame(media, self.asc)
            sizes = rtp_aac.AuHeaderSizes.from_fmtp(media.fmtp)
        except (binascii.Error, CodecError, RtpError) as exc:
            raise MediaError(f"mpeg4-generic without a usable config: {exc}") from None
        self.d = rtp_aac.AacDepacketizer(sizes, per_frame)


class _Latm(_AacFrames):
    def __init__(self, media: Media) -> None:
        try:
            self.asc = latm.stream_mux_config_asc(media.fmtp)
        except RtpError as exc:
            raise MediaError(str(exc)) from None
        self.d = latm.LatmDepacketizer(self.rtp_frame(media, self.asc))


class _Opus:
    """RFC 7587: one Opus packet per RTP packet, 48 kHz clock whatever the input rate."""

    def __init__(self, media: Media) -> None:
        stereo = media.channels == 2 or media.fmtp.get("sprop-stereo") == "1"
        self.head = opus_head(2 if stereo else 1)

    def add(self, pkt: RtpPacket) -> list[Frame]:
        return [Frame(pkt.timestamp, pkt.payload)] if pkt.payload else []

    def config(self) -> bytes | None:
        return self.head

    def reorder(self) -> int | None:
        return None


_CODECS: Final[dict[str, tuple[TrackKind, Codec, Callable[[Media], _Depacketizer]]]] = {
    "H264": (TrackKind.VIDEO, Codec.H264, _H264),
    "H265": (TrackKind.VIDEO, Codec.HEVC, _H265),
    "MPEG4-GENERIC": (TrackKind.AUDIO, Codec.AAC, _Aac),
    "MP4A-LATM": (TrackKind.AUDIO, Codec.AAC, _Latm),
    "OPUS": (TrackKind.AUDIO, Codec.OPUS, _Opus),
}


class _Clock:
    """Unwraps a track's 32-bit RTP time (RFC 3550 §5.1: it wraps every 13 h at 90 kHz)."""

    def __init__(self) -> None:
        self.last: int | None = None

    def peek(self, ts: int) -> int:
        """The unwrapped value of `ts` without moving the clock (for sender reports)."""
        if self.last is None:
            return ts
        diff = (ts - self.last) & 0xFFFFFFFF
        return self.last + (diff - (1 << 32) if diff >= 1 << 31 else diff)

    def unwrap(self, ts: int) -> int:
        self.last = self.peek(ts)
        return self.last


class InTrack:
    """One received media: RTP in, MediaPackets out on the stream's timeline."""

    def __init__(self, key: StreamKey, media: Media, index: int) -> None:
        try:
            kind, codec, make = _CODECS[media.encoding]
        except KeyError:
            raise MediaError(f"{media.encoding or 'payload type ' + str(media.payload_type)}"
                             f" is not supported") from None
        self.key, self.media, self.index = key, media, index
        self.kind, self.codec = kind, codec
        self.clock_rate = 48_000 if codec is Codec.OPUS else media.clock_rate
        self.depacketizer: _Depacketizer = make(media)
        self.rtp_channel: int | None = None
        self.rtcp_channel: int | None = None
        self.clock = _Clock()
        self.offset: int | None = None  # added to unwrapped RTP time: the stream's timeline
        self.sender_report: tuple[float, int] | None = None  # (NTP seconds, unwrapped RTP)
        self.sent_config: bytes | None = None
        self.dts: DtsRebuilder | None = None
        self.waiting_keyframe = kind is TrackKind.VIDEO
        self.notes: list[str] = []  # what the connection should log, taken by the session

    def packets(self, frames: list[Frame]) -> list[MediaPacket]:
        """MediaPackets for frames whose track is placed on the timeline (offset known)."""
        out: list[MediaPacket] = []
        config = self.depacketizer.config()
        for frame in frames:
            if config is None:
                continue  # no decoder config yet (parameter sets not seen): nothing to play
            if self.waiting_keyframe:
                if not frame.keyframe:
                    continue
                self.waiting_keyframe = False
            if self.kind is TrackKind.VIDEO and self.dts is None:
                self.dts = DtsRebuilder(self.depacketizer.reorder(), DEFAULT_FRAME_STEP)
            assert self.offset is not None
            pts = self.clock.unwrap(frame.timestamp) + self.offset
            dts = pts
            if self.dts is not None:
                grew = self.dts.grew
                dts, pts = self.dts.dts(pts)
                if self.dts.grew != grew:
                    self.notes.append(f"B-frames reorder deeper than the SPS says: decode "
                                      f"times now rebuilt with a depth of {self.dts.reorder}")
            if config != self.sent_config:  # the first, or new parameter sets in the stream
                self.sent_config = config
                out.append(self._packet(dts, dts, True, True, config))
            out.append(self._packet(dts, pts, frame.keyframe, False, frame.payload))
        return out

    def _packet(self, dts: int, pts: int, keyframe: bool, is_config: bool,
                payload: bytes) -> MediaPacket:
        return MediaPacket(stream=self.key, kind=self.kind, codec=self.codec, dts=dts, pts=pts,
                           timescale=self.clock_rate, keyframe=keyframe, is_config=is_config,
                           payload=payload)


class Publication:
    """The tracks of one ANNOUNCE; `tracks` are those the bus carries, `refused` says why
    the others are left out. Raises MediaError if no track is left."""

    def __init__(self, key: StreamKey, sdp: SessionDescription) -> None:
        self.key = key
        self.tracks: list[InTrack] = []
        self.refused: list[str] = []
        for i, media in enumerate(sdp.medias):
            if media.kind not in ("video", "audio"):
                self.refused.append(f"{media.kind} media")
                continue
            if any(t.media.kind == media.kind for t in self.tracks):
                self.refused.append(f"a second {media.kind} track")
                continue
            try:
                self.tracks.append(InTrack(key, media, i))
            except MediaError as exc:
                self.refused.append(str(exc))
        if not self.tracks:
            raise MediaError("no playable media: " + "; ".join(self.refused or ["none"]))
        self._origin: tuple[float, float | None] | None = None  # (arrival, NTP) of the first
        self._by_channel: dict[int, tuple[InTrack, bool]] = {}
        self.bad_packets = 0

    def bind(self, track: InTrack, rtp_channel: int, rtcp_channel: int) -> None:
        track.rtp_channel, track.rtcp_channel = rtp_channel, rtcp_channel
        self._by_channel[rtp_channel] = (track, True)
        self._by_channel[rtcp_channel] = (track, False)

    def knows_channel(self, channel: int) -> bool:
        return channel in self._by_channel

    def receive(self, channel: int, data: bytes, now: float) -> list[MediaPacket]:
        """One interleaved frame; `now` is the arrival time in seconds (any monotonic clock).
        Raises RtpError for a packet that cannot be read (the caller counts and drops it)."""
        track, is_rtp = self._by_channel[channel]
        if not is_rtp:
            for report in parse_rtcp(data):
                track.sender_report = (report.ntp_s, track.clock.peek(report.rtp_timestamp))
            return []
        pkt = parse_rtp(data)
        if pkt.payload_type != track.media.payload_type:
            raise RtpError(f"payload type {pkt.payload_type} on the channel of "
                           f"{track.media.payload_type}")
        frames = track.depacketizer.add(pkt)
        if track.offset is None:
            self._place(track, pkt.timestamp, now)
        return track.packets(frames)

    def _place(self, track: InTrack, rtp_ts: int, now: float) -> None:
        """Put the track's first packet on the stream's timeline (seconds since the first
        packet of the stream, plus START_MARGIN_S)."""
        ts = track.clock.unwrap(rtp_ts)
        ntp = None
        if track.sender_report is not None:
            sr_ntp, sr_rtp = track.sender_report
            ntp = sr_ntp + (ts - sr_rtp) / track.clock_rate
        if self._origin is None:
            self._origin = (now, ntp)
        arrival0, ntp0 = self._origin
        at = ntp - ntp0 if ntp is not None and ntp0 is not None else now - arrival0
        at = max(0.0, at + START_MARGIN_S)
        track.offset = round(at * track.clock_rate) - ts
