"""Sans-IO fragmented-MP4 (CMAF) muxer: MediaPackets of one stream in, init segments and
moof+mdat fragments out. Shared by HTTP/WS-fMP4, HLS/LL-HLS parts and DASH segments.

Timing (protocol-pitfalls §3):
- Video runs at 90 kHz. A sample's duration is the next frame's DTS minus its own, so the
  newest frame waits for its successor; flush() gives the last one the previous duration.
  With low_latency=True a frame goes out on arrival, one frame interval sooner, and lasts
  as long as the last interval between two frames (protocol-pitfalls §3 allows the guess).
  The next frame then starts where the guess ended, its decode and presentation times moved
  together by the error (as mpegts.js does): the timeline stays gapless, which MSE needs (a
  DTS step over twice the last duration drops frames up to the next keyframe), and the
  error telescopes, so the move is never more than the frame-interval jitter. A stall
  longer than REBASE_S is not an interval and stays a gap.
- B-frames: trun v1 carries signed CTS = pts - dts, and tfdt is the first sample's DTS.
  With zero_first_cts=True, video decode times move later by the first frame's pts - dts
  (once per fragmenter), so the first presented frame starts exactly at tfdt (the CMAF
  habit; B-frames then get negative CTS). Presentation times equal the packets' either way,
  so A/V sync holds for spec readers (MSE). ffmpeg's mov demuxer (9.0) however adds
  max(-CTS) to every PTS of a fragmented file, so with zero_first_cts it shows video a frame
  late, and a live reader sees PTS step once at the first B-frame: hence the default.
- Audio runs at its sample rate and its decode time is a sample count, never RTMP
  milliseconds: every AAC sample lasts 1024 (960) ticks. The count starts at the first audio
  DTS and follows the packets only when they drift more than AUDIO_RESYNC_S away: ahead (a
  gap) lengthens the previous sample if it is not out yet, else tfdt jumps; behind drops the
  frame (its time is already used), or rebases the count after a jump back of over
  REBASE_S.
- tfdt is 64-bit and never goes back: a sample due before the previous one ended starts at
  its end (a video DTS that does not advance keeps the last cadence); a jump back of over
  REBASE_S shifts the rest of that track. Decode times are the packets' own (rescaled), not
  rebased to 0, so tracks stay aligned and a late joiner's tfdt matches the stream clock.

Fragmenting: with video, a fragment ends before every keyframe and once its video lasts
fragment_duration_s (0 = every frame); audio rides with the next video fragment, or goes
alone when video stalls for MAX_AUDIO_WAIT_S. Audio-only streams cut every fragment_duration_s
(0 = every frame). With cap_fragments=True the duration is a ceiling instead (LL-HLS parts
must not exceed PART-TARGET): a fragment ends before the frame that would take it past, so
video waits for the next frame to learn the last one's duration (not with low_latency).
Each Fragment says whether it starts at a keyframe and gives each track's decode-time span,
which is what cutting LL-HLS parts and segments needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from broker.packet import Codec, MediaPacket, TrackKind, rescale
from media.codecs import aac, avc, hevc
from media.codecs.errors import CodecError
from media.mp4 import boxes
from media.mp4.boxes import Mp4WriteError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Fmp4Event", "Fmp4Fragmenter", "Fragment", "InitSegment", "Mp4WriteError",
           "TrackInfo", "TrackSpan"]

VIDEO_TIMESCALE: Final = 90_000  # MPEG-TS/RTP clock: every common frame rate is whole ticks
OPUS_TIMESCALE: Final = 48_000  # Opus always decodes at 48 kHz (RFC 7845 §4)
# Audio drifting further than this from the packet timestamps re-syncs the sample count.
# RTMP stamps jitter by a millisecond or two; 100 ms is well past that yet below lip-sync.
AUDIO_RESYNC_S: Final = 0.1
# A jump back of over this (a new clock) rebases the track instead of dropping audio or
# squeezing video frames to the previous cadence.
REBASE_S: Final = 1.0
# Audio waiting this long past the fragment duration goes out alone (video stalled/absent).
MAX_AUDIO_WAIT_S: Final = 1.0
# Frames that arrive before the other track's config is known, kept until the init segment.
MAX_EARLY_PACKETS: Final = 1024
_DEFAULT_VIDEO_DURATION = VIDEO_TIMESCALE // 30  # the last frame of a one-frame stream


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A track of an init segment, with what playlists and manifests need (RFC 6381 codecs)."""

    track_id: int
    kind: TrackKind
    codec: Codec
    timescale: int
    codec_string: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


