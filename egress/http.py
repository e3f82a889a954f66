"""The starlette application every egress worker serves (hypercorn, trio worker class)."""

from __future__ import annotations

import hmac
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from broker.calls import BusCalls, CallTimeout
from broker.fanout import ViewerQueue
from broker.packet import DEFAULT_INSTANCE, StreamKey
from control.access import parse_networks, permitted
from control.admission import Admission, PlaySession, PlaySessions, peer_address
from control.config import location_for
from control.hooks import Hooks
from egress import static
from egress.dash.mpd import TIME_PATH, xs_datetime
from egress.flv_live import Framing, http_live, ws_live
from egress.live import LIVE_FORMATS, LiveRoute, http_response, parse_live_path
from egress.presentations import Presentations, parse_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import HTTPConnection, Request
    from starlette.types import Message, Receive, Scope, Send
    from starlette.websockets import WebSocket

    from broker.consumer import Consumer
    from control.access import Decision
    from control.config import Config

logger = logging.getLogger(__name__)

RECORD = "record"  # the DVR worker's record control call
KICK = "kick"  # every ingest and egress worker closes the stream's sessions
KICK_WINDOW_S = 1.0  # how long a kick waits for the workers' counts
# A start waits for the DVR worker to join the stream (up to 3 s) and open the file.
RECORD_CALL_TIMEOUT_S = 6.0


