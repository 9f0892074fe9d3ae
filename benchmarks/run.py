"""One-command benchmark: in-process predictors, the BentoML no-op ceiling, our service, and the workshop-style
baseline, all started here on loopback and measured in the same run, with ratios.

    uv run python -m benchmarks.run            # full: 5 rounds of 5 s per load point (about 13 minutes)
    uv run python -m benchmarks.run --quick    # short: 1 round of 1 s, about 2 minutes (CI runs it: it cannot rot)
    uv run python -m benchmarks.run --peers    # ours against MLServer, KServe, FastAPI (+ sklearn, + onnxruntime)

All servers run at once and the load points are interleaved (at each concurrency, round after round: the ceiling,
ours, the baselines), and every ratio is the median of the ratios within a round: figures taken seconds apart on this
noisy machine.

Needs `wrk` (Debian package) as the load generator: a closed loop of N connections, in its own process.
Prints a table and writes it as JSON (bench-results/benchmark.json by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

import httpx  # noqa: E402

from benchmarks.load import BULK_ROWS, ROOT, settle, wrk  # noqa: E402
from benchmarks.peers.compare import compare  # noqa: E402
from penguins.contract import EXAMPLE_PENGUIN  # noqa: E402
from penguins.names import endpoint_name, model_name  # noqa: E402
from tests.harness import free_port, run_train, running, serve  # noqa: E402

MODELS = ("random-forest", "logistic-regression")
# (connections, after_load): the lone client is measured again last, after the heaviest load, because that is when
# an adaptive batcher that over-learns its wait would hold it.
LOAD_POINTS = ((1, False), (8, False), (32, False), (64, False), (1, True))


def in_process(home: Path) -> dict:
    """Rows/s on 10,000-row batches and one-row latency, sklearn pipeline vs ONNX, in this process."""
    code = f"""
import json, time, statistics, numpy as np
from penguins.data import load_penguins
from penguins.predict import SklearnPredictor, columns_from_frame
from penguins.loaded import load
from penguins.registry import Registry
from penguins.scan import scan
from penguins.names import default_store_dir
frame = load_penguins()
big = columns_from_frame(frame.sample(n={BULK_ROWS}, replace=True, random_state=0))
one = columns_from_frame(frame.head(1))
def timed(f, n):
    f(); times = []
    for _ in range(n):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return statistics.median(times)
out = {{}}
for stored in scan(default_store_dir())[0]:
    onnx = load(stored).predictor
    sk = SklearnPredictor(load(stored, compiled=False).predictor.pipeline)
    for kind, p in (("sklearn", sk), ("onnx", onnx)):
        out[f"{{stored.algorithm}}/{{kind}}"] = {{
            "bulk_rows_per_s": {BULK_ROWS} / timed(lambda: p.predict(big), 5),
            "one_row_ms": timed(lambda: p.predict(one), 200) * 1e3,
        }}