@dataclass(frozen=True, slots=True)
class InitSegment:
    """ftyp+moov; a new one comes whenever a track's configuration changes."""

    data: bytes
    tracks: tuple[TrackInfo, ...]


@dataclass(frozen=True, slots=True)
class TrackSpan:
    """One track's samples in a fragment: decode times [start, end) in its timescale."""

    track_id: int
    kind: TrackKind
    timescale: int
    start: int  # the traf's tfdt
    duration: int
    samples: int
    earliest_pts: int  # earliest presentation time (DASH @t, LL-HLS part starts)

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Fragment:
    """One moof+mdat. keyframe: its first video sample is a sync sample (always true for
    audio-only streams), so a segment or an independent part may start here."""

    data: bytes
    sequence: int
    keyframe: bool
    tracks: tuple[TrackSpan, ...]  # video first

    @property
    def start_s(self) -> float:
        """Decode start of the reference track (video when present), in seconds."""
        return self.tracks[0].start / self.tracks[0].timescale

    @property
    def duration_s(self) -> float:
        return self.tracks[0].duration / self.tracks[0].timescale


Fmp4Event = InitSegment | Fragment


# ---------------------------------------------------------------------------- codecs


@dataclass(frozen=True, slots=True)
class _Setup:
    info: TrackInfo  # track_id filled in later
    sample_entry: bytes
    frame_duration: Callable[[bytes], int] | None = None  # audio: ticks per packet


def _setup_h264(config: bytes) -> _Setup:
    cfg = avc.parse_avcc(config)
    if not cfg.sps:
        raise Mp4WriteError("avcC carries no SPS")
    sps = avc.parse_sps(cfg.sps[0])
    info = TrackInfo(0, TrackKind.VIDEO, Codec.H264, VIDEO_TIMESCALE, avc.codec_string(cfg),
                     width=sps.width, height=sps.height)
    return _Setup(info, boxes.avc1(config, sps.width, sps.height))


def _setup_hevc(config: bytes) -> _Setup:
    cfg = hevc.parse_hvcc(config)
    if not cfg.sps:
        raise Mp4WriteError("hvcC carries no SPS")
    sps = hevc.parse_sps(cfg.sps[0])
    info = TrackInfo(0, TrackKind.VIDEO, Codec.HEVC, VIDEO_TIMESCALE, hevc.codec_string(cfg),
                     width=sps.width, height=sps.height)
    return _Setup(info, boxes.hvc1(config, sps.width, sps.height))


def _setup_aac(config: bytes) -> _Setup:
    cfg = aac.parse_asc(config)
    frame = cfg.frame_length
    info = TrackInfo(0, TrackKind.AUDIO, Codec.AAC, cfg.sample_rate, aac.codec_string(cfg),
                     sample_rate=cfg.sample_rate, channels=cfg.channels)
    return _Setup(info, boxes.mp4a(config, cfg.channels, cfg.sample_rate), lambda _: frame)


# Opus frame sizes in 48 kHz samples by TOC config (RFC 6716 §3.1, Table 2): SILK 0-11,
# hybrid 12-15, CELT 16-31.
_OPUS_FRAME = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4


def opus_packet_samples(packet: bytes) -> int:
    """Samples (48 kHz) in an Opus packet, from its TOC byte and frame count (RFC 6716 §3.1)."""
    if not packet:
        raise Mp4WriteError("empty Opus packet")
    toc = packet[0]
    code = toc & 0x03
    if code == 3:
        if len(packet) < 2 or not packet[1] & 0x3F:
            raise Mp4WriteError("Opus code 3 packet without a frame count")
        frames = packet[1] & 0x3F
    else:
        frames = 1 if code == 0 else 2
    return _OPUS_FRAME[toc >> 3] * frames


def _setup_opus(config: bytes) -> _Setup:
    entry = boxes.opus(config)
    channels = config[9]
    info = TrackInfo(0, TrackKind.AUDIO, Codec.OPUS, OPUS_TIMESCALE, "opus",
                     sample_rate=OPUS_TIMESCALE, channels=channels)
    return _Setup(info, entry, opus_packet_samples)


