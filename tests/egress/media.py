"""Real media for the egress tests: a few seconds of x264 + AAC/Opus made by ffmpeg, as packets."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from broker.flvpacket import packet_from_flv
from broker.packet import MediaPacket, StreamKey
from media.flv import NEED_DATA, FlvDecoder, FlvTag

if TYPE_CHECKING:
    from pathlib import Path

KEY = StreamKey("live", "_definst_", "t")
SECONDS = 5


def ffmpeg_exe() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def flv_packets(path: Path) -> list[MediaPacket]:
    dec = FlvDecoder()
    dec.receive_data(path.read_bytes())
    packets = []
    while (ev := dec.next_event()) is not NEED_DATA:
        if isinstance(ev, FlvTag):
            pkt = packet_from_flv(KEY, ev.tag_type, ev.timestamp_ms, ev.body)
            if pkt is not None:
                packets.append(pkt)
    return packets


def make_real_flv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[MediaPacket]]:
    """5 s of testsrc2 320x240@30 (x264 High, 2 B-frames) with AAC or Opus, as packets."""
    folder = tmp_path_factory.mktemp("flv")
    out = {}
    for name, audio_args in (("aac", ["-c:a", "aac", "-ar", "44100"]),
                             ("opus", ["-c:a", "libopus", "-ar", "48000"])):
        path = folder / f"{name}.flv"
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(SECONDS),
            "-c:v", "libx264", "-profile:v", "high", "-bf", "2", "-g", "60", *audio_args,
            "-f", "flv", str(path),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        if proc.returncode == 0:
            out[name] = flv_packets(path)
    if "aac" not in out:
        pytest.skip("ffmpeg could not make the test FLV")
    return out


