"""What travels with an HTTP-FLV player's connection to the publisher's ingest worker."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.packet import StreamKey
from egress.live import FLV, FMP4, Handover, LiveRoute, player_inbox_path

names = st.text(st.characters(exclude_characters="/\x00", exclude_categories=["Cs"]),
                min_size=1, max_size=20)
headers = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4)


@settings(max_examples=500)
@given(app=names, inst=names, name=names, cache=st.integers(1, 1 << 20), cors=headers,
       peer=st.text(max_size=50), fmp4=st.booleans())
def test_round_trip(app: str, inst: str, name: str, cache: int, cors: dict[str, str],
                    peer: str, fmp4: bool) -> None:
    h = Handover(LiveRoute(StreamKey(app, inst, name), FMP4 if fmp4 else FLV, cache), cors, peer)
    assert Handover.decode(h.encode()) == h


@given(st.binary(max_size=200))
def test_garbage_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Handover.decode(data)


@pytest.mark.parametrize("fields", [
    ["live/_definst_/a", "flv", 512, {}],  # one short
    ["live/_definst_/a", "avi", 512, {}, "1.2.3.4:5"],  # no such format
    ["live/a", "flv", 512, {}, "1.2.3.4:5"],  # not a stream key
    ["live/_definst_/a", "flv", 0, {}, "1.2.3.4:5"],  # no cache
    ["live/_definst_/a", "flv", True, {}, "1.2.3.4:5"],
    ["live/_definst_/a", "flv", 512, {"a": 1}, "1.2.3.4:5"],  # a header that is not text
    ["live/_definst_/a", "flv", 512, [], "1.2.3.4:5"],
    ["live/_definst_/a", "flv", 512, {}, 5],
])
def test_wrong_fields_are_refused(fields: list[object]) -> None:
    with pytest.raises(ValueError, match=r"not a stream key|not a player hand-over"):
        Handover.decode(msgpack.packb(fields))


def test_the_inbox_path_is_absolute_and_names_the_worker() -> None:
    path = player_inbox_path("run", "ingest-1")
    assert path.startswith("/")
    assert path.endswith("/run/players-ingest-1.sock")
