"""HLS playlists (RFC 8216, LL-HLS per draft-pantos-hls-rfc8216bis §4.4) of a CmafRecorder.

`index.m3u8` is the multivariant playlist: the video rendition, with the audio track as an
audio group (CMAF track files, shared with DASH), or the one track a stream has. Each track
has its media playlist (`v.m3u8`, `a.m3u8`) with LL-HLS parts, a preload hint and rendition
reports while the stream is live; once it ends, the parts and server control go and ENDLIST
comes (iOS refuses CAN-BLOCK-RELOAD beside ENDLIST).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Final

from egress.fmp4.segmenter import PART_WINDOW_TARGETS

if TYPE_CHECKING:
    from egress.fmp4.segmenter import CmafRecorder, Segment, TrackTimeline

# EXT-X-MAP without I-frames-only needs version 6 (RFC 8216 §7); nothing here needs more.
VERSION: Final = 6
# PART-HOLD-BACK must be at least 3 part targets (Apple's LL-HLS authoring rules).
PART_HOLD_BACK_PARTS: Final = 3
MULTIVARIANT: Final = "index.m3u8"
AUDIO_GROUP: Final = "audio"


def program_date_time(epoch_s: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def media_playlist(timeline: TrackTimeline, others: tuple[TrackTimeline, ...] = ()) -> str:
    plan = timeline.plan
    live = not timeline.ended
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}",
             f"#EXT-X-TARGETDURATION:{plan.target_duration}"]
    if plan.keep:
        lines.append("#EXT-X-PLAYLIST-TYPE:" + ("EVENT" if live else "VOD"))
    if live:
        hold_back = PART_HOLD_BACK_PARTS * plan.part_target_s
        lines += [f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={hold_back:.3f}",
                  f"#EXT-X-PART-INF:PART-TARGET={plan.part_target_s:.3f}"]
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{timeline.first_msn}")
    if timeline.discontinuities:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{timeline.discontinuities}")
    parts_from = _parts_from(timeline) if live else len(timeline.segments)
    init = None
    for i, seg in enumerate(timeline.segments):
        if seg.discontinuity and i:
            lines.append("#EXT-X-DISCONTINUITY")
        if seg.init != init:
            init = seg.init
            lines.append(f'#EXT-X-MAP:URI="{timeline.init_name(seg.init)}"')
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{program_date_time(seg.wall)}")
        if i >= parts_from:
            lines += _parts(timeline, seg)
        if seg.complete:
            lines += [f"#EXTINF:{seg.duration:.5f},", timeline.segment_name(seg.msn)]
    if live:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{timeline.part_name(timeline.next_part)}"')
        for other in others:
            last = other.last_part()
            if last is not None:
                lines.append(f'#EXT-X-RENDITION-REPORT:URI="{other.playlist_name}",'
                             f"LAST-MSN={last[0]},LAST-PART={last[1]}")
    else:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _parts_from(timeline: TrackTimeline) -> int:
    """Index of the first segment whose parts are listed: those ending within the last
    PART_WINDOW_TARGETS target durations."""
    window = PART_WINDOW_TARGETS * timeline.plan.target_duration
    total, index = 0.0, len(timeline.segments)
    while index > 0 and total < window:
        index -= 1
        total += timeline.segments[index].duration
    return index


def _parts(timeline: TrackTimeline, seg: Segment) -> list[str]:
    return [f"#EXT-X-PART:DURATION={p.duration:.5f},URI=\"{timeline.part_name(p.number)}\""
            + (",INDEPENDENT=YES" if p.independent else "") for p in seg.parts]


def multivariant_playlist(recorder: CmafRecorder) -> str | None:
    """The stream's entry playlist; None until every track has its codec and a part."""
    video, audio = recorder.video, recorder.audio
    tracks = [t for t in (video, audio) if t is not None]
    if any(t.info is None or t.last_part() is None for t in tracks):
        return None
    codecs = ",".join(t.info.codec_string for t in tracks if t.info is not None)
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{VERSION}"]
    attributes = f"BANDWIDTH={recorder.bandwidth()},CODECS=\"{codecs}\""
    if video is not None and video.info is not None:
        if video.info.width and video.info.height:
            attributes += f",RESOLUTION={video.info.width}x{video.info.height}"
        if audio is not None and audio.info is not None:
            lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="audio",'
                         f'DEFAULT=YES,AUTOSELECT=YES,CHANNELS="{audio.info.channels}",'
                         f'URI="{audio.playlist_name}"')
            attributes += f',AUDIO="{AUDIO_GROUP}"'
    lines += [f"#EXT-X-STREAM-INF:{attributes}", tracks[0].playlist_name]
    return "\n".join(lines) + "\n"
