"""A process's view of the bus as a consumer: the stream directory and a hub per watched stream."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from broker import wire
from broker.feed import FeedState, StreamDirectory
from broker.hub import Mux, StreamHub, Viewer
from broker.zsock import BusSubscriber, fetch_snapshot

if TYPE_CHECKING:
    import zmq

    from broker.packet import StreamKey

logger = logging.getLogger(__name__)

# How long a viewer of a stream that is not (yet) published waits before "not found".
PUBLISHER_WAIT_S = 3.0
# A hub with no viewers left is kept this long, so a reconnecting viewer starts at once.
IDLE_HUB_S = 5.0


class _Watched:
    __slots__ = ("feed", "handler", "hub", "idle_since", "joining")

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self.feed = FeedState(hub)
        self.joining = False
        self.idle_since: float | None = None

        def handler(frames: list[bytes]) -> None:
            try:
                wp = wire.decode(frames)
            except wire.WireError as exc:
                logger.warning("dropped a bad bus message for %s: %s", hub.key, exc)
                return
            self.feed.on_wire(wp)

        self.handler = handler


class Consumer:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], subscriber: BusSubscriber,
                 mux: Mux) -> None:
        self._ctx = ctx
        self.subscriber = subscriber
        self.directory = StreamDirectory()
        self._mux = mux
        self._watched: dict[StreamKey, _Watched] = {}
        self._changed = trio.Event()  # set whenever the directory or a hub's state changes
        self._nursery: trio.Nursery | None = None
        subscriber.subscribe(wire.CONTROL_TOPIC, self._on_control)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await trio.sleep(1.0)
                self._collect(trio.current_time())

    def hubs(self) -> dict[StreamKey, StreamHub]:
        return {k: w.hub for k, w in self._watched.items()}

    async def attach(self, key: StreamKey, viewer: Viewer, *,
                     wait_s: float = PUBLISHER_WAIT_S) -> StreamHub | None:
        """Add a viewer to the stream's hub; None if no publisher appears within wait_s."""
        if not await self.wait_published(key, wait_s=wait_s):
            return None
        return self.add(key, viewer)

    async def wait_published(self, key: StreamKey, *, wait_s: float = PUBLISHER_WAIT_S) -> bool:
        """Subscribe to the stream and wait (up to wait_s) until it is published."""
        watched = self._watch(key)
        watched.idle_since = None
        with trio.move_on_after(wait_s):
            while not watched.hub.live and self.directory.get(key, trio.current_time()) is None:
                await self._wait_change()
            return True
        if not watched.hub.viewers:
            watched.idle_since = trio.current_time()
        return False

    def add(self, key: StreamKey, viewer: Viewer) -> StreamHub:
        """Add a viewer at once (after wait_published): no await between deciding and adding."""
        watched = self._watch(key)
        watched.idle_since = None
        watched.hub.add(viewer)
        return watched.hub

    def detach(self, key: StreamKey, viewer: Viewer) -> None:
        watched = self._watched.get(key)
        if watched is None:
            return
        watched.hub.remove(viewer)
        if not watched.hub.viewers:
            watched.idle_since = trio.current_time()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _watch(self, key: StreamKey) -> _Watched:
        watched = self._watched.get(key)
        if watched is None:
            hub = StreamHub(key, self._mux)
            watched = self._watched[key] = _Watched(hub)
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
            snap = await fetch_snapshot(self._ctx, info.owner, key) if info else None
            if self._watched.get(key) is watched:
                watched.feed.apply_snapshot(snap)
        finally:
            watched.joining = False
        self._notify()

    def _on_control(self, frames: list[bytes]) -> None:
        try:
            body = wire.decode_control(frames)
        except wire.WireError:
            return
        key = self.directory.on_control(body, trio.current_time())
        if key is not None:
            watched = self._watched.get(key)
            if watched is not None and watched.feed.needs_snapshot and not watched.joining:
                self._join(key, watched)
            self._notify()

    def _collect(self, now: float) -> None:
        for key, watched in list(self._watched.items()):
            if watched.feed.needs_snapshot and not watched.joining:
                self._join(key, watched)
            if watched.idle_since is not None and now - watched.idle_since > IDLE_HUB_S:
                self.subscriber.unsubscribe(key.topic, watched.handler)
                del self._watched[key]
