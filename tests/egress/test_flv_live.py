"""FlvMuxer: a packet's FLV tag is built once per worker, whatever the variants framing it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.packet import Codec, MediaPacket, StreamKey, TrackKind
from egress import flv_live, wsframe
from egress.flv_live import FlvMuxer, Framing
from media import flv

if TYPE_CHECKING:
    import pytest

KEY = StreamKey("live", "_definst_", "mux")


def audio(i: int) -> MediaPacket:
    return MediaPacket(stream=KEY, kind=TrackKind.AUDIO, codec=Codec.AAC, dts=23 * i,
                       pts=23 * i, timescale=1000, keyframe=True, is_config=False,
                       payload=b"aac-%d" % i)


def test_a_batch_framed_per_variant_encodes_each_tag_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    encode = flv.encode_tag

    def counting(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
        calls.append(timestamp_ms)
        return encode(tag_type, timestamp_ms, body)

    monkeypatch.setattr(flv, "encode_tag", counting)
    mux = FlvMuxer()
    batch = [audio(i) for i in range(5)]
    chunked = [mux(p, Framing.CHUNKED) for p in batch]  # as a hub flushes: variant by variant
    ws = [mux(p, Framing.WEBSOCKET) for p in batch]
    assert calls == [23 * i for i in range(5)]
    for c, w, p in zip(chunked, ws, batch, strict=True):
        tag = encode(8, p.dts, b"\xaf\x01" + p.payload)
        assert c == b"%x\r\n%b\r\n" % (len(tag), tag)
        assert w == wsframe.frame_header(wsframe.Opcode.BINARY, len(tag)) + tag


def test_the_tag_cache_is_bounded() -> None:
    mux = FlvMuxer()
    packets = [audio(i) for i in range(flv_live.TAG_CACHE_PACKETS * 2 + 1)]
    for p in packets:
        mux(p, Framing.PLAIN)
    assert len(mux._tags) <= flv_live.TAG_CACHE_PACKETS
