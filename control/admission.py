"""Who may connect, publish and play: the location's networks, its signed URLs, then its hooks.

Ingest and egress workers ask `Admission.check` before they accept a connect, a publish or a
play; it answers a control.access.Decision. The built-in checks come first (they need no web
service); the hooks of the app's [[rtmp.location]] come last. `done` fires the *_done hooks.
"""

from __future__ import annotations

import logging
import time
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
