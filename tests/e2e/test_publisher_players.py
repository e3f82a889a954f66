"""Live HTTP players served by the ingest worker that holds the publisher.

The egress worker that takes an HTTP-FLV or HTTP-fMP4 request (or its WebSocket form) admits
the play and passes the connection over;
the publisher's worker serves it without the bus, up to server.publisher_http_players players,
and the egress workers serve the rest. Which process serves a player is read from
`rtmpmate-ctl status` (each worker's viewers, and the egress workers' open connections).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests import mp4_parse
from tests.e2e.harness import (
    cleanup,
    ffmpeg_record,
    finish,
    kill,
    media_report,
    publish,
    start_server,
    wait_until,
)
from tests.mp4_parse import find_all

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from tests.e2e.harness import Server

PLAYERS = 4
RECORD_S = 4
KEY = "live/_definst_/cam"


def cap(players: int) -> Any:
    def tweak(doc: dict[str, Any]) -> None:
        doc["server"]["publisher_http_players"] = players
    return tweak


def serving(server: Server) -> dict[str, tuple[int, int | None]]:
    """Each worker's (viewers, open connections)."""
    return {w["name"]: (w["viewers"], w["connections"]) for w in server.status()["workers"]}


@pytest.mark.parametrize(("limit", "on_ingest"), [(1000, PLAYERS), (2, 2), (0, 0)])
def test_the_publishers_worker_serves_flv_players_up_to_its_limit(
        limit: int, on_ingest: int, av_media: Path, tmp_path: Path) -> None:
    server = start_server(ingest=1, egress=2, tweak=cap(limit))
    publisher = publish(server, av_media, "cam", loop=True)
    players: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(lambda: server.stream_status(KEY), 10, "the stream")
        players += [ffmpeg_record(server.http("/live/cam.flv"), tmp_path / f"p{i}.flv",
                                  seconds=RECORD_S) for i in range(PLAYERS)]
        wait_until(lambda: sum((server.stream_status(KEY) or {}).get("viewers", {}).values())
                   == PLAYERS, 10, "every player counted")
        by_worker = serving(server)
        assert by_worker["ingest-0"][0] == on_ingest, by_worker
        assert by_worker["egress-0"][0] + by_worker["egress-1"][0] == PLAYERS - on_ingest
        # A passed connection is no longer the egress worker's.
        held = [by_worker[f"egress-{i}"][1] for i in range(2)]
        assert sum(n or 0 for n in held) == PLAYERS - on_ingest, by_worker
        for player in players:
            finish(player, 30)
        for i in range(PLAYERS):
            report = media_report(tmp_path / f"p{i}.flv")
            assert report.audio_flag
            assert report.video_flag
            assert len(report.video) >= 25 * (RECORD_S - 1), len(report.video)
            assert report.audio
            report.check_timing()
    finally:
        for player in players:
            if player.poll() is None:
                kill(player)
        kill(publisher)
        cleanup(server)


def test_a_passed_player_ends_with_the_stream(av_media: Path, tmp_path: Path) -> None:
    """The publisher leaves: the ingest worker ends the response properly (the last chunk),
    and the player's file holds everything up to then."""
    server = start_server(ingest=1, egress=1)
    publisher = publish(server, av_media, "cam")
    try:
        wait_until(lambda: server.stream_status(KEY), 10, "the stream")
        player = ffmpeg_record(server.http("/live/cam.flv"), tmp_path / "p.flv")
        wait_until(lambda: serving(server)["ingest-0"][0] == 1, 10, "the player on ingest-0")
        finish(publisher, 30)  # ten seconds of media, then the publisher leaves
        finish(player, 20)  # ended by the server
        report = media_report(tmp_path / "p.flv")
        assert len(report.video) >= 150, len(report.video)
        report.check_timing()
    finally:
        if publisher.poll() is None:
            kill(publisher)
        cleanup(server)


def test_an_fmp4_player_is_served_by_the_publishers_worker(av_media: Path) -> None:
    server = start_server(ingest=1, egress=2)
    publisher = publish(server, av_media, "cam", loop=True)
    try:
        wait_until(lambda: server.stream_status(KEY), 10, "the stream")
        data = bytearray()
        with httpx.stream("GET", server.http("/live/cam.mp4"), timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "video/mp4"
            chunks = response.iter_bytes()
            counted = time.monotonic() + 10
            while (server.stream_status(KEY) or {}).get("viewers") != {"http-fmp4": 1}:
                data += next(chunks)  # the status says within a second; read meanwhile
                assert time.monotonic() < counted, "the player was not counted"
            by_worker = serving(server)
            assert by_worker["ingest-0"][0] == 1, by_worker
            end = time.monotonic() + 2
            while time.monotonic() < end:
                data += next(chunks)
        boxes = mp4_parse.parse_boxes(bytes(data[:_whole_boxes(data)]))
        assert [b.type for b in boxes[:2]] == ["ftyp", "moov"]
        assert len(find_all(boxes, "moof")) >= 30  # two seconds and more of frames
    finally:
        kill(publisher)
        cleanup(server)


def _whole_boxes(data: bytearray) -> int:
    """Bytes of the top-level boxes that came whole."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        if size < 8 or pos + size > len(data):
            break
        pos += size
    return pos
