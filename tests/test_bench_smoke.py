"""`python -m bench --smoke` works end to end: a functional check of the benchmark, not of speed.

It starts a real rtmpmate, publishes the generated test media and plays it over every protocol
the load client knows; only the shape of the report and that bytes flowed are asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAYED = {"rtmp", "http-flv", "ws-flv"}
RUN_KEYS = {"server", "protocol", "viewers", "status", "cpu_per_viewer_s", "peak_rss_mib",
            "mem_per_viewer_kib", "publisher_bps", "bitrate_ratio_median", "bitrate_ratio_min",
            "startup_ms_median", "startup_ms_p95", "latency_ms_median", "latency_ms_p95",
            "latency_ms_max", "client_cpu_pct", "ratio_to_nginx_rtmp"}


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert {"machine", "options", "media", "nginx", "fanout", "ingest", "scaling"} <= set(results)
    runs = results["fanout"]
    assert {(r["protocol"], r["viewers"]) for r in runs} >= {(p, n) for p in PLAYED
                                                            for n in (1, 10)}
    for run in runs:
        assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
        if run["protocol"] not in PLAYED:
            continue  # a protocol the server does not serve yet reports n/a
        assert run["status"] == "ok", run
        assert run["publisher_bps"] > 0
        assert run["bitrate_ratio_median"] > 0, run
        assert run["bitrate_ratio_min"] > 0, run
        assert run["cpu_per_viewer_s"] > 0
        assert run["startup_ms_median"] is not None, run
        assert run["latency_ms_median"] is not None, run
    assert "| rtmpmate | rtmp | 10 |" in proc.stdout
