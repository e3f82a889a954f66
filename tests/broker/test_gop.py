"""GopCache: what a late joiner starts with (metadata, sequence headers, current GOP)."""

from __future__ import annotations

from broker import gop
from broker.gop import GopCache
from broker.packet import Codec, MediaPacket, StreamKey, TrackKind

KEY = StreamKey("live", "_definst_", "gop")


def meta(payload: bytes = b"meta") -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.DATA, codec=Codec.AMF0, dts=0, pts=0,
                       timescale=1000, keyframe=False, is_config=True, payload=payload)


def vcfg(payload: bytes = b"avcC") -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=0, pts=0,
                       timescale=1000, keyframe=True, is_config=True, payload=payload)


def acfg(payload: bytes = b"asc") -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=0, pts=0,
                       timescale=1000, keyframe=True, is_config=True, payload=payload)


def video(dts: int, *, key: bool = False, payload: bytes | None = None) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.VIDEO, codec=Codec.H264, dts=dts, pts=dts,
                       timescale=1000, keyframe=key, is_config=False,
                       payload=payload if payload is not None else f"v{dts}".encode())


def audio(dts: int, *, payload: bytes | None = None) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=dts, pts=dts,
                       timescale=1000, keyframe=True, is_config=False,
                       payload=payload if payload is not None else f"a{dts}".encode())


def fill(cache: GopCache, packets: list[MediaPacket]) -> GopCache:
    for pkt in packets:
        cache.add(pkt)
    return cache


def test_empty_cache_snapshot_is_empty() -> None:
    assert GopCache().snapshot() == []


def test_snapshot_order_is_metadata_video_config_audio_config_then_keyframe() -> None:
    m, v, a = meta(), vcfg(), acfg()
    k, p1, a1 = video(0, key=True), video(40), audio(20)
    # Arrival order of the head packets does not matter; the snapshot order does.
    cache = fill(GopCache(), [a, k, v, p1, m, a1])
    assert cache.snapshot() == [m, v, a, k, p1, a1]
    assert cache.gop_bytes == len(k.payload) + len(p1.payload) + len(a1.payload)


def test_latest_head_packets_replace_earlier_ones() -> None:
    cache = fill(GopCache(), [meta(b"m1"), vcfg(b"v1"), acfg(b"a1"), video(0, key=True)])
    fill(cache, [meta(b"m2"), vcfg(b"v2"), acfg(b"a2")])
    assert [p.payload for p in cache.snapshot()] == [b"m2", b"v2", b"a2", b"v0"]


def test_config_packets_are_not_part_of_the_gop() -> None:
    cache = fill(GopCache(), [vcfg(), video(0, key=True), vcfg(b"again"), acfg()])
    assert cache.gop == [video(0, key=True)]


def test_new_keyframe_resets_the_gop() -> None:
    cache = fill(GopCache(), [vcfg(), acfg()])
    fill(cache, [video(0, key=True), audio(10), video(40), audio(30), video(80)])
    assert len(cache.gop) == 5
    k2 = video(120, key=True)
    cache.add(k2)
    assert cache.gop == [k2]
    assert cache.gop_bytes == len(k2.payload)
    cache.add(audio(130))
    assert cache.snapshot() == [vcfg(), acfg(), k2, audio(130)]


def test_video_before_the_first_keyframe_is_not_cached() -> None:
    cache = fill(GopCache(), [vcfg(), video(0), video(40)])
    assert cache.gop == []
    assert cache.has_video
    assert cache.snapshot() == [vcfg()]


def test_audio_before_the_first_keyframe_of_a_video_stream_is_not_cached() -> None:
    cache = fill(GopCache(), [vcfg(), acfg(), video(0), audio(10), audio(30)])
    assert cache.gop == []
    k = video(80, key=True)
    fill(cache, [k, audio(90)])
    assert cache.gop == [k, audio(90)]


def test_audio_only_keeps_a_bounded_tail() -> None:
    cache = fill(GopCache(), [meta(), acfg()])
    frames = [audio(i * 21) for i in range(gop.AUDIO_ONLY_TAIL_FRAMES + 10)]
    fill(cache, frames)
    assert not cache.has_video
    assert cache.gop == frames[-gop.AUDIO_ONLY_TAIL_FRAMES:]
    assert cache.gop_bytes == sum(len(p.payload) for p in frames[-gop.AUDIO_ONLY_TAIL_FRAMES:])
    assert cache.snapshot() == [meta(), acfg(), *frames[-gop.AUDIO_ONLY_TAIL_FRAMES:]]


def test_audio_only_tail_before_video_then_keyframe_takes_over() -> None:
    cache = fill(GopCache(), [audio(0), audio(21)])
    assert cache.gop == [audio(0), audio(21)]
    k = video(40, key=True)
    cache.add(k)
    assert cache.has_video
    assert cache.gop == [k]
    cache.add(audio(42))
    assert cache.gop == [k, audio(42)]


def test_frame_bound_clears_the_gop_until_the_next_keyframe() -> None:
    cache = GopCache()
    cache.add(video(0, key=True))
    for i in range(1, gop.MAX_GOP_FRAMES):
        cache.add(video(i))
    assert len(cache.gop) == gop.MAX_GOP_FRAMES  # at the bound: kept
    cache.add(video(gop.MAX_GOP_FRAMES))  # over it: cleared
    assert cache.gop == []
    assert cache.gop_bytes == 0
    cache.add(video(gop.MAX_GOP_FRAMES + 1))
    cache.add(audio(gop.MAX_GOP_FRAMES + 1))
    assert cache.gop == []  # P frames and audio wait for a keyframe
    k = video(gop.MAX_GOP_FRAMES + 2, key=True)
    cache.add(k)
    assert cache.gop == [k]


def test_byte_bound_clears_the_gop() -> None:
    cache = GopCache()
    k = video(0, key=True, payload=bytes(gop.MAX_GOP_BYTES - 1))
    cache.add(k)
    cache.add(video(40, payload=b"x"))
    assert cache.gop_bytes == gop.MAX_GOP_BYTES  # at the bound: kept
    assert len(cache.gop) == 2
    cache.add(audio(50, payload=b"y"))
    assert cache.gop == []
    assert cache.gop_bytes == 0


def test_a_single_oversized_keyframe_is_not_cached() -> None:
    cache = fill(GopCache(), [vcfg()])
    cache.add(video(0, key=True, payload=bytes(gop.MAX_GOP_BYTES + 1)))
    assert cache.gop == []
    assert cache.snapshot() == [vcfg()]


def test_audio_only_byte_bound() -> None:
    cache = GopCache()
    cache.add(audio(0, payload=bytes(gop.MAX_GOP_BYTES)))
    assert len(cache.gop) == 1
    cache.add(audio(21, payload=b"z"))
    assert cache.gop == []
    cache.add(audio(42))
    assert cache.gop == [audio(42)]  # audio-only restarts on any frame


def test_gop_never_starts_with_a_non_key_video_frame() -> None:
    cache = fill(GopCache(), [vcfg(), acfg(), audio(0), audio(21)])
    cache.add(video(30))
    assert all(p.kind is not TrackKind.VIDEO for p in cache.gop)
    assert not cache.gop
