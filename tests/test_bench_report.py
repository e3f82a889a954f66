"""The benchmark's summaries: the arithmetic behind the figures it reports."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def run(viewers: int, *egress: float) -> dict[str, Any]:
    return {"viewers": viewers, "protocol": "http-flv", "cpu_per_viewer_s": 0.0,
            "bitrate_ratio_min": 1.0,
            "cpu_by_process": [{"role": "ingest", "cores": 0.5}]
            + [{"role": "egress", "cores": c} for c in egress]}


def test_viewers_carried_leave_out_what_the_stream_costs_each_worker() -> None:
    # 0.02 for the stream, 0.00025 per viewer: 400 viewers, then 200 + 200.
    s = report.scaling_summary(run(400, 0.12), run(400, 0.07, 0.068), run(1, 0.02025))
    assert s["strict_ratio"] == pytest.approx(0.12 / 0.07, abs=0.01)
    assert s["capacity_ratio"] == pytest.approx((0.12 - 0.02025) / (0.07 - 0.02025), abs=0.01)
    assert s["stream_cores"] == 0.02025
    assert s["egress_cores"] == {"1": [0.12], "2": [0.07, 0.068]}


def test_uneven_spreading_counts_against_the_ratio() -> None:
    even = report.scaling_summary(run(400, 0.12), run(400, 0.07, 0.07), run(1, 0.02))
    uneven = report.scaling_summary(run(400, 0.12), run(400, 0.09, 0.05), run(1, 0.02))
    assert even["capacity_ratio"] == 2.0
    assert uneven["capacity_ratio"] == pytest.approx(0.1 / 0.07, abs=0.01)


def test_without_the_single_viewer_run_only_the_strict_figure() -> None:
    s = report.scaling_summary(run(400, 0.12), run(400, 0.07, 0.068))
    assert s["capacity_ratio"] is None
    assert s["strict_ratio"] == pytest.approx(1.71, abs=0.01)


def test_a_summary_of_an_older_run_shows_its_figure_as_the_strict_one() -> None:
    old = {"scaling": {"viewers": 400, "capacity_ratio": 1.28}}
    assert report._scaling(old)["strict_ratio"] == 1.28
    assert report._scaling(old)["capacity_ratio"] is None


def test_scaling_reports_the_median_round_and_every_round() -> None:
    alone = run(1, 0.02)
    pairs = [(run(400, 0.12), run(400, 0.07, 0.07)),   # 2.0
             (run(400, 0.12), run(400, 0.09, 0.05)),   # 1.43
             (run(400, 0.13), run(400, 0.06, 0.06))]   # 2.75
    s = report.scaling_rounds(pairs, alone)
    assert s["rounds"] == [2.0, pytest.approx(1.43, abs=0.01), pytest.approx(2.75, abs=0.01)]
    assert s["capacity_ratio"] == 2.0
    assert s["egress_cores"]["2"] == [0.07, 0.07]  # the figures of that round
    assert "median of 3 rounds: 2.00, 1.43, 2.75 x" in report.scaling_text(s)
