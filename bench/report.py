"""Turn a benchmark's figures into tables: stdout, the JSON file, docs/benchmarks.md.

Every rtmpmate figure is quoted beside nginx-rtmp's from the same invocation; on a shared,
noisy machine only such ratios compare across days.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

BEGIN = "<!-- latest-results:begin -->"
END = "<!-- latest-results:end -->"
NGINX = "nginx-rtmp"
RTMPMATE = "rtmpmate"


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def _f(value: object, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def add_nginx_ratios(fanout: list[dict[str, Any]]) -> None:
    """ratio_to_nginx_rtmp: CPU per viewer-second over nginx-rtmp's RTMP figure at the same N."""
    base = {r["viewers"]: r["cpu_per_viewer_s"] for r in fanout
            if r["server"] == NGINX and r["protocol"] == "rtmp" and r["status"] == "ok"}
    for r in fanout:
        ref = base.get(r["viewers"])
        cpu = r.get("cpu_per_viewer_s")
        r["ratio_to_nginx_rtmp"] = round(cpu / ref, 2) if cpu and ref else None


def scaling_summary(one: dict[str, Any], two: dict[str, Any],
                    alone: dict[str, Any] | None = None) -> dict[str, Any]:
    """Viewers carried by 2 egress workers over 1, from the same fan-out with each.

    A worker saturates when its own process reaches one core. Its CPU is a part for the
    stream (bus wake-ups, muxing: `alone`, the worker with a single viewer) and a part that
    grows with its viewers. With the viewers spread as they were, k workers carry
    N x (1 - stream part) / (busiest worker - stream part) viewers, and `capacity_ratio` is
    that for 2 workers over 1: uneven spreading and any cost per viewer that grows with the
    workers count against it. `strict_ratio` leaves the stream part in, as if it grew with the
    viewers: N / busiest worker, at this N, where the stream part is not yet small.
    """
    def busiest(r: dict[str, Any]) -> float | None:
        cores = [p["cores"] for p in r["cpu_by_process"] if p["role"] == "egress"]
        return max(cores) if cores else None

    b1, b2 = busiest(one), busiest(two)
    strict = round(b1 / b2, 2) if b1 and b2 else None
    fixed = busiest(alone) if alone is not None else None
    ratio = None
    if b1 and b2 and fixed is not None and b2 > fixed:
        ratio = round((b1 - fixed) / (b2 - fixed), 2)
    return {"viewers": one["viewers"], "protocol": one["protocol"],
            "stream_cores": fixed, "strict_ratio": strict,
            "busiest_egress_cores": {"1": b1, "2": b2},
            "egress_cores": {str(k): [p["cores"] for p in r["cpu_by_process"]
                                      if p["role"] == "egress"]
                             for k, r in ((1, one), (2, two))},
            # What each of the two workers held (rtmpmate says so from 2 workers on).
            "egress_connections": [p.get("connections") for p in two["cpu_by_process"]
                                   if p["role"] == "egress"],
            "cpu_per_viewer_s": {"1": one["cpu_per_viewer_s"], "2": two["cpu_per_viewer_s"]},
            "bitrate_ratio_min": {"1": one["bitrate_ratio_min"], "2": two["bitrate_ratio_min"]},
            "capacity_ratio": ratio}


