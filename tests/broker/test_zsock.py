"""The trio/ZeroMQ bus over real ipc:// sockets, through broker.proxy in a child process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import zmq

from broker import wire, zsock
from broker.consumer import Consumer
from broker.feed import FeedState
from broker.hub import StreamHub
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from broker.zsock import BusPublisher, BusSubscriber, SnapshotServer, fetch_snapshot
from tests.broker.test_feed import RecordingSink

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
HWM = 10_000
WAIT_S = 5.0  # bound on every wait for the bus; a healthy run needs milliseconds

PROXY_SCRIPT = (
    "import sys\n"
    "from broker.proxy import run_proxy\n"
    "run_proxy([sys.argv[1]], [sys.argv[2]], hwm=int(sys.argv[3]))\n"
)

Context = zmq.Context[zmq.Socket[bytes]]


@dataclass(frozen=True)
class Bus:
    run_dir: str
    frontend: str
    backend: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def bus() -> Iterator[Bus]:
    # ipc:// paths are limited to about 100 bytes: keep the directory short.
    run_dir = tempfile.mkdtemp(prefix="rmz", dir="/tmp")
    frontend, backend = zsock.bus_endpoints(run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PROXY_SCRIPT, frontend, backend, str(HWM)],
                            cwd=ROOT, env=env)
    try:
        yield Bus(run_dir, frontend, backend, proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def ctx(bus: Bus) -> Iterator[Context]:
    assert bus.proc.poll() is None, "the proxy process died"
    context: Context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def key(name: str) -> StreamKey:
    return StreamKey("live", "_definst_", name)


def pkt(stream: StreamKey, i: int, *, kind: TrackKind = TrackKind.VIDEO, key: bool = False,
        config: bool = False) -> MediaPacket:
    codec = {TrackKind.VIDEO: Codec.H264, TrackKind.AUDIO: Codec.AAC,
             TrackKind.DATA: Codec.AMF0}[kind]
    return MediaPacket(stream=stream, kind=kind, codec=codec, dts=40 * i, pts=40 * i,
                       timescale=1000, keyframe=key, is_config=config,
                       payload=b"%s-%d-" % (kind.name.encode(), i) + bytes(i % 7))


def av_stream(stream: StreamKey, frames: range, *, gop: int = 5) -> list[MediaPacket]:
    out: list[MediaPacket] = []
    for i in frames:
        out += [pkt(stream, i, key=i % gop == 0), pkt(stream, i, kind=TrackKind.AUDIO)]
    return out


def head(stream: StreamKey) -> list[MediaPacket]:
    return [pkt(stream, 0, kind=TrackKind.DATA, config=True),
            pkt(stream, 0, key=True, config=True),
            pkt(stream, 0, kind=TrackKind.AUDIO, config=True)]


async def sync_subscriptions(pub: BusPublisher, sub: BusSubscriber) -> None:
    """Wait until the subscriber's subscriptions so far have reached the publisher.

    Subscriptions travel SUB -> proxy -> PUB in order, so once a control message subscribed
    after them comes through, the earlier ones are in force too (ZeroMQ's slow joiner).
    """
    arrived = trio.Event()

    def on_control(frame: bytes) -> None:
        arrived.set()

    sub.subscribe(wire.CONTROL_TOPIC, on_control)
    with trio.fail_after(WAIT_S):
        while not arrived.is_set():
            pub.send_control("ping", {})
            with trio.move_on_after(0.02):
                await arrived.wait()
    sub.unsubscribe(wire.CONTROL_TOPIC, on_control)


class Collector:
    """Decodes a topic's messages; `ended` is set on its END mark."""

    def __init__(self) -> None:
        self.got: list[wire.WirePacket] = []
        self.ended = trio.Event()

    def __call__(self, frame: bytes) -> None:
        wp = wire.decode(frame)
        self.got.append(wp)
        if wp.mark is wire.Mark.END:
            self.ended.set()


async def test_subscribed_topic_receives_packets_in_order_with_consecutive_seq(
        ctx: Context, bus: Bus) -> None:
    stream = key("inorder")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    collector = Collector()
    sub.subscribe(stream.topic, collector)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        await sync_subscriptions(pub, sub)
        session = pub.start_session(stream)
        sent = head(stream) + av_stream(stream, range(60))
        for p in sent:
            pub.publish(p)
        pub.end_session(stream)
        with trio.fail_after(WAIT_S):
            await collector.ended.wait()
        nursery.cancel_scope.cancel()
    pub.close()
    assert [wp.seq for wp in collector.got] == list(range(len(sent) + 1))
    assert {wp.session for wp in collector.got} == {session}
    assert [wp.packet for wp in collector.got[:-1]] == sent
    assert collector.got[-1].mark is wire.Mark.END
    assert stream not in pub.streams


async def test_a_handler_may_subscribe_while_the_subscriber_drains(
        ctx: Context, bus: Bus) -> None:
    """Subscribing from a handler (a viewer of one stream starts watching another) must not
    start a drain inside the drain: frames stay in order and none is handled twice."""
    first, second = key("drain-first"), key("drain-second")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    drained = 0

    def on_drained() -> None:
        nonlocal drained
        drained += 1

    sub = BusSubscriber(ctx, bus.backend, hwm=HWM, on_drained=on_drained)
    collector, later = Collector(), Collector()

    def subscribing(frame: bytes) -> None:
        if not collector.got:
            sub.subscribe(second.topic, later)
        collector(frame)

    sub.subscribe(first.topic, subscribing)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        await sync_subscriptions(pub, sub)
        pub.start_session(first)
        sent = av_stream(first, range(20))
        for p in sent:
            pub.publish(p)
        pub.end_session(first)
        with trio.fail_after(WAIT_S):
            await collector.ended.wait()
        await sync_subscriptions(pub, sub)
        pub.start_session(second)
        pub.end_session(second)
        with trio.fail_after(WAIT_S):
            await later.ended.wait()
        nursery.cancel_scope.cancel()
    pub.close()
    assert [wp.packet for wp in collector.got[:-1]] == sent
    assert [wp.seq for wp in collector.got] == list(range(len(sent) + 1))
    assert [wp.mark for wp in later.got] == [wire.Mark.END]
    assert drained >= 2


async def test_unsubscribed_topic_receives_nothing(ctx: Context, bus: Bus) -> None:
    wanted, other = key("wanted"), key("other")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    collector, unwanted = Collector(), Collector()
    sub.subscribe(wanted.topic, collector)
    sub.subscribe(other.topic, unwanted)
    sub.unsubscribe(other.topic, unwanted)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        await sync_subscriptions(pub, sub)
        pub.start_session(other)
        pub.start_session(wanted)
        for p in av_stream(other, range(10)):
            pub.publish(p)
        for p in av_stream(wanted, range(3)):
            pub.publish(p)
        pub.end_session(other)
        pub.end_session(wanted)
        # Messages of both streams travel one ordered path: once `wanted` has ended, anything
        # of `other` would have arrived before.
        with trio.fail_after(WAIT_S):
            await collector.ended.wait()
        nursery.cancel_scope.cancel()
    pub.close()
    assert len(collector.got) == 7
    assert unwanted.got == []


async def test_topic_filter_is_prefix_safe_on_the_wire(ctx: Context, bus: Bus) -> None:
    a, ab = key("a"), key("ab")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    raw: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(bus.backend)
    raw.setsockopt(zmq.SUBSCRIBE, a.topic)
    raw.setsockopt(zmq.SUBSCRIBE, wire.CONTROL_TOPIC)
    topics: list[bytes] = []
    try:
        with trio.fail_after(WAIT_S):
            while True:  # wait for the subscriptions to reach the publisher
                pub.send_control("ping", {})
                with trio.move_on_after(0.02):
                    if (await zsock.recv_multipart(raw))[0].startswith(wire.CONTROL_TOPIC):
                        break
            pub.start_session(ab)
            pub.start_session(a)
            for p in av_stream(ab, range(5)):
                pub.publish(p)
            pub.publish(pkt(a, 0, key=True))
            pub.end_session(a)
            while True:
                (frame,) = await zsock.recv_multipart(raw)
                topics.append(wire.topic_of(frame))
                if frame.startswith(a.topic) and wire.decode(frame).mark is wire.Mark.END:
                    break
    finally:
        zsock.close_socket(raw)
        pub.close()
    assert set(topics) - {wire.CONTROL_TOPIC} == {a.topic}


async def test_snapshot_of_a_published_stream(ctx: Context, bus: Bus) -> None:
    stream = key("snap")
    endpoint = zsock.snapshot_endpoint(bus.run_dir, "w1")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    server = SnapshotServer(ctx, endpoint, pub)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        session = pub.start_session(stream)
        packets = head(stream) + av_stream(stream, range(8))  # keyframes at 0 and 5
        for p in packets:
            pub.publish(p)
        with trio.fail_after(WAIT_S):
            snap = await fetch_snapshot(ctx, endpoint, stream)
            unknown = await fetch_snapshot(ctx, endpoint, key("nobody"))
        assert snap == wire.Snapshot(stream, session, len(packets) - 1,
                                     head(stream) + av_stream(stream, range(5, 8)))
        assert unknown is None
        # After the session ends, the owner has no snapshot of it any more.
        pub.end_session(stream)
        with trio.fail_after(WAIT_S):
            assert await fetch_snapshot(ctx, endpoint, stream) is None
        nursery.cancel_scope.cancel()
    pub.close()


async def test_snapshot_of_a_session_with_no_packets_yet(ctx: Context, bus: Bus) -> None:
    stream = key("fresh")
    endpoint = zsock.snapshot_endpoint(bus.run_dir, "w2")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    async with trio.open_nursery() as nursery:
        await nursery.start(SnapshotServer(ctx, endpoint, pub).serve)
        session = pub.start_session(stream)
        with trio.fail_after(WAIT_S):
            snap = await fetch_snapshot(ctx, endpoint, stream)
        assert snap == wire.Snapshot(stream, session, -1, [])
        nursery.cancel_scope.cancel()
    pub.close()


async def test_fetch_snapshot_without_an_owner_times_out_to_none(
        ctx: Context, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zsock, "SNAPSHOT_TIMEOUT_S", 0.1)
    endpoint = zsock.snapshot_endpoint(bus.run_dir, "absent")
    with trio.fail_after(WAIT_S):
        assert await fetch_snapshot(ctx, endpoint, key("x")) is None


async def test_late_joiner_clone_pattern(ctx: Context, bus: Bus) -> None:
    """Subscribe, fetch the snapshot, apply newer updates: a contiguous start at a keyframe."""
    stream = key("late")
    endpoint = zsock.snapshot_endpoint(bus.run_dir, "w3")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    sink = RecordingSink()
    state = FeedState(sink)
    ended = trio.Event()

    def on_stream(frame: bytes) -> None:
        state.on_wire(wire.decode(frame))
        if sink.events and sink.events[-1] == "end":
            ended.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(SnapshotServer(ctx, endpoint, pub).serve)
        nursery.start_soon(sub.serve)
        pub.start_session(stream)
        before = head(stream) + av_stream(stream, range(8))  # published before the join
        for p in before:
            pub.publish(p)
        sub.subscribe(stream.topic, on_stream)
        await sync_subscriptions(pub, sub)
        during = av_stream(stream, range(8, 10))  # buffered while the snapshot is fetched
        for p in during:
            pub.publish(p)
        with trio.fail_after(WAIT_S):
            snap = await fetch_snapshot(ctx, endpoint, stream)
        after = av_stream(stream, range(10, 13))
        for p in after:
            pub.publish(p)
        state.apply_snapshot(snap)
        pub.end_session(stream)
        with trio.fail_after(WAIT_S):
            await ended.wait()
        nursery.cancel_scope.cancel()
    pub.close()
    assert sink.events == ["session", *head(stream), *av_stream(stream, range(5, 13)), "end"]


async def test_audio_of_a_stream_with_video_travels_with_the_next_video_frame(
        ctx: Context, bus: Bus) -> None:
    stream = key("held")
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM)
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    collector = Collector()
    sub.subscribe(stream.topic, collector)

    async def settle() -> None:
        await trio.sleep(0.05)  # long enough for anything sent to arrive

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        await sync_subscriptions(pub, sub)
        pub.start_session(stream)
        for p in head(stream):  # configs are never held
            pub.publish(p)
        pub.publish(pkt(stream, 1, kind=TrackKind.AUDIO))  # no video yet: not held
        await settle()
        assert len(collector.got) == 4
        pub.publish(pkt(stream, 2, key=True))
        pub.publish(pkt(stream, 2, kind=TrackKind.AUDIO))
        pub.publish(pkt(stream, 3, kind=TrackKind.AUDIO))
        await settle()
        assert len(collector.got) == 5  # the two audio frames wait ...
        pub.publish(pkt(stream, 3))
        await settle()
        assert [wp.seq for wp in collector.got] == list(range(8))  # ... and go first
        pub.publish(pkt(stream, 4, kind=TrackKind.AUDIO))
        await trio.sleep(zsock.HOLD_AUDIO_S)
        pub.publish(pkt(stream, 5, kind=TrackKind.AUDIO))  # the first waited long enough
        await settle()
        assert [wp.seq for wp in collector.got] == list(range(10))
        pub.publish(pkt(stream, 6, kind=TrackKind.AUDIO))
        pub.end_session(stream)  # held frames go before the end
        with trio.fail_after(WAIT_S):
            await collector.ended.wait()
        nursery.cancel_scope.cancel()
    pub.close()
    assert [wp.seq for wp in collector.got] == list(range(12))
    assert collector.got[-1].mark is wire.Mark.END


