"""The fan-out scenario: one live stream, N players of one protocol, a fixed window.

A Session keeps one publisher on one server while runs come and go (the smoke runs all its
combinations in one session; a full benchmark starts a fresh server for every run, so memory
and CPU of one run never leak into the next). Per run:

1. probe the protocol (a server that answers 404 or has no such port gets "n/a");
2. sample the server's RSS with 0 viewers; open the N - S counting players (at most
   `connect_concurrency` setting up at once), then the S sampled ones, each group until every
   player is playing or has failed;
3. let the start bursts (cached GOPs) pass for `settle_s`, then measure over `window_s`:
   server CPU, bytes each player received, media bytes the publisher sent, per-frame latency
   of the sampled players, the load process's own CPU and loop lag.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from bench import procstat
from bench.counting import Drainer, PlayerStats, StartGate
from bench.players import PROTOCOLS, PlayContext, Protocol, read_head, run_player, status_line
from bench.publisher import Publisher
from bench.rtmp import RtmpError, client_socket, send_all
from bench.stats import LagMonitor, median, ms, percentile, rounded

if TYPE_CHECKING:
    from bench.publisher import EncodedMedia
    from bench.servers import Target

STREAM = "bench"
PROBE_TIMEOUT_S = 6.0  # longer than a server's wait for a publisher that may still come
MIB = 1 << 20
PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Options:
    window_s: float = 20.0
    warmup_s: float = 3.0  # publisher alone before the first run: the server goes live
    settle_s: float = 2.0  # after the last player started: start bursts are over
    sample: int = 20  # players per run that parse (startup, latency); the rest count
    connect_concurrency: int = 32
    connect_timeout_s: float = 60.0
    read_interval_s: float = 0.05
    join_spread_s: float = 2.0  # sampled players join over this: the test media's GOP


@dataclass
class FanoutResult:
    server: str
    protocol: str
    viewers: int
    status: str = "ok"  # "ok", "n/a" or "failed"
    note: str = ""
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    cpu_per_viewer_s: float | None = None  # server CPU seconds per viewer-second
    cpu_by_process: list[dict[str, object]] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    rss_idle_mib: float = 0.0  # publisher on, no viewer
    rss_loaded_mib: float = 0.0  # N viewers, at the end of the window
    mem_per_viewer_kib: float | None = None
    publisher_bps: float = 0.0
    bitrate_ratio_median: float | None = None
    bitrate_ratio_min: float | None = None
    startup_ms_median: float | None = None
    startup_ms_p95: float | None = None
    startup_samples: int = 0
    latency_ms_median: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_max: float | None = None
    latency_samples: int = 0
    unmatched_frames: int = 0
    connected: int = 0
    failed: int = 0
    ended: int = 0
    client_cpu_pct: float = 0.0  # the load process, % of one core
    client_lag_ms_p95: float | None = None
    client_lag_ms_max: float | None = None
    publisher_max_late_ms: float | None = None


def _probe_request(proto: Protocol, host: str, port: int, path: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: rtmpmate-bench"]
    if proto.websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def probe(target: Target, proto: Protocol) -> str | None:
    """Why the server cannot serve this protocol, or None when it can."""
    port = target.port_for(proto.listener)
    if port is None:
        return f"{target.name} has no {proto.listener.upper()} playback"
    if proto.listener == "rtmp":
        return None
    path = f"/{target.app}/{STREAM}{proto.path_suffix}"
    _, sock = client_socket()
    with sock, trio.move_on_after(PROBE_TIMEOUT_S):
        await sock.connect((target.host, port))
        await send_all(sock, _probe_request(proto, target.host, port, path))
        head, _ = await read_head(sock)
        code = status_line(head).split(" ")[1:2]
        if code in (["200"], ["101"]):
            return None
        return f"{path} answered {' '.join(code) or status_line(head)!r}"
    return f"{path}: no answer within {PROBE_TIMEOUT_S} s"


class Session:
    def __init__(self, target: Target, encoded: EncodedMedia, opts: Options) -> None:
        self.target = target
        self.encoded = encoded
        self.opts = opts

    async def run(self, plan: list[tuple[str, int]]) -> list[FanoutResult]:
        results: list[FanoutResult] = []
        async with trio.open_nursery() as nursery:
            pub = Publisher(self.encoded)
            t = self.target
            with trio.fail_after(PUBLISH_TIMEOUT_S):
                await nursery.start(pub.run, t.host, t.rtmp_port, t.app, STREAM)
            await trio.sleep(self.opts.warmup_s)
            for protocol, n in plan:
                results.append(await self.fanout(pub, protocol, n))
            nursery.cancel_scope.cancel()
        return results

    async def fanout(self, pub: Publisher, protocol: str, n: int) -> FanoutResult:
        result = FanoutResult(self.target.name, protocol, n)
        proto = PROTOCOLS[protocol]
        try:
            reason = await probe(self.target, proto)
        except (OSError, RtmpError) as exc:
            result.status, result.note = "failed", f"probe: {exc}"
            return result
        if reason is None and proto.play is None:
            reason = "served, but the load client cannot play it yet"
        if reason is not None or proto.play is None:
            result.status, result.note = "n/a", reason or ""
            return result
        port = self.target.port_for(proto.listener)
        assert port is not None
        opts = self.opts
        rss = procstat.RssSampler(self.target.root_pid)
        rss_idle = rss.sample()
        lag = LagMonitor()
        drainer = Drainer(opts.read_interval_s)
        sampled = min(n, opts.sample)
        players = [PlayerStats(i, i >= n - sampled) for i in range(n)]
        counting_ctx = PlayContext(
            self.target.host, port, self.target.app, STREAM, pub.sent_at,
            trio.CapacityLimiter(opts.connect_concurrency), drainer, StartGate(n - sampled))
        sampled_ctx = dataclasses.replace(counting_ctx, gate=StartGate(sampled))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rss.run)
            nursery.start_soon(lag.run)
            nursery.start_soon(drainer.run)
            # The counting players first, then the sampled ones: startup is measured for
            # viewers joining a stream that already has its other viewers, at moments spread
            # over a GOP (a server without a GOP cache makes each wait for the next keyframe).
            for ctx, group, spread in ((counting_ctx, players[: n - sampled], 0.0),
                                       (sampled_ctx, players[n - sampled :],
                                        opts.join_spread_s)):
                for k, stats in enumerate(group):
                    nursery.start_soon(run_player, proto.play, ctx, stats,
                                       k * spread / len(group))
                with trio.move_on_after(opts.connect_timeout_s):
                    await ctx.gate.event.wait()
            await trio.sleep(opts.settle_s)
            drainer.drain_now()
            cpu0, bytes0 = procstat.cpu_snapshot(self.target.root_pid), [p.bytes for p in players]
            pub0, client0 = pub.media_bytes, procstat.self_cpu_seconds()
            lag.reset()
            pub.max_late_s = 0.0
            await trio.sleep(opts.window_s)
            drainer.drain_now()
            cpu1, bytes1 = procstat.cpu_snapshot(self.target.root_pid), [p.bytes for p in players]
            pub1, client1 = pub.media_bytes, procstat.self_cpu_seconds()
            roles, held = self.target.roles(), self.target.connections()
            rss_loaded = rss.sample()
            nursery.cancel_scope.cancel()
        elapsed = cpu1.at - cpu0.at
        result.window_s = round(elapsed, 3)
        fill_cpu(result, procstat.cpu_delta(cpu0, cpu1), roles, elapsed, n, held)
        result.peak_rss_mib = round(rss.peak / MIB, 1)
        result.rss_idle_mib = round(rss_idle / MIB, 1)
        result.rss_loaded_mib = round(rss_loaded / MIB, 1)
        result.mem_per_viewer_kib = round((rss_loaded - rss_idle) / 1024 / n, 1)
        result.publisher_bps = round((pub1 - pub0) * 8 / elapsed)
        ratios = [(b1 - b0) / (pub1 - pub0) for b0, b1 in zip(bytes0, bytes1, strict=True)]
        result.bitrate_ratio_median = rounded(median(ratios), 4)
        result.bitrate_ratio_min = rounded(min(ratios), 4)
        fill_player_stats(result, players, cpu0.at, cpu1.at)
        result.client_cpu_pct = round((client1 - client0) / elapsed * 100, 1)
        lags = lag.summary()
        result.client_lag_ms_p95, result.client_lag_ms_max = lags["p95_ms"], lags["max_ms"]
        result.publisher_max_late_ms = ms(pub.max_late_s)
        if result.failed:
            result.status = "failed" if result.connected == 0 else "ok"
        return result


def fill_cpu(result: FanoutResult, delta: dict[int, float], roles: dict[int, str],
             elapsed: float, n: int, held: dict[int, int] | None = None) -> None:
    total = sum(delta.values())
    result.server_cpu_s = round(total, 3)
    result.cpu_per_viewer_s = round(total / (n * elapsed), 7)
    result.cpu_by_process = [
        {"pid": pid, "role": roles.get(pid, "?"), "cores": round(cpu / elapsed, 4),
         **({"connections": held[pid]} if held and pid in held else {})}
        for pid, cpu in sorted(delta.items())]


def fill_player_stats(result: FanoutResult, players: list[PlayerStats], t0: float,
                      t1: float) -> None:
    startups = [s for p in players if p.sampled and (s := p.startup_s) is not None]
    result.startup_samples = len(startups)
    result.startup_ms_median = ms(median(startups))
    result.startup_ms_p95 = ms(percentile(startups, 95))
    latencies = [received - sent for p in players if p.sampled
                 for sent, received in p.frames if t0 <= sent <= t1]
    result.latency_samples = len(latencies)
    result.latency_ms_median = ms(median(latencies))
    result.latency_ms_p95 = ms(percentile(latencies, 95))
    result.latency_ms_max = ms(max(latencies, default=None))
    result.unmatched_frames = sum(p.unmatched for p in players)
    result.connected = sum(1 for p in players if p.playing_at is not None)
    result.failed = sum(1 for p in players if p.error)
    result.ended = sum(1 for p in players if p.ended)
    errors = sorted({p.error for p in players if p.error})
    if errors:
        result.note = f"{result.failed} players failed: " + "; ".join(errors[:3])
