"""Live HTTP-FLV and WebSocket-FLV: one FLV muxer per worker, shared bytes to every viewer.

This module also keeps the ASGI route for live FLV, used when a client asks for a stream on a
connection that hypercorn already serves (keep-alive); new connections take the fast path of
egress/live.py.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

import trio
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.flvpacket import flv_tag_parts
from egress import wsframe
from media import flv

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Hashable

    from broker.consumer import Consumer
    from broker.fanout import ViewerQueue
    from broker.hub import Viewer
    from broker.packet import MediaPacket, StreamKey

logger = logging.getLogger(__name__)


class Framing(enum.Enum):
    """How FLV bytes travel: as they are (an ASGI response frames them), as HTTP/1.1 chunks, or
    as WebSocket binary messages. The fast path frames once per packet, for every viewer."""

    PLAIN = "plain"
    CHUNKED = "chunked"
    WEBSOCKET = "ws"

    def wrap(self, data: bytes) -> bytes:
        if self is Framing.CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self is Framing.WEBSOCKET:
            return wsframe.frame_header(wsframe.Opcode.BINARY, len(data)) + data
        return data


# Tags kept for the variants still to be framed: a hub frames a whole batch per variant.
TAG_CACHE_PACKETS = 256


class FlvMuxer:
    """One per egress worker: a packet's FLV tag is built once, then framed per variant."""

    def __init__(self) -> None:
        self._tags: dict[int, tuple[MediaPacket, bytes]] = {}  # id(packet) -> (packet, tag)

    def __call__(self, pkt: MediaPacket, variant: Hashable) -> bytes:
        cached = self._tags.get(id(pkt))
        if cached is not None and cached[0] is pkt:
            tag = cached[1]
        else:
            if len(self._tags) >= TAG_CACHE_PACKETS:
                self._tags.clear()
            tag = flv.encode_tag(*flv_tag_parts(pkt))
            self._tags[id(pkt)] = (pkt, tag)  # the packet is kept, so its id is not reused
        assert isinstance(variant, Framing)
        return variant.wrap(tag)


class FlvHandler:
    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self.begun = False

    def begin(self, *, audio: bool, video: bool) -> bytes:
        if self.begun:
            return b""
        self.begun = True
        # The flags must match the tracks: flv.js/mpegts.js wait for a flagged track forever.
        return self.framing.wrap(flv.header(audio=audio, video=video))

    def ended(self) -> bytes | None:
        return None  # the publisher left: end the response cleanly


async def http_live(consumer: Consumer, key: StreamKey, viewer: Viewer, queue: ViewerQueue, *,
                    kind: str, media_type: str, headers: dict[str, str],
                    on_end: Callable[[int], None] | None = None) -> Response:
    """A live stream as an ASGI streaming response (for kept-alive connections). on_end gets
    the bytes sent when the viewer leaves."""
    if await consumer.attach(key, viewer, kind=kind) is None:
        return PlainTextResponse(f"stream {key} is not published\n", 404, headers=headers)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        try:
            while batch := await queue.get_batch():
                data = b"".join(batch)
                yield data
                sent += len(data)
        finally:
            consumer.detach(key, viewer, kind=kind)
            if on_end is not None:
                on_end(sent)

    return StreamingResponse(body(), media_type=media_type,
                             headers={"Cache-Control": "no-cache", **headers})


async def ws_live(consumer: Consumer, key: StreamKey, viewer: Viewer, queue: ViewerQueue, *,
                  kind: str, websocket: WebSocket,
                  on_end: Callable[[int], None] | None = None) -> None:
    """A live stream as ASGI WebSocket messages (for upgrades on kept-alive connections)."""
    if await consumer.attach(key, viewer, kind=kind) is None:
        await websocket.close(code=4404, reason=f"stream {key} is not published")
        return
    await websocket.accept()
    sent = 0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, websocket, nursery.cancel_scope)
            while batch := await queue.get_batch():
                data = b"".join(batch)
                await websocket.send_bytes(data)
                sent += len(data)
            nursery.cancel_scope.cancel()
        await websocket.close()
    except (WebSocketDisconnect, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        consumer.detach(key, viewer, kind=kind)
        if on_end is not None:
            on_end(sent)


async def _until_closed(websocket: WebSocket, scope: trio.CancelScope) -> None:
    """Read (and ignore) what the client sends; its close ends the stream."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    finally:
        scope.cancel()