# One function per codec: config record -> track description and sample entry.
_SETUPS: dict[Codec, Callable[[bytes], _Setup]] = {
    Codec.H264: _setup_h264,
    Codec.HEVC: _setup_hevc,
    Codec.AAC: _setup_aac,
    Codec.OPUS: _setup_opus,
}


# ---------------------------------------------------------------------------- tracks


@dataclass(slots=True)
class _Sample:
    time: int  # decode time, track timescale
    duration: int
    payload: bytes
    keyframe: bool
    cts: int = 0


class _Track:
    __slots__ = ("arrived", "config", "done", "end", "held", "kind", "last_duration", "setup",
                 "shift", "step", "track_id")

    def __init__(self, kind: TrackKind, track_id: int) -> None:
        self.kind, self.track_id = kind, track_id
        self.config: bytes | None = None
        self.setup: _Setup | None = None
        self.done: list[_Sample] = []  # samples with durations, not yet in a fragment
        self.held: _Sample | None = None  # video: the newest frame, awaiting its successor
        self.end: int | None = None  # where the next sample may start at the earliest
        self.shift = 0  # ticks added to rescaled packet times
        self.last_duration = 0
        # low_latency video: the last frame's own decode time, and the last interval between
        # two frames, which the next frame's duration is guessed from.
        self.arrived: int | None = None
        self.step = 0

    @property
    def timescale(self) -> int:
        assert self.setup is not None
        return self.setup.info.timescale

    def complete(self, sample: _Sample) -> None:
        """Queue a sample whose duration is known, keeping the run contiguous."""
        if self.done:
            prev = self.done[-1]
            gap = sample.time - (prev.time + prev.duration)
            if gap > 0:
                prev.duration += gap  # a run has no holes: the previous sample covers it
        self.done.append(sample)
        self.end = sample.time + sample.duration
        self.last_duration = sample.duration

    def pending_duration(self) -> int:
        return sum(s.duration for s in self.done)

    def take_run(self) -> tuple[boxes.TrackRun, TrackSpan] | None:
        if not self.done:
            return None
        samples, self.done = self.done, []
        video = self.kind is TrackKind.VIDEO
        entries = [
            boxes.Sample(s.duration, len(s.payload),
                         boxes.SAMPLE_SYNC if s.keyframe or not video else boxes.SAMPLE_NON_SYNC,
                         s.cts)
            for s in samples
        ]
        start, duration = samples[0].time, sum(s.duration for s in samples)
        run = boxes.TrackRun(self.track_id, start, entries, b"".join(s.payload for s in samples))
        earliest = min(s.time + s.cts for s in samples)
        return run, TrackSpan(self.track_id, self.kind, self.timescale, start, duration,
                              len(samples), earliest)


# ---------------------------------------------------------------------------- fragmenter


