"""Serving a stream over RTSP, sans-IO: the DESCRIBE answer and RTP for one player.

The SDP comes from the stream's current decoder configs (RFC 6184 H.264, RFC 7798 H.265,
RFC 3640 AAC, RFC 7587 Opus). Each player has its own sequence numbers, SSRCs and RTP time
base, so its RTP headers are its own; the payloads of a packet are cut once and shared by
every player (see `Packetizer`). RTP time is the presentation time of the stream's
timeline; sender reports map it to a wall clock that starts when the player does.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from broker.packet import Codec, MediaPacket, TrackKind, rescale
from ingest.rtsp import aac as rtp_aac
from ingest.rtsp import h264 as rtp_h264
from ingest.rtsp import h265 as rtp_h265
from ingest.rtsp.message import interleaved
from ingest.rtsp.rtp import build_rtp, build_sender_report
from media.codecs import aac, avc, hevc

__all__ = ["Packetizer", "PlayTrack", "Player", "describe_sdp", "play_tracks"]

VIDEO_CLOCK: Final = 90_000
MTU: Final = 1400
BYE: Final = 203  # RTCP packet type (RFC 3550 §6.6)


@dataclass(frozen=True, slots=True)
class PlayTrack:
    """One track as DESCRIBE announces it."""

    kind: TrackKind
    codec: Codec
    config: bytes
    payload_type: int
    clock_rate: int
    control: str  # relative to the Content-Base: "trackID=0"
    rtpmap: str
    fmtp: str


def play_tracks(configs: list[MediaPacket]) -> tuple[list[PlayTrack], list[str]]:
    """The tracks an RTSP player can get from the stream's config packets, and a reason for
    each track left out."""
    tracks: list[PlayTrack] = []
    skipped: list[str] = []
    for pkt in configs:
        n = len(tracks)
        pt, control = 96 + n, f"trackID={n}"
        cfg = pkt.payload
        if pkt.codec is Codec.H264:
            info = avc.parse_avcc(cfg)
            sprop = ",".join(base64.b64encode(p).decode() for p in (*info.sps, *info.pps))
            fmtp = (f"packetization-mode=1;profile-level-id="
                    f"{info.profile:02X}{info.compatibility:02X}{info.level:02X};"
                    f"sprop-parameter-sets={sprop}")
            tracks.append(PlayTrack(pkt.kind, pkt.codec, cfg, pt, VIDEO_CLOCK, control,
                                    f"H264/{VIDEO_CLOCK}", fmtp))
        elif pkt.codec is Codec.HEVC:
            params = rtp_h265.sprop_fmtp(cfg)
            fmtp = ";".join(f"{k}={v}" for k, v in params.items())
            tracks.append(PlayTrack(pkt.kind, pkt.codec, cfg, pt, VIDEO_CLOCK, control,
                                    f"H265/{VIDEO_CLOCK}", fmtp))
        elif pkt.codec is Codec.AAC:
            asc = aac.parse_asc(cfg)
            rate = asc.sbr_sample_rate or asc.sample_rate
            channels = asc.channels or 2
            fmtp = ("profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
                    f"indexdeltalength=3;config={cfg.hex()}")
            tracks.append(PlayTrack(pkt.kind, pkt.codec, cfg, pt, rate, control,
                                    f"MPEG4-GENERIC/{rate}/{channels}", fmtp))
        elif pkt.codec is Codec.OPUS:
            stereo = len(cfg) > 9 and cfg[9] >= 2
            tracks.append(PlayTrack(pkt.kind, pkt.codec, cfg, pt, 48_000, control,
                                    "opus/48000/2", "sprop-stereo=1" if stereo else ""))
        else:
            skipped.append(f"{pkt.codec.name} has no RTP payload format here")
    return tracks, skipped


def describe_sdp(tracks: list[PlayTrack], *, name: str, host: str) -> bytes:
    """The SDP of a DESCRIBE answer; controls are relative to the Content-Base."""
    ip = "IP6" if ":" in host else "IP4"
    lines = ["v=0", f"o=- 0 0 IN {ip} {host}", f"s={name}", f"c=IN {ip} {host}", "t=0 0",
             "a=tool:rtmpmate", "a=control:*", "a=range:npt=0-"]
    for t in tracks:
        media = "video" if t.kind is TrackKind.VIDEO else "audio"
        lines += [f"m={media} 0 RTP/AVP {t.payload_type}",
                  f"a=rtpmap:{t.payload_type} {t.rtpmap}"]
        if t.fmtp:
            lines.append(f"a=fmtp:{t.payload_type} {t.fmtp}")
        lines.append(f"a=control:{t.control}")
    return ("\r\n".join(lines) + "\r\n").encode()


class Packetizer:
    """Cuts each packet's payload into RTP payloads once for every player of the stream.

    The hub muxes a packet once per player (each has its own RTP headers); the payloads it
    cut for the first player are kept for the next ones. Entries hold their packet, so the
    `id()` that keys them cannot be reused while they are kept.
    """

    KEEP: Final = 256

    def __init__(self) -> None:
        self._cut: OrderedDict[int, tuple[MediaPacket, list[bytes]]] = OrderedDict()

    def payloads(self, pkt: MediaPacket, video_config: bytes | None) -> list[bytes]:
        hit = self._cut.get(id(pkt))
        if hit is not None and hit[0] is pkt:
            return hit[1]
        out = _cut(pkt, video_config)
        self._cut[id(pkt)] = (pkt, out)
        if len(self._cut) > self.KEEP:
            self._cut.popitem(last=False)
        return out


def _cut(pkt: MediaPacket, video_config: bytes | None) -> list[bytes]:
    if pkt.codec is Codec.AAC:
        return [payload for payload, _, _ in rtp_aac.packetize([pkt.payload], mtu=MTU)]
    if pkt.codec is Codec.OPUS:
        return [pkt.payload]
    nals = avc.split_avcc(pkt.payload)
    if pkt.codec is Codec.H264:
        if pkt.keyframe and video_config is not None:
            # Parameter sets in band before each keyframe: a player that missed the SDP's
            # (or a new publisher's) still decodes.
            cfg = avc.parse_avcc(video_config)
            nals = [*cfg.sps, *cfg.pps, *nals]
        return rtp_h264.packetize(nals, MTU)
    if pkt.keyframe and video_config is not None:
        hcfg = hevc.parse_hvcc(video_config)
        nals = [*hcfg.vps, *hcfg.sps, *hcfg.pps, *nals]
    return rtp_h265.packetize(nals, MTU)


class _Sender:
    """One track of one player: its channels, SSRC, sequence numbers and RTP time."""

    def __init__(self, track: PlayTrack, rtp_channel: int, ssrc: int, seq: int,
                 rtp_base: int) -> None:
        self.track = track
        self.rtp_channel = rtp_channel
        self.ssrc, self.seq, self.rtp_base = ssrc, seq, rtp_base
        self.first_seq = seq
        self.packets = 0
        self.octets = 0
        self.last_rtp: int | None = None

    def send(self, pkt: MediaPacket, payloads: list[bytes], origin: int) -> bytes:
        """Interleaved RTP packets for one access unit, the marker on the last; `origin` is
        the player's start on the stream's timeline, in the packet's timescale."""
        ts = (self.rtp_base + rescale(pkt.pts - origin, pkt.timescale,
                                      self.track.clock_rate)) & 0xFFFFFFFF
        self.last_rtp = ts
        out = []
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            rtp = build_rtp(self.track.payload_type, i == last, self.seq, ts, self.ssrc, payload)
            self.seq = (self.seq + 1) & 0xFFFF
            out.append(interleaved(self.rtp_channel, rtp))
            self.octets += len(payload)
        self.packets += len(payloads)
        return b"".join(out)


