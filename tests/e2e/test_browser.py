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

import pytest

from tests.e2e.harness import REPO, cleanup, free_port, publish, start_server, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.harness import Server

pytestmark = pytest.mark.browser
BROWSER_DIR = REPO / "tests" / "browser"
PLAY_S = 6


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
    publisher = publish(server, av_media)
    try:
        wait_until(lambda: server.stream_status(), 10, "the stream")
        src = f"{scheme}://127.0.0.1:{server.http_port}/live/sample.flv"
        started = time.monotonic()
        report = play_in_browser(f"{page_server}/mpegts.html?src={src}", PLAY_S)
        assert time.monotonic() - started < PLAY_S + 30
    finally:
        publisher.kill()
        publisher.communicate()
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
