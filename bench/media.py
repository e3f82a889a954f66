"""The benchmark's test media: generated once with the imageio-ffmpeg wheel's ffmpeg, cached.

H.264 High with B-frames, 1280x720 testsrc2 at 30 fps, a keyframe every 2 s, about 2 Mbit/s
(-b:v/-maxrate/-bufsize 2000k, preset veryfast) and AAC-LC 128 kbit/s, as FLV. The publisher
sends the file's tags as they are, so every run of every server carries the same bytes.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

import imageio_ffmpeg

from media import flv

if TYPE_CHECKING:
    from pathlib import Path

FPS = 30
SIZE = "1280x720"
VIDEO_KBPS = 2000
AUDIO_KBPS = 128
MEDIA_SECONDS = 60  # longer than a default run's publisher lifetime, so it rarely loops
# The smoke's media: the same stream, smaller and shorter, so it encodes in a second or two.
SMOKE_SIZE, SMOKE_SECONDS = "640x360", 6
ENCODE_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class Tag:
    tag_type: int
    timestamp_ms: int
    body: bytes
    keyframe: bool  # a coded video keyframe (not a sequence header)

    @property
    def flv_size(self) -> int:
        """Bytes of this tag in an FLV stream: 11-byte header, body, 4-byte trailer."""
        return len(self.body) + 15


@dataclass(frozen=True, slots=True)
class Media:
    path: Path
    metadata: bytes  # the onMetaData SCRIPT body (AMF0), "" if the file had none
    headers: list[Tag]  # sequence headers (AVC, AAC): sent first, once per publish
    tags: list[Tag]  # coded frames in file order
    duration_ms: int  # span of the frames' timestamps plus one frame

    @property
    def bitrate_bps(self) -> float:
        return sum(t.flv_size for t in self.tags) * 8000 / self.duration_ms


def media_path(workdir: Path, size: str = SIZE, seconds: int = MEDIA_SECONDS) -> Path:
    return workdir / f"testsrc2-{size}-{FPS}fps-{VIDEO_KBPS}k-{seconds}s.flv"


def ensure_media(workdir: Path, size: str = SIZE, seconds: int = MEDIA_SECONDS) -> Path:
    """The cached test file, encoded first if it is not there yet (about 15 s on 2 cores)."""
    path = media_path(workdir, size, seconds)
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.flv")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
           "-t", str(seconds),
           "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", "2",
           "-g", str(2 * FPS), "-keyint_min", str(2 * FPS), "-sc_threshold", "0",
           "-pix_fmt", "yuv420p", "-b:v", f"{VIDEO_KBPS}k", "-maxrate", f"{VIDEO_KBPS}k",
           "-bufsize", f"{VIDEO_KBPS}k",
           "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2",
           "-f", "flv", str(partial)]
    subprocess.run(cmd, check=True, timeout=ENCODE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    partial.rename(path)  # a run interrupted mid-encode leaves no half file behind
    return path


def is_video_keyframe(body: bytes | bytearray | memoryview) -> bool:
    """An AVC coded keyframe: FrameType 1 / CodecID 7, AVCPacketType 1 (not the config)."""
    return len(body) > 1 and body[0] == 0x17 and body[1] == 1


def is_video_frame(body: bytes | bytearray | memoryview) -> bool:
    """Any AVC coded frame (AVCPacketType 1): what per-frame latency is measured on."""
    return len(body) > 1 and body[0] & 0x0F == 7 and body[1] == 1


def load_media(path: Path) -> Media:
    dec = flv.FlvDecoder()
    dec.receive_data(path.read_bytes())
    metadata = b""
    headers: list[Tag] = []
    tags: list[Tag] = []
    while (ev := dec.next_event()) is not flv.NEED_DATA:
        if not isinstance(ev, flv.FlvTag):
            continue
        if ev.tag_type == flv.TagType.SCRIPT:
            metadata = metadata or ev.body
            continue
        body = ev.body
        config = len(body) > 1 and body[1] == 0  # AVC/AAC sequence header
        tag = Tag(ev.tag_type, ev.timestamp_ms, body,
                  ev.tag_type == flv.TagType.VIDEO and is_video_keyframe(body))
        (headers if config else tags).append(tag)
    video = [t for t in tags if t.tag_type == flv.TagType.VIDEO]
    if not video or not video[0].keyframe or not headers:
        raise ValueError(f"{path}: expected sequence headers and video from a keyframe")
    span = tags[-1].timestamp_ms - tags[0].timestamp_ms
    return Media(path, metadata, headers, tags, span + 1000 // FPS)