class EgressApp:
    def __init__(self, cfg: Config, consumer: Consumer,
                 send_control: Callable[[str, dict[str, object]], None]) -> None:
        self.cfg = cfg
        self.consumer = consumer
        self.presentations = Presentations(send_control)
        self.calls = BusCalls(send_control)
        consumer.control_handlers.append(self.calls.on_control)
        self.root = Path(cfg.http.root)
        self.server_name = re.compile(cfg.http.server_name) if cfg.http.server_name else None
        consumer.control_handlers.append(self.presentations.on_control)
        consumer.control_handlers.append(self.on_kick)
        self.send_control = send_control
        self.hooks = Hooks()
        self.admission = Admission(cfg, self.hooks)
        self.plays = PlaySessions(cfg.http.play_timeout_s)  # HLS and DASH players
        self.control_allow = parse_networks(cfg.http.control_allow)
        self.app = Starlette(routes=[
            Route("/api/streams", self.streams),
            Route(TIME_PATH, self.time),
            Route("/{path:path}", self.http_get, methods=["GET", "HEAD"]),
            Route("/{path:path}", self.preflight, methods=["OPTIONS"]),
            WebSocketRoute("/{path:path}", self.websocket),
        ])

    async def admit_play(self, route: LiveRoute, *, websocket: bool, peer: str, query: str,
                         cors: dict[str, str]) -> bytes | None:
        """The answer that refuses (403) or redirects (302) this live play; None to go on."""
        protocol = ("ws-" if websocket else "http-") + route.format.kind
        decision = await self.play_decision(route.key, protocol, peer, query)
        if decision is None:
            return None
        key = route.key
        if decision.verdict == "redirect":
            logger.info("play %s by %s redirected to %s", key, peer, decision.target)
            return http_response("302 Found", {"Location": decision.target,
                                               "Connection": "close", **cors})
        logger.warning("refused play of %s by %s: %s", key, peer, decision.reason)
        return http_response("403 Forbidden", {"Content-Type": "text/plain",
                                               "Connection": "close", **cors},
                             f"{decision.reason}\n".encode())

    async def play_decision(self, key: StreamKey, protocol: str, peer: str,
                            query: str) -> Decision | None:
        """None when the play may go on; else the refusal or redirect."""
        if self.admission.open("play", key.app):
            return None
        decision = await self.admission.check("play", app=key.app, key=key, protocol=protocol,
                                              peer=peer, query=query)
        return None if decision.allowed else decision

    async def refusal(self, request: Request, key: StreamKey, protocol: str,
                      headers: dict[str, str]) -> Response | None:
        """The 403 or 302 for a play over starlette (kept-alive connections, HLS, DASH)."""
        peer = client_peer(request)
        decision = await self.play_decision(key, protocol, peer, request.url.query)
        if decision is None:
            return None
        if decision.verdict == "redirect":
            return Response(status_code=302, headers={"Location": decision.target, **headers})
        logger.warning("refused play of %s by %s: %s", key, peer, decision.reason)
        return PlainTextResponse(f"{decision.reason}\n", 403, headers=headers)

    async def play_session(self, request: Request, key: StreamKey, file: str,
                           headers: dict[str, str]) -> PlaySession | Response:
        """The HLS/DASH play this request belongs to; its first request is the one admitted
        (a player normally starts at index.m3u8 or index.mpd, but any file will do: a
        segment fetched without a play would bypass the check)."""
        peer, now = client_peer(request), trio.current_time()
        session = self.plays.find(peer_address(peer), key, now)
        if session is not None:
            return session
        protocol = "dash" if file.endswith(".mpd") else "hls"
        if (no := await self.refusal(request, key, protocol, headers)) is not None:
            return no
        session = PlaySession(key, protocol, peer, request.url.query, time.time(), now)
        self.end_plays(self.plays.add(session))
        return session

    def play_done(self, key: StreamKey, protocol: str,
                  conn: HTTPConnection) -> Callable[[int], None]:
        """What fires on_play_done when a live play over starlette ends."""
        peer, started = client_peer(conn), time.time()

        def done(bytes_count: int) -> None:
            self.admission.done("play", app=key.app, key=key, protocol=protocol, peer=peer,
                                query=conn.url.query, started=started, bytes_count=bytes_count)

        return done

    def end_plays(self, ended: list[PlaySession]) -> None:
        for s in ended:
            self.admission.done("play", app=s.key.app, key=s.key, protocol=s.protocol,
                                peer=s.peer, query=s.query, started=s.started,
                                bytes_count=s.bytes_count)

    async def expire_plays(self) -> None:
        """HLS and DASH players that stopped asking have left: on_play_done."""
        while True:
            await trio.sleep(self.plays.idle_s / 6)
            self.end_plays(self.plays.expire(trio.current_time()))

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        allowed = self.cfg.http.cors_origins
        if "*" in allowed:
            return {"Access-Control-Allow-Origin": "*"}
        if origin and origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def static_file(self, path: str, host: str | None) -> Path | None:
        """The file under `root` an http_file location's URL names, if there is one."""
        loc = location_for(self.cfg.http.location, path)
        if loc is None or loc.handler != "http_file":
            return None
        return static.resolve(self.root, path, host, self.server_name)

    def live_route(self, path: str, host: str | None = None) -> LiveRoute | str | None:
        """Where a live stream request goes: a route, why it is off, or None (not one; a
        file under the root, e.g. a recording named like a stream, comes first)."""
        loc = location_for(self.cfg.http.location, path)
        if loc is None or loc.handler != "http_file":
            return None
        try:
            if self.static_file(path, host) is not None:
                return None
        except static.BadPath:
            return None
        for fmt in LIVE_FORMATS:
            if (key := parse_live_path(path, fmt.suffix)) is not None:
                break
        else:
            return None
        off = self._dvr_missing(key, fmt.dvr, f"{fmt.suffix} streams")
        return LiveRoute(key, fmt, loc.cache_frames) if off is None else off

    def _dvr_missing(self, key: StreamKey, dvr: str, what: str) -> str | None:
        """As the seed says: HTTP-FLV needs a DVR_FLV entry in the stream's RTMP location,
        and the fMP4 outputs (HLS and DASH included) a DVR_FMP4 entry. Why not, or None."""
        rtmp_loc = location_for(self.cfg.rtmp.location, f"/{key.app}")
        if rtmp_loc is None or not any(d.name == dvr for d in rtmp_loc.dvr):
            return f"{what} are off for /{key.app}: its [[rtmp.location]] has no {dvr} entry\n"
        return None

    async def http_get(self, request: Request) -> Response:
        headers = self.cors_headers(request.headers.get("origin"))
        control = location_for(self.cfg.http.location, request.url.path)
        if control is not None and control.handler == "rtmp_control":
            return await self.rtmp_control(request, control.pattern, headers)
        file = parse_path(request.url.path)
        if file is not None:
            loc = location_for(self.cfg.http.location, request.url.path)
            if loc is not None and loc.handler == "http_file":
                if (off := self._dvr_missing(file.key, "DVR_FMP4", "HLS/DASH")) is not None:
                    return PlainTextResponse(off, 404, headers=headers)
                session: PlaySession | Response | None = None
                if self.admission.tracked(file.key.app):
                    session = await self.play_session(request, file.key, file.file, headers)
                if isinstance(session, Response):
                    return session  # refused or redirected
                base = str(request.base_url).rstrip("/")
                if session is None:
                    return await self.presentations.serve(file, request.query_params, headers,
                                                          base)
                session.active += 1  # a blocking reload may outlast play_timeout
                try:
                    response = await self.presentations.serve(file, request.query_params,
                                                              headers, base)
                finally:
                    session.active -= 1
                return _Counted(response, session, self.plays)
        host = request.headers.get("host")
        try:
            path = self.static_file(request.url.path, host)
        except static.BadPath as exc:
            return PlainTextResponse(f"{exc}\n", 400, headers=headers)
        if path is not None:
            return static.serve_file(path, request.method, request.headers, headers)
        route = self.live_route(request.url.path, host)
        if route is None:
            return static.not_found(headers)
        if isinstance(route, str):
            return PlainTextResponse(route, 404, headers=headers)
        if (no := await self.refusal(request, route.key, "http-" + route.format.kind,
                                     headers)):
            return no
        queue = ViewerQueue(route.cache_frames)
        viewer = route.viewer(queue, Framing.PLAIN, websocket=False)
        return await http_live(self.consumer, route.key, viewer, queue, kind=route.format.kind,
                               media_type=route.format.content_type, headers=headers,
                               on_end=self.play_done(route.key, "http-" + route.format.kind,
                                                     request))

    async def websocket(self, websocket: WebSocket) -> None:
        route = self.live_route(websocket.url.path)
        if not isinstance(route, LiveRoute):
            await websocket.close(code=4404, reason="not found")
            return
        peer = client_peer(websocket)
        decision = await self.play_decision(route.key, "ws-" + route.format.kind, peer,
                                            websocket.url.query)
        if decision is not None:
            await websocket.close(code=4403, reason=decision.reason[:100])
            return
        queue = ViewerQueue(route.cache_frames)
        viewer = route.viewer(queue, Framing.PLAIN, websocket=True)
        await ws_live(self.consumer, route.key, viewer, queue, kind=route.format.kind,
                      websocket=websocket,
                      on_end=self.play_done(route.key, "ws-" + route.format.kind, websocket))

    async def rtmp_control(self, request: Request, prefix: str,
                           headers: dict[str, str]) -> Response:
        """GET PREFIX/record/start|stop?dvr=ID&app=APP&inst=INSTANCE&name=NAME (the seed's
        record control): the DVR worker starts or stops the recording and says what it did."""
        if (refused := self.control_refusal(request, headers)) is not None:
            return refused
        action = request.url.path[len(prefix.rstrip("/")):].strip("/")
        if action == "kick":
            return await self.kick(request, headers)
        if action not in ("record/start", "record/stop"):
            return JSONResponse({"ok": False, "error": "known: record/start, record/stop, kick"},
                                404, headers=headers)
        q = request.query_params
        if not (q.get("dvr") and q.get("app") and q.get("name")):
            return JSONResponse({"ok": False, "error": "dvr, app and name are required"}, 400,
                                headers=headers)
        key = f"{q['app']}/{q.get('inst') or DEFAULT_INSTANCE}/{q['name']}"
        try:
            answer = await self.calls.call(RECORD, {
                "action": action.split("/")[1], "dvr": q["dvr"], "key": key},
                timeout_s=RECORD_CALL_TIMEOUT_S)
        except CallTimeout:
            return JSONResponse({"ok": False, "error": "the DVR worker did not answer"}, 504,
                                headers=headers)
        body = {k: answer[k] for k in ("ok", "path", "error") if k in answer}
        status = answer.get("status")
        return JSONResponse(body, status if isinstance(status, int) else 502, headers=headers)

    def control_refusal(self, request: Request, headers: dict[str, str]) -> Response | None:
        """The control API answers clients in http.control_allow (the host itself by
        default) and, when http.control_token is set, any client that sends it."""
        token = self.cfg.http.control_token
        sent = request.headers.get("authorization", "")
        if token and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return None
        client = request.client
        address = client.host if client else "?"
        if not token and permitted(address, self.control_allow, ()):
            return None
        logger.warning("control API refused to %s", address)
        if token:
            return JSONResponse({"ok": False, "error": "a bearer token is required"}, 401,
                                headers={"WWW-Authenticate": "Bearer", **headers})
        return JSONResponse({"ok": False, "error": f"the control API does not answer "
                             f"{address} (see http.control_allow, http.control_token)"}, 403,
                            headers=headers)

    async def kick(self, request: Request, headers: dict[str, str]) -> Response:
        """GET PREFIX/kick?app=APP&name=NAME[&inst=I][&what=publisher|players|all]: close
        the stream's sessions on every worker; says how many."""
        q = request.query_params
        what = q.get("what", "all")
        if not (q.get("app") and q.get("name")) or what not in ("publisher", "players", "all"):
            return JSONResponse({"ok": False, "error": "app and name are required; what is "
                                 "publisher, players or all"}, 400, headers=headers)
        key = f"{q['app']}/{q.get('inst') or DEFAULT_INSTANCE}/{q['name']}"
        answers = await self.calls.gather(KICK, {"key": key, "what": what},
                                          window_s=KICK_WINDOW_S)
        kicked = sum(a["kicked"] for a in answers if isinstance(a.get("kicked"), int))
        return JSONResponse({"ok": True, "kicked": kicked}, headers=headers)

    def on_kick(self, body: dict[str, Any]) -> None:
        """Another process's kick: drop this worker's viewers of the stream."""
        if body.get("kind") != KICK or body.get("what") == "publisher":
            return
        try:
            key = StreamKey.parse(str(body.get("key")))
        except ValueError:
            return
        self.send_control(KICK + "-result", {"call": body.get("call"),
                                             "kicked": self.consumer.kick(key)})

    async def preflight(self, request: Request) -> Response:
        """CORS preflight (Fetch standard §3.2.2): allowed origins get what they ask for."""
        headers = self.cors_headers(request.headers.get("origin"))
        if headers:
            headers |= {"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                        "Access-Control-Max-Age": "600"}
            if asked := request.headers.get("access-control-request-headers"):
                headers["Access-Control-Allow-Headers"] = asked
        return Response(status_code=204, headers=headers)

    async def time(self, request: Request) -> Response:
        """The server's clock for DASH players (UTCTiming urn:mpeg:dash:utc:http-iso:2014)."""
        return PlainTextResponse(xs_datetime(time.time()), headers={
            "Cache-Control": "no-store", **self.cors_headers(request.headers.get("origin"))})

    async def streams(self, request: Request) -> Response:
        """This worker's view: the live streams on the bus and its own viewers."""
        refused = self.control_refusal(request, self.cors_headers(request.headers.get("origin")))
        if refused is not None:
            return refused
        now = trio.current_time()
        viewers = self.consumer.viewer_counts()
        return JSONResponse({
            str(info.key): {**info.info, "viewers": viewers.get(str(info.key), {})}
            for info in self.consumer.directory.live(now)
        }, headers=self.cors_headers(request.headers.get("origin")))


def client_peer(conn: HTTPConnection) -> str:
    """"host:port" of a starlette request's or WebSocket's client."""
    client = conn.client
    return f"{client.host}:{client.port}" if client else "?"


class _Counted(Response):
    """A response whose body bytes are added to an HLS/DASH play's count as they go out."""

    def __init__(self, inner: Response, session: PlaySession, plays: PlaySessions) -> None:
        # Not Response.__init__: the inner response renders itself.
        self.inner, self.session, self.plays = inner, session, plays
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self.session

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.body":
                session.bytes_count += len(message.get("body", b""))
            await send(message)

        session.active += 1  # a growing segment streams for up to a segment's duration
        try:
            await self.inner(scope, receive, counting)
        finally:
            session.active -= 1
            self.plays.touch(session, trio.current_time())
