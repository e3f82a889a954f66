"""Sans-IO CMAF segmenter: one stream's packets in, the files of a live HLS/DASH presentation out.

Each track has its own single-track fragmenter (CMAF track files: HLS plays them as a video
rendition with an audio group, DASH as one AdaptationSet per track), with fragments capped at
the part target, so a fragment is an LL-HLS part and a low-latency DASH chunk. A segment is a
run of parts. Segments are cut on the packets, before the fragmenters see them:

- with video, at the first keyframe once the segment holds SEGMENT_CUT_RATIO of segment_s,
  and, when a GOP is too long for the target duration, before the frame that reaches it (that
  segment then starts without a keyframe and is not independent, so the next keyframe cuts
  again at once);
- audio is cut at the same moments (its pending part is flushed first), so both tracks have
  segments of the same times; audio-only streams are cut every segment_s.

The recorder returns file actions (written atomically by the shell) and keeps each track's
timeline (TrackTimeline), which the playlist and manifest writers render. Part file names
count parts over the whole stream, so the preload hint names the next part before anyone knows
which segment it will belong to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from broker.packet import MediaPacket, TrackKind
from egress.fmp4.fragmenter import Fmp4Fragmenter, Fragment, InitSegment, TrackInfo

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["CmafRecorder", "Part", "RemoveFile", "Segment", "SegmentPlan", "TrackTimeline",
           "WriteFile"]

DEFAULT_SEGMENT_S: Final = 2.0  # when the DVR entry sets no max_time
# LL-HLS parts: hls.js and Apple ask for 0.2-1 s; with PART-HOLD-BACK = 3 parts this one keeps
# players about a second behind the live edge.
PART_TARGET_S: Final = 0.25
# A keyframe this far into segment_s cuts: an encoder's "2 s" GOP may stamp 1.999 s.
SEGMENT_CUT_RATIO: Final = 0.9
# TARGETDURATION is segment_s with headroom for GOPs that run long; it never changes.
TARGET_HEADROOM: Final = 1.5
# A live playlist keeps this many target durations of whole segments (RFC 8216 §6.2.2
# forbids fewer than three), and lists parts for the last PART_WINDOW_TARGETS of them.
WINDOW_TARGETS: Final = 4
PART_WINDOW_TARGETS: Final = 3


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    segment_s: float = DEFAULT_SEGMENT_S
    part_target_s: float = PART_TARGET_S
    keep: bool = False  # keep every segment (a recording) instead of a rolling window
    max_size: int = 0  # bytes per segment, 0 = no limit: a segment past it ends at a keyframe
    max_frames: int = 0  # video frames (audio-only: audio frames) per segment

    def __post_init__(self) -> None:
        if self.segment_s <= 0 or not 0 < self.part_target_s <= self.segment_s:
            raise ValueError("need 0 < part_target_s <= segment_s")

    @property
    def target_duration(self) -> int:
        """EXT-X-TARGETDURATION, whole seconds: no segment is longer after rounding."""
        return max(1, math.ceil(self.segment_s * TARGET_HEADROOM))

    @property
    def window_s(self) -> float:
        return WINDOW_TARGETS * self.target_duration


@dataclass(frozen=True, slots=True)
class WriteFile:
    name: str  # relative to the stream's folder
    data: bytes


@dataclass(frozen=True, slots=True)
class RemoveFile:
    name: str


Action = WriteFile | RemoveFile


@dataclass(frozen=True, slots=True)
class Part:
    number: int  # over the whole stream: the file name
    index: int  # within its segment
    duration: float  # seconds
    independent: bool  # starts with a sync sample


@dataclass(slots=True)
class Segment:
    msn: int  # media sequence number
    init: int  # the init segment its parts need
    start: int  # decode time of its first sample, track timescale
    timescale: int
    wall: float  # wall clock (epoch seconds) at its start: PROGRAM-DATE-TIME
    discontinuity: bool  # first of a new publishing session
    independent: bool
    session: int = 0  # publishing sessions of the presentation, from 0 (DASH periods)
    parts: list[Part] = field(default_factory=list)
    ticks: int = 0  # duration so far, track timescale
    size: int = 0
    complete: bool = False
    data: list[bytes] = field(default_factory=list, repr=False)  # until complete

    @property
    def duration(self) -> float:
        return self.ticks / self.timescale

    @property
    def end(self) -> int:
        return self.start + self.ticks


class TrackTimeline:
    """One track's segments and parts, its file names, and its rolling window."""

    def __init__(self, prefix: str, plan: SegmentPlan) -> None:
        self.prefix = prefix  # "v" or "a": v.m3u8, v-init-0.m4s, v-12.m4s, v-p340.m4s
        self.plan = plan
        self.info: TrackInfo | None = None
        self.segments: list[Segment] = []  # listed, oldest first; the last may be open
        self.first_msn = 0  # EXT-X-MEDIA-SEQUENCE
        self.discontinuities = 0  # EXT-X-DISCONTINUITY-SEQUENCE
        self.next_msn = 0
        self.next_part = 0
        self.init = -1
        self.cut = True  # the next fragment opens a segment
        self.discontinuity = False  # ... the first of a new session
        self.ended = False
        self._clock: float | None = None  # wall clock minus media time, this session
        self.session = -1
        # Per session: its first segment's start (seconds of media time) and wall clock.
        self.sessions: dict[int, tuple[float, float]] = {}
        self.first_session: tuple[float, float] | None = None  # kept when trimmed: DASH's AST
        self._removed: list[tuple[float, list[str]]] = []  # files to delete after a delay

    # -- names

    def init_name(self, n: int) -> str:
        return f"{self.prefix}-init-{n}.m4s"

    def segment_name(self, msn: int) -> str:
        return f"{self.prefix}-{msn}.m4s"

    def part_name(self, number: int) -> str:
        return f"{self.prefix}-p{number}.m4s"

    @property
    def playlist_name(self) -> str:
        return f"{self.prefix}.m3u8"

    # -- state

    @property
    def open_segment(self) -> Segment | None:
        if self.segments and not self.segments[-1].complete:
            return self.segments[-1]
        return None

    def last_part(self) -> tuple[int, int] | None:
        """(msn, part index) of the newest part; None before the first."""
        for seg in reversed(self.segments):
            if seg.parts:
                return seg.msn, seg.parts[-1].index
        return None

    def complete_segments(self) -> Iterator[Segment]:
        return (s for s in self.segments if s.complete)

    # -- input

    def on_init(self, init: InitSegment) -> list[Action]:
        self.info = init.tracks[0]
        self.init += 1
        self.cut = True  # a new init starts a segment: EXT-X-MAP changes only between them
        return [WriteFile(self.init_name(self.init), init.data)]

    def on_fragment(self, frag: Fragment, now: float, clock: float) -> list[Action]:
        """Add a part; `clock` is the session's wall clock minus media time (seconds)."""
        span = frag.tracks[0]
        actions: list[Action] = []
        seg = self.open_segment
        if seg is None or self.cut:
            if seg is not None:
                actions += self._close(seg, now)
            if self._clock is None or self.discontinuity:
                self._clock = clock  # fixed for the session: its PROGRAM-DATE-TIMEs agree
                self.session += 1
            seg = Segment(self.next_msn, self.init, span.start, span.timescale,
                          self._clock + span.start / span.timescale, self.discontinuity,
                          frag.keyframe, self.session)
            self.sessions.setdefault(self.session, (span.start / span.timescale, seg.wall))
            if self.first_session is None:
                self.first_session = self.sessions[self.session]
            self.segments.append(seg)
            self.next_msn += 1
            self.cut = self.discontinuity = False
        part = Part(self.next_part, len(seg.parts), span.duration / span.timescale,
                    frag.keyframe)
        self.next_part += 1
        seg.parts.append(part)
        seg.ticks = span.end - seg.start
        seg.size += len(frag.data)
        seg.data.append(frag.data)
        actions.append(WriteFile(self.part_name(part.number), frag.data))
        return actions

    def close(self, now: float) -> list[Action]:
        """End the open segment (end of a session, or of the stream)."""
        seg = self.open_segment
        self.cut = True
        return self._close(seg, now) if seg is not None else []

    def expire(self, now: float) -> list[Action]:
        """Delete the files of segments that left the playlist long enough ago."""
        actions: list[Action] = []
        while self._removed and now - self._removed[0][0] >= self.plan.window_s:
            actions += [RemoveFile(name) for name in self._removed.pop(0)[1]]
        return actions

    def _close(self, seg: Segment, now: float) -> list[Action]:
        seg.complete = True
        data, seg.data = seg.data, []
        actions: list[Action] = [WriteFile(self.segment_name(seg.msn), b"".join(data))]
        if not self.plan.keep:
            actions += self._trim(now)
        return actions

    def _trim(self, now: float) -> list[Action]:
        listed = sum(s.duration for s in self.complete_segments())
        while len(self.segments) > 1 and self.segments[0].complete and (
                listed - self.segments[0].duration >= self.plan.window_s):
            old = self.segments.pop(0)
            listed -= old.duration
            self.first_msn = old.msn + 1
            if self.segments[0].discontinuity:
                self.discontinuities += 1  # the tag left with the segment before it
            files = [self.segment_name(old.msn)] + [self.part_name(p.number) for p in old.parts]
            if self.segments[0].init != old.init:
                files.append(self.init_name(old.init))
            self._removed.append((now, files))
        for session in [k for k in self.sessions if k < self.segments[0].session]:
            del self.sessions[session]
        return self.expire(now)


