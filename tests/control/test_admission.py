"""HLS/DASH play sessions: one per client address and stream, ended by silence."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.packet import StreamKey
from control.admission import PlaySession, PlaySessions, peer_address, redirect_key

CAM = StreamKey("live", "_definst_", "cam")
OTHER = StreamKey("live", "_definst_", "other")


def session(peer: str, key: StreamKey = CAM, seen: float = 0.0) -> PlaySession:
    return PlaySession(key, "hls", peer, "", 1_700_000_000.0, seen)


def test_a_player_is_one_session_whatever_port_it_comes_from() -> None:
    plays = PlaySessions(idle_s=10)
    first = session("10.0.0.1:5000")
    assert plays.add(first) == []
    assert plays.find("10.0.0.1", CAM, 5) is first
    assert plays.find("10.0.0.1", OTHER, 5) is None
    assert plays.find("10.0.0.2", CAM, 5) is None
    assert first.seen == 5


def test_silence_ends_a_session_and_a_request_keeps_it() -> None:
    plays = PlaySessions(idle_s=10)
    a, b = session("10.0.0.1:1"), session("10.0.0.2:1")
    plays.add(a)
    plays.add(b)
    assert plays.find("10.0.0.1", CAM, 8) is a
    assert plays.expire(12) == [b]  # a was seen at 8
    assert plays.find("10.0.0.2", CAM, 12) is None
    assert plays.expire(18.5) == [a]
    assert len(plays) == 0


def test_a_request_in_flight_is_not_silence() -> None:
    plays = PlaySessions(idle_s=10)
    a = session("10.0.0.1:1")
    plays.add(a)
    a.active = 1  # a blocking reload
    assert plays.expire(30) == []
    a.active = 0
    assert plays.expire(39) == []
    assert plays.expire(41) == [a]


def test_a_stale_session_found_again_is_replaced_and_reported() -> None:
    plays = PlaySessions(idle_s=10)
    old = session("10.0.0.1:1")
    plays.add(old)
    assert plays.find("10.0.0.1", CAM, 20) is None  # silent too long, not yet swept
    new = session("10.0.0.1:2", seen=20)
    assert plays.add(new) == [old]
    assert plays.find("10.0.0.1", CAM, 21) is new


def test_the_oldest_sessions_go_past_the_limit() -> None:
    plays = PlaySessions(idle_s=10, limit=2)
    first, second, third = (session(f"10.0.0.{i}:1", seen=i) for i in range(3))
    plays.add(first)
    plays.add(second)
    assert plays.add(third) == [first]
    assert len(plays) == 2


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 5)), max_size=60))
def test_sessions_stay_bounded_and_end_only_when_silent(
        steps: list[tuple[int, bool, float]]) -> None:
    plays = PlaySessions(idle_s=3, limit=4)
    now, ended, opened = 0.0, 0, 0
    for host, sweep, pause in steps:
        now += pause
        if plays.find(f"10.0.0.{host}", CAM, now) is None:
            ended += len(plays.add(session(f"10.0.0.{host}:9", seen=now)))
            opened += 1
        if sweep:
            gone = plays.expire(now)
            assert all(now - s.seen > 3 for s in gone)
            ended += len(gone)
        assert len(plays) <= 4
        assert opened - ended == len(plays)


def test_peer_address_and_redirect_key() -> None:
    assert peer_address("[::1]:5000") == "::1"
    assert peer_address("10.0.0.1:5000") == "10.0.0.1"
    assert redirect_key(CAM, "http://h/live/other/index.m3u8") == OTHER
    assert redirect_key(CAM, "other.flv") == OTHER
    assert redirect_key(CAM, "") is None