print(json.dumps(out))
"""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bulk(url: str, repeats: int) -> dict:
    rng = random.Random(0)
    penguins = [{**EXAMPLE_PENGUIN, "bill_length_mm": round(rng.uniform(35, 55), 1)} for _ in range(BULK_ROWS)]
    body = json.dumps({"penguins": penguins, "model": "random-forest"}).encode()
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            response = client.post(f"{url}/classify", content=body, headers={"Content-Type": "application/json"})
            times.append(time.perf_counter() - start)
            assert response.status_code == 200 and len(response.json()) == BULK_ROWS, response.text[:300]
    seconds = statistics.median(times[1:])
    return {"rows": BULK_ROWS, "seconds": seconds, "rows_per_s": BULK_ROWS / seconds}


@contextlib.contextmanager
def baseline(home: Path, model: str, logs: Path) -> Iterator[str]:
    """The workshop-style FastAPI + uvicorn app serving one saved pipeline; yields its base URL."""
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(home), "BASELINE_MODEL": model_name(model)}
    command = [sys.executable, "-m", "uvicorn", "benchmarks.baseline_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with running(command, logs / f"baseline-{model}.log", env, f"{url}/livez"):
        yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 1 s per load point instead of 5 of 5 s (figures are rough)"
    )
    parser.add_argument(
        "--peers", action="store_true", help="ours against the peers, each in its own environment (docs/performance.md)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="--peers: rounds per load point (default 5, quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON results go (bench-results/...)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks need wrk: apt-get install wrk")
    if args.peers:
        return compare(args.quick, args.out or ROOT / "bench-results" / "peers.json", args.rounds)
    args.out = args.out or ROOT / "bench-results" / "benchmark.json"
    seconds, rounds = (1, 1) if args.quick else (5, 5)
    single = {"penguins": [EXAMPLE_PENGUIN]}
    results: dict = {
        "mode": "quick" if args.quick else "full",
        "seconds_per_point": seconds,
        "rounds": rounds,
        "settings": {k: v for k, v in os.environ.items() if k.startswith("PENGUINS_")},
    }

    with tempfile.TemporaryDirectory(prefix="penguins-bench-") as tmp:
        home, logs = Path(tmp) / "home", Path(tmp)
        print("training the benchmarked models ...", file=sys.stderr)
        run_train(home, "--models", *MODELS)
        print("in-process ...", file=sys.stderr)
        results["in_process"] = in_process(home)

        # Every server runs at once and the load points are interleaved (at each concurrency: the ceiling, ours, the
        # baseline), so each ratio compares figures taken a few seconds apart: this machine's speed drifts over minutes.
        with contextlib.ExitStack() as servers:
            print("starting the no-op ceiling, our service and the baselines ...", file=sys.stderr)
            ceiling = servers.enter_context(serve(home, logs / "noop.log", target="benchmarks.noop_service:Noop"))
            ours = servers.enter_context(serve(home, logs / "service.log"))
            baselines = {model: servers.enter_context(baseline(home, model, logs)) for model in MODELS}
            targets = {
                ("ceiling", None): (f"{ceiling}/classify", single),
                **{("ours", m): (f"{ours}/{endpoint_name(m)}", single) for m in MODELS},
                **{("baseline", m): (f"{baselines[m]}/predict", EXAMPLE_PENGUIN) for m in MODELS},
            }
            for url, body in targets.values():
                wrk(url, body, 8, 1)  # warm-up: first requests pay imports, batching calibration
                settle()
            curves: dict = {key: [] for key in targets}
            for connections, after_load in LOAD_POINTS:
                print(f"load at concurrency {connections}{' after load' * after_load} ...", file=sys.stderr)
                measured: dict = {key: [] for key in targets}
                for _ in range(rounds):
                    for key, (url, body) in targets.items():
                        point = wrk(url, body, connections, seconds)
                        measured[key].append({**point, "after_load": after_load})
                        settle()
                for key, points in measured.items():  # each server's median round by throughput, and every round
                    median = sorted(points, key=lambda p: p["rps"])[len(points) // 2]
                    curves[key].append({**median, "rounds": [{k: p[k] for k in ("rps", "p99_ms")} for p in points]})
            results["ceiling"] = curves["ceiling", None]
            results["ours"] = {m: curves["ours", m] for m in MODELS}
            results["baseline"] = {m: curves["baseline", m] for m in MODELS}
            print("bulk ...", file=sys.stderr)
            results["bulk"] = bulk(ours, repeats=1 if args.quick else 5)

    results["ratios"] = ratios(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten to {args.out}")
    return 0


def ratios(results: dict) -> dict:
    """Each ratio is the median over rounds of the ratio within a round (figures taken seconds apart), so a machine
    that speeds up or slows down between rounds does not move it."""
    out: dict = {}
    for model, curve in results["ours"].items():  # every curve has the same load points, in the same order
        out[model] = [
            {
                "concurrency": p["concurrency"],
                "after_load": p["after_load"],
                "ours_over_baseline_rps": _paired(p, base, "rps"),
                "ours_over_ceiling_rps": _paired(p, ceiling, "rps"),
                "ours_over_ceiling_p99": _paired(p, ceiling, "p99_ms"),
            }
            for p, base, ceiling in zip(curve, results["baseline"][model], results["ceiling"], strict=True)
        ]
    sklearn_rf = results["in_process"]["random-forest/sklearn"]["bulk_rows_per_s"]
    out["bulk_over_in_process_sklearn"] = results["bulk"]["rows_per_s"] / sklearn_rf
    return out


def _paired(ours: dict, other: dict, figure: str) -> float | None:
    """The median of the per-round ratios; None when the other server answered nothing in a round (too slow to
    measure at that load)."""
    pairs = list(zip(ours["rounds"], other["rounds"], strict=True))
    if not all(theirs[figure] for _, theirs in pairs):
        return None
    return statistics.median(mine[figure] / theirs[figure] for mine, theirs in pairs)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title=f"in-process predictors ({BULK_ROWS:,}-row batches; one row)")
    for column in ("model / predictor", "rows/s (bulk)", "one row (ms)"):
        table.add_column(column, justify="right")
    for key, value in results["in_process"].items():
        table.add_row(key, f"{value['bulk_rows_per_s']:,.0f}", f"{value['one_row_ms']:.3f}")
    console.print(table)

    table = Table(
        title=(
            f"closed-loop single-penguin load (wrk): the median of {results['rounds']} interleaved rounds of "
            f"{results['seconds_per_point']} s per point"
        )
    )
    for column in ("server", "conc.", "req/s", "p50 ms", "p99 ms", "errors", "÷ baseline", "÷ ceiling", "p99 ÷ ceil"):
        table.add_column(column, justify="right")
    no_ratios = [None] * len(results["ceiling"])
    rows = [("BentoML no-op ceiling", results["ceiling"], no_ratios)]
    rows += [(f"ours: {m}", results["ours"][m], results["ratios"][m]) for m in MODELS]
    rows += [(f"baseline FastAPI: {m}", results["baseline"][m], no_ratios) for m in MODELS]
    for label, curve, curve_ratios in rows:
        for p, r in zip(curve, curve_ratios, strict=True):
            table.add_row(
                label,
                f"{p['concurrency']}{' after load' * p['after_load']}",
                f"{p['rps']:,.0f}",
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                str(p["errors"]),
                _fmt(r["ours_over_baseline_rps"], ".1f", "×") if r else "",
                _fmt(r["ours_over_ceiling_rps"], ".0%") if r else "",
                _fmt(r["ours_over_ceiling_p99"], ".2f", "×") if r else "",
            )
    console.print(table)
    b = results["bulk"]
    console.print(
        f"bulk: one request of {b['rows']:,} penguins (random forest, /classify): {b['seconds'] * 1e3:.0f} ms, "
        f"{b['rows_per_s']:,.0f} rows/s = {results['ratios']['bulk_over_in_process_sklearn']:.0%} of the "
        f"sklearn pipeline's in-process rows/s"
    )


if __name__ == "__main__":
    sys.exit(main())
