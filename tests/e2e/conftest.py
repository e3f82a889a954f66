"""Fixtures for the end-to-end tests: test media made once per session, servers per test."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import pytest

from tests.e2e.harness import REPO, Server, cleanup, make_media, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator
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
