"""Other RTMP implementations: librtmp (rtmpdump) and GStreamer's rtmp2sink / rtmp2src.

These need Debian packages; .ci/run installs them, and `make test` runs them when present.
"""

from __future__ import annotations

import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.e2e.harness import ffmpeg_record, finish, media_report, publish, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.harness import Server

pytestmark = pytest.mark.interop


def test_rtmpdump_plays(server: Server, av_media: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtmpdump.flv"
    player = subprocess.Popen(
        ["rtmpdump", "--live", "-q", "-r", server.rtmp(), "-o", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    finish(publish(server, av_media), 30)
    try:
        player.communicate(timeout=15)  # librtmp ends on UnpublishNotify
    except subprocess.TimeoutExpired:
        player.kill()
        player.communicate()
        raise
    sent, got = media_report(av_media), media_report(out)
    got.check_timing()
    assert len(got.video) >= 0.95 * len(sent.video)
    assert len(got.audio) >= 0.95 * len(sent.audio)
    assert (got.width, got.height) == (sent.width, sent.height)


def _gst(*pipeline: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["gst-launch-1.0", "-q", "-e", *pipeline],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_gstreamer_rtmp2sink_publishes(server: Server, av_media: Path, tmp_path: Path) -> None:
    out = tmp_path / "from-gst.flv"
    player = ffmpeg_record(server.http("/live/sample.flv"), out)
    time.sleep(1.0)
    publisher = _gst(
        "filesrc", f"location={av_media}", "!", "flvdemux", "name=d",
        "flvmux", "name=m", "streamable=true", "!", "rtmp2sink", f"location={server.rtmp()}",
        "d.video", "!", "queue", "!", "h264parse", "!", "m.",
        "d.audio", "!", "queue", "!", "aacparse", "!", "m.")
    wait_until(lambda: server.stream_status(), 15, "GStreamer to publish")
    finish(publisher, 40)
    finish(player, 15)
    sent, got = media_report(av_media), media_report(out)
    got.check_timing()
    assert len(got.video) >= 0.95 * len(sent.video)
    assert len(got.audio) >= 0.95 * len(sent.audio)


def test_gstreamer_rtmp2src_plays(server: Server, av_media: Path, tmp_path: Path) -> None:
    out = tmp_path / "gst.flv"
    publisher = publish(server, av_media)
    wait_until(lambda: server.stream_status(), 10, "the stream")
    player = _gst("rtmp2src", f"location={server.rtmp()}", "!", "filesink", f"location={out}")
    time.sleep(5.0)
    player.send_signal(signal.SIGINT)  # -e turns it into EOS: the file is complete
    finish(player, 15)
    publisher.kill()
    publisher.communicate()
    got = media_report(out)
    got.check_timing()
    # Five seconds of a 30 fps stream, started on the cached GOP.
    assert len(got.video) >= 100
    assert got.audio
    assert (got.width, got.height) == (320, 240)
