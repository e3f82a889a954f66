"""The ingest scenario: P publishers at about 2 Mbit/s each, one counting viewer per stream.

A level is carried when, over the window, no publisher *falls behind*:
- its frames go out later than real time by more than LATE_LIMIT_S (the server stopped reading,
  so the socket's send buffer filled and sends waited), or
- its viewer receives less than MIN_RATIO of what it sent.

Levels run in order on a fresh server each, and stop after the first that is not carried.
Publishers batch their sends every `quantum_s` (50 ms by default): 200 publishers pacing every
tag separately would cost the load process more than the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from bench import procstat
from bench.counting import Drainer, PlayerStats, StartGate
from bench.fanout import MIB, PUBLISH_TIMEOUT_S, Options
from bench.players import PROTOCOLS, PlayContext, run_player
from bench.publisher import Publisher
from bench.stats import LagMonitor, median, ms, rounded

if TYPE_CHECKING:
    from bench.publisher import EncodedMedia
    from bench.servers import Target

LATE_LIMIT_S = 1.0
MIN_RATIO = 0.95
DEFAULT_LEVELS = (10, 50, 100, 200)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    window_s: float = 15.0
    quantum_s: float = 0.05


@dataclass
class IngestResult:
    server: str
    publishers: int
    viewer_protocol: str
    status: str = "ok"  # "ok" or "failed" (could not even start)
    note: str = ""
    carried: bool = False
    behind: int = 0  # publishers that fell behind, for either reason
    behind_late: int = 0
    behind_bitrate: int = 0
    max_late_ms: float | None = None
    blocked_s: float = 0.0  # publishers' total time waiting in send during the window
    bitrate_ratio_median: float | None = None
    bitrate_ratio_min: float | None = None
    server_cores: float = 0.0  # server CPU seconds per second
    cpu_per_publisher_s: float | None = None
    cpu_by_process: list[dict[str, object]] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    client_cpu_pct: float = 0.0
    client_lag_ms_p95: float | None = None
    client_lag_ms_max: float | None = None


async def ingest_level(target: Target, encoded: EncodedMedia, opts: Options,
                       iopts: IngestOptions, publishers: int, viewer: str) -> IngestResult:
    result = IngestResult(target.name, publishers, viewer)
    proto = PROTOCOLS[viewer]
    port = target.port_for(proto.listener)
    assert port is not None
    assert proto.play is not None
    pubs = [Publisher(encoded, quantum_s=iopts.quantum_s) for _ in range(publishers)]
    rss = procstat.RssSampler(target.root_pid)
    lag = LagMonitor()
    limiter = trio.CapacityLimiter(opts.connect_concurrency)
    drainer = Drainer(opts.read_interval_s)  # every viewer only counts
    viewers = [PlayerStats(i, sampled=False) for i in range(publishers)]
    gate = StartGate(publishers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rss.run)
        nursery.start_soon(lag.run)
        nursery.start_soon(drainer.run)
        for i, pub in enumerate(pubs):
            with trio.fail_after(PUBLISH_TIMEOUT_S):
                await nursery.start(pub.run, target.host, target.rtmp_port, target.app, f"s{i}")
        await trio.sleep(opts.warmup_s)
        for i, (pub, stats) in enumerate(zip(pubs, viewers, strict=True)):
            ctx = PlayContext(target.host, port, target.app, f"s{i}", pub.sent_at, limiter,
                              drainer, gate)
            nursery.start_soon(run_player, proto.play, ctx, stats)
        with trio.move_on_after(opts.connect_timeout_s):
            await gate.event.wait()
        await trio.sleep(opts.settle_s)
        drainer.drain_now()
        cpu0, client0 = procstat.cpu_snapshot(target.root_pid), procstat.self_cpu_seconds()
        seen0 = [v.bytes for v in viewers]
        sent0 = [p.media_bytes for p in pubs]
        blocked0 = sum(p.blocked_s for p in pubs)
        for pub in pubs:
            pub.max_late_s = 0.0
        lag.reset()
        await trio.sleep(iopts.window_s)
        drainer.drain_now()
        cpu1, client1 = procstat.cpu_snapshot(target.root_pid), procstat.self_cpu_seconds()
        seen1 = [v.bytes for v in viewers]
        sent1 = [p.media_bytes for p in pubs]
        roles = target.roles()
        nursery.cancel_scope.cancel()
    elapsed = cpu1.at - cpu0.at
    ratios = [(s1 - s0) / max(1, p1 - p0)
              for s0, s1, p0, p1 in zip(seen0, seen1, sent0, sent1, strict=True)]
    late = [p.max_late_s for p in pubs]
    result.behind_late = sum(1 for x in late if x > LATE_LIMIT_S)
    result.behind_bitrate = sum(1 for r in ratios if r < MIN_RATIO)
    result.behind = sum(1 for x, r in zip(late, ratios, strict=True)
                        if x > LATE_LIMIT_S or r < MIN_RATIO)
    result.carried = result.behind == 0
    result.max_late_ms = ms(max(late))
    result.blocked_s = round(sum(p.blocked_s for p in pubs) - blocked0, 3)
    result.bitrate_ratio_median = rounded(median(ratios), 4)
    result.bitrate_ratio_min = rounded(min(ratios), 4)
    delta = procstat.cpu_delta(cpu0, cpu1)
    result.server_cores = round(sum(delta.values()) / elapsed, 4)
    result.cpu_per_publisher_s = round(result.server_cores / publishers, 6)
    result.cpu_by_process = [{"pid": pid, "role": roles.get(pid, "?"),
                              "cores": round(cpu / elapsed, 4)}
                             for pid, cpu in sorted(delta.items())]
    result.peak_rss_mib = round(rss.peak / MIB, 1)
    result.client_cpu_pct = round((client1 - client0) / elapsed * 100, 1)
    lags = lag.summary()
    result.client_lag_ms_p95, result.client_lag_ms_max = lags["p95_ms"], lags["max_ms"]
    failed = sorted({v.error for v in viewers if v.error})
    if failed:
        result.note = f"{len(failed)} viewer errors: " + "; ".join(failed[:3])
    return result
