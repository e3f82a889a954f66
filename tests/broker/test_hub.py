"""StreamHub: start viewers on keyframes, share muxed bytes, drop for slow viewers only,
keep timestamps monotonic across publishers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import trio

from broker import hub as hub_module
from broker.fanout import Flusher, ViewerQueue
from broker.hub import StreamHub, Viewer
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable

KEY = StreamKey("live", "_definst_", "hub")

# Payloads are short ASCII names; the test mux renders a packet as "name@dts;" so that what a
# viewer receives reads as a list of tokens, start blobs included.
META_AV = b"onMetaData-videocodecid-audiocodecid"
META_V = b"onMetaData-videocodecid"
META_A = b"onMetaData-audiocodecid"


def packet(kind: TrackKind, dts: int, payload: bytes, *, key: bool = False, config: bool = False,
           timescale: int = 1000) -> MediaPacket:
    codec = {TrackKind.VIDEO: Codec.H264, TrackKind.AUDIO: Codec.AAC,
             TrackKind.DATA: Codec.AMF0}[kind]
    return MediaPacket(stream=KEY, kind=kind, codec=codec, dts=dts, pts=dts, timescale=timescale,
                       keyframe=key, is_config=config, payload=payload)


def meta(payload: bytes = META_AV) -> MediaPacket:
    return packet(TrackKind.DATA, 0, payload, config=True)


def avcc(name: bytes = b"avcC") -> MediaPacket:
    # As broker.flvpacket builds it: a video sequence header is flagged keyframe too.
    return packet(TrackKind.VIDEO, 0, name, key=True, config=True)


def asc(name: bytes = b"asc") -> MediaPacket:
    return packet(TrackKind.AUDIO, 0, name, key=True, config=True)


def vf(i: int, *, key: bool = False, tag: str = "") -> MediaPacket:
    """Video frame i at 25 fps."""
    return packet(TrackKind.VIDEO, 40 * i, f"{tag}v{i}".encode(), key=key)


def af(i: int, *, tag: str = "") -> MediaPacket:
    """Audio frame i, 20 ms after video frame i (audio frames are keyframes, as from FLV)."""
    return packet(TrackKind.AUDIO, 40 * i + 20, f"{tag}a{i}".encode(), key=True)


def av_frames(frames: Iterable[int], *, gop: int = 10, tag: str = "") -> list[MediaPacket]:
    """Video frame i (a keyframe every `gop`) followed by audio frame i."""
    out: list[MediaPacket] = []
    for i in frames:
        out += [vf(i, key=i % gop == 0, tag=tag), af(i, tag=tag)]
    return out


def mux(pkt: MediaPacket, variant: Hashable) -> bytes:
    return pkt.payload + b"@%d;" % pkt.dts


def tok(pkt: MediaPacket, shift: int = 0) -> str:
    return f"{pkt.payload.decode()}@{pkt.dts + shift}"


class Handler:
    def __init__(self, goodbye: bytes | None = None) -> None:
        self.begins: list[tuple[bool, bool]] = []
        self.goodbye = goodbye
        self.ends = 0

    def begin(self, *, audio: bool, video: bool) -> bytes:
        self.begins.append((audio, video))
        return b"HDR;"

    def ended(self) -> bytes | None:
        self.ends += 1
        return self.goodbye


def viewer(cache_frames: int = 1000, *, handler: Handler | None = None,
           protocol: str = "flv", variant: Hashable = None) -> Viewer:
    return Viewer(protocol, handler or Handler(), ViewerQueue(cache_frames), variant=variant)


def vq(v: Viewer) -> ViewerQueue:
    assert isinstance(v.queue, ViewerQueue)
    return v.queue


def feed(hub: StreamHub, packets: Iterable[MediaPacket]) -> None:
    for pkt in packets:
        hub.on_packet(pkt)


async def take(v: Viewer) -> list[str]:
    """Everything queued for the viewer as tokens; [] if nothing is queued (never blocks)."""
    with trio.move_on_after(0):
        batch = await vq(v).get_batch()
        return b"".join(batch).decode().split(";")[:-1]
    return []


FRAME_TOKEN = re.compile(r"[xy]?[va]\d+@(-?\d+)")


def media_dts(tokens: list[str]) -> list[int]:
    """The dts of the audio/video frames among tokens (not headers, metadata or configs)."""
    return [int(m[1]) for t in tokens if (m := FRAME_TOKEN.fullmatch(t))]


def is_live(hub: StreamHub) -> bool:
    """hub.live, read through a call so that mypy does not narrow it between feeds."""
    return hub.live


def is_skipping(v: Viewer) -> bool:
    return v.queue.skipping


def names(tokens: list[str]) -> list[str]:
    """Tokens without their timestamps (for headers, whose timestamps are not pinned here)."""
    return [t.partition("@")[0] for t in tokens]


def new_hub() -> StreamHub:
    hub = StreamHub(KEY, mux)
    hub.on_session()
    return hub


HEAD = [meta(), avcc(), asc()]


# --- starting viewers ------------------------------------------------------------------------


async def test_viewer_added_before_live_starts_with_header_metadata_configs_keyframe() -> None:
    hub = new_hub()
    handler = Handler()
    v = viewer(handler=handler)
    hub.add(v)
    feed(hub, HEAD)
    assert not is_live(hub)
    assert await take(v) == []
    feed(hub, [vf(0, key=True)])
    assert is_live(hub)
    assert v.started
    assert handler.begins == [(True, True)]
    assert await take(v) == ["HDR", tok(meta()), tok(avcc()), tok(asc()), tok(vf(0, key=True))]
    feed(hub, [af(0), vf(1), af(1)])
    assert await take(v) == [tok(af(0)), tok(vf(1)), tok(af(1))]


async def test_viewer_added_mid_gop_starts_with_the_cached_gop() -> None:
    hub = new_hub()
    feed(hub, HEAD)
    feed(hub, av_frames(range(14)))  # keyframes at 0 and 10
    v = viewer()
    hub.add(v)
    expected = ["HDR", *map(tok, HEAD), *map(tok, av_frames(range(10, 14)))]
    assert await take(v) == expected
    assert expected[4] == tok(vf(10, key=True))
    feed(hub, av_frames(range(14, 16)))
    assert await take(v) == list(map(tok, av_frames(range(14, 16))))


async def test_viewer_waits_for_a_keyframe_when_nothing_is_cached() -> None:
    hub = new_hub()
    feed(hub, HEAD)
    feed(hub, av_frames(range(3)))
    hub.on_discontinuity()  # the cached GOP is gone
    v = viewer()
    hub.add(v)
    assert not v.started
    feed(hub, av_frames(range(5, 8)))  # lost frames: resync drops them
    assert await take(v) == []
    feed(hub, av_frames(range(10, 12)))
    assert await take(v) == ["HDR", *map(tok, HEAD), *map(tok, av_frames(range(10, 12)))]


async def test_slow_viewer_drops_until_a_keyframe_and_never_slows_others() -> None:
    hub = new_hub()
    slow = viewer(8)
    fast = viewer(8)
    hub.add(slow)
    hub.add(fast)
    fast_got: list[str] = []

    async def feed_fast_reading(packets: list[MediaPacket]) -> None:
        for pkt in packets:
            hub.on_packet(pkt)
            fast_got.extend(await take(fast))  # the fast viewer reads after every packet

    await feed_fast_reading(HEAD)
    sent = av_frames(range(25))  # keyframes at 0, 10, 20
    await feed_fast_reading(sent)  # the slow viewer never reads
    # The fast viewer got every frame, whatever the slow one did.
    assert fast_got == ["HDR", *map(tok, HEAD), *map(tok, sent)]
    # The slow one: the start blob plus 7 frames fill its 8 slots; the rest was dropped, the
    # keyframes at 10 and 20 included, since there was never room for them.
    assert slow.queue.dropped == len(sent) - 8
    assert await take(slow) == ["HDR", *map(tok, HEAD), *map(tok, sent[:8])]
    # Now it has room, but it resumes only at the next keyframe.
    fast_got.clear()
    await feed_fast_reading(av_frames(range(25, 30)))
    assert await take(slow) == []
    assert is_skipping(slow)
    await feed_fast_reading(av_frames(range(30, 33)))
    assert await take(slow) == list(map(tok, av_frames(range(30, 33))))
    assert not is_skipping(slow)
    # The fast viewer, meanwhile, still got everything, and never dropped a frame.
    assert fast_got == list(map(tok, av_frames(range(25, 33))))
    assert fast.queue.dropped == 0


async def test_full_viewer_still_gets_config_and_metadata_updates() -> None:
    hub = new_hub()
    slow = viewer(2)
    hub.add(slow)
    feed(hub, HEAD)
    feed(hub, av_frames(range(4)))
    assert is_skipping(slow)
    feed(hub, [meta(META_AV + b"-2"), avcc(b"avcC-2")])
    tokens = await take(slow)
    # A header sent with timestamp 0 mid-stream goes out at the current time, never earlier.
    last = max(p.dts for p in av_frames(range(4)))
    assert tokens[-2:] == [tok(meta(META_AV + b"-2")), tok(avcc(b"avcC-2"), shift=last)]


async def test_mux_runs_once_per_packet_and_variant_not_per_viewer() -> None:
    calls: list[tuple[bytes, Hashable]] = []

    def counting_mux(pkt: MediaPacket, variant: Hashable) -> bytes:
        calls.append((pkt.payload, variant))
        return mux(pkt, variant)

    hub = StreamHub(KEY, counting_mux)
    hub.on_session()
    viewers = [viewer(variant=1), viewer(variant=1), viewer(variant=1), viewer(variant=2)]
    for v in viewers:
        hub.add(v)
    feed(hub, HEAD)
    feed(hub, av_frames(range(2)))
    calls.clear()
    feed(hub, [vf(2)])
    assert sorted(calls, key=repr) == [(b"v2", 1), (b"v2", 2)]
    # Every viewer of a variant got the very same bytes object.
    items = [v.queue._items[-1] for v in viewers[:3]]
    assert items[0] is items[1] is items[2]


# --- publishers coming and going -------------------------------------------------------------


async def test_timestamps_stay_monotonic_across_a_republish() -> None:
    hub = new_hub()
    v1 = viewer()
    hub.add(v1)
    feed(hub, HEAD)
    first = av_frames(range(12))  # last output: a11 at 460 ms
    feed(hub, first)
    got1 = await take(v1)
    # A new publisher (its END lost) starts again at 0.
    hub.on_session()
    feed(hub, [meta(), avcc(b"avcC-2"), asc(b"asc-2")])
    second = av_frames(range(12), tag="x")
    feed(hub, second)
    shift = 460 + hub_module.REPUBLISH_GAP_MS
    # A viewer joining now starts on the new session's keyframe, shifted past the old session.
    v2 = viewer()
    hub.add(v2)
    tokens = await take(v2)
    assert names(tokens[:4]) == ["HDR", META_AV.decode(), "avcC-2", "asc-2"]
    assert tokens[4:] == [tok(p, shift) for p in second[20:]]
    # Whatever the first viewer got, its frame timestamps never go back.
    dts = media_dts(got1 + await take(v1))
    assert dts == sorted(dts)
    assert len(set(dts)) == len(dts)


async def test_on_end_closes_or_keeps_viewers_by_their_handler() -> None:
    hub = new_hub()
    closing = viewer(handler=Handler(goodbye=None))
    staying_handler = Handler(goodbye=b"BYE;")
    staying = viewer(handler=staying_handler)
    hub.add(closing)
    hub.add(staying)
    feed(hub, HEAD)
    feed(hub, av_frames(range(12)))
    before = await take(staying)
    assert (await take(closing))[0] == "HDR"
    hub.on_end()
    assert not is_live(hub)
    # The closing viewer: removed, and its queue ends.
    assert closing not in hub.viewers
    assert closing.queue.closed
    with trio.fail_after(1):
        assert await vq(closing).get_batch() == []
    # The staying viewer: its goodbye bytes, then nothing until the next publisher.
    assert staying in hub.viewers
    assert not staying.started
    assert await take(staying) == ["BYE"]
    hub.on_session()
    feed(hub, [meta(), avcc(b"avcC-2"), asc(b"asc-2"), vf(0, tag="x")])  # no keyframe yet
    assert await take(staying) == []
    shift = 460 + hub_module.REPUBLISH_GAP_MS
    second = av_frames(range(1, 4), gop=1, tag="x")  # x-v1 is a keyframe
    feed(hub, second)
    tokens = await take(staying)
    assert names(tokens[:4]) == ["HDR", META_AV.decode(), "avcC-2", "asc-2"]
    assert tokens[4:] == [tok(p, shift) for p in second]
    assert staying_handler.begins == [(True, True), (True, True)]
    dts = media_dts(before + tokens)
    assert dts == sorted(dts)


async def test_end_then_new_viewer_waits_for_the_next_publisher() -> None:
    hub = new_hub()
    feed(hub, HEAD)
    feed(hub, av_frames(range(3)))
    hub.on_end()
    v = viewer()
    hub.add(v)
    assert not v.started
    hub.on_session()
    feed(hub, HEAD)
    feed(hub, av_frames(range(1), tag="x"))
    tokens = await take(v)
    assert tokens[0] == "HDR"
    assert tokens[4].startswith("xv0@")


async def test_jump_back_inside_a_session_is_rebased() -> None:
    hub = new_hub()
    v = viewer()
    hub.add(v)
    feed(hub, HEAD)
    feed(hub, av_frames(range(50)))  # up to 1980 ms
    feed(hub, av_frames(range(0, 5), tag="y"))  # the publisher's clock restarts at 0
    dts = media_dts(await take(v))
    assert dts == sorted(dts)
    assert dts[-10] == 1980 + hub_module.REPUBLISH_GAP_MS


async def test_republish_shift_in_a_90khz_timescale() -> None:
    hub = new_hub()
    v = viewer()
    hub.add(v)
    feed(hub, [meta(META_V), avcc()])
    feed(hub, [packet(TrackKind.VIDEO, 0, b"v0", key=True, timescale=90000),
               packet(TrackKind.VIDEO, 3600, b"v1", timescale=90000)])  # 0 and 40 ms
    assert is_live(hub)
    hub.on_session()
    feed(hub, [meta(META_V), avcc()])
    feed(hub, [packet(TrackKind.VIDEO, 0, b"xv0", key=True, timescale=90000)])
    hub.add(late := viewer())
    tokens = await take(late)
    assert tokens[-1] == f"xv0@{(40 + hub_module.REPUBLISH_GAP_MS) * 90}"


# --- going live --------------------------------------------------------------------------------


async def test_audio_only_stream_with_metadata_goes_live_on_the_first_audio_frame() -> None:
    hub = new_hub()
    handler = Handler()
    v = viewer(handler=handler)
    hub.add(v)
    feed(hub, [meta(META_A), asc()])
    assert not is_live(hub)
    feed(hub, [af(0)])
    assert is_live(hub)
    assert handler.begins == [(True, False)]
    assert await take(v) == ["HDR", tok(meta(META_A)), tok(asc()), tok(af(0))]
    # Every audio frame is a sync point: a slow audio viewer resumes at the next frame.
    slow = viewer(1)
    hub.add(slow)
    feed(hub, [af(1), af(2)])
    assert is_skipping(slow)
    await take(slow)
    feed(hub, [af(3)])
    assert await take(slow) == [tok(af(3))]


async def test_audio_only_stream_without_metadata_waits_for_enough_frames() -> None:
    hub = new_hub()
    v = viewer()
    hub.add(v)
    feed(hub, [asc()])
    feed(hub, [af(i) for i in range(hub_module.AUDIO_ONLY_AFTER_FRAMES - 1)])
    assert not is_live(hub)
    feed(hub, [af(hub_module.AUDIO_ONLY_AFTER_FRAMES - 1)])
    assert is_live(hub)
    tokens = await take(v)
    assert tokens[:2] == ["HDR", tok(asc())]
    assert len(tokens) == 2 + hub_module.AUDIO_ONLY_AFTER_FRAMES


async def test_video_only_stream_without_metadata_goes_live_after_enough_frames() -> None:
    hub = new_hub()
    handler = Handler()
    v = viewer(handler=handler)
    hub.add(v)
    frames = [vf(0, key=True), *(vf(i) for i in range(1, hub_module.VIDEO_ONLY_AFTER_FRAMES))]
    feed(hub, [avcc(), *frames[:-1]])
    assert not is_live(hub)  # audio may still come
    feed(hub, frames[-1:])
    assert is_live(hub)
    assert handler.begins == [(False, True)]
    assert await take(v) == ["HDR", tok(avcc()), *map(tok, frames)]


async def test_video_stream_whose_metadata_has_no_audio_goes_live_on_the_keyframe() -> None:
    hub = new_hub()
    handler = Handler()
    hub.add(viewer(handler=handler))
    feed(hub, [meta(META_V), avcc(), vf(0, key=True)])
    assert is_live(hub)
    assert handler.begins == [(False, True)]


async def test_metadata_announcing_audio_holds_until_the_audio_config() -> None:
    hub = new_hub()
    handler = Handler()
    hub.add(viewer(handler=handler))
    feed(hub, [meta(), avcc(), vf(0, key=True), vf(1)])
    assert not is_live(hub)
    feed(hub, [asc()])
    assert is_live(hub)
    assert handler.begins == [(True, True)]


async def test_no_live_without_video_config() -> None:
    hub = new_hub()
    feed(hub, [meta(), asc(), *av_frames(range(30))])
    assert not is_live(hub)


# --- gaps and bookkeeping --------------------------------------------------------------------


async def test_discontinuity_drops_until_the_next_keyframe() -> None:
    hub = new_hub()
    v = viewer()
    hub.add(v)
    feed(hub, HEAD)
    feed(hub, av_frames(range(4)))
    await take(v)
    hub.on_discontinuity()
    feed(hub, av_frames(range(5, 10)))
    assert await take(v) == []
    feed(hub, av_frames(range(10, 12)))
    assert await take(v) == list(map(tok, av_frames(range(10, 12))))
    assert hub.cache.gop[0] == vf(10, key=True)


async def test_remove_and_counts() -> None:
    hub = new_hub()
    a, b, c = viewer(protocol="flv"), viewer(protocol="flv"), viewer(protocol="rtmp")
    for v in (a, b, c):
        hub.add(v)
    assert hub.counts() == {"flv": 2, "rtmp": 1}
    hub.remove(a)
    assert hub.counts() == {"flv": 1, "rtmp": 1}
    assert a.queue.closed
    feed(hub, HEAD)
    feed(hub, av_frames(range(2)))
    with trio.fail_after(1):
        assert await vq(a).get_batch() == []
    assert (await take(b))[0] == "HDR"


async def test_republish_without_end_restarts_started_viewers() -> None:
    hub = new_hub()
    v = viewer()
    hub.add(v)
    feed(hub, HEAD)
    feed(hub, av_frames(range(12)))
    await take(v)
    hub.on_session()  # a new publisher whose predecessor's END was lost
    feed(hub, [meta(), avcc(b"avcC-2"), asc(b"asc-2"), *av_frames(range(3), tag="x")])
    tokens = await take(v)
    assert names(tokens[:5]) == ["HDR", META_AV.decode(), "avcC-2", "asc-2", "xv0"]


async def test_republish_with_another_timescale_continues_40ms_later() -> None:
    hub = new_hub()
    feed(hub, [meta(META_V), avcc()])
    feed(hub, [packet(TrackKind.VIDEO, 3600 * i, b"v%d" % i, key=i == 0, timescale=90000)
               for i in range(50)])
    hub.on_session()
    feed(hub, [meta(META_V), avcc()])
    feed(hub, [packet(TrackKind.VIDEO, 40 * i, b"xv%d" % i, key=i == 0) for i in range(3)])
    late = viewer()
    hub.add(late)
    assert (await take(late))[3:] == ["xv0@2000", "xv1@2040", "xv2@2080"]


# --- batches: with a Flusher, one wake-up's packets go to every viewer at once ---------------


def batched_hub() -> tuple[StreamHub, Flusher]:
    flusher = Flusher()
    hub = StreamHub(KEY, mux, flusher)
    hub.on_session()
    return hub, flusher


async def test_a_batch_goes_out_on_flush_as_one_shared_list() -> None:
    hub, flusher = batched_hub()
    a, b = viewer(), viewer()
    hub.add(a)
    hub.add(b)
    feed(hub, HEAD)
    feed(hub, av_frames(range(2)))  # goes live: both start at v0
    flusher.flush()
    assert await take(a) == ["HDR", *map(tok, HEAD), *map(tok, av_frames(range(2)))]
    await take(b)
    batch = av_frames(range(2, 5))
    feed(hub, batch)
    assert await take(a) == []  # nothing before the flush
    assert hub in flusher.dirty
    flusher.flush()
    assert await take(a) == await take(b) == list(map(tok, batch))
    assert flusher.dirty == set()


async def test_audio_alone_waits_for_video_in_the_batch() -> None:
    hub, flusher = batched_hub()
    v = viewer()
    hub.add(v)
    feed(hub, [*HEAD, *av_frames(range(1))])
    flusher.flush()
    await take(v)
    feed(hub, [af(1)])  # audio of a stream with video may wait for the next video frame
    flusher.flush()
    assert await take(v) == []
    assert hub in flusher.deferred
    feed(hub, [vf(2)])
    flusher.flush()
    assert await take(v) == [tok(af(0)), tok(af(1)), tok(vf(2))]
    assert not flusher.deferred


async def test_a_viewer_starting_mid_batch_gets_only_what_follows_its_start() -> None:
    hub, flusher = batched_hub()
    early = viewer()
    hub.add(early)
    feed(hub, [*HEAD, *av_frames(range(3))])
    flusher.flush()
    await take(early)
    feed(hub, av_frames(range(3, 5)))
    late = viewer()
    hub.add(late)  # mid-batch: its start (the cached GOP) already holds frames 0-4
    feed(hub, av_frames(range(5, 7)))
    flusher.flush()
    assert await take(early) == list(map(tok, av_frames(range(3, 7))))
    assert await take(late) == ["HDR", *map(tok, HEAD), *map(tok, av_frames(range(7))[:10]),
                                *map(tok, av_frames(range(5, 7)))]


async def test_a_waiting_viewer_starts_at_a_keyframe_inside_a_batch() -> None:
    hub, flusher = batched_hub()
    feed(hub, [*HEAD, *av_frames(range(3))])
    flusher.flush()
    hub.on_discontinuity()  # nothing cached to start on
    v = viewer()
    hub.add(v)
    assert not v.started
    feed(hub, av_frames(range(10, 13)))  # v10 is a keyframe: the start holds it
    flusher.flush()
    assert await take(v) == ["HDR", *map(tok, HEAD), *map(tok, av_frames(range(10, 13)))]


async def test_the_end_goes_after_the_batch_before_it() -> None:
    hub, flusher = batched_hub()
    v = viewer(handler=Handler(goodbye=b"BYE;"))
    hub.add(v)
    feed(hub, [*HEAD, *av_frames(range(2))])
    flusher.flush()
    await take(v)
    feed(hub, av_frames(range(2, 4)))
    hub.on_end()
    assert await take(v) == [*map(tok, av_frames(range(2, 4))), "BYE"]


async def test_a_lagging_viewer_gets_the_batch_under_the_drop_policy() -> None:
    hub, flusher = batched_hub()
    slow, fast = viewer(4), viewer(100)
    hub.add(slow)
    hub.add(fast)
    feed(hub, [*HEAD, *av_frames(range(1))])
    flusher.flush()
    feed(hub, av_frames(range(1, 12)))  # keyframe at 10
    flusher.flush()  # a0 (it waited for video) and the 22 frames after it, in one batch
    # The slow viewer never read: its start and 3 frames fill its 4 slots; the rest was
    # dropped, since no sync point came while it had room.
    assert slow.queue.dropped == 23 - 3
    assert is_skipping(slow)
    assert fast.queue.dropped == 0
    assert len(await take(fast)) == 5 + 23
