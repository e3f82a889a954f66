"""Fixtures for the end-to-end tests: test media made once per session, servers per test."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e import harness
from tests.e2e.harness import REPO, Server, cleanup, make_media, start_server

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from pathlib import Path

# What each marker's tests need beyond the Python packages; `tests/tools.py` says the same.
REQUIREMENTS = {
    "interop": ["rtmpdump", "gst-launch-1.0"],
    "browser": ["chromium", "node", "tests/browser/node_modules"],
}


def missing_requirements(marker: str) -> list[str]:
    return [r for r in REQUIREMENTS[marker]
            if (not (REPO / r).exists() if "/" in r else shutil.which(r) is None)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Interop and browser tests need Debian tools: run them when present, say so when not."""
    for marker in REQUIREMENTS:
        missing = missing_requirements(marker)
        if not missing:
            continue
        if os.environ.get("RTMPMATE_REQUIRE_INTEROP"):
            raise pytest.UsageError(
                f"{marker} tests need {', '.join(missing)} (.ci/run installs them)")
        keep = [i for i in items if not i.get_closest_marker(marker)]
        dropped = [i for i in items if i.get_closest_marker(marker)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
            print(f"\nNOT RUN: {len(dropped)} {marker} tests; missing: {', '.join(missing)}. "
                  "See .ci/run for how to install them.")


@pytest.fixture(autouse=True)
def _server_logs() -> None:
    harness.CLEANED_LOGS.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test reports the tail of every rtmpmate log it made: the run directory is gone
    by the time anyone reads the report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    logs = dict(harness.CLEANED_LOGS)
    logs.update((s.workdir.name, s.log_tail()) for s in harness.STARTED)
    for name, tail in logs.items():
        report.sections.append((f"rtmpmate log {name} (last {harness.LOG_TAIL_LINES} lines)",
                                tail))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_media(media_dir: Path) -> Path:
    """10 s of H.264 High with B-frames and AAC-LC."""
    return make_media(media_dir / "av.flv", seconds=10)


@pytest.fixture(scope="session")
def long_av_media(media_dir: Path) -> Path:
    """30 s of the same, for players that take their time (HLS, browsers)."""
    return make_media(media_dir / "long.flv", seconds=30)


@pytest.fixture(scope="session")
def short_av_media(media_dir: Path) -> Path:
    return make_media(media_dir / "short.flv", seconds=4)


@pytest.fixture(scope="session")
def audio_media(media_dir: Path) -> Path:
    return make_media(media_dir / "audio.flv", seconds=4, video=False)


@pytest.fixture(scope="session")
def video_media(media_dir: Path) -> Path:
    return make_media(media_dir / "video.flv", seconds=4, audio=False)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = start_server(ingest=2, egress=2)
    yield srv
    cleanup(srv)


@pytest.fixture
def one_egress() -> Iterator[Server]:
    """One ingest and one egress worker: requests that must meet the same worker's state."""
    srv = start_server(ingest=1, egress=1)
    yield srv
    cleanup(srv)
