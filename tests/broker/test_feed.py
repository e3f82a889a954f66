"""FeedState (ordering, gaps, sessions, snapshot join) and StreamDirectory (announce/expiry)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from broker import feed
from broker.feed import FeedState, StreamDirectory
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from broker.wire import Mark, Snapshot, WirePacket

KEY = StreamKey("live", "_definst_", "feed")
S1 = 1111
S2 = 2222


def pkt(n: int, *, key: bool = False) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=n * 40,
                       pts=n * 40, timescale=1000, keyframe=key, is_config=False,
                       payload=f"p{n}".encode())


def media(seq: int, session: int = S1, *, key: bool = False) -> WirePacket:
    return WirePacket(KEY, seq, session, Mark.MEDIA, pkt(seq, key=key))


def end(seq: int, session: int = S1) -> WirePacket:
    return WirePacket(KEY, seq, session, Mark.END, None)


@dataclass
class RecordingSink:
    events: list[str | MediaPacket] = field(default_factory=list)

    def on_session(self) -> None:
        self.events.append("session")

    def on_packet(self, pkt: MediaPacket) -> None:
        self.events.append(pkt)

    def on_discontinuity(self) -> None:
        self.events.append("gap")

    def on_end(self) -> None:
        self.events.append("end")


def started() -> tuple[FeedState, RecordingSink]:
    """A feed whose join found no snapshot (no publisher yet): it applies updates directly."""
    sink = RecordingSink()
    state = FeedState(sink)
    state.apply_snapshot(None)
    assert sink.events == []
    return state, sink


# --- FeedState -------------------------------------------------------------------------------


def test_in_order_delivery() -> None:
    state, sink = started()
    for seq in range(5):
        state.on_wire(media(seq, key=seq == 0))
    assert sink.events == ["session", pkt(0, key=True), pkt(1), pkt(2), pkt(3), pkt(4)]
    assert state.session == S1
    assert state.last_seq == 4
    assert not state.needs_snapshot


def test_gap_reports_discontinuity_then_delivers() -> None:
    state, sink = started()
    for seq in (0, 1, 4, 5):
        state.on_wire(media(seq))
    assert sink.events == ["session", pkt(0), pkt(1), "gap", pkt(4), pkt(5)]


def test_duplicates_and_stale_packets_are_ignored() -> None:
    state, sink = started()
    for seq in (0, 1, 1, 2, 0, 2, 3):
        state.on_wire(media(seq))
    assert sink.events == ["session", pkt(0), pkt(1), pkt(2), pkt(3)]


def test_updates_are_buffered_until_the_snapshot() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    for seq in (3, 4, 5):
        state.on_wire(media(seq))
    assert sink.events == []
    assert len(state.pending) == 3


def test_snapshot_join_skips_older_pending_and_applies_newer() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    for seq in (3, 4, 5, 6):  # subscribed while the stream was at seq 3
        state.on_wire(media(seq))
    gop = [pkt(2, key=True), pkt(3), pkt(4)]
    state.apply_snapshot(Snapshot(KEY, S1, 4, gop))
    assert sink.events == ["session", *gop, pkt(5), pkt(6)]
    assert state.last_seq == 6
    assert state.pending == []
    assert not state.joining
    state.on_wire(media(7))
    assert sink.events[-1] == pkt(7)


def test_snapshot_newer_than_every_pending_update() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    state.on_wire(media(3))
    state.apply_snapshot(Snapshot(KEY, S1, 9, [pkt(8, key=True), pkt(9)]))
    assert sink.events == ["session", pkt(8, key=True), pkt(9)]
    state.on_wire(media(10))
    assert sink.events[-1] == pkt(10)


def test_gap_between_snapshot_and_pending_is_a_discontinuity() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    state.on_wire(media(7))  # seq 5 and 6 were lost
    state.apply_snapshot(Snapshot(KEY, S1, 4, [pkt(4, key=True)]))
    assert sink.events == ["session", pkt(4, key=True), "gap", pkt(7)]


def test_empty_snapshot_of_a_live_session() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    state.on_wire(media(0))
    state.apply_snapshot(Snapshot(KEY, S1, -1, []))  # owner has published nothing yet
    assert sink.events == ["session", pkt(0)]


def test_new_session_from_seq_zero_needs_no_snapshot() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.on_wire(media(1))
    state.on_wire(media(0, S2, key=True))  # republished without an END mark
    state.on_wire(media(1, S2))
    assert sink.events == ["session", pkt(0), pkt(1), "session", pkt(0, key=True), pkt(1)]
    assert state.session == S2
    assert not state.needs_snapshot


def test_new_session_mid_way_sets_needs_snapshot_and_buffers() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.on_wire(media(7, S2))  # S2's start (and its sequence headers) was missed
    assert sink.events == ["session", pkt(0), "session"]
    assert (state.needs_snapshot, state.joining) == (True, True)
    state.on_wire(media(8, S2))
    state.on_wire(media(9, S2))
    assert sink.events == ["session", pkt(0), "session"]  # buffered, not delivered
    state.apply_snapshot(Snapshot(KEY, S2, 8, [pkt(6, key=True), pkt(7), pkt(8)]))
    # Same session as already announced: no second on_session.
    assert sink.events == ["session", pkt(0), "session", pkt(6, key=True), pkt(7), pkt(8),
                           pkt(9)]
    assert not state.needs_snapshot
    assert not state.joining


def test_snapshot_of_a_new_session_announces_it() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.start_join()
    state.on_wire(media(5, S2))
    state.apply_snapshot(Snapshot(KEY, S2, 5, [pkt(5, key=True)]))
    assert sink.events == ["session", pkt(0), "session", pkt(5, key=True)]
    assert state.session == S2


def test_end_mark_calls_on_end() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.on_wire(end(1))
    assert sink.events == ["session", pkt(0), "end"]
    assert state.session is None
    # The next publisher starts a new session at seq 0.
    state.on_wire(media(0, S2))
    assert sink.events == ["session", pkt(0), "end", "session", pkt(0)]


def test_late_copies_of_an_ended_session_are_ignored() -> None:
    """An owner delivers its own streams locally; copies of a session's first frames that the
    bus carried before the owner's unsubscription took effect may arrive after its END."""
    state, sink = started()
    for wp in (media(0), media(1), end(2), media(0), media(1), end(2)):
        state.on_wire(wp)
    assert sink.events == ["session", pkt(0), pkt(1), "end"]
    assert not state.needs_snapshot
    state.on_wire(media(0, S2))
    assert sink.events[-2:] == ["session", pkt(0)]


