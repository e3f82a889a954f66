"""How many received bytes are worth waking a publisher's connection for (SO_RCVLOWAT).

A publisher writes each RTMP message as soon as it is encoded, about 30 video and 43 audio
messages a second for a 2 Mbit/s stream, and each write wakes the ingest worker. A wake-up
costs some 200 us of scheduler and interpreter time on a cold cache, whatever it brings, which
made one stream cost its worker about 0.02 cores, more than half of it for audio frames that
then only wait: an audio frame of a stream with video travels with the next video frame
(broker.zsock.HOLD_AUDIO_S). So while a connection publishes audio and video, its socket wakes
the worker only once more bytes are queued than one or two audio frames make up, which in
practice is when the next video frame is there; that read brings the audio along.

The threshold comes from the stream as seen lately: the largest audio and the smallest video
message of the last two windows of WINDOW_VIDEO video frames, and it is used only where a video
frame is at least twice the threshold. A smaller video frame than any seen lately (a still
picture's) or a command waits for the next message; the shell sees that no bytes wait for
longer than about twice MAX_WAIT_S (ingest.rtmp.server.LazyReads).

A message half received is another matter (the session's `wakeup_threshold`): nothing in it
is usable before its last byte, so the threshold is what it still lacks (ChunkDecoder.missing),
whatever the stream's shape.
"""

from __future__ import annotations

WINDOW_VIDEO = 64  # video frames per estimation window: about 2 s at 30 fps
MIN_VIDEO = 16  # frames seen before the estimates are trusted
MAX_WAIT_S = 0.2  # bytes under the threshold stay unread for at most about twice this
# A message half received wakes the worker once the rest of it can be there, up to this many
# bytes: a larger threshold would only make the kernel grow the socket's receive buffer.
MAX_THRESHOLD = 256 << 10
# RTMP framing around an audio payload, at most: a type-0 header (1 + 11), an extended
# timestamp (4), and a 1-byte header plus extended timestamp for each further chunk.
_FIRST_HEADER = 16
_NEXT_HEADER = 5


class WakeupThreshold:
    """Media sizes of one published stream in, the SO_RCVLOWAT worth setting out."""

    __slots__ = ("_audio", "_prev_audio", "_prev_video", "_seen", "_video", "_window")

    def __init__(self) -> None:
        self._audio = self._prev_audio = 0  # largest audio payload, this and the last window
        self._video = self._prev_video = 1 << 62  # smallest video payload, likewise
        self._window = 0  # video frames in this window
        self._seen = 0  # video frames in this and the last window

    def on_audio(self, size: int) -> None:
        if size > self._audio:
            self._audio = size

    def on_video(self, size: int) -> None:
        if size < self._video:
            self._video = size
        self._window += 1
        if self._window == WINDOW_VIDEO:
            self._seen = self._window
            self._prev_audio, self._prev_video = self._audio, self._video
            self._audio, self._video, self._window = 0, 1 << 62, 0

    def threshold(self, chunk_size: int) -> int:
        """Bytes that must be queued before a wake-up is worth it; 1 = any."""
        if self._seen + self._window < MIN_VIDEO:
            return 1
        audio = max(self._audio, self._prev_audio)
        if not audio:
            return 1  # video only: every frame matters
        wire = audio + _FIRST_HEADER + _NEXT_HEADER * (audio // chunk_size)
        video = min(self._video, self._prev_video)
        for frames in (2, 1):
            below = frames * wire + 1
            if 2 * below <= video:
                return below
        return 1
