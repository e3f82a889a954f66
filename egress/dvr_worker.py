"""The DVR worker process: writes what the DVR entries ask for to disk.

It follows every live stream whose [[rtmp.location]] has DVR entries that record now with a
RecordingHub (egress/dvr/recording.py): DVR_FLV files, and DVR_FMP4 presentations, whose
news goes on the bus ("cmaf" control messages) for the egress workers that serve them.
Live-only presentations run while egress workers ask for them ("cmaf-want"). It also owns
the record control: "record" calls on the bus (from the egress workers' rtmp_control handler
and from the supervisor for `rtmpmate-ctl record`) start and stop DVR_FLV recordings.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Final

import trio
import zmq

from broker.calls import RESULT_SUFFIX
from broker.consumer import Consumer
from broker.feed import ANNOUNCE_INTERVAL_S
from broker.packet import StreamKey
from broker.zsock import BusPublisher, BusSubscriber, bus_endpoints
from control.config import location_for
from control.hooks import Hooks
from egress.dvr.recording import RecordingHub

if TYPE_CHECKING:
    from broker.hub import StreamHub
    from control.config import Config, DvrConfig

logger = logging.getLogger(__name__)

RECORD: Final = "record"  # the record control's call (broker.calls)
AUTO_MODES: Final = ("auto", "autoAudio", "autoVideo")  # record when the publisher asks
# How long a record start waits for a stream it did not follow yet to reach this worker.
RECORD_JOIN_S: Final = 3.0

EVENT: Final = "cmaf"  # the control message kind of a presentation's news
WANT: Final = "cmaf-want"  # ... and of an egress worker asking for one
# A live-only presentation (every entry mode "off") runs while players ask for it: it starts
# at the first request (from the GOP the bus keeps, so the first segment is there at once)
# and stops when nobody asked for this long. Recordings run whenever the stream is live.
WANTED_FOR_S: Final = 30.0
HUB_KIND: Final = "dvr"
# A publisher back within this continues the presentation after a discontinuity; past it the
# playlists end (ENDLIST) and a recording is complete.
END_GRACE_S: Final = 10.0
# The stream directory is looked at when a stream is announced or a presentation asked for,
# and at least this often (for the publishers that left).
SCAN_INTERVAL_S: Final = 1.0


def dvr_entries(cfg: Config, key: StreamKey, name: str,
                publish_type: str = "live") -> tuple[DvrConfig, ...]:
    """The DVR entries of that name which record `key` now: not "manual" ones (the control
    API starts them), nor DVR_FLV ones in mode "off" (they write nothing), nor the "auto"
    ones unless the publisher asked to record (RTMP publish type "record" or "append")."""
    loc = location_for(cfg.rtmp.location, f"/{key.app}")
    if loc is None:
        return ()
    recorded = publish_type in ("record", "append")
    return tuple(d for d in loc.dvr if d.name == name and d.mode != "manual"
                 and not (name == "DVR_FLV" and d.mode == "off")
                 and (recorded or d.mode not in AUTO_MODES))


def cmaf_entries(cfg: Config, key: StreamKey, publish_type: str = "live",
                 ) -> tuple[DvrConfig, ...]:
    return dvr_entries(cfg, key, "DVR_FMP4", publish_type)


class DvrWorker:
    def __init__(self, cfg: Config, name: str, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.cfg, self.name = cfg, name
        frontend, backend = bus_endpoints(cfg.server.run_dir)
        self.subscriber = BusSubscriber(ctx, backend, hwm=cfg.bus.hwm)
        self.publisher = BusPublisher(ctx, frontend, hwm=cfg.bus.hwm)  # control messages only
        self.hubs: dict[StreamKey, RecordingHub] = {}
        self.wanted: dict[StreamKey, float] = {}  # live-only presentations asked for, when
        self._wake = trio.Event()
        self.manual: set[tuple[StreamKey, str]] = set()  # recordings the control started
        self.consumer = Consumer(ctx, self.subscriber, {HUB_KIND: self._make_hub})
        self.consumer.control_handlers.append(self._on_control)
        self._nursery: trio.Nursery | None = None
        self.hooks = Hooks()

    def _on_control(self, body: dict[str, object]) -> None:
        kind = body.get("kind")
        if kind == RECORD and self._nursery is not None:
            self._nursery.start_soon(self._record_call, body)
            return
        if kind not in (WANT, "stream"):
            return
        try:
            key = StreamKey.parse(str(body.get("key")))
        except ValueError:
            return
        if kind == WANT:
            self.wanted[key] = trio.current_time()
        if key not in self.hubs and self._runs(key, trio.current_time()):
            self._wake.set()  # a stream to record now

    def _publish_type(self, key: StreamKey) -> str:
        info = self.consumer.directory.get(key, trio.current_time())
        return str(info.info.get("type", "live")) if info is not None else "live"

    def _runs(self, key: StreamKey, now: float) -> bool:
        """Should the stream's presentations run now?"""
        kind = self._publish_type(key)
        entries = cmaf_entries(self.cfg, key, kind)
        if any(d.mode != "off" for d in entries) or dvr_entries(
                self.cfg, key, "DVR_FLV", kind) or any(k == key for k, _ in self.manual):
            return True
        return bool(entries) and now - self.wanted.get(key, -WANTED_FOR_S) < WANTED_FOR_S

    def _make_hub(self, key: StreamKey) -> StreamHub:
        kind = self._publish_type(key)
        hub = self.hubs[key] = RecordingHub(key, cmaf_entries(self.cfg, key, kind),
                                            dvr_entries(self.cfg, key, "DVR_FLV", kind),
                                            self._announce, self._notify)
        return hub

    def _notify(self, entry: DvrConfig, event: str, body: dict[str, object]) -> None:
        """A recording started or finished: the entry's hooks and its location's."""
        key = StreamKey.parse(str(body["stream"]))
        loc = location_for(self.cfg.rtmp.location, f"/{key.app}")
        attr = "on_record" if event == "record" else "on_record_done"
        urls = getattr(entry, attr) + (getattr(loc, attr) if loc is not None else ())
        self.hooks.fire(urls, event, body)

    def _announce(self, news: dict[str, object]) -> None:
        self.publisher.send_control(EVENT, news)

    async def _scan(self, nursery: trio.Nursery) -> None:
        """Record every stream that has DVR_FMP4 entries; end those whose publisher left."""
        while True:
            now = trio.current_time()
            for info in self.consumer.directory.live(now):
                if info.key not in self.hubs and self._runs(info.key, now):
                    nursery.start_soon(self._record, info.key)
            for key, hub in list(self.hubs.items()):
                if (hub.ended_at is not None and now - hub.ended_at > END_GRACE_S) or (
                        not self._runs(key, now)):
                    hub.finish()
                    self.consumer.unwatch(key, kind=HUB_KIND)
                    del self.hubs[key]
                    self.manual -= {m for m in self.manual if m[0] == key}
            for key, when in list(self.wanted.items()):
                if now - when > WANTED_FOR_S:
                    del self.wanted[key]
            with trio.move_on_after(SCAN_INTERVAL_S):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _record(self, key: StreamKey) -> None:
        if not await self.consumer.wait_published(key, kind=HUB_KIND):
            self.consumer.unwatch(key, kind=HUB_KIND)
            self.hubs.pop(key, None)

    # -- record control ----------------------------------------------------------------------

    async def _record_call(self, body: dict[str, object]) -> None:
        answer = await self._record_command(body)
        logger.info("record %s %s %s: %s", body.get("action"), body.get("dvr"), body.get("key"),
                    answer.get("path") or answer.get("error"))
        self.publisher.send_control(RECORD + RESULT_SUFFIX, {"call": body.get("call"), **answer})

    async def _record_command(self, body: dict[str, object]) -> dict[str, object]:
        action, dvr = body.get("action"), body.get("dvr")
        if action not in ("start", "stop"):
            return _refused(400, "the action is start or stop")
        try:
            key = StreamKey.parse(str(body.get("key")))
        except ValueError:
            return _refused(400, "app, inst and name must name a stream")
        loc = location_for(self.cfg.rtmp.location, f"/{key.app}")
        entry = next((d for d in loc.dvr if d.id == dvr), None) if loc is not None else None
        if entry is None:
            return _refused(404, f"no dvr {dvr!r} for /{key.app}")
        if entry.name != "DVR_FLV":
            return _refused(400, f"dvr {entry.id} is a {entry.name} entry: the record control "
                                 "starts and stops DVR_FLV recordings")
        hub = self.hubs.get(key)
        current = hub.recording(entry) if hub is not None else None
        if action == "stop":
            self.manual.discard((key, entry.id))
            if hub is None or current is None:
                return _refused(409, f"dvr {entry.id} is not recording {key}")
            hub.stop_recording(entry)
            return {"ok": True, "status": 200, "path": str(current.path)}
        if current is not None:
            return _refused(409, f"dvr {entry.id} is already recording {key} to {current.path}")
        if self.consumer.directory.get(key, trio.current_time()) is None:
            return _refused(404, f"stream {key} is not published")
        self.manual.add((key, entry.id))
        with trio.move_on_after(RECORD_JOIN_S):
            if key not in self.hubs:
                await self._record(key)
            # A hub goes live on a packet, which nothing signals: look every 50 ms.
            while (hub := self.hubs.get(key)) is None or not hub.live:  # noqa: ASYNC110
                await trio.sleep(0.05)
        if hub is None or not hub.live:
            self.manual.discard((key, entry.id))
            return _refused(503, f"the media of {key} did not arrive in time")
        try:
            recording = hub.start_recording(entry)
        except (OSError, ValueError) as exc:
            self.manual.discard((key, entry.id))
            return _refused(500, f"cannot record: {exc}")
        return {"ok": True, "status": 200, "path": str(recording.path)}

    async def _report(self) -> None:
        while True:
            await trio.sleep(ANNOUNCE_INTERVAL_S)
            self.publisher.send_control("viewers", {"worker": self.name, "pid": os.getpid(),
                                                    "streams": {}})

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = self.hooks.nursery = nursery
            nursery.start_soon(self.subscriber.serve)
            nursery.start_soon(self.consumer.serve)
            nursery.start_soon(self._report)
            logger.info("%s recording", self.name)
            await self._scan(nursery)


def _refused(status: int, why: str) -> dict[str, object]:
    return {"ok": False, "status": status, "error": why}


def run_dvr_worker(cfg: Config, name: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        trio.run(DvrWorker(cfg, name, ctx).serve)
    finally:
        ctx.destroy(linger=0)
