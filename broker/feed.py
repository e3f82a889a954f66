"""The consumer side of the bus, pure: stream directory, snapshot join, gaps and sessions.

A consumer subscribes to a stream's topic first, buffers what arrives, asks the stream's owner
for a snapshot, applies it, then applies the buffered updates newer than it (the "clone"
pattern of the ZeroMQ guide). Sequence numbers reveal what PUB/SUB dropped at its high-water
mark; the sink then resynchronises at the next keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from broker.packet import StreamKey
from broker.wire import Mark

if TYPE_CHECKING:
    from broker.packet import MediaPacket
    from broker.wire import Snapshot, WirePacket

# An owner announces each live stream every ANNOUNCE_INTERVAL_S; a stream not heard of for
# ANNOUNCE_EXPIRY_S is gone (its ingest worker died without saying so).
ANNOUNCE_INTERVAL_S = 1.0
ANNOUNCE_EXPIRY_S = 3.5
# Updates held while a snapshot is on its way; past this the join restarts from a keyframe.
MAX_PENDING = 4096


@dataclass
class StreamInfo:
    """What an owner says of a live stream (the body of a "stream" control message)."""

    key: StreamKey
    owner: str  # snapshot endpoint
    session: int
    seen_at: float
    info: dict[str, Any] = field(default_factory=dict)
    # Where the owner takes live HTTP players of this stream (an Inbox path; "" = it does not)
    # and how many more it takes; `handed` counts what this process passed it since.
    inbox: str = ""
    room: int = 0
    handed: int = 0


class StreamDirectory:
    """Live streams as announced on the bus, with expiry."""

    def __init__(self) -> None:
        self.streams: dict[StreamKey, StreamInfo] = {}

    def on_control(self, body: dict[str, Any], now: float) -> StreamKey | None:
        """Apply a control message; returns the key it concerned, if any."""
        kind = body.get("kind")
        try:
            key = StreamKey.parse(str(body.get("key")))
        except ValueError:
            return None
        if kind == "stream":
            info, session = body.get("info"), body.get("session")
            if type(session) is not int:
                return None  # malformed: ignore it rather than fail the consumer
            players = body.get("players")
            inbox, room = "", 0
            if isinstance(players, dict) and isinstance(players.get("inbox"), str) and (
                    type(players.get("room")) is int):
                inbox, room = players["inbox"], max(0, players["room"])
            self.streams[key] = StreamInfo(
                key, str(body.get("owner", "")), session, now,
                info if isinstance(info, dict) else {}, inbox, room)
            return key
        if kind == "stream-end":
            current = self.streams.get(key)
            if current is not None and current.session == body.get("session"):
                del self.streams[key]
            return key
        return None

    def get(self, key: StreamKey, now: float) -> StreamInfo | None:
        info = self.streams.get(key)
        if info is not None and now - info.seen_at > ANNOUNCE_EXPIRY_S:
            del self.streams[key]
            return None
        return info

    def live(self, now: float) -> list[StreamInfo]:
        return [i for k in list(self.streams) if (i := self.get(k, now)) is not None]


class FeedSink(Protocol):
    def on_session(self) -> None: ...  # a new publisher: new timestamps and sequence headers follow
    def on_packet(self, pkt: MediaPacket) -> None: ...
    def on_discontinuity(self) -> None: ...  # packets were lost: resume at the next keyframe
    def on_end(self) -> None: ...  # the publisher left


class FeedState:
    """Orders one stream's bus messages for one sink."""

    def __init__(self, sink: FeedSink) -> None:
        self.sink = sink
        self.session: int | None = None
        self.last_seq = -1
        self.joining = True  # until apply_snapshot: buffer
        self.pending: list[WirePacket] = []
        self.needs_snapshot = False  # set when a session is seen mid-way without a snapshot
        self.ended: int | None = None  # the last session that ended: late copies are stale

    def on_wire(self, wp: WirePacket) -> None:
        if self.joining:
            if len(self.pending) >= MAX_PENDING:
                self.pending.clear()
                self.sink.on_discontinuity()
            self.pending.append(wp)
            return
        self._apply(wp)

    def apply_snapshot(self, snap: Snapshot | None) -> None:
        """End the join: apply the snapshot (if the stream had one), then the buffered updates."""
        if snap is not None:
            if snap.session != self.session:
                self.session = snap.session
                self.sink.on_session()
            for pkt in snap.packets:
                self.sink.on_packet(pkt)
            self.last_seq = snap.last_seq
        self.joining = False
        self.needs_snapshot = False
        pending, self.pending = self.pending, []
        for i, wp in enumerate(pending):
            if wp.session == self.session and wp.seq <= self.last_seq:
                continue  # already in the snapshot
            self._apply(wp)
            if self.joining:  # a session joined mid-way: hold the rest for its snapshot
                self.pending += pending[i + 1:]
                break

    def start_join(self) -> None:
        """Buffer from now on until apply_snapshot (used when a session was joined mid-way)."""
        self.joining = True

    def _apply(self, wp: WirePacket) -> None:
        if wp.session != self.session:
            if wp.mark is Mark.END or wp.session == self.ended:
                # The end of a session we never saw, or a late copy of one that ended (an
                # owner's local delivery overtakes the bus copies of a session's first frames).
                return
            self.session = wp.session
            self.last_seq = -1
            self.sink.on_session()
            if wp.seq != 0:
                # We missed this session's start (and its sequence headers): fetch a snapshot.
                self.needs_snapshot = True
                self.joining = True
                self.pending.append(wp)
                return
        elif wp.seq <= self.last_seq:
            return  # duplicate
        elif wp.seq != self.last_seq + 1:
            self.sink.on_discontinuity()
        self.last_seq = wp.seq
        if wp.mark is Mark.END:
            self.ended, self.session = self.session, None
            self.sink.on_end()
        elif wp.packet is not None:
            self.sink.on_packet(wp.packet)
