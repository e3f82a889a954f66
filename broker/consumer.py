"""A process's view of the bus as a consumer: the stream directory and a hub per watched stream."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from broker import wire
from broker.feed import FeedState, StreamDirectory
from broker.zsock import BusSubscriber, SnapshotServer, fetch_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import zmq

    from broker.hub import StreamHub, Viewer
    from broker.packet import StreamKey

logger = logging.getLogger(__name__)

# How long a viewer of a stream that is not (yet) published waits before "not found".
PUBLISHER_WAIT_S = 3.0
HubId = tuple["StreamKey", str]  # a stream and the kind of hub (output format) watching it
# A hub with no viewers left is kept this long, so a reconnecting viewer starts at once.
IDLE_HUB_S = 5.0
LIVE_POLL_S = 0.05


class _Watched:
    __slots__ = ("feed", "handler", "hub", "idle_since", "joining")

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.feed = FeedState(hub)
        self.joining = False
        self.idle_since: float | None = None

        def handler(frame: bytes) -> None:
            try:
                wp = wire.decode(frame, hub.key)
            except wire.WireError as exc:
                logger.warning("dropped a bad bus message for %s: %s", hub.key, exc)
                return
            self.feed.on_wire(wp)

        self.handler = handler


class Consumer:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], subscriber: BusSubscriber,
                 hub_factories: Mapping[str, Callable[[StreamKey], StreamHub]],
                 local: SnapshotServer | None = None) -> None:
        """`hub_factories` names the kinds of hub (one per output format) a stream can have;
        `local` answers for the streams this process publishes, without a socket."""
        self._ctx = ctx
        self._local = local
        self.subscriber = subscriber
        self.directory = StreamDirectory()
        self._factories = dict(hub_factories)
        self._watched: dict[HubId, _Watched] = {}
        self._changed = trio.Event()  # set whenever the directory or a hub's state changes
        self._nursery: trio.Nursery | None = None
        # Called with every control message (after the directory has seen it).
        self.control_handlers: list[Callable[[dict[str, Any]], None]] = []
        subscriber.subscribe(wire.CONTROL_TOPIC, self._on_control)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await trio.sleep(1.0)
                self._collect(trio.current_time())

    def viewer_counts(self) -> dict[str, dict[str, int]]:
        """Viewers per stream and protocol, over every kind of hub."""
        out: dict[str, dict[str, int]] = {}
        for (key, _), watched in self._watched.items():
            per = out.setdefault(str(key), {})
            for protocol, n in watched.hub.counts().items():
                per[protocol] = per.get(protocol, 0) + n
        return out

    async def attach(self, key: StreamKey, viewer: Viewer, *, kind: str = "",
                     wait_s: float = PUBLISHER_WAIT_S) -> StreamHub | None:
        """Add a viewer to the stream's hub; None if no publisher appears within wait_s."""
        if not await self.wait_published(key, kind=kind, wait_s=wait_s):
            return None
        return self.add(key, viewer, kind=kind)

    async def wait_published(self, key: StreamKey, *, kind: str = "",
                             wait_s: float = PUBLISHER_WAIT_S) -> bool:
        """Subscribe to the stream and wait (up to wait_s) until it is published."""
        watched = self._watch(key, kind)
        watched.idle_since = None
        with trio.move_on_after(wait_s):
            while not watched.hub.live and self.directory.get(key, trio.current_time()) is None:
                await self._wait_change()
            return True
        if not watched.hub.viewers:
            watched.idle_since = trio.current_time()
        return False

    async def wait_live(self, key: StreamKey, *, kind: str = "",
                        wait_s: float = PUBLISHER_WAIT_S) -> StreamHub | None:
        """Wait (up to wait_s) until the stream's hub could start a viewer: its tracks and
        decoder configs are known (an RTSP DESCRIBE needs them before any viewer is added)."""
        watched = self._watch(key, kind)
        watched.idle_since = None
        with trio.move_on_after(wait_s):
            while not watched.hub.live:
                # A hub goes live on a packet, which wakes nobody: look again shortly.
                with trio.move_on_after(LIVE_POLL_S):
                    await self._wait_change()
            return watched.hub
        if not watched.hub.viewers:
            watched.idle_since = trio.current_time()
        return None

    def add(self, key: StreamKey, viewer: Viewer, *, kind: str = "") -> StreamHub:
        """Add a viewer at once (after wait_published): no await between deciding and adding."""
        watched = self._watch(key, kind)
        watched.idle_since = None
        watched.hub.add(viewer)
        return watched.hub

    def unwatch(self, key: StreamKey, *, kind: str = "") -> None:
        """Stop following a stream now (its hub's viewers, if any, are dropped)."""
        watched = self._watched.pop((key, kind or self._default_kind), None)
        if watched is not None:
            self.subscriber.unsubscribe(key.topic, watched.handler)

    def detach(self, key: StreamKey, viewer: Viewer, *, kind: str = "",
               close: bool = True) -> None:
        watched = self._watched.get((key, kind or self._default_kind))
        if watched is None:
            return
        watched.hub.remove(viewer, close=close)
        if not watched.hub.viewers:
            watched.idle_since = trio.current_time()

    def kick(self, key: StreamKey) -> int:
        """Drop every viewer of the stream, in every kind of hub; how many there were."""
        kicked = 0
        for (watched_key, _), watched in list(self._watched.items()):
            if watched_key == key:
                for viewer in list(watched.hub.viewers):
                    watched.hub.remove(viewer)
                    kicked += 1
        return kicked

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def _default_kind(self) -> str:
        return next(iter(self._factories))

    def _watch(self, key: StreamKey, kind: str) -> _Watched:
        hub_id = (key, kind or self._default_kind)
        watched = self._watched.get(hub_id)
        if watched is None:
            hub = self._factories[hub_id[1]](key)
            watched = self._watched[hub_id] = _Watched(hub)
            self.subscriber.subscribe(key.topic, watched.handler)
            self._join(key, watched)
        return watched

    def _join(self, key: StreamKey, watched: _Watched) -> None:
        if watched.joining or self._nursery is None:
            return
        watched.joining = True
        watched.feed.start_join()
        self._nursery.start_soon(self._fetch, key, watched)

    async def _fetch(self, key: StreamKey, watched: _Watched) -> None:
        try:
            info = self.directory.get(key, trio.current_time())
            if info is None:
                # Unknown yet: maybe announced in a moment (we just started, or it is starting).
                with trio.move_on_after(1.5):
                    while (info := self.directory.get(key, trio.current_time())) is None:
                        await self._wait_change()
            if info is None:
                snap = None
            elif self._local is not None and info.owner == self._local.endpoint:
                snap = self._local.snapshot(key)
            else:
                snap = await fetch_snapshot(self._ctx, info.owner, key)
            if watched in self._watched.values():
                watched.feed.apply_snapshot(snap)
        finally:
            watched.joining = False
        self._notify()

    def _on_control(self, frame: bytes) -> None:
        try:
            body = wire.decode_control(frame)
        except wire.WireError:
            return
        key = self.directory.on_control(body, trio.current_time())
        for handler in self.control_handlers:
            handler(body)
        if key is not None:
            for (watched_key, _), watched in self._watched.items():
                if watched_key == key and watched.feed.needs_snapshot and not watched.joining:
                    self._join(key, watched)
            self._notify()

    def _collect(self, now: float) -> None:
        for hub_id, watched in list(self._watched.items()):
            key = hub_id[0]
            if watched.feed.needs_snapshot and not watched.joining:
                self._join(key, watched)
            if watched.idle_since is not None and now - watched.idle_since > IDLE_HUB_S:
                self.subscriber.unsubscribe(key.topic, watched.handler)
                del self._watched[hub_id]
