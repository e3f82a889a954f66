"""The MPD of a CmafRecorder: structure, timing (AST, Periods, SegmentTimeline) and the end."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from egress.dash.mpd import TIME_PATH, mpd
from egress.fmp4.segmenter import CmafRecorder, SegmentPlan
from tests.egress.test_segmenter import Disk, record, stream

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}
WALL0 = 1_700_000_000.0


def parse(text: str | None) -> ET.Element:
    assert text is not None
    return ET.fromstring(text)


def seconds(duration: str | None) -> float:
    assert duration is not None
    assert duration.startswith("PT")
    assert duration.endswith("S")
    return float(duration[2:-1])


def epoch(stamp: str | None) -> float:
    assert stamp is not None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_no_mpd_before_every_track_has_a_segment() -> None:
    recorder = CmafRecorder(SegmentPlan(), video=True, audio=True)
    assert mpd(recorder, now=WALL0) is None


def test_live_mpd() -> None:
    plan = SegmentPlan()
    recorder, _ = record(stream(20, start_ms=5000), plan, end=False)
    root = parse(mpd(recorder, now=WALL0 + 25))
    assert root.get("type") == "dynamic"
    assert seconds(root.get("timeShiftBufferDepth")) == plan.window_s
    assert seconds(root.get("maxSegmentDuration")) == plan.target_duration
    # Media time 0 was live at WALL0 (record() feeds each packet at WALL0 + its time).
    assert epoch(root.get("availabilityStartTime")) == pytest.approx(WALL0, abs=0.002)
    timing = root.find("d:UTCTiming", NS)
    assert timing is not None
    assert timing.get("value") == TIME_PATH
    (period,) = root.findall("d:Period", NS)
    assert seconds(period.get("start")) == pytest.approx(5.0, abs=0.002)
    sets = period.findall("d:AdaptationSet", NS)
    assert [a.get("contentType") for a in sets] == ["video", "audio"]
    for aset, timeline in zip(sets, recorder.timelines, strict=True):
        rep = aset.find("d:Representation", NS)
        assert rep is not None
        assert timeline.info is not None
        assert rep.get("codecs") == timeline.info.codec_string
        template = rep.find("d:SegmentTemplate", NS)
        assert template is not None
        ts = int(template.get("timescale", "0"))
        assert ts == timeline.info.timescale
        assert int(template.get("presentationTimeOffset", "-1")) == 5 * ts
        assert int(template.get("startNumber", "-1")) == timeline.segments[0].msn
        entries = template.findall("d:SegmentTimeline/d:S", NS)
        assert [int(s.get("t", "0")) for s in entries] == [s.start for s in timeline.segments]
        *whole, growing = entries
        assert [int(s.get("d", "0")) for s in whole] == [
            s.ticks for s in timeline.segments[:-1]]
        assert int(growing.get("d", "0")) == round(plan.segment_s * ts)  # expected length
        assert float(template.get("availabilityTimeOffset", "0")) == pytest.approx(
            plan.segment_s - plan.part_target_s)


def test_reconnect_is_a_new_period_and_the_end_is_static() -> None:
    plan = SegmentPlan(keep=True)
    recorder, disk = record(stream(7), plan, end=False)
    disk.apply(recorder.new_session(WALL0 + 12), recorder)
    # The second publisher comes 5 s later on the wall clock; its media time goes on.
    later = Disk()
    record(stream(7, start_ms=7040), plan, recorder=recorder, disk=later, end=False,
           wall0=WALL0 + 5)
    root = parse(mpd(recorder, now=WALL0 + 20))
    periods = root.findall("d:Period", NS)
    assert [p.get("id") for p in periods] == ["p0", "p1"]
    starts = [seconds(p.get("start")) for p in periods]
    assert starts[0] == pytest.approx(0.0, abs=0.002)
    assert starts[1] == pytest.approx(5 + 7.04, abs=0.002)  # on the wall clock from AST
    disk.apply(recorder.end(WALL0 + 20), recorder)
    root = parse(mpd(recorder, now=WALL0 + 21))
    assert root.get("type") == "static"
    assert root.find("d:UTCTiming", NS) is None
    assert seconds(root.get("mediaPresentationDuration")) == pytest.approx(14.0, abs=0.1)
    starts = [seconds(p.get("start")) for p in root.findall("d:Period", NS)]
    assert starts == pytest.approx([0.0, 7.0], abs=0.1)  # the pause is left out
    for template in root.iter(f"{{{NS['d']}}}SegmentTemplate"):
        assert template.get("availabilityTimeOffset") is None