def test_end_after_a_gap_reports_the_gap_first() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.on_wire(end(3))
    assert sink.events == ["session", pkt(0), "gap", "end"]


def test_end_of_an_unknown_session_is_ignored() -> None:
    state, sink = started()
    state.on_wire(media(0))
    state.on_wire(end(5, S2))
    assert sink.events == ["session", pkt(0)]
    assert state.session == S1
    state.on_wire(media(1))
    assert sink.events[-1] == pkt(1)


def test_end_in_pending_of_a_snapshot_join() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    state.on_wire(media(4))
    state.on_wire(end(5))
    state.apply_snapshot(Snapshot(KEY, S1, 3, [pkt(3, key=True)]))
    assert sink.events == ["session", pkt(3, key=True), pkt(4), "end"]


def test_pending_overflow_restarts_from_a_discontinuity() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    for seq in range(feed.MAX_PENDING):
        state.on_wire(media(seq))
    assert sink.events == []
    state.on_wire(media(feed.MAX_PENDING))
    assert sink.events == ["gap"]
    assert len(state.pending) == 1


# --- StreamDirectory -------------------------------------------------------------------------


def announce(session: int = S1, *, owner: str = "ipc:///run/snap-w1.sock",
             key: str = "live/_definst_/feed", **extra: object) -> dict[str, object]:
    return {"kind": "stream", "key": key, "owner": owner, "session": session, **extra}


def test_directory_announce_and_get() -> None:
    d = StreamDirectory()
    assert d.on_control(announce(info={"viewers": 3}), now=10.0) == KEY
    info = d.get(KEY, 10.0)
    assert info is not None
    assert (info.key, info.owner, info.session, info.seen_at, info.info) == (
        KEY, "ipc:///run/snap-w1.sock", S1, 10.0, {"viewers": 3})
    assert [i.key for i in d.live(11.0)] == [KEY]


def test_directory_info_that_is_not_a_dict_is_dropped() -> None:
    d = StreamDirectory()
    d.on_control(announce(info=[1, 2]), now=0.0)
    info = d.get(KEY, 0.0)
    assert info is not None
    assert info.info == {}


def test_directory_keeps_where_the_owner_takes_players() -> None:
    d = StreamDirectory()
    d.on_control(announce(players={"inbox": "/run/players-ingest-0.sock", "room": 7}), 0.0)
    info = d.get(KEY, 0.0)
    assert info is not None
    assert (info.inbox, info.room, info.handed) == ("/run/players-ingest-0.sock", 7, 0)
    info.handed = 3  # what this process passed since; the next announce starts again
    d.on_control(announce(players={"inbox": "/run/players-ingest-0.sock", "room": 4}), 1.0)
    again = d.get(KEY, 1.0)
    assert again is not None
    assert (again.room, again.handed) == (4, 0)


