"""Live HTTP-FLV and WebSocket-FLV: one FLV muxer per stream, shared bytes to every viewer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.flvpacket import flv_tag_parts
from broker.hub import Viewer
from media import flv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable

    from broker.consumer import Consumer
    from broker.packet import MediaPacket, StreamKey

logger = logging.getLogger(__name__)


def mux_flv(pkt: MediaPacket, _variant: Hashable) -> bytes:
    tag_type, ts_ms, body = flv_tag_parts(pkt)
    return flv.encode_tag(tag_type, ts_ms, body)


class _FlvHandler:
    def __init__(self) -> None:
        self.begun = False

    def begin(self, *, audio: bool, video: bool) -> bytes:
        if self.begun:
            return b""
        self.begun = True
        # The flags must match the tracks: flv.js/mpegts.js wait for a flagged track forever.
        return flv.header(audio=audio, video=video)

    def ended(self) -> bytes | None:
        return None  # the publisher left: end the response cleanly


async def http_flv(consumer: Consumer, key: StreamKey, *, cache_frames: int,
                   headers: dict[str, str]) -> Response:
    viewer = Viewer("http-flv", _FlvHandler(), cache_frames=cache_frames)
    if await consumer.attach(key, viewer) is None:
        return PlainTextResponse(f"stream {key} is not published\n", 404, headers=headers)

    async def body() -> AsyncIterator[bytes]:
        try:
            while batch := await viewer.queue.get_batch():
                yield b"".join(batch)
        finally:
            consumer.detach(key, viewer)

    return StreamingResponse(body(), media_type="video/x-flv",
                             headers={"Cache-Control": "no-cache", **headers})


async def ws_flv(consumer: Consumer, key: StreamKey, websocket: WebSocket, *,
                 cache_frames: int) -> None:
    viewer = Viewer("ws-flv", _FlvHandler(), cache_frames=cache_frames)
    if await consumer.attach(key, viewer) is None:
        await websocket.close(code=4404, reason=f"stream {key} is not published")
        return
    await websocket.accept()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, websocket, nursery.cancel_scope)
            while batch := await viewer.queue.get_batch():
                await websocket.send_bytes(b"".join(batch))
            nursery.cancel_scope.cancel()
        await websocket.close()
    except (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        consumer.detach(key, viewer)


async def _until_closed(websocket: WebSocket, scope: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends; its close ends the stream."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    finally:
        scope.cancel()