class Player:
    """One RTSP player's RTP state: the hub's variant for it (see broker.hub)."""

    def __init__(self, packetizer: Packetizer) -> None:
        self.packetizer = packetizer
        self.senders: dict[TrackKind, _Sender] = {}
        self.rtcp_channels: dict[TrackKind, int] = {}
        self._origin_ms: int | None = None  # the first packet's dts, in ms
        self._video_config: bytes | None = None

    def add_track(self, track: PlayTrack, rtp_channel: int, rtcp_channel: int, *, ssrc: int,
                  seq: int, rtp_base: int) -> None:
        self.senders[track.kind] = _Sender(track, rtp_channel, ssrc, seq, rtp_base)
        self.rtcp_channels[track.kind] = rtcp_channel

    def rtp_info(self, url_of: dict[str, str]) -> str:
        """The PLAY answer's RTP-Info: each track's first sequence number and RTP time."""
        return ",".join(f"url={url_of[s.track.control]};seq={s.first_seq};rtptime={s.rtp_base}"
                        for s in self.senders.values())

    def mux(self, pkt: MediaPacket) -> bytes:
        sender = self.senders.get(pkt.kind)
        if pkt.is_config:
            if pkt.kind is TrackKind.VIDEO:
                self._video_config = pkt.payload
            return b""
        if sender is None or pkt.codec is not sender.track.codec:
            return b""  # a track the player did not set up, or a codec its SDP did not offer
        if self._origin_ms is None:  # the first frame's decode time: nothing goes before it
            self._origin_ms = rescale(pkt.dts, pkt.timescale, 1000)
        origin = rescale(self._origin_ms, 1000, pkt.timescale)
        return sender.send(pkt, self.packetizer.payloads(pkt, self._video_config), origin)

    def sender_reports(self, wall_start: float) -> bytes:
        """RTCP sender reports for every track that has sent: RTP time mapped to a wall clock
        that starts at `wall_start` when the stream's timeline reaches the player's origin,
        the same mapping for every track (what players align tracks with)."""
        out = []
        for kind, s in self.senders.items():
            if s.last_rtp is None:
                continue
            ticks = (s.last_rtp - s.rtp_base) & 0xFFFFFFFF
            if ticks >= 1 << 31:
                ticks -= 1 << 32  # audio a little before the video frame the player began on
            elapsed = ticks / s.track.clock_rate
            sr = build_sender_report(s.ssrc, wall_start + elapsed, s.last_rtp, s.packets,
                                     s.octets)
            out.append(interleaved(self.rtcp_channels[kind], sr))
        return b"".join(out)

    def bye(self) -> bytes:
        """An RTCP BYE per track (RFC 3550 §6.6): the publisher has gone."""
        return b"".join(
            interleaved(self.rtcp_channels[kind],
                        bytes((0x81, BYE, 0, 1)) + s.ssrc.to_bytes(4, "big"))
            for kind, s in self.senders.items())