async def test_local_streams_reach_the_own_subscriber_once_and_at_once(
        ctx: Context, bus: Bus) -> None:
    """A worker's own subscriber gets its streams in the publishing call, not twice through
    the proxy; once the session ends, the topic comes from the bus again (another worker)."""
    stream = key("local")
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM, local=sub)
    other = BusPublisher(ctx, bus.frontend, hwm=HWM)
    mine, remote = Collector(), Collector()
    sent = head(stream) + av_stream(stream, range(10))
    remote_has_all = trio.Event()  # all but the last audio frame, held for the next video

    def on_remote(frame: bytes) -> None:
        remote(frame)
        if len(remote.got) == len(sent) - 1:
            remote_has_all.set()

    remote_sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    sub.subscribe(stream.topic, mine)
    remote_sub.subscribe(stream.topic, on_remote)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        nursery.start_soon(remote_sub.serve)
        await sync_subscriptions(pub, remote_sub)
        session = pub.start_session(stream)
        # The unsubscription travels to the publisher in order with this later subscription.
        await sync_subscriptions(pub, sub)
        for p in sent:
            pub.publish(p)
        # Synchronous: everything published (held audio aside) is there before any await.
        assert [wp.packet for wp in mine.got] == sent[:-1]
        with trio.fail_after(WAIT_S):
            await remote_has_all.wait()
        await trio.sleep(0.05)  # a copy through the proxy would have arrived by now
        assert [wp.packet for wp in mine.got] == sent[:-1]
        pub.end_session(stream)
        assert [wp.seq for wp in mine.got] == list(range(len(sent) + 1))
        assert {wp.session for wp in mine.got} == {session}
        with trio.fail_after(WAIT_S):
            await remote.ended.wait()
        assert [wp.seq for wp in remote.got] == list(range(len(sent) + 1))
        # (Copies the bus carried before the unsubscription took effect may still reach the
        # handlers after the END: FeedState drops them, see test_feed.)
        # The next publisher of the topic is elsewhere: it arrives through the bus.
        await sync_subscriptions(other, sub)
        mine.got = [wp for wp in mine.got if wp.session != session]  # those late copies
        mine.ended = trio.Event()
        other.start_session(stream)
        for p in av_stream(stream, range(3)):
            other.publish(p)
        other.end_session(stream)
        with trio.fail_after(WAIT_S):
            await mine.ended.wait()
        assert [wp.seq for wp in mine.got] == list(range(7))
        nursery.cancel_scope.cancel()
    pub.close()
    other.close()


