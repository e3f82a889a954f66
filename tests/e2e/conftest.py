"""Fixtures for the end-to-end tests: test media made once per session, servers per test."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import pytest

from tests.e2e.harness import Server, cleanup, make_media, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

INTEROP_TOOLS = ("rtmpdump", "gst-launch-1.0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Interop tests need Debian tools: run them when present, say so plainly when not."""
    missing = [t for t in INTEROP_TOOLS if shutil.which(t) is None]
    if not missing:
        return
    if os.environ.get("RTMPMATE_REQUIRE_INTEROP"):
        raise pytest.UsageError(
            f"interop tools missing: {', '.join(missing)} (.ci/run installs them)")
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (dropped if item.get_closest_marker("interop") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        print(f"\nNOT RUN: {len(dropped)} interop tests; missing tools: {', '.join(missing)}. "
              "Install rtmpdump and GStreamer (see .ci/run) to run them.")


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_media(media_dir: Path) -> Path:
    """10 s of H.264 High with B-frames and AAC-LC."""
    return make_media(media_dir / "av.flv", seconds=10)


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
