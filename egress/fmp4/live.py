"""Live fMP4 fan-out: each stream is fragmented once per worker; viewers share the bytes.

An `Fmp4Hub` is a StreamHub whose unit of fan-out is a fragment (moof+mdat) rather than a
packet. A viewer starts with the init segment and the fragments since the last keyframe,
then receives every new fragment, framed once per variant (HTTP chunk, WebSocket message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.hub import StreamHub
from broker.packet import TrackKind
from egress.flv_live import Framing
from egress.fmp4.fragmenter import Fmp4Fragmenter, Fragment, InitSegment, Mp4WriteError

if TYPE_CHECKING:
    from collections.abc import Hashable

    from broker.fanout import Flusher
    from broker.hub import Viewer
    from broker.packet import MediaPacket, StreamKey

# A GOP longer than this (in fragments) is not cached whole: a viewer then waits for the
# next keyframe instead of the worker holding an unbounded backlog.
MAX_CACHED_FRAGMENTS = 1200
# Audio-only fragments are each a start point; a few let a player fill its buffer at once.
AUDIO_ONLY_CACHED_FRAGMENTS = 8


class Fmp4Handler:
    """Viewer side of an fMP4 hub: nothing of its own to send before the init segment."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing

    def begin(self, *, audio: bool, video: bool) -> bytes:
        return b""

    def ended(self) -> bytes | None:
        return None  # the publisher left: end the response cleanly


class Fmp4Hub(StreamHub):
    def __init__(self, key: StreamKey, flusher: Flusher | None = None) -> None:
        super().__init__(key, _no_packet_mux, flusher)
        self.fragmenter: Fmp4Fragmenter | None = None
        self.init: bytes | None = None
        self.fragments: list[Fragment] = []  # since the last keyframe fragment

    def on_session(self) -> None:
        super().on_session()
        self.fragmenter, self.init, self.fragments = None, None, []

    def _went_live(self) -> None:
        cache = self.cache
        # low_latency: a frame goes out as it arrives rather than when the next one does.
        self.fragmenter = Fmp4Fragmenter(video=cache.video_config is not None,
                                         audio=cache.audio_config is not None,
                                         low_latency=True)
        for pkt in cache.snapshot():
            self._fragment(pkt)

    def _deliver(self, pkt: MediaPacket, sync: bool) -> None:
        self._fragment(pkt)

    def _fragment(self, pkt: MediaPacket) -> None:
        if self.fragmenter is None or pkt.kind is TrackKind.DATA:
            return
        try:
            events = self.fragmenter.add(pkt)
        except Mp4WriteError:
            return  # e.g. a codec fMP4 cannot carry yet: FLV outputs still work
        for event in events:
            if isinstance(event, InitSegment):
                self.flush()  # the old init's fragments go first
                self.init = event.data
                self.fragments.clear()
                for viewer in self.viewers:
                    self._unstart(viewer)  # a new init (new resolution): restart on it
            else:
                self._push(event)

    def _push(self, fragment: Fragment) -> None:
        audio_only = not self.cache.has_video
        sync = fragment.keyframe or audio_only
        if fragment.keyframe:
            self.fragments.clear()
        if self.fragments or sync:
            self.fragments.append(fragment)
            limit = AUDIO_ONLY_CACHED_FRAGMENTS if audio_only else MAX_CACHED_FRAGMENTS
            if len(self.fragments) > limit:
                del self.fragments[:-limit if audio_only else None]
        self._fan_out(lambda variant: _frame(variant, fragment.data), sync=sync)

    def _start(self, viewer: Viewer) -> None:
        if self.init is None or not self.fragments:
            return  # the next keyframe fragment starts it
        parts = [_frame(viewer.variant, self.init)]
        parts += [_frame(viewer.variant, f.data) for f in self.fragments]
        viewer.queue.push_control(b"".join(parts))
        self._started(viewer)


def _frame(variant: Hashable, data: bytes) -> bytes:
    assert isinstance(variant, Framing)
    return variant.wrap(data)


def _no_packet_mux(pkt: MediaPacket, variant: Hashable) -> bytes:
    raise AssertionError("an Fmp4Hub muxes fragments, not packets")
