"""`python -m bench`: plan the runs, start and stop the servers, collect and report figures.

Runs go N by N, and at each N rtmpmate's protocols and nginx-rtmp's RTMP follow one another,
so every pair of figures quoted side by side was measured minutes apart. Each run gets a fresh
server (the smoke shares one: it checks that everything works, not how fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench import report, servers
from bench.fanout import FanoutResult, Options, Session
from bench.ingest import DEFAULT_LEVELS, IngestOptions, IngestResult, ingest_level
from bench.media import SMOKE_SECONDS, SMOKE_SIZE, ensure_media, load_media
from bench.players import DEFAULT_PROTOCOLS, PROTOCOLS
from bench.publisher import EncodedMedia
from bench.rtmp import CHUNK_SIZE

DEFAULT_VIEWERS = (1, 50, 200, 400, 800)
SMOKE_VIEWERS = (1, 10)


def _ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown protocol {unknown[0]} ({', '.join(PROTOCOLS)})")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--viewers", type=_ints, default=list(DEFAULT_VIEWERS), help="N list")
    p.add_argument("--protocols", type=_names, default=list(DEFAULT_PROTOCOLS))
    p.add_argument("--window", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="publisher alone first, s")
    p.add_argument("--settle", type=float, default=2.0, help="after players start, s")
    p.add_argument("--sample", type=int, default=20, help="parsing players per run")
    p.add_argument("--join-spread", type=float, default=2.0,
                   help="the sampled players join over this many seconds (one GOP)")
    p.add_argument("--read-interval-ms", type=float, default=50.0,
                   help="how often counting players drain their socket")
    p.add_argument("--ingest-workers", type=int, default=1)
    p.add_argument("--egress-workers", type=int, default=1)
    p.add_argument("--log-level", default="warning", help="rtmpmate's log level")
    p.add_argument("--rtmpmate-dir", type=Path, default=servers.REPO,
                   help="the rtmpmate checkout to run (default: this one)")
    p.add_argument("--no-nginx", action="store_true", help="skip nginx-rtmp")
    p.add_argument("--no-ingest", action="store_true", help="skip the ingest scenario")
    p.add_argument("--ingest-levels", type=_ints, default=list(DEFAULT_LEVELS))
    p.add_argument("--ingest-window", type=float, default=15.0)
    p.add_argument("--no-scaling", action="store_true", help="skip 1 vs 2 egress workers")
    p.add_argument("--scaling-viewers", type=int, default=400)
    p.add_argument("--scaling-rounds", type=int, default=3,
                   help="1-worker and 2-worker runs, alternating; the median round is reported")
    p.add_argument("--scaling-protocol", default="http-flv", type=_names)
    p.add_argument("--smoke", "--quick", action="store_true",
                   help="a small media, 1.5-second runs at N=1 and 10, rtmpmate only, no ingest "
                        "or scaling")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--markdown", nargs="?", const=Path("docs/benchmarks.md"), type=Path,
                   help="rewrite the latest results in this file (docs/benchmarks.md)")
    p.add_argument("--workdir", type=Path, default=Path("var/bench"),
                   help="test media cache and server logs")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="measure nothing: print (and --markdown) the results of an earlier --json")
    args = p.parse_args(argv)
    if args.smoke:
        args.viewers, args.window, args.warmup, args.settle = list(SMOKE_VIEWERS), 1.5, 1.0, 0.3
        args.join_spread = 0.3
        args.no_nginx = args.no_ingest = args.no_scaling = True
    return args


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.logs = args.workdir / "logs"
        self.opts = Options(window_s=args.window, warmup_s=args.warmup, settle_s=args.settle,
                            sample=args.sample, read_interval_s=args.read_interval_ms / 1000,
                            join_spread_s=args.join_spread)
        media = load_media(ensure_media(args.workdir, SMOKE_SIZE, SMOKE_SECONDS) if args.smoke
                           else ensure_media(args.workdir))
        self.encoded = EncodedMedia(media, CHUNK_SIZE)
        gc.freeze()  # the media lives to the end: keep the collector's passes short
        self.nginx_missing = servers.nginx_missing()

    def start(self, server: str, label: str, *, egress: int | None = None) -> servers.Target:
        """A fresh server; its log is LOGS/LABEL.log (the last run of that label's). With
        `egress` (the scaling runs), egress workers serve every player."""
        if server == report.NGINX:
            return servers.start_nginx(self.logs, label=label)
        return servers.start_rtmpmate(
            self.logs, ingest=self.args.ingest_workers,
            egress=self.args.egress_workers if egress is None else egress,
            log_level=self.args.log_level, label=label, source=self.args.rtmpmate_dir,
            egress_only=egress is not None)

    def session(self, server: str, plan: list[tuple[str, int]], *,
                egress: int | None = None) -> list[FanoutResult]:
        try:
            label = f"{server}-{plan[0][0]}" if len(plan) == 1 else server
            if egress is not None:
                label += f"-{egress}egress"
            with servers.running(self.start(server, label, egress=egress)) as target:
                results = trio.run(Session(target, self.encoded, self.opts).run, plan)
        except Exception as exc:  # a failed run is recorded; the other runs go on
            say(f"  {server} {plan}: FAILED {exc!r} (logs in {self.logs})")
            return [FanoutResult(server, p, n, status="failed", note=repr(exc)[:200])
                    for p, n in plan]
        for r in results:
            say(f"  {server:10} {r.protocol:9} N={r.viewers:<4} {r.status:6} "
                f"cpu/viewer-s={r.cpu_per_viewer_s} bitrate min={r.bitrate_ratio_min} "
                f"startup p95={r.startup_ms_p95} latency p95={r.latency_ms_p95} "
                f"client={r.client_cpu_pct}% {r.note}")
        return results

    def fanout(self) -> list[FanoutResult]:
        args = self.args
        if args.smoke:
            return self.session(report.RTMPMATE, [(p, n) for n in args.viewers
                                                  for p in args.protocols])
        out: list[FanoutResult] = []
        na: dict[tuple[str, str], str] = {}  # (server, protocol) -> why it is n/a
        for n in args.viewers:
            for server in self.servers():
                for protocol in args.protocols:
                    if (server, protocol) in na:
                        out.append(FanoutResult(server, protocol, n, status="n/a",
                                                note=na[server, protocol]))
                        continue
                    if server == report.NGINX and PROTOCOLS[protocol].listener != "rtmp":
                        na[server, protocol] = f"nginx-rtmp has no {protocol} playback"
                        out.append(FanoutResult(server, protocol, n, "n/a", na[server, protocol]))
                        continue
                    (result,) = self.session(server, [(protocol, n)])
                    if result.status == "n/a":
                        na[server, protocol] = result.note
                    out.append(result)
        return out

    def servers(self) -> list[str]:
        nginx = [] if self.args.no_nginx or self.nginx_missing else [report.NGINX]
        return [report.RTMPMATE, *nginx]

    def ingest(self) -> list[IngestResult]:
        iopts = IngestOptions(window_s=self.args.ingest_window)
        out: list[IngestResult] = []
        for server in self.servers():
            viewer = "rtmp" if server == report.NGINX else "http-flv"
            for level in self.args.ingest_levels:
                try:
                    with servers.running(self.start(server, f"{server}-ingest")) as target:
                        r = trio.run(ingest_level, target, self.encoded, self.opts, iopts,
                                     level, viewer)
                except Exception as exc:  # recorded, as for the fan-out runs
                    r = IngestResult(server, level, viewer, status="failed", note=repr(exc)[:200])
                say(f"  {server:10} ingest P={level:<4} carried={r.carried} behind={r.behind} "
                    f"max late={r.max_late_ms} ms min ratio={r.bitrate_ratio_min} "
                    f"client={r.client_cpu_pct}% {r.note}")
                out.append(r)
                if not r.carried:
                    break
        return out

    def scaling(self) -> dict[str, Any] | None:
        protocol = self.args.scaling_protocol[0]
        n = self.args.scaling_viewers
        # Rounds of a 1-worker and a 2-worker run back to back (each round compares its own
        # pair, a minute apart), then one worker with one viewer: what a worker pays for the
        # stream itself.
        plan = [(1, n), (2, n)] * max(1, self.args.scaling_rounds) + [(1, 1)]
        runs = [self.session(report.RTMPMATE, [(protocol, viewers)], egress=k)[0]
                for k, viewers in plan]
        if any(r.status != "ok" for r in runs):
            return {"note": "a scaling run failed", "runs": [dataclasses.asdict(r) for r in runs]}
        *pairs, alone = (dataclasses.asdict(r) for r in runs)
        return {**report.scaling_rounds(list(zip(pairs[::2], pairs[1::2], strict=True)), alone),
                "runs": [*pairs, alone]}


def main(argv: list[str] | None = None) -> None:
    try:
        run(parse_args(argv))
    except KeyboardInterrupt:
        say("interrupted; every server was stopped")
        sys.exit(130)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        say("interrupted; every server was stopped")
        sys.exit(130)


def run(args: argparse.Namespace) -> None:
    if args.report:
        publish(json.loads(args.report.read_text()), args)
        return
    started = time.monotonic()
    bench = Bench(args)
    say(f"media: {bench.encoded.media.path} ({bench.encoded.media.bitrate_bps / 1e6:.2f} Mbit/s)")
    if bench.nginx_missing and not args.no_nginx:
        say(f"nginx-rtmp: not measured: {bench.nginx_missing}")
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": report.machine(),
        "rtmpmate_commit": servers.commit_of(args.rtmpmate_dir),
        "options": {**vars(args), "json": str(args.json), "markdown": str(args.markdown),
                    "workdir": str(args.workdir), "rtmpmate_dir": str(args.rtmpmate_dir),
                    "window_s": args.window},
        "media": {"path": str(bench.encoded.media.path),
                  "bitrate_bps": round(bench.encoded.media.bitrate_bps),
                  "duration_ms": bench.encoded.media.duration_ms},
        "nginx": {"available": bench.nginx_missing is None,
                  "note": ("skipped (--no-nginx)" if args.no_nginx else
                           bench.nginx_missing or "measured in the same invocation")},
    }
    results["fanout"] = [dataclasses.asdict(r) for r in bench.fanout()]
    report.add_nginx_ratios(results["fanout"])
    results["ingest"] = [] if args.no_ingest else [dataclasses.asdict(r) for r in bench.ingest()]
    results["scaling"] = None if args.no_scaling else bench.scaling()
    results["duration_s"] = round(time.monotonic() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    publish(results, args)


def publish(results: dict[str, Any], args: argparse.Namespace) -> None:
    text = report.render(results)
    print(text)
    if args.markdown:
        report.update_markdown(args.markdown, text)