async def test_a_consumer_takes_its_own_streams_snapshot_without_a_socket(
        ctx: Context, bus: Bus) -> None:
    """The owner's consumer joins a stream it publishes from the snapshot server's state
    directly: the server never serves here, and the hub still starts from the GOP."""
    stream = key("own")
    sub = BusSubscriber(ctx, bus.backend, hwm=HWM)
    pub = BusPublisher(ctx, bus.frontend, hwm=HWM, local=sub)
    server = SnapshotServer(ctx, zsock.snapshot_endpoint(bus.run_dir, "own"), pub)
    got: list[MediaPacket] = []
    hub_made: list[StreamKey] = []

    class Hub(StreamHub):
        def __init__(self, key: StreamKey) -> None:
            super().__init__(key, lambda p, v: b"")
            hub_made.append(key)

        def on_packet(self, pkt: MediaPacket) -> None:
            got.append(pkt)
            super().on_packet(pkt)

    consumer = Consumer(ctx, sub, {"x": Hub}, local=server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.serve)
        nursery.start_soon(consumer.serve)
        await sync_subscriptions(pub, sub)  # the control topic's subscription is in force
        session = pub.start_session(stream)
        for p in head(stream) + av_stream(stream, range(8)):
            pub.publish(p)
        assert server.snapshot(stream) == wire.Snapshot(
            stream, session, len(head(stream)) + 15, head(stream) + av_stream(stream, range(5, 8)))
        assert server.snapshot(key("nobody")) is None
        pub.send_control("stream", {"key": str(stream), "owner": server.endpoint,
                                    "session": session})
        with trio.fail_after(WAIT_S):
            hub = await consumer.wait_live(stream, kind="x")
        assert hub is not None
        assert hub_made == [stream]
        # The GOP since the last keyframe, then what came after the join (nothing yet).
        assert got == head(stream) + av_stream(stream, range(5, 8))
        nursery.cancel_scope.cancel()
    pub.close()
