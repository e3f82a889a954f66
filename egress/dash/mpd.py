"""The dynamic MPD (ISO/IEC 23009-1, DASH-IF IOP and its timing model) of a CmafRecorder.

One AdaptationSet per track (CMAF track files, the same ones HLS plays), SegmentTemplate
with `$Number$` and a SegmentTimeline (GOP-cut segments wander, which @duration forbids).

Timing: availabilityStartTime (AST) is the wall clock at media time 0 of the first
publishing session, so a segment is available when its end has passed on the wall clock.
Each publishing session is a Period: it starts at its first segment's wall clock minus AST,
with presentationTimeOffset at that segment's media time, so a publisher's pause moves the
media clock against the wall clock between Periods, never inside one (no drift). Low
latency: the segment being written is listed with the segment duration it is expected to
have, and availabilityTimeOffset (segment minus part duration) with
availabilityTimeComplete="false" makes it available once its first part is; the egress
workers send such a segment with chunked transfer, part by part, as it grows. UTCTiming
names the server's own clock (`/api/time`, made absolute by the egress worker that serves
the file).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final
from xml.sax.saxutils import quoteattr

from broker.packet import TrackKind

if TYPE_CHECKING:
    from egress.fmp4.segmenter import CmafRecorder, Segment, TrackTimeline

TIME_PATH: Final = "/api/time"  # http-iso clock (the egress rewrites it to an absolute URL)
MPD_NAME: Final = "index.mpd"
PROFILES: Final = "urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019"
# How often players fetch the MPD again: the next segment is only known from a new MPD.
MINIMUM_UPDATE_PERIOD_S: Final = 0.5
MIN_BUFFER_S: Final = 1.0


def xs_datetime(epoch_s: float) -> str:
    """xs:dateTime in UTC with milliseconds, as MPD attributes and the time endpoint use."""
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _duration(seconds: float) -> str:
    return f"PT{max(0.0, seconds):.3f}S"


def _reference(recorder: CmafRecorder) -> TrackTimeline:
    return recorder.video or recorder.timelines[0]


def availability_start(recorder: CmafRecorder) -> float | None:
    """Wall clock at media time 0 of the first session; None before the first segment."""
    ref = _reference(recorder)
    if ref.first_session is None:
        return None
    media_s, wall = ref.first_session
    return wall - media_s


def mpd(recorder: CmafRecorder, *, now: float) -> str | None:
    """The MPD; None until every track has a segment."""
    ast = availability_start(recorder)
    timelines = recorder.timelines
    if ast is None or any(t.info is None or not t.segments for t in timelines):
        return None
    plan = recorder.plan
    ref = _reference(recorder)
    ended = any(t.ended for t in timelines)
    attrs = [f'xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="{PROFILES}"']
    sessions = sorted({s.session for s in ref.segments})
    spans = {k: sum(s.duration for s in ref.segments if s.session == k) for k in sessions}
    if ended:
        total = sum(spans.values())
        attrs.append(f'type="static" mediaPresentationDuration="{_duration(total)}"')
    else:
        attrs.append(
            f'type="dynamic" availabilityStartTime="{xs_datetime(ast)}" '
            f'publishTime="{xs_datetime(now)}" '
            f'minimumUpdatePeriod="{_duration(MINIMUM_UPDATE_PERIOD_S)}" '
            f'timeShiftBufferDepth="{_duration(plan.window_s)}" '
            f'suggestedPresentationDelay="{_duration(3 * plan.part_target_s)}"')
    attrs.append(f'minBufferTime="{_duration(MIN_BUFFER_S)}" '
                 f'maxSegmentDuration="{_duration(plan.target_duration)}"')
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<MPD {' '.join(attrs)}>"]
    if not ended:
        latency_ms = round(3 * plan.part_target_s * 1000)
        lines.append(f'  <ServiceDescription id="0"><Latency target="{latency_ms}"/>'
                     "</ServiceDescription>")
    played = 0.0
    for session in sessions:
        first_media_s, first_wall = ref.sessions[session]
        # Dynamic: on the wall clock from AST. Static (the recording is over): one Period
        # after the other from 0, the pauses between publishers left out.
        start = played if ended else first_wall - ast
        played += spans[session]
        lines.append(f'  <Period id="p{session}" start="{_duration(start)}">')
        for index, timeline in enumerate(timelines):
            segments = [s for s in timeline.segments if s.session == session]
            if segments:
                lines += _adaptation_set(recorder, timeline, index, segments, first_media_s,
                                         live=not ended)
        lines.append("  </Period>")
    if not ended:
        lines.append('  <UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-iso:2014" '
                     f"value={quoteattr(TIME_PATH)}/>")
    lines.append("</MPD>")
    return "\n".join(lines) + "\n"


def _adaptation_set(recorder: CmafRecorder, timeline: TrackTimeline, index: int,
                    segments: list[Segment], period_media_s: float, *, live: bool) -> list[str]:
    info = timeline.info
    assert info is not None
    plan = recorder.plan
    ts = info.timescale
    video = info.kind is TrackKind.VIDEO
    kind = "video" if video else "audio"
    bandwidth = max((round(s.size * 8 / s.duration) for s in segments if s.duration > 0),
                    default=1)
    out = [f'    <AdaptationSet id="{index}" contentType="{kind}" mimeType="{kind}/mp4" '
           'segmentAlignment="true" startWithSAP="1">']
    rep = (f'      <Representation id="{timeline.prefix}" codecs="{info.codec_string}" '
           f'bandwidth="{bandwidth}"')
    if video:
        rep += f' width="{info.width}" height="{info.height}"'
    else:
        rep += f' audioSamplingRate="{info.sample_rate}"'
    out.append(rep + ">")
    if not video:
        out.append('        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:'
                   f'audio_channel_configuration:2011" value="{info.channels}"/>')
    template = (f'        <SegmentTemplate timescale="{ts}" '
                f'presentationTimeOffset="{round(period_media_s * ts)}" '
                f'initialization="{timeline.init_name(segments[0].init)}" '
                f'media="{timeline.prefix}-$Number$.m4s" startNumber="{segments[0].msn}"')
    if live:
        offset = plan.segment_s - plan.part_target_s
        template += (f' availabilityTimeOffset="{offset:.3f}" '
                     'availabilityTimeComplete="false"')
    out.append(template + ">")
    out.append("          <SegmentTimeline>")
    for seg in segments:
        ticks = seg.ticks if seg.complete else max(seg.ticks, round(plan.segment_s * ts))
        out.append(f'            <S t="{seg.start}" d="{ticks}"/>')
    out += ["          </SegmentTimeline>", "        </SegmentTemplate>", "      </Representation>",
            "    </AdaptationSet>"]
    return out
