"""One stream's fan-out in one process: mux each packet once, queue the same bytes to every viewer.

The hub is the FeedSink of a stream's bus feed. It keeps what a late joiner needs (GopCache),
makes timestamps monotonic across publisher reconnects, and starts each viewer on a keyframe
with the metadata and sequence headers first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Protocol

from broker.fanout import CONTROL, PLAIN, SYNC
from broker.gop import GopCache
from broker.packet import MediaPacket, StreamKey, TrackKind, rescale

if TYPE_CHECKING:
    from broker.fanout import BoundedQueue, Flusher

# Muxes one packet for one output variant (e.g. an RTMP message stream id); called once per
# packet and variant, never per viewer.
Mux = Callable[[MediaPacket, Hashable], bytes]

# Where a new publisher's timestamps continue after the previous one's last frame.
REPUBLISH_GAP_MS = 40
# Without metadata to say which tracks exist, a stream is declared audio-only (or video-only)
# once this many frames of the one track came without the other's sequence header.
AUDIO_ONLY_AFTER_FRAMES = 25
VIDEO_ONLY_AFTER_FRAMES = 15


class ViewerHandler(Protocol):
    def begin(self, *, audio: bool, video: bool) -> bytes: ...  # bytes before the first packet
    def ended(self) -> bytes | None: ...  # publisher left: None = close, bytes = send, stay


class Viewer:
    __slots__ = ("handler", "protocol", "queue", "skip", "started", "variant")

    def __init__(self, protocol: str, handler: ViewerHandler, queue: BoundedQueue, *,
                 variant: Hashable = None) -> None:
        self.protocol = protocol
        self.handler = handler
        self.variant = variant
        self.queue = queue
        self.started = False
        self.skip = 0  # items of the hub's current batch that came before this viewer started


class StreamHub:
    """With a Flusher, the packets of one bus wake-up go to the viewers as one batch when the
    flusher flushes the hub; without one (tests), each packet goes at once."""

    def __init__(self, key: StreamKey, mux: Mux, flusher: Flusher | None = None) -> None:
        self.key = key
        self.mux = mux
        self.flusher = flusher
        self.viewers: set[Viewer] = set()
        self._waiting: set[Viewer] = set()  # not started: they start at the next sync point
        self._batch: list[Callable[[Hashable], bytes]] = []  # makes an item's bytes per variant
        self._flags: list[int] = []  # PLAIN, SYNC or CONTROL, per batch item
        self.cache = GopCache()
        self.live = False  # a publisher is on and the hub can start viewers
        self._offset = 0  # ms added to every timestamp of the current session
        self._last_dts = 0  # ms, last output dts over all tracks
        self._rebase = False  # next packet of a new session fixes the offset
        self._last_track_dts: dict[TrackKind, tuple[int, int]] = {}  # (dts, its timescale)
        self._expect_video = False
        self._resync = False

    # -- FeedSink ------------------------------------------------------------------------------

    def on_session(self) -> None:
        self.flush()
        had = self.cache.gop or self.cache.video_config or self.cache.audio_config
        self.cache = GopCache()
        self._rebase = bool(had) or self._last_dts > 0
        self._expect_video = False
        self.live = False
        self._resync = False
        for viewer in self.viewers:
            # Even without an END (lost, or the owner died), a new publisher means new
            # headers: every viewer starts again at the new session's first keyframe.
            self._unstart(viewer)

    def on_discontinuity(self) -> None:
        self._resync = True
        self.cache.gop.clear()

    def on_end(self) -> None:
        self.flush()  # what came before the end goes before the goodbye
        self.live = False
        for viewer in list(self.viewers):
            goodbye = viewer.handler.ended()
            if goodbye is None:
                self.remove(viewer)
            else:
                viewer.queue.push_control(goodbye)
                self._unstart(viewer)  # starts again at the next publisher's keyframe

    def on_packet(self, pkt: MediaPacket) -> None:
        pkt = self._retime(pkt)
        if pkt.kind is TrackKind.DATA:
            self._expect_video = self._expect_video or _mentions_video(pkt.payload)
        elif pkt.kind is TrackKind.VIDEO:
            self._expect_video = True
        sync = pkt.keyframe and pkt.kind is TrackKind.VIDEO
        if self._resync:
            if not sync and self.cache.has_video:
                return
            self._resync = False
        self.cache.add(pkt)
        if not self.live:
            self._check_live()
            return
        if not pkt.is_config:
            sync = sync or (pkt.kind is TrackKind.AUDIO and not self.cache.has_video)
        self._deliver(pkt, sync)

    def _deliver(self, pkt: MediaPacket, sync: bool) -> None:
        """Mux the packet once per variant and queue it to every started viewer."""
        # Audio may wait for the next video frame to share its write (see broker.fanout).
        urgent = pkt.kind is not TrackKind.AUDIO or not self.cache.has_video
        self._fan_out(lambda variant: self.mux(pkt, variant), sync=sync, urgent=urgent,
                      control=pkt.is_config or pkt.kind is TrackKind.DATA)

    def _fan_out(self, make: Callable[[Hashable], bytes], *, sync: bool, urgent: bool = True,
                 control: bool = False) -> None:
        """Add an item to the batch (its bytes are built once per variant, at flush time); a
        viewer waiting for a start point starts at a sync point instead."""
        self._batch.append(make)
        self._flags.append(CONTROL if control else SYNC if sync else PLAIN)
        if sync and self._waiting:
            for viewer in list(self._waiting):
                self._start(viewer)
        if self.flusher is None:
            self.flush()
        else:
            self.flusher.mark(self, urgent)

    def flush(self) -> None:
        """Hand the batch to every started viewer: one list of shared bytes per variant."""
        batch, flags = self._batch, self._flags
        if not batch:
            return
        self._batch, self._flags = [], []
        by_variant: dict[Hashable, tuple[list[bytes], int]] = {}
        for viewer in self.viewers:
            if not viewer.started:
                continue
            made = by_variant.get(viewer.variant)
            if made is None:
                items = [make(viewer.variant) for make in batch]
                made = by_variant[viewer.variant] = (items, sum(map(len, items)))
            skip = viewer.skip
            if skip:  # it started in the middle of this batch, with what came before
                viewer.skip = 0
                items = made[0][skip:]
                if items:
                    viewer.queue.deliver(items, flags[skip:], sum(map(len, items)))
            else:
                viewer.queue.deliver(made[0], flags, made[1])

    # -- viewers -------------------------------------------------------------------------------

    def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        self._unstart(viewer)
        if self.live:
            self._start(viewer)

    def remove(self, viewer: Viewer, *, close: bool = True) -> None:
        """`close=False` leaves the viewer's queue open: its connection goes on without
        this stream (an RTSP PAUSE, or a TEARDOWN whose answer must still go out)."""
        self.viewers.discard(viewer)
        self._waiting.discard(viewer)
        if close:
            viewer.queue.close()

    def _unstart(self, viewer: Viewer) -> None:
        viewer.started = False
        self._waiting.add(viewer)

    def _started(self, viewer: Viewer) -> None:
        """The viewer's start went into its queue: the batch so far is not for it."""
        viewer.started = True
        viewer.skip = len(self._batch)
        self._waiting.discard(viewer)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for viewer in self.viewers:
            out[viewer.protocol] = out.get(viewer.protocol, 0) + 1
        return out

    def _start(self, viewer: Viewer) -> None:
        snapshot = self.cache.snapshot()
        if not any(p.kind is not TrackKind.DATA and not p.is_config for p in snapshot):
            return  # nothing to start on yet; the next sync point starts it
        audio = self.cache.audio_config is not None
        video = self.cache.video_config is not None
        head = viewer.handler.begin(audio=audio, video=video)
        parts = [head] if head else []
        parts += [self.mux(p, viewer.variant) for p in snapshot]
        viewer.queue.push_control(b"".join(parts))
        self._started(viewer)

    def _check_live(self) -> None:
        """Go live once the tracks a viewer's header must announce are known."""
        cache = self.cache
        meta = cache.metadata.payload if cache.metadata is not None else None
        if self._expect_video:
            if cache.video_config is None or not cache.has_video or not cache.gop:
                return
            if cache.audio_config is None and (meta is None or _mentions_audio(meta)) and (
                    len(cache.gop) < VIDEO_ONLY_AFTER_FRAMES):
                return  # audio may still come; its flag in the FLV header must be right
        elif cache.audio_config is None or not cache.gop or (
                meta is None and len(cache.gop) < AUDIO_ONLY_AFTER_FRAMES):
            return
        self.live = True
        self._went_live()
        for viewer in list(self._waiting):
            self._start(viewer)

    def _went_live(self) -> None:
        """The track set is known (a hook for muxers that need it before the first packet)."""

    def _retime(self, pkt: MediaPacket) -> MediaPacket:
        """Keep output timestamps monotonic across publishers: shift each session as a whole."""
        if pkt.kind is TrackKind.DATA:
            return pkt
        if not pkt.is_config:
            dts_ms = rescale(pkt.dts, pkt.timescale, 1000)
            # A new publisher, or a jump back of over a second inside a session, continues
            # just after the last frame sent.
            if self._rebase or dts_ms + self._offset < self._last_dts - 1000:
                self._offset = self._last_dts + REPUBLISH_GAP_MS - dts_ms
                self._rebase = False
            self._last_dts = max(self._last_dts, dts_ms + self._offset)
        shift = rescale(self._offset, 1000, pkt.timescale)
        dts, pts = pkt.dts + shift, pkt.pts + shift
        if pkt.is_config:
            # A new session's headers come before its offset is known: never before the past.
            dts = pts = max(dts, rescale(self._last_dts, 1000, pkt.timescale))
        else:
            # Players need strictly increasing DTS per track; some muxers (GStreamer's flvmux
            # with B-frames) clamp the first negative DTS values to 0 and repeat them.
            if (last := self._last_track_dts.get(pkt.kind)) is not None:
                floor = rescale(last[0], last[1], pkt.timescale) + 1
                dts = max(dts, floor)
            self._last_track_dts[pkt.kind] = (dts, pkt.timescale)
            pts = max(pts, dts)
        if dts == pkt.dts and pts == pkt.pts:
            return pkt
        return pkt.retimed(dts, pts)


def _mentions_video(amf_payload: bytes) -> bool:
    return b"videocodecid" in amf_payload or b"\x00\x05width" in amf_payload


def _mentions_audio(amf_payload: bytes) -> bool:
    return b"audiocodecid" in amf_payload
