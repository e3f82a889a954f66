"""mpegts.js in headless Chromium plays WebSocket-FLV and HTTP-FLV (Media Source Extensions).

Needs Debian's chromium, Node.js and the npm packages of tests/browser (`make test` installs
them when npm is present; .ci/run installs chromium).
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.harness import REPO, cleanup, free_port, live_stream, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.harness import Server

pytestmark = pytest.mark.browser
BROWSER_DIR = REPO / "tests" / "browser"
PLAY_S = 6
HLS_PLAY_S = 15  # seconds in the browser: at least 10 of them playing
PLAN_SEGMENT_S = 2.0  # the default DVR_FMP4 segment


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_server() -> Iterator[str]:
    """The player page and mpegts.js from a static server of the test's own (another origin)."""
    port = free_port()
    handler = functools.partial(_QuietHandler, directory=str(BROWSER_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


def play_in_browser(page: str, seconds: int) -> dict[str, Any]:
    done = subprocess.run(["node", str(BROWSER_DIR / "play.mjs"), page, str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 60, cwd=BROWSER_DIR)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def cors_server(page_server: str) -> Iterator[Server]:
    """HTTP-FLV from a page of another origin needs that origin in `cors`."""
    def allow_page(doc: dict[str, Any]) -> None:
        doc["http"]["cors"] = f"http://example.invalid, {page_server}"

    srv = start_server(ingest=1, egress=2, tweak=allow_page)
    yield srv
    cleanup(srv)


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_mpegts_js_plays_live_flv(cors_server: Server, page_server: str, av_media: Path,
                                  scheme: str) -> None:
    server = cors_server
    with live_stream(server, av_media):
        src = f"{scheme}://127.0.0.1:{server.http_port}/live/sample.flv"
        started = time.monotonic()
        report = play_in_browser(f"{page_server}/mpegts.html?src={src}", PLAY_S)
        assert time.monotonic() - started < PLAY_S + 30
    assert report["supported"], report
    assert report["errors"] == [], f"{report['errors']}\nserver log:\n{server.log()}"
    assert report["mediaInfo"]["hasAudio"] is True
    assert report["mediaInfo"]["hasVideo"] is True
    assert (report["mediaInfo"]["width"], report["mediaInfo"]["height"]) == (320, 240)
    samples = report["samples"]
    # Playback started fast and advanced with the wall clock.
    assert samples[1]["t"] > 0, samples
    assert samples[-1]["t"] - samples[1]["t"] >= (len(samples) - 2) * 0.5 * 0.8, samples
    assert samples[-1]["frames"] >= 25 * (PLAY_S - 1.5), samples


@pytest.mark.parametrize("low_latency", [True, False])
def test_hls_js_plays_live_hls(cors_server: Server, page_server: str, long_av_media: Path,
                               low_latency: bool) -> None:
    server = cors_server
    with live_stream(server, long_av_media):
        src = f"http://127.0.0.1:{server.http_port}/live/sample/index.m3u8"
        flag = "1" if low_latency else "0"
        if not low_latency:
            # Standard HLS starts three segments from the live edge: let a presentation that
            # starts on demand (at this request) have them, as a stream that is watched has.
            assert httpx.get(src, timeout=15).status_code == 200
            time.sleep(3 * PLAN_SEGMENT_S)
        report = play_in_browser(f"{page_server}/hls.html?lowLatency={flag}&src={src}",
                                 HLS_PLAY_S)
    assert report["supported"], report
    assert report["fatal"] == [], f"{report}\nserver log:\n{server.log()}"
    assert report["levels"] == [{"width": 320, "height": 240, "codecs": "avc1,mp4a"}]
    assert report["audioTracks"] == 1
    samples = [s for s in report["samples"] if s["t"] > 0]
    assert len(samples) >= len(report["samples"]) - 8, report["samples"]  # started in 4 s
    assert samples[-1]["t"] - samples[0]["t"] >= (len(samples) - 1) * 0.5 * 0.8, samples
    assert samples[-1]["t"] - samples[0]["t"] >= 10, samples
    # hls.js's own estimate of its distance from the live edge (PROGRAM-DATE-TIME).
    latency = report["latency"][-4:]
    print(f"\n{'LL-' if low_latency else ''}HLS latency in hls.js: {latency}")
    if low_latency:
        assert report["partLoads"] > 0  # it followed the parts, not only segments
        assert max(latency) < 3.0, report["latency"]


def test_dash_js_plays_live_dash(cors_server: Server, page_server: str,
                                 long_av_media: Path) -> None:
    """dash.js takes its low-latency mode from the MPD (availabilityTimeOffset, chunks)."""
    server = cors_server
    with live_stream(server, long_av_media):
        base = f"http://127.0.0.1:{server.http_port}"
        src, clock = f"{base}/live/sample/index.mpd", f"{base}/api/time"
        report = play_in_browser(f"{page_server}/dash.html?src={src}&time={clock}", HLS_PLAY_S)
    assert report["supported"], report
    assert report["fatal"] == [], f"{report}\nserver log:\n{server.log()}"
    assert sorted(t["type"] for t in report["tracks"]) == ["audio", "video"], report
    samples = [s for s in report["samples"] if s["t"] > 0]
    assert len(samples) >= len(report["samples"]) - 10, report["samples"]  # started in 5 s
    assert samples[-1]["t"] - samples[0]["t"] >= (len(samples) - 1) * 0.5 * 0.7, samples
    assert samples[-1]["t"] - samples[0]["t"] >= 10, samples
    # dash.js's own latency estimate: its synced clock against the MPD's timeline.
    latency = report["latency"][-4:]
    print(f"\nLL-DASH latency in dash.js: {latency}")
    assert max(latency) < 2.0, report["latency"]


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_mse_plays_live_fmp4(cors_server: Server, page_server: str, long_av_media: Path,
                             scheme: str) -> None:
    server = cors_server
    with live_stream(server, long_av_media):
        # The codecs of the stream's init segment, as the server's HLS playlist states them.
        top = httpx.get(server.http("/live/sample/index.m3u8"), timeout=15).text
        codecs = top.split('CODECS="', 1)[1].split('"', 1)[0]
        src = f"{scheme}://127.0.0.1:{server.http_port}/live/sample.mp4"
        report = play_in_browser(f"{page_server}/mse.html?codecs={codecs}&src={src}",
                                 HLS_PLAY_S)
    assert report["supported"], report
    assert report["fatal"] == [], f"{report}\nserver log:\n{server.log()}"
    samples = [s for s in report["samples"] if s["t"] > 0]
    assert len(samples) >= len(report["samples"]) - 4, report["samples"]  # started in 2 s
    # Ten seconds and more of playback that keeps up with the wall clock.
    assert samples[-1]["t"] - samples[0]["t"] >= 10, samples
    assert samples[-1]["frames"] >= 25 * 10, samples