class Fmp4Fragmenter:
    """Feed one stream's packets (configs first) to add(); it returns the events to send.

    video/audio declare which tracks the stream has: the init segment waits for the config
    of each. Packets of an undeclared track, and DATA packets, are ignored.
    """

    def __init__(self, *, video: bool, audio: bool, fragment_duration_s: float = 0.0,
                 zero_first_cts: bool = False, low_latency: bool = False,
                 cap_fragments: bool = False) -> None:
        if not video and not audio:
            raise ValueError("an fMP4 stream needs a video or an audio track")
        if fragment_duration_s < 0:
            raise ValueError("fragment_duration_s must be >= 0")
        if cap_fragments and low_latency:
            raise ValueError("cap_fragments needs each frame's duration: not with low_latency")
        self.cap_fragments = cap_fragments
        self.fragment_duration_s = fragment_duration_s
        self.zero_first_cts = zero_first_cts
        self.low_latency = low_latency
        self._video = _Track(TrackKind.VIDEO, 1) if video else None
        self._audio = _Track(TrackKind.AUDIO, 2 if video else 1) if audio else None
        self._tracks = tuple(t for t in (self._video, self._audio) if t is not None)
        self._sequence = 0
        self._initialised = False
        self._early: list[MediaPacket] = []
        self._video_delay: int | None = None  # 90 kHz ticks decode times are shifted by

    @property
    def init_sent(self) -> bool:
        return self._initialised

    def add(self, pkt: MediaPacket) -> list[Fmp4Event]:
        """Mux one packet. Raises Mp4WriteError for input that cannot be muxed."""
        track = self._video if pkt.kind is TrackKind.VIDEO else (
            self._audio if pkt.kind is TrackKind.AUDIO else None)
        if track is None:
            return []
        if pkt.timescale <= 0:
            raise Mp4WriteError(f"packet timescale {pkt.timescale}")
        if pkt.is_config:
            return self._configure(track, pkt)
        if track.setup is None:
            raise Mp4WriteError(f"{pkt.kind.name.lower()} frame before its configuration")
        if track.setup.info.codec != pkt.codec:
            raise Mp4WriteError(f"{pkt.codec.name} frame on a {track.setup.info.codec.name} track")
        if not self._initialised:
            if len(self._early) >= MAX_EARLY_PACKETS:
                raise Mp4WriteError("no configuration for every declared track; "
                                    f"{MAX_EARLY_PACKETS} frames waited")
            self._early.append(pkt)
            return []
        if not pkt.payload:
            return []  # an empty frame has nothing to decode; the next absorbs its time
        if track is self._video:
            return self._add_video(track, pkt)
        return self._add_audio(track, pkt)

    def flush(self) -> list[Fmp4Event]:
        """Send everything held back (end of stream); the last video frame repeats the
        previous duration."""
        video = self._video
        events: list[Fmp4Event] = []
        if video is not None and video.held is not None:
            held, video.held = video.held, None
            held.duration = video.last_duration or _DEFAULT_VIDEO_DURATION
            if self.cap_fragments and video.done and video.pending_duration() + (
                    held.duration) > round(self.fragment_duration_s * VIDEO_TIMESCALE):
                events = self._emit()
            video.complete(held)
        return events + self._emit()

    def cut(self) -> list[Fmp4Event]:
        """End the fragment here: every complete sample goes out now (a held video frame, still
        waiting for its duration, stays and starts the next fragment)."""
        return self._emit()

    # ------------------------------------------------------------------ configuration

    def _configure(self, track: _Track, pkt: MediaPacket) -> list[Fmp4Event]:
        if pkt.payload == track.config:
            return []  # publishers repeat sequence headers
        setup_of = _SETUPS.get(pkt.codec)
        if setup_of is None:
            raise Mp4WriteError(f"no fMP4 mapping for {pkt.codec.name}")
        try:
            setup = setup_of(pkt.payload)
        except (CodecError, IndexError) as exc:
            raise Mp4WriteError(f"bad {pkt.codec.name} configuration: {exc}") from None
        if setup.info.kind is not track.kind:
            raise Mp4WriteError(f"{pkt.codec.name} configuration on the {track.kind.name} track")
        # What is queued goes out under the old init segment; a held video frame only on a
        # video change (its duration becomes a guess), as an audio change does not touch it.
        events = [] if not self._initialised else (
            self.flush() if track is self._video else self._emit())
        old = track.setup
        if old is not None and old.info.timescale != setup.info.timescale:
            # A new sample rate: carry the timeline over into the new clock.
            src, dst = old.info.timescale, setup.info.timescale
            track.end = None if track.end is None else -(-track.end * dst // src)
            track.shift = rescale(track.shift, src, dst)
            track.last_duration = 0
        track.config = pkt.payload
        track.setup = dataclasses.replace(
            setup, info=dataclasses.replace(setup.info, track_id=track.track_id))
        if all(t.setup is not None for t in self._tracks):
            events.append(self._init_segment())
            if not self._initialised:
                self._initialised = True
                early, self._early = self._early, []
                for frame in early:
                    events += self.add(frame)
        return events

    def _init_segment(self) -> InitSegment:
        init_tracks, infos = [], []
        for t in self._tracks:
            assert t.setup is not None
            info = t.setup.info
            handler = boxes.HANDLER_VIDEO if t.kind is TrackKind.VIDEO else boxes.HANDLER_AUDIO
            init_tracks.append(boxes.InitTrack(t.track_id, handler, info.timescale,
                                               t.setup.sample_entry, info.width, info.height))
            infos.append(info)
        return InitSegment(boxes.init_segment(init_tracks), tuple(infos))

    # ------------------------------------------------------------------ samples

    def _add_video(self, track: _Track, pkt: MediaPacket) -> list[Fmp4Event]:
        dts = rescale(pkt.dts, pkt.timescale, VIDEO_TIMESCALE)
        pts = rescale(pkt.pts, pkt.timescale, VIDEO_TIMESCALE)
        if self._video_delay is None:
            if not pkt.keyframe:
                return []  # a decoder can only start at a keyframe
            self._video_delay = max(0, pts - dts) if self.zero_first_cts else 0
            track.shift = self._video_delay
        time = dts + track.shift
        target = round(self.fragment_duration_s * VIDEO_TIMESCALE)
        low_latency = self.low_latency
        if low_latency and track.arrived is not None:
            step = time - track.arrived
            if 0 < step <= REBASE_S * VIDEO_TIMESCALE:  # a frame interval, not a stall
                track.step = step  # the guess for this frame's duration
        events: list[Fmp4Event] = []
        held = track.held
        if held is not None:
            duration = time - held.time
            if duration <= 0:  # DTS did not advance: keep the cadence
                duration = track.last_duration or _DEFAULT_VIDEO_DURATION
            held.duration = duration
            track.held = None
            if self.cap_fragments and track.done and (
                    track.pending_duration() + duration > target):
                events = self._emit()
            track.complete(held)
            if pkt.keyframe or track.pending_duration() >= target:
                events += self._emit()
        elif low_latency:
            if track.done and time > track.done[-1].time:
                # The previous frame is still queued: its guessed duration can be made exact.
                prev = track.done[-1]
                prev.duration = time - prev.time
                track.end = time
            if pkt.keyframe and track.done:
                events = self._emit()
        if low_latency:
            track.arrived = time
            if track.end is not None and track.end < time <= track.end + track.step:
                time = track.end  # the guess was short: start where the last frame ended
        sample = _Sample(self._not_before(track, time), 0, pkt.payload, pkt.keyframe,
                         pts - dts - self._video_delay)
        if not low_latency or not track.step:
            track.held = sample  # until the next frame gives its duration (low latency: the
            return events  # first frame only, as no interval is known to guess it from)
        sample.duration = track.step
        track.complete(sample)
        if track.pending_duration() >= target:
            events += self._emit()
        return events

    def _add_audio(self, track: _Track, pkt: MediaPacket) -> list[Fmp4Event]:
        assert track.setup is not None
        assert track.setup.frame_duration is not None
        rate = track.timescale
        duration = track.setup.frame_duration(pkt.payload)
        time = rescale(pkt.dts, pkt.timescale, rate) + track.shift
        if track.end is not None:
            drift = time - track.end
            if -AUDIO_RESYNC_S * rate <= drift <= AUDIO_RESYNC_S * rate:
                time = track.end  # the normal case: count samples, ignore ms rounding
            elif -REBASE_S * rate <= drift < 0:
                return []  # audio ahead of its clock: drop a frame to fall back in sync
            # A gap: complete() stretches the previous sample over it if still queued.
            # A jump back of over REBASE_S: _not_before() rebases the count.
        time = self._not_before(track, time)
        track.complete(_Sample(time, duration, pkt.payload, True))
        video = self._video
        waited = track.pending_duration()
        if video is None:
            target = round(self.fragment_duration_s * rate)
            # Capped: end before the next frame (of the same length) would pass the target.
            if (waited + duration > target) if self.cap_fragments else (waited >= target):
                return self._emit()
        elif waited >= (self.fragment_duration_s + MAX_AUDIO_WAIT_S) * rate:
            return self._emit()
        return []

    @staticmethod
    def _not_before(track: _Track, time: int) -> int:
        """Decode times only grow: a sample due before the previous one ended starts at its
        end; a jump back of over REBASE_S also moves every later sample (a new clock)."""
        if track.end is None:
            if time < 0:
                raise Mp4WriteError(f"negative {track.kind.name.lower()} decode time {time}")
            return time
        if time >= track.end:
            return time
        if track.end - time > REBASE_S * track.timescale:
            track.shift += track.end - time
        return track.end

    def _emit(self) -> list[Fmp4Event]:
        runs, spans = [], []
        for track in self._tracks:
            taken = track.take_run()
            if taken is not None:
                runs.append(taken[0])
                spans.append(taken[1])
        if not runs:
            return []
        self._sequence += 1
        first = spans[0]
        if self._video is None:
            keyframe = True
        elif first.kind is TrackKind.VIDEO:
            keyframe = runs[0].samples[0].flags == boxes.SAMPLE_SYNC
        else:
            keyframe = False
        return [Fragment(boxes.fragment(self._sequence, runs), self._sequence, keyframe,
                         tuple(spans))]
