"""The benchmark's short mode, run for real so that it cannot rot: every section is measured and our service fails
no request under load. Figures are printed, never asserted (this machine is shared and noisy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.tiers import unavailable

pytestmark = pytest.mark.integration

LOAD_POINTS = [(1, False), (8, False), (32, False), (64, False), (1, True)]  # (connections, after load)
MODELS = {"random-forest", "logistic-regression"}


def test_quick_benchmark_measures_every_section(tmp_path, figures):
    if shutil.which("wrk") is None:
        unavailable("the benchmark's load generator is wrk: apt-get install wrk (.ci/run does)")
    out = tmp_path / "benchmark.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout)  # the table, for whoever reads the CI log
    results = json.loads(out.read_text())

    assert {f"{m}/{kind}" for m in MODELS for kind in ("sklearn", "onnx")} <= set(results["in_process"])
    assert [(p["concurrency"], p["after_load"]) for p in results["ceiling"]] == LOAD_POINTS
    for model in MODELS:
        for curve in (results["ours"][model], results["baseline"][model]):
            assert [(p["concurrency"], p["after_load"]) for p in curve] == LOAD_POINTS
        assert all(p["requests"] > 0 and p["errors"] == 0 for p in results["ours"][model]), results["ours"][model]
        assert [(r["concurrency"], r["after_load"]) for r in results["ratios"][model]] == LOAD_POINTS
    assert results["bulk"]["rows"] == 10_000 and results["ratios"]["bulk_over_in_process_sklearn"] > 0
    rf32 = next(r for r in results["ratios"]["random-forest"] if r["concurrency"] == 32)
    figures["benchmark (quick, 1 s per point; rough)"] = {
        # None: the baseline answered nothing within 1 s at that load
        "random forest c32 ÷ baseline": rf32["ours_over_baseline_rps"] and round(rf32["ours_over_baseline_rps"], 1),
        "random forest c32 ÷ ceiling": round(rf32["ours_over_ceiling_rps"], 2),
        "random forest c1 after load, p50 ms": round(results["ours"]["random-forest"][-1]["p50_ms"], 1),
    }
