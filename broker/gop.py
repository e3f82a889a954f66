"""What a late joiner needs to start at once: metadata, sequence headers and the current GOP."""

from __future__ import annotations

from broker.packet import MediaPacket, TrackKind

# A GOP longer than this (frames or bytes) is not cached whole: a viewer then waits for the
# next keyframe instead of the server holding an unbounded backlog per stream.
MAX_GOP_FRAMES = 1200
MAX_GOP_BYTES = 32 << 20
# Audio-only streams start anywhere; about a second of frames lets a player fill its buffer.
AUDIO_ONLY_TAIL_FRAMES = 48


class GopCache:
    """Per-stream start-up state, updated packet by packet (pure; no I/O)."""

    __slots__ = ("audio_config", "gop", "gop_bytes", "has_video", "keyed", "metadata",
                 "video_config")

    def __init__(self) -> None:
        self.metadata: MediaPacket | None = None
        self.video_config: MediaPacket | None = None
        self.audio_config: MediaPacket | None = None
        self.gop: list[MediaPacket] = []
        self.gop_bytes = 0
        self.has_video = False
        self.keyed = False  # the GOP starts with a video keyframe

    def add(self, pkt: MediaPacket) -> None:
        if pkt.kind is TrackKind.DATA:
            self.metadata = pkt
            return
        if pkt.is_config:
            if pkt.kind is TrackKind.VIDEO:
                self.video_config = pkt
            else:
                self.audio_config = pkt
            return
        if pkt.kind is TrackKind.VIDEO:
            self.has_video = True
            if pkt.keyframe:
                self._clear()
                self.keyed = True
            elif not self.keyed:
                self._clear()  # no keyframe yet (an audio tail goes too): nothing to start on
                return
        elif self.has_video:
            if not self.keyed:
                return  # audio before the first keyframe would play without picture
        elif len(self.gop) >= AUDIO_ONLY_TAIL_FRAMES:
            self.gop_bytes -= len(self.gop.pop(0).payload)
        self.gop.append(pkt)
        self.gop_bytes += len(pkt.payload)
        if len(self.gop) > MAX_GOP_FRAMES or self.gop_bytes > MAX_GOP_BYTES:
            self._clear()

    def _clear(self) -> None:
        self.gop.clear()
        self.gop_bytes = 0
        self.keyed = False

    def snapshot(self) -> list[MediaPacket]:
        """Metadata, sequence headers, then the GOP: a valid start for any player."""
        head = [p for p in (self.metadata, self.video_config, self.audio_config) if p]
        return head + self.gop
