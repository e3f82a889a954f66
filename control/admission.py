"""Who may connect, publish and play: the location's networks, its signed URLs, then its hooks.

Ingest and egress workers ask `Admission.check` before they accept a connect, a publish or a
play; it answers a control.access.Decision. The built-in checks come first (they need no web
service); the hooks of the app's [[rtmp.location]] come last. `done` fires the *_done hooks.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from broker.packet import DEFAULT_INSTANCE, StreamKey
from control.access import (
    ALLOW,
    Decision,
    check_signature,
    parse_networks,
    permitted,
    stream_path,
)
from control.config import location_for

if TYPE_CHECKING:
    from control.config import Config, RtmpLocationConfig
    from control.hooks import Hooks

logger = logging.getLogger(__name__)

EVENTS: Final = ("connect", "publish", "play")


def peer_address(peer: str) -> str:
    """The address of "host:port" (IPv6 hosts have colons of their own)."""
    return peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer


def redirect_key(key: StreamKey, target: str) -> StreamKey | None:
    """A hook's Location for a publish or play: a name, "app/name", or a URL or path that
    ends with them (a playback URL's ".flv", ".mp4" or "/index.m3u8" is taken off); None if
    it names no stream."""
    path = urlsplit(target).path if "://" in target else target.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if parts and parts[-1] in ("index.m3u8", "index.mpd"):
        parts.pop()
    if parts:
        parts[-1] = parts[-1].removesuffix(".flv").removesuffix(".mp4")
    try:
        if len(parts) == 1:
            return StreamKey(key.app, key.instance, parts[0])
        if len(parts) >= 2:
            return StreamKey(parts[-2], DEFAULT_INSTANCE, parts[-1])
    except ValueError:
        pass
    return None


class Admission:
    def __init__(self, cfg: Config, hooks: Hooks) -> None:
        self.cfg = cfg
        self.hooks = hooks

    def location(self, app: str) -> RtmpLocationConfig | None:
        return location_for(self.cfg.rtmp.location, f"/{app}")

    def tracked(self, app: str) -> bool:
        """Must plays of the app be followed (a check to pass, or on_play_done to fire)?"""
        loc = self.location(app)
        return loc is not None and (not self.open("play", app) or bool(loc.on_play_done))

    def open(self, event: str, app: str) -> bool:
        """True when nothing guards this event at the app's location (no await needed)."""
        loc = self.location(app)
        if loc is None:
            return True
        if getattr(loc, f"on_{event}"):
            return False
        return event == "connect" or not (
            event in loc.signed or getattr(loc, f"allow_{event}")
            or getattr(loc, f"deny_{event}"))

    async def check(self, event: str, *, app: str, key: StreamKey | None, protocol: str,
                    peer: str, query: str, extra: dict[str, object] | None = None) -> Decision:
        """May this connect/publish/play go on? Refusals say why (for the log and the
        client)."""
        assert event in EVENTS
        loc = self.location(app)
        if loc is None:
            return ALLOW
        address = peer_address(peer)
        if event != "connect":
            allow = parse_networks(getattr(loc, f"allow_{event}"))
            deny = parse_networks(getattr(loc, f"deny_{event}"))
            if not permitted(address, allow, deny):
                return Decision("refuse", f"{address} may not {event} here")
            if event in loc.signed:
                assert key is not None
                path = stream_path(key.app, key.instance, key.name, DEFAULT_INSTANCE)
                problem = check_signature(loc.secret, path, query, time.time())
                if problem:
                    return Decision("refuse", problem)
        urls: tuple[str, ...] = getattr(loc, f"on_{event}")
        if not urls:
            return ALLOW
        return await self.hooks.ask(
            urls, f"on_{event}", self.body(app, key, protocol, peer, query, extra),
            timeout_s=loc.hook_timeout_s, failure=loc.hook_failure,
            form=loc.hook_format == "form")

    def done(self, event: str, *, app: str, key: StreamKey, protocol: str, peer: str,
             query: str, started: float, bytes_count: int) -> None:
        """Fire on_publish_done / on_play_done with the session's duration and bytes."""
        loc = self.location(app)
        if loc is None:
            return
        urls: tuple[str, ...] = getattr(loc, f"on_{event}_done")
        if urls:
            body = self.body(app, key, protocol, peer, query, {
                "duration": round(time.time() - started, 3), "bytes": bytes_count})
            self.hooks.fire(urls, f"on_{event}_done", body, form=loc.hook_format == "form")

    @staticmethod
    def body(app: str, key: StreamKey | None, protocol: str, peer: str, query: str,
             extra: dict[str, object] | None) -> dict[str, object]:
        body: dict[str, object] = {"app": app, "protocol": protocol,
                                   "addr": peer_address(peer), "query": query}
        if key is not None:
            body.update(instance=key.instance, name=key.name, stream=str(key))
        return {**body, **(extra or {})}


@dataclass(slots=True)
class PlaySession:
    """An HLS or DASH player: a client address fetching one stream's files."""

    key: StreamKey
    protocol: str  # "hls" or "dash", after the request that opened it
    peer: str
    query: str  # of the request that opened it
    started: float  # wall clock, for on_play_done's duration
    seen: float  # monotonic, of the latest request
    bytes_count: int = 0
    active: int = 0  # requests in flight (a blocking playlist reload, a growing segment)


# HLS and DASH players poll; one not heard of for this long has left ([http] play_timeout).
# A player reloads its playlist at least every target duration; LL-HLS blocks up to three.
PLAY_SESSION_IDLE_S: Final = 30.0
MAX_PLAY_SESSIONS: Final = 65536


class PlaySessions:
    """HLS and DASH plays have no connection to watch: a play starts with a client address's
    first admitted request for a stream's files and ends when it stops asking. Its later
    requests (segments carry no token) ride on that admission, and its end fires
    on_play_done."""

    def __init__(self, idle_s: float = PLAY_SESSION_IDLE_S,
                 limit: int = MAX_PLAY_SESSIONS) -> None:
        self.idle_s = idle_s
        self.limit = limit
        # Least recently seen first: expiry looks at the front only.
        self._sessions: OrderedDict[tuple[str, StreamKey], PlaySession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def find(self, address: str, key: StreamKey, now: float) -> PlaySession | None:
        """The live session of this client for the stream, marked as seen now. (HLS and DASH
        share their segments: one client address plays a stream once, whichever it uses.)"""
        session = self._sessions.get((address, key))
        if session is None or now - session.seen > self.idle_s:
            return None
        self.touch(session, now)
        return session

    def touch(self, session: PlaySession, now: float) -> None:
        session.seen = now
        ident = (peer_address(session.peer), session.key)
        if self._sessions.get(ident) is session:  # not ended meanwhile
            self._sessions.move_to_end(ident)

    def add(self, session: PlaySession) -> list[PlaySession]:
        """Open a session; returns those it ends (its stale predecessor, the oldest past the
        limit)."""
        ended = []
        ident = (peer_address(session.peer), session.key)
        if (old := self._sessions.pop(ident, None)) is not None:
            ended.append(old)
        self._sessions[ident] = session
        while len(self._sessions) > self.limit:
            ended.append(self._sessions.popitem(last=False)[1])
        return ended

    def expire(self, now: float) -> list[PlaySession]:
        """End the sessions not seen for idle_s (one waiting for an answer is still here)."""
        ended = []
        while self._sessions:
            session = next(iter(self._sessions.values()))
            if now - session.seen <= self.idle_s:
                break
            if session.active:
                self.touch(session, now)
            else:
                ended.append(self._sessions.popitem(last=False)[1])
        return ended