def fanout_table(fanout: list[dict[str, Any]]) -> list[str]:
    rows = ["| server | protocol | N | CPU-s per viewer-s | x nginx-rtmp RTMP | "
            "bitrate med / min | startup med / p95 ms | latency med / p95 / max ms | "
            "peak RSS MiB | load client CPU % |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in fanout:
        if r["server"] == NGINX and r["status"] == "n/a":
            continue  # nginx-rtmp plays RTMP only; render() says so once
        if r["status"] != "ok":
            rows.append(f"| {r['server']} | {r['protocol']} | {r['viewers']} | "
                        f"{r['status']}: {r['note']} | | | | | | |")
            continue
        rows.append(
            f"| {r['server']} | {r['protocol']} | {r['viewers']} | "
            f"{_f(r['cpu_per_viewer_s'], '{:.6f}')} | {_f(r['ratio_to_nginx_rtmp'], '{:.2f}')} | "
            f"{_f(r['bitrate_ratio_median'], '{:.3f}')} / {_f(r['bitrate_ratio_min'], '{:.3f}')}"
            f" | {_f(r['startup_ms_median'], '{:.0f}')} / {_f(r['startup_ms_p95'], '{:.0f}')} | "
            f"{_f(r['latency_ms_median'], '{:.1f}')} / {_f(r['latency_ms_p95'], '{:.1f}')} / "
            f"{_f(r['latency_ms_max'], '{:.1f}')} | {r['peak_rss_mib']:.0f} | "
            f"{r['client_cpu_pct']:.0f} |")
    return rows


def ingest_table(ingest: list[dict[str, Any]]) -> list[str]:
    rows = ["| server | publishers | viewer | carried | behind (late / bitrate) | max late ms | "
            "bitrate min | server cores | load client CPU % |",
            "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in ingest:
        if r["status"] != "ok":
            rows.append(f"| {r['server']} | {r['publishers']} | {r['viewer_protocol']} | "
                        f"{r['status']}: {r['note']} | | | | | |")
            continue
        rows.append(
            f"| {r['server']} | {r['publishers']} | {r['viewer_protocol']} | "
            f"{'yes' if r['carried'] else 'no'} | {r['behind']} ({r['behind_late']} / "
            f"{r['behind_bitrate']}) | {_f(r['max_late_ms'], '{:.0f}')} | "
            f"{_f(r['bitrate_ratio_min'], '{:.3f}')} | {r['server_cores']:.2f} | "
            f"{r['client_cpu_pct']:.0f} |")
    return rows


def _rows(results: dict[str, Any], server: str, protocol: str | None = None,
          viewers: int | None = None) -> list[dict[str, Any]]:
    return [r for r in results["fanout"] if r["server"] == server and r["status"] == "ok"
            and (protocol is None or r["protocol"] == protocol)
            and (viewers is None or r["viewers"] == viewers)]


def _worst(rows: list[dict[str, Any]], key: str, *, low: bool = False) -> float | None:
    values: list[float] = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return min(values) if low else max(values)


def _where(rows: list[dict[str, Any]], key: str, fmt: str, *, low: bool = False) -> str:
    """The worst value and the run it came from, e.g. "16.1 ms (ws-flv N=800)"."""
    found = [r for r in rows if r.get(key) is not None]
    if not found:
        return "—"
    pick = min if low else max
    row = pick(found, key=lambda r: float(r[key]))
    return f"{fmt.format(row[key])} ({row['protocol']} N={row['viewers']})"


def carried(results: dict[str, Any], server: str) -> int | None:
    levels = [r for r in results["ingest"] if r["server"] == server and r["status"] == "ok"]
    if not levels:
        return None
    return max((r["publishers"] for r in levels if r["carried"]), default=0)


def scaling_rounds(pairs: list[tuple[dict[str, Any], dict[str, Any]]],
                   alone: dict[str, Any]) -> dict[str, Any]:
    """The round with the median viewers-carried ratio, and every round's ratio: on a shared
    machine one pair of runs moves by a tenth either way."""
    rounds = [scaling_summary(one, two, alone) for one, two in pairs]
    ranked = sorted(rounds, key=lambda r: r["capacity_ratio"] or r["strict_ratio"] or 0.0)
    return {**ranked[(len(ranked) - 1) // 2],
            "rounds": [r["capacity_ratio"] for r in rounds],
            "strict_rounds": [r["strict_ratio"] for r in rounds]}


def _scaling(results: dict[str, Any]) -> dict[str, Any]:
    """The scaling summary; one written before `strict_ratio` existed had only that figure,
    under the name `capacity_ratio`."""
    s: dict[str, Any] = results.get("scaling") or {}
    if s and "strict_ratio" not in s:
        s = {**s, "strict_ratio": s.get("capacity_ratio"), "capacity_ratio": None}
    return s


def targets_table(results: dict[str, Any]) -> list[str]:
    """The issue's targets beside what this run measured: rtmpmate's worst run (named), and
    nginx-rtmp's (RTMP only)."""
    def pair(key: str, server_rows: tuple[list[dict[str, Any]], list[dict[str, Any]]],
             fmt: str, *, low: bool = False) -> tuple[str, str]:
        return (_where(server_rows[0], key, fmt, low=low),
                _f(_worst(server_rows[1], key, low=low), fmt))

    def both(**kw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return _rows(results, RTMPMATE, **kw), _rows(results, NGINX, **kw)

    http400 = _rows(results, RTMPMATE, "http-flv", 400)
    rtmp400 = both(protocol="rtmp", viewers=400)
    all_n = max((r["viewers"] for r in results["fanout"]), default=None)
    scaling = _scaling(results)
    rows = [
        ("RTMP fan-out, CPU-s per viewer-s at N=400",
         *pair("cpu_per_viewer_s", rtmp400, "{:.6f}"),
         _f(_worst(rtmp400[0], "ratio_to_nginx_rtmp"), "{:.2f} x"), "≤ 1.5 x nginx-rtmp"),
        ("HTTP-FLV fan-out, CPU-s per viewer-s at N=400",
         _f(_worst(http400, "cpu_per_viewer_s"), "{:.6f}"), "(none)",
         _f(_worst(http400, "ratio_to_nginx_rtmp"), "{:.2f} x"), "≤ 1.5 x nginx-rtmp's RTMP"),
        (f"delivered bitrate at N={all_n}, every player",
         *pair("bitrate_ratio_min", both(viewers=all_n), "{:.3f}", low=True), "",
         "≥ 0.99 of the publisher's"),
        ("startup, connect → first keyframe, p95",
         *pair("startup_ms_p95", both(), "{:.0f} ms"), "", "≤ 50 ms"),
        ("latency publisher → player, p95 at N=200",
         *pair("latency_ms_p95", both(viewers=200), "{:.1f} ms"), "", "≤ 10 ms"),
        ("… the same, RTMP and FLV only",
         _where([r for r in both(viewers=200)[0] if "fmp4" not in r["protocol"]],
                "latency_ms_p95", "{:.1f} ms"), "", "", "≤ 10 ms"),
        ("ingest, publishers at 2 Mbit/s carried",
         _f(carried(results, RTMPMATE)), _f(carried(results, NGINX)), "", "≥ 200"),
        (f"memory per connected viewer at N={all_n}",
         *pair("mem_per_viewer_kib", both(viewers=all_n), "{:.0f} KiB"), "", "≤ 64 KiB"),
        ("2 egress workers vs 1, viewers carried",
         _f(scaling.get("capacity_ratio"), "{:.2f} x"), "", "", "≥ 1.8 x"),
        ("… the same, strictly at N=" + str(scaling.get("viewers", "")),
         _f(scaling.get("strict_ratio"), "{:.2f} x"), "", "", ""),
    ]
    out = ["| figure | rtmpmate | nginx-rtmp | rtmpmate / nginx-rtmp | target |",
           "| --- | ---: | ---: | ---: | --- |"]
    out += [f"| {' | '.join(row)} |" for row in rows]
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Run of {results['started']} ({results['duration_s'] / 60:.1f} min) on "
             f"{m['nproc']} x {m['cpu_model']}, Python {m['python']}, "
             f"window {results['options']['window_s']:g} s, "
             f"publisher {results['media']['bitrate_bps'] / 1e6:.2f} Mbit/s. "
             f"rtmpmate: {results['rtmpmate_commit'] or results['options']['rtmpmate_dir']}. "
             f"nginx-rtmp: {results['nginx']['note']}.", "",
             *targets_table(results), "", *fanout_table(results["fanout"])]
    if any(r["server"] == NGINX for r in results["fanout"]):
        lines += ["", "nginx-rtmp serves RTMP only: its rows for the other protocols are n/a."]
    if results["ingest"]:
        lines += ["", *ingest_table(results["ingest"])]
    if results.get("scaling"):
        lines += ["", scaling_text(_scaling(results))]
    return "\n".join(lines) + "\n"


def scaling_text(s: dict[str, Any]) -> str:
    held = s.get("egress_connections") or []
    split = f" cores, {held} connections" if held and None not in held else ""
    text = (f"Scaling ({s['protocol']}, N={s['viewers']}): busiest egress worker "
            f"{s['busiest_egress_cores']['1']} cores with 1 worker, "
            f"{s['busiest_egress_cores']['2']} with 2 (per worker: "
            f"{s['egress_cores']['2']}{split}), {_f(s.get('stream_cores'))} with 1 "
            f"worker and 1 viewer (the stream's own part); viewers carried at saturation "
            f"{_f(s['capacity_ratio'], '{:.2f}')} x, strictly at this N "
            f"{_f(s.get('strict_ratio'), '{:.2f}')} x (see \"Scaling\" above).")
    if len(s.get("rounds") or ()) > 1:
        text += (f" That is the median of {len(s['rounds'])} rounds: "
                 f"{', '.join(_f(r, '{:.2f}') for r in s['rounds'])} x "
                 f"(strictly {', '.join(_f(r, '{:.2f}') for r in s['strict_rounds'])}).")
    return text


def update_markdown(path: Path, text: str) -> None:
    doc = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no {BEGIN} … {END} section to rewrite")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", doc, count=1))
