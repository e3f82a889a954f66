"""The starlette application every egress worker serves (hypercorn, trio worker class)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from broker.packet import DEFAULT_INSTANCE, StreamKey
from control.config import location_for
from egress.flv_live import http_flv, ws_flv

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

    from broker.consumer import Consumer
    from control.config import Config


@dataclass(frozen=True, slots=True)
class FlvRoute:
    key: StreamKey
    cache_frames: int


def parse_live_path(path: str, suffix: str) -> StreamKey | None:
    """'/live/sample.flv' or '/live/inst/sample.flv' -> the stream key; None if not such a path."""
    if not path.endswith(suffix):
        return None
    parts = path[: -len(suffix)].strip("/").split("/")
    if len(parts) == 2:
        parts.insert(1, DEFAULT_INSTANCE)
    if len(parts) != 3 or not all(parts) or any(p.startswith("$") or "\x00" in p
                                                 for p in parts):
        return None
    return StreamKey(*parts)


class EgressApp:
    def __init__(self, cfg: Config, consumer: Consumer) -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.app = Starlette(routes=[
            Route("/api/streams", self.streams),
            Route("/{path:path}", self.http_get, methods=["GET", "HEAD"]),
            WebSocketRoute("/{path:path}", self.websocket),
        ])

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        allowed = self.cfg.http.cors_origins
        if "*" in allowed:
            return {"Access-Control-Allow-Origin": "*"}
        if origin and origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def flv_route(self, path: str) -> FlvRoute | str | None:
        """Where a live FLV request goes: a route, a reason it is off, or None (not one)."""
        loc = location_for(self.cfg.http.location, path)
        key = parse_live_path(path, ".flv")
        if loc is None or loc.handler != "http_file" or key is None:
            return None
        # HTTP-FLV needs a DVR_FLV entry in the stream's RTMP location, as the seed says.
        rtmp_loc = location_for(self.cfg.rtmp.location, f"/{key.app}")
        if rtmp_loc is None or not any(d.name == "DVR_FLV" for d in rtmp_loc.dvr):
            return (f"HTTP-FLV is off for /{key.app}: its [[rtmp.location]] has no "
                    f"DVR_FLV entry\n")
        return FlvRoute(key, loc.cache_frames)

    async def http_get(self, request: Request) -> Response:
        headers = self.cors_headers(request.headers.get("origin"))
        route = self.flv_route(request.url.path)
        if route is None:
            return PlainTextResponse("not found\n", 404, headers=headers)
        if isinstance(route, str):
            return PlainTextResponse(route, 404, headers=headers)
        return await http_flv(self.consumer, route.key, cache_frames=route.cache_frames,
                              headers=headers)

    async def websocket(self, websocket: WebSocket) -> None:
        route = self.flv_route(websocket.url.path)
        if not isinstance(route, FlvRoute):
            await websocket.close(code=4404, reason="not found")
            return
        await ws_flv(self.consumer, route.key, websocket, cache_frames=route.cache_frames)

    async def streams(self, request: Request) -> Response:
        """This worker's view: the live streams on the bus and its own viewers."""
        now = trio.current_time()
        hubs = self.consumer.hubs()
        return JSONResponse({
            str(info.key): {**info.info, "viewers": hubs[info.key].counts()
                            if info.key in hubs else {}}
            for info in self.consumer.directory.live(now)
        }, headers=self.cors_headers(request.headers.get("origin")))
