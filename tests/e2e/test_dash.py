"""MPEG-DASH from a real rtmpmate: ffmpeg reads the live and the recorded MPD; a watcher checks
every MPD it fetches for 20 s; a reconnecting publisher gives a new Period."""

from __future__ import annotations

import itertools
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import httpx

from tests.e2e.harness import (
    FFMPEG,
    cleanup,
    dvr_entry,
    finish,
    kill,
    media_report,
    publish,
    publish_again,
    start_server,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server

NS = {"d": "urn:mpeg:dash:schema:mpd:2011"}


def mpd_url(server: Server) -> str:
    return server.http("/live/sample/index.mpd")


def ffmpeg_packets(url: str, seconds: float | None) -> dict[int, list[tuple[int, int]]]:
    """(dts, pts) of every packet ffmpeg's DASH demuxer reads, per output stream."""
    cmd = [FFMPEG, "-v", "error", "-i", url, "-map", "0", "-c", "copy"]
    cmd += ["-t", str(seconds)] if seconds is not None else []
    done = subprocess.run([*cmd, "-f", "framecrc", "-"], capture_output=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out: dict[int, list[tuple[int, int]]] = {}
    for line in done.stdout.decode().splitlines():
        if line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        out.setdefault(int(fields[0]), []).append((int(fields[1]), int(fields[2])))
    return out


def test_ffmpeg_reads_live_dash(server: Server, long_av_media: Path) -> None:
    publisher = publish(server, long_av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        got = ffmpeg_packets(mpd_url(server), 6)
    finally:
        kill(publisher)
    video, audio = got[0], got[1]
    assert len(video) >= 5 * 30
    assert len(audio) >= 5 * 44100 / 1024
    for track in (video, audio):
        assert all(a[0] < b[0] for a, b in itertools.pairwise(track)), "DTS must increase"
    assert all(p >= d for d, p in video), "PTS < DTS"


def _periods(text: str) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.fromstring(text)
    return root, root.findall("d:Period", NS)


def test_every_mpd_keeps_the_timing_rules(one_egress: Server, long_av_media: Path) -> None:
    server = one_egress
    publisher = publish(server, long_av_media)
    seen: list[dict[str, Any]] = []
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=15) as client:
            while time.monotonic() < deadline:
                response = client.get(mpd_url(server))
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("application/dash+xml")
                root, periods = _periods(response.text)
                assert root.get("type") == "dynamic"
                timing = root.find("d:UTCTiming", NS)
                assert timing is not None
                clock = client.get(timing.get("value", ""))  # the server's own clock
                assert clock.status_code == 200
                assert clock.text.endswith("Z")
                (period,) = periods
                record: dict[str, Any] = {"ast": root.get("availabilityStartTime")}
                for aset in period.findall("d:AdaptationSet", NS):
                    template = aset.find("d:Representation/d:SegmentTemplate", NS)
                    assert template is not None
                    assert template.get("availabilityTimeComplete") == "false"
                    assert float(template.get("availabilityTimeOffset", "0")) > 0
                    entries = template.findall("d:SegmentTimeline/d:S", NS)
                    starts = [int(s.get("t", "0")) for s in entries]
                    ends = [t + int(s.get("d", "0")) for t, s in zip(starts, entries,
                                                                     strict=True)]
                    assert starts[1:] == ends[:-1]  # gapless
                    first = int(template.get("startNumber", "0"))
                    record[aset.get("contentType", "")] = (first, len(entries))
                    # Every listed whole segment can be fetched (not the last: being written).
                    name = template.get("media", "").replace("$Number$", str(first))
                    head = client.head(server.http(f"/live/sample/{name}"))
                    assert head.status_code == 200, name
                seen.append(record)
                time.sleep(0.5)
    finally:
        kill(publisher)
    assert len({r["ast"] for r in seen}) == 1  # availabilityStartTime never moves
    numbers = [r["video"][0] for r in seen]
    assert numbers == sorted(numbers)
    assert numbers[-1] > numbers[0]  # the window slid
    assert max(r["video"][0] + r["video"][1] for r in seen) >= 10


def test_segment_being_written_comes_part_by_part(one_egress: Server,
                                                   long_av_media: Path) -> None:
    server = one_egress
    publisher = publish(server, long_av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        _root, (period,) = _periods(httpx.get(mpd_url(server), timeout=15).text)
        template = period.find("d:AdaptationSet/d:Representation/d:SegmentTemplate", NS)
        assert template is not None
        count = len(template.findall("d:SegmentTimeline/d:S", NS))
        newest = int(template.get("startNumber", "0")) + count - 1
        arrivals: list[float] = []
        data = bytearray()
        started = time.monotonic()
        with httpx.stream("GET", server.http(f"/live/sample/v-{newest + 1}.m4s"),
                          timeout=15) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                arrivals.append(time.monotonic() - started)
                data += chunk
        whole = httpx.get(server.http(f"/live/sample/v-{newest + 1}.m4s"), timeout=15)
    finally:
        kill(publisher)
    assert bytes(data) == whole.content  # the same bytes as the finished segment
    assert data[4:8] == b"moof"
    # It came as it was written, over about a segment's time, not at once at its end.
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] > 1.0, arrivals


def test_recording_gives_a_static_mpd_with_every_frame(av_media: Path) -> None:
    server = start_server(ingest=1, egress=1, tweak=dvr_entry("DVR_FMP4", mode="all"))
    try:
        sent = media_report(av_media)
        finish(publish(server, av_media), 40)
        wait_until(lambda: 'type="static"' in httpx.get(mpd_url(server), timeout=10).text,
                   30, "the static MPD")
        got = ffmpeg_packets(mpd_url(server), None)
    finally:
        cleanup(server)
    assert len(got[0]) == len(sent.video)
    assert abs(len(got[1]) - len([a for a in sent.audio if a])) <= 1


def test_reconnecting_publisher_starts_a_new_period(one_egress: Server,
                                                    av_media: Path) -> None:
    server = one_egress
    second = publish_again(server, av_media, mpd_url(server))
    try:
        wait_until(lambda: len(_periods(httpx.get(mpd_url(server), timeout=10).text)[1]) == 2,
                   15, "a second Period")
        _root, periods = _periods(httpx.get(mpd_url(server), timeout=10).text)
        starts = [p.get("start", "") for p in periods]
        got = ffmpeg_packets(mpd_url(server), 3)
    finally:
        kill(second)
    assert [p.get("id") for p in periods] == ["p0", "p1"]
    seconds = [float(s[2:-1]) for s in starts]
    assert seconds[1] > seconds[0]
    assert len(got[0]) >= 60