def _media_s(pkt: MediaPacket) -> float:
    return pkt.dts / pkt.timescale


class CmafRecorder:
    """One stream's CMAF presentation: feed packets (configs first), then end()."""

    def __init__(self, plan: SegmentPlan, *, video: bool, audio: bool) -> None:
        if not video and not audio:
            raise ValueError("a stream needs a video or an audio track")
        self.plan = plan
        self.has_video, self.has_audio = video, audio
        self.video = TrackTimeline("v", plan) if video else None
        self.audio = TrackTimeline("a", plan) if audio else None
        self._video_fr = self._fragmenter(video=True) if video else None
        self._audio_fr = self._fragmenter(video=False) if audio else None
        self._seg_start: float | None = None  # media seconds of the segment being filled
        self._clock: float | None = None  # wall clock minus media time (set_clock)
        self._seg_keyframe = True  # it started at a keyframe (or has no video)
        self._seg_size = 0
        self._seg_frames = 0

    @property
    def timelines(self) -> tuple[TrackTimeline, ...]:
        return tuple(t for t in (self.video, self.audio) if t is not None)

    def _fragmenter(self, *, video: bool) -> Fmp4Fragmenter:
        return Fmp4Fragmenter(video=video, audio=not video,
                              fragment_duration_s=self.plan.part_target_s, cap_fragments=True)

    def add(self, pkt: MediaPacket, now: float) -> list[Action]:
        """Mux one packet. Raises Mp4WriteError for input that cannot be muxed."""
        if pkt.kind is TrackKind.VIDEO:
            fragmenter, timeline = self._video_fr, self.video
        elif pkt.kind is TrackKind.AUDIO:
            fragmenter, timeline = self._audio_fr, self.audio
        else:
            return []
        if fragmenter is None or timeline is None:
            return []
        actions: list[Action] = []
        if not pkt.is_config:
            self.set_clock(_media_s(pkt), now)
        cut = not pkt.is_config and self._cuts_before(pkt)
        if cut and pkt.kind is TrackKind.AUDIO:  # an audio-only stream: cut before the frame
            actions += self._cut(now)
        # In a video fragmenter add() sends what came before the frame, never the frame.
        actions += self._events(timeline, fragmenter.add(pkt), now)
        if cut and pkt.kind is TrackKind.VIDEO:
            actions += self._cut(now)
        if not pkt.is_config:
            self._seg_size += len(pkt.payload)
            self._seg_frames += pkt.kind is TrackKind.VIDEO or self.video is None
        return actions

    def new_session(self, now: float) -> list[Action]:
        """A new publisher: close every segment; the next ones start with a discontinuity and
        a new init segment."""
        actions = self._flush(now)
        for timeline in self.timelines:
            timeline.discontinuity = True
        self._video_fr = self._fragmenter(video=True) if self.video else None
        self._audio_fr = self._fragmenter(video=False) if self.audio else None
        self._seg_start = None
        self._clock = None
        return actions

    def end(self, now: float) -> list[Action]:
        """The stream is over: the playlists get their end."""
        actions = self._flush(now)
        for timeline in self.timelines:
            timeline.ended = True
        return actions

    def expire(self, now: float) -> list[Action]:
        return [a for t in self.timelines for a in t.expire(now)]

    def bandwidth(self) -> int:
        """Peak bits per second of a segment (each track's, summed): BANDWIDTH."""
        total = 0.0
        for timeline in self.timelines:
            rates = [s.size * 8 / s.duration for s in timeline.segments if s.duration > 0]
            total += max(rates, default=0.0)
        return max(1, round(total))

    def _flush(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for fragmenter, timeline in ((self._video_fr, self.video), (self._audio_fr, self.audio)):
            if fragmenter is not None and timeline is not None:
                actions += self._events(timeline, fragmenter.flush(), now)
                actions += timeline.close(now)
        return actions

    def _cuts_before(self, pkt: MediaPacket) -> bool:
        """Does a new segment start with this packet?"""
        video = self.video is not None
        if video and pkt.kind is not TrackKind.VIDEO:
            return False  # video decides; audio follows
        at = _media_s(pkt)
        if self._seg_start is None:
            if video and not pkt.keyframe:
                return False  # the fragmenter drops frames before the first keyframe
            self._seg_start, self._seg_keyframe = at, True
            return False
        held = at - self._seg_start
        plan = self.plan
        # Every audio frame can start a segment, so audio-only ones need no slack.
        full = held >= plan.segment_s * (SEGMENT_CUT_RATIO if video else 1) or (
            plan.max_size and self._seg_size >= plan.max_size) or (
            plan.max_frames and self._seg_frames >= plan.max_frames)
        if video and pkt.keyframe and (full or not self._seg_keyframe):
            self._seg_start, self._seg_keyframe = at, True  # back to independent segments
            return True
        if (full and not video) or held >= plan.target_duration:
            self._seg_start, self._seg_keyframe = at, not video
            return True
        return False

    def _cut(self, now: float) -> list[Action]:
        """End every track's segment before the packet at hand."""
        self._seg_size = self._seg_frames = 0
        actions: list[Action] = []
        for fragmenter, timeline in ((self._video_fr, self.video), (self._audio_fr, self.audio)):
            if fragmenter is not None and timeline is not None:
                actions += self._events(timeline, fragmenter.cut(), now)
                timeline.cut = True
        return actions

    def set_clock(self, media_s: float, now: float) -> None:
        """Media time `media_s` was live at wall clock `now`. The recorder keeps the least
        delay seen (wall minus media) in a session: frames that waited, in the GOP a late
        start is fed from or behind a slow read, must not make the stream look later."""
        offset = now - media_s
        if self._clock is None or offset < self._clock:
            self._clock = offset

    def _events(self, timeline: TrackTimeline, events: list[InitSegment | Fragment],
                now: float) -> list[Action]:
        actions: list[Action] = []
        for event in events:
            if isinstance(event, InitSegment):
                actions += timeline.close(now)
                actions += timeline.on_init(event)
            else:
                clock = self._clock if self._clock is not None else now - event.start_s
                actions += timeline.on_fragment(event, now, clock)
        return actions