@pytest.mark.parametrize("players", [
    None, "x", {"inbox": 3, "room": 1}, {"inbox": "/p", "room": "1"},
    {"inbox": "/p", "room": True}, {"room": 2}, {"inbox": "/p"}])
def test_directory_ignores_a_malformed_players_offer(players: object) -> None:
    d = StreamDirectory()
    d.on_control(announce(players=players), 0.0)
    info = d.get(KEY, 0.0)
    assert info is not None
    assert (info.inbox, info.room) == ("", 0)


def test_directory_a_negative_room_is_none() -> None:
    d = StreamDirectory()
    d.on_control(announce(players={"inbox": "/p", "room": -5}), 0.0)
    info = d.get(KEY, 0.0)
    assert info is not None
    assert info.room == 0


def test_directory_expiry() -> None:
    d = StreamDirectory()
    d.on_control(announce(), now=100.0)
    assert d.get(KEY, 100.0 + feed.ANNOUNCE_EXPIRY_S) is not None  # exactly at the limit
    assert d.get(KEY, 100.0 + feed.ANNOUNCE_EXPIRY_S + 0.01) is None
    assert KEY not in d.streams  # expired entries are removed


def test_directory_refresh_extends_expiry() -> None:
    d = StreamDirectory()
    t = 0.0
    d.on_control(announce(), now=t)
    for _ in range(5):
        t += feed.ANNOUNCE_INTERVAL_S
        d.on_control(announce(), now=t)
    assert d.get(KEY, t + feed.ANNOUNCE_EXPIRY_S) is not None


def test_directory_live_lists_only_fresh_streams() -> None:
    d = StreamDirectory()
    d.on_control(announce(key="live/_definst_/old"), now=0.0)
    d.on_control(announce(key="live/_definst_/new"), now=3.0)
    live = d.live(4.0)
    assert [i.key.name for i in live] == ["new"]
    assert set(d.streams) == {StreamKey("live", "_definst_", "new")}


def test_stream_end_of_the_current_session_removes_it() -> None:
    d = StreamDirectory()
    d.on_control(announce(S1), now=0.0)
    end_body = {"kind": "stream-end", "key": "live/_definst_/feed", "session": S1}
    assert d.on_control(end_body, now=1.0) == KEY
    assert d.get(KEY, 1.0) is None


def test_stream_end_of_an_older_session_keeps_the_entry() -> None:
    d = StreamDirectory()
    d.on_control(announce(S1), now=0.0)
    d.on_control(announce(S2, owner="ipc:///run/snap-w2.sock"), now=1.0)  # republished
    # The old publisher's late "stream-end" must not remove the new one.
    assert d.on_control({"kind": "stream-end", "key": str(KEY), "session": S1}, now=1.5) == KEY
    info = d.get(KEY, 1.5)
    assert info is not None
    assert (info.session, info.owner) == (S2, "ipc:///run/snap-w2.sock")


def test_stream_end_of_an_unknown_stream() -> None:
    d = StreamDirectory()
    assert d.on_control({"kind": "stream-end", "key": str(KEY), "session": S1}, 0.0) == KEY
    assert d.streams == {}


@pytest.mark.parametrize("body", [
    {"kind": "stream", "key": "not-a-key", "session": 1},
    {"kind": "stream", "session": 1},
    {"kind": "stream", "key": 5, "session": 1},
    {"kind": "stream-end", "key": "a/b", "session": 1},
])
def test_directory_ignores_bad_keys(body: dict[str, object]) -> None:
    d = StreamDirectory()
    assert d.on_control(body, 0.0) is None
    assert d.streams == {}


def test_directory_ignores_other_kinds() -> None:
    d = StreamDirectory()
    assert d.on_control({"kind": "viewers", "key": str(KEY), "count": 3}, 0.0) is None
    assert d.streams == {}


def test_mid_session_join_without_snapshot_keeps_buffering() -> None:
    sink = RecordingSink()
    state = FeedState(sink)
    for seq in (5, 6, 7):
        state.on_wire(media(seq))
    state.apply_snapshot(None)
    assert state.needs_snapshot
    assert sink.events == ["session"]
    state.apply_snapshot(Snapshot(KEY, S1, 7, [pkt(4, key=True), pkt(5), pkt(6), pkt(7)]))
    assert sink.events == ["session", pkt(4, key=True), pkt(5), pkt(6), pkt(7)]


@pytest.mark.parametrize("bad", ["x", None, [1], 1.5])
def test_directory_ignores_a_malformed_session(bad: object) -> None:
    d = StreamDirectory()
    assert d.on_control({"kind": "stream", "key": "live/_definst_/a", "session": bad}, 0.0) is None
    assert d.streams == {}
