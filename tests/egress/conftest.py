"""Fixtures shared by the egress tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.egress.media import make_real_flv

if TYPE_CHECKING:
    from broker.packet import MediaPacket


@pytest.fixture(scope="session")
def real_flv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[MediaPacket]]:
    """5 s of testsrc2 320x240@30 (x264 High, 2 B-frames) with AAC or Opus, as packets."""
    return make_real_flv(tmp_path_factory)
