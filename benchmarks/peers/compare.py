"""`python -m benchmarks.run --peers`: ours and the peers side by side, one and two workers each, rounds interleaved.

Every server runs at once on loopback, serving the random forest trained here (ours from the store, the peers from
the same stored files); every peer's answers to the bulk penguins and to the single one are checked against ours
before anything is timed. Then, round after round, each server gets the same closed-loop load (wrk, one penguin per
request) at concurrency 1 and 32, waiting for the machine to go idle between points; CPU time is read from /proc
for the server's whole process tree; and one request of 10,000 penguins is timed on each. Ratios are medians of
per-round ratios (figures taken seconds apart).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.load import BULK_ROWS, settle, wrk
from benchmarks.peers.catalog import Peer, export, feature_rows, peers, serve_peer
from penguins.contract import EXAMPLE_PENGUIN, FEATURES
from penguins.data import load_penguins
from penguins.names import model_name
from penguins.predict import PROBABILITY_TOLERANCE
from tests.harness import run_train, serve

ALGORITHM = "random-forest"
ROUTE = "/classify_random_forest"
WORKERS = (1, 2)
# Long enough on an idle machine for a slow peer to finish the requests wrk abandoned; a busy machine never goes idle.
SETTLE_S = 20
# The ONNX peer runs our graph with the same runtime: its answers must be ours to float32 rounding.
SAME_GRAPH_TOLERANCE = 1e-6


def compare(quick: bool, out: Path, rounds: int | None = None) -> int:
    seconds, default_rounds, bulk_repeats = (1, 1, 1) if quick else (5, 5, 5)
    rounds = rounds or default_rounds
    frame = load_penguins()
    rows = feature_rows(frame, BULK_ROWS)
    single = [{f: EXAMPLE_PENGUIN[f] for f in FEATURES}]
    columns = {f: [r[f] for r in rows] for f in FEATURES}
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "seconds_per_point": seconds, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="penguins-peers-") as tmp, contextlib.ExitStack() as servers:
        home, logs = Path(tmp) / "home", Path(tmp)
        print("training the benchmarked model ...", file=sys.stderr)
        run_train(home, "--models", ALGORITHM)
        classes = export(home, model_name(ALGORITHM), logs / "model")
        print("starting ours and the peers, one and two workers each ...", file=sys.stderr)
        targets: dict[tuple[str, int], tuple[str, dict]] = {}  # (server, workers) -> (url, single-penguin body)
        urls: dict[tuple[str, int], str] = {}
        processes: dict[tuple[str, int], psutil.Process] = {}
        for workers in WORKERS:
            log = logs / f"ours-w{workers}.log"
            ours = servers.enter_context(serve(home, log, timeout=300, PENGUINS_WORKERS=str(workers)))
            urls["ours", workers], processes["ours", workers] = ours, psutil.Process(ours.process.pid)
            targets["ours", workers] = (ours + ROUTE, {"penguins": single})
        catalogue = {peer.name: peer for peer in peers(classes)}
        for peer in catalogue.values():
            for workers in WORKERS:
                url = servers.enter_context(serve_peer(peer, logs / "model", workers, logs))
                urls[peer.name, workers], processes[peer.name, workers] = url, psutil.Process(url.process.pid)
                targets[peer.name, workers] = (url + peer.path, peer.body(single))
        for key, process in processes.items():
            _check_loopback_only(key, process)

        print("checking every answer against ours ...", file=sys.stderr)
        results["answers"] = _check_answers(urls, catalogue, rows, single, classes)
        for url, body in targets.values():  # warm-up: first requests pay imports, batching calibration
            wrk(url, body, 8, 1)
        settle(SETTLE_S)

        measured: dict[str, dict[str, list[dict]]] = {f"{k[0]}/w{k[1]}": {"c1": [], "c32": []} for k in targets}
        for rnd in range(rounds):
            print(f"round {rnd + 1} of {rounds} ...", file=sys.stderr)
            for point, connections in (("c1", 1), ("c32", 32)):
                for key, (url, body) in targets.items():
                    if connections == 1 and key[1] != 1:
                        continue  # a lone client measures latency: one worker is enough
                    measured[f"{key[0]}/w{key[1]}"][point].append(
                        _load(processes[key], url, body, connections, seconds)
                    )
                    settle(SETTLE_S)
        results["load"] = measured

        print("bulk ...", file=sys.stderr)
        results["bulk_ms"] = _bulk(urls, catalogue, rows, columns, bulk_repeats)

    results["table"] = _table(results, list(catalogue.values()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _print(results, catalogue)
    print(f"\nwritten to {out}")
    return 1 if results["table"]["ours"]["errors"] else 0  # a peer's failed requests are reported, not ours to fix


def _errors(points: dict[str, list[dict]]) -> int:
    return sum(p["errors"] for pts in points.values() for p in pts)


def _tree(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


def _cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for member in _tree(process):
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def _check_loopback_only(key: tuple[str, int], process: psutil.Process) -> None:
    """Every listening socket of the server's processes is on a loopback address."""
    for member in _tree(process):
        with contextlib.suppress(psutil.Error):
            for connection in member.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr:
                    ip = connection.laddr.ip
                    address = ipaddress.ip_address(ip.split("%")[0])
                    mapped = getattr(address, "ipv4_mapped", None)
                    if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
                        raise RuntimeError(f"{key[0]} ({key[1]} workers) listens on {ip}:{connection.laddr.port}")


def _load(process: psutil.Process, url: str, body: dict, connections: int, seconds: float) -> dict:
    before, wrk_before = _cpu_seconds(process), _children_cpu_seconds()
    point = wrk(url, body, connections, seconds)
    spent, wrk_spent = _cpu_seconds(process) - before, _children_cpu_seconds() - wrk_before
    return {
        **point,
        "cpu_ms_per_request": spent * 1e3 / max(point["requests"], 1),
        # How much of the machine the server and the load generator took: two workers can scale only into what wrk
        # leaves of the two cores.
        "server_cores": spent / seconds,
        "wrk_cores": wrk_spent / seconds,
    }


def _children_cpu_seconds() -> float:
    """CPU of this process's finished children: wrk, once it has exited (the servers have not)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ours(url: str, path: str, penguins: Any) -> list[tuple[str, list[float]]]:
    response = httpx.post(url + path, json={"penguins": penguins}, timeout=120)
    response.raise_for_status()
    return [(a["species"], list(a["probabilities"].values())) for a in response.json()]


def _check_answers(urls, catalogue: dict[str, Peer], rows, single, classes) -> dict[str, Any]:
    columns = {f: [r[f] for r in rows] for f in FEATURES}
    reference = _ours(urls["ours", 1], ROUTE, rows)
    report: dict[str, Any] = {}
    for form, path, penguins in (("columns", ROUTE, columns), ("classify rows", "/classify", rows)):
        if _ours(urls["ours", 1], path, penguins) != reference:
            raise RuntimeError(f"ours ({form}) answers differently from ours (rows)")
    for (name, workers), url in urls.items():
        if name == "ours":
            continue
        peer = catalogue[name]
        for penguins, expected in ((rows, reference), (single, _ours(urls["ours", 1], ROUTE, single))):
            response = httpx.post(url + peer.path, json=peer.body(penguins), timeout=120)
            response.raise_for_status()
            answers = peer.answers(response.json())
            tolerance = SAME_GRAPH_TOLERANCE if name == "fastapi-onnx" else PROBABILITY_TOLERANCE
            report[f"{name}/w{workers}/{len(penguins)} penguins"] = _agreement(name, answers, expected, tolerance)
    return report


def _agreement(name: str, answers, expected, tolerance: float) -> dict[str, Any]:
    if len(answers) != len(expected):
        raise RuntimeError(f"{name} answered {len(answers)} penguins of {len(expected)}")
    labels = sum(a[0] != e[0] for a, e in zip(answers, expected, strict=True))
    drift = max(abs(x - y) for a, e in zip(answers, expected, strict=True) for x, y in zip(a[1], e[1], strict=True))
    if labels or drift > tolerance:
        raise RuntimeError(f"{name}: {labels} species differ from ours, probabilities by up to {drift:.2g}")
    return {"penguins": len(answers), "species_differing": labels, "max_probability_difference": drift}


def _bulk(urls, catalogue: dict[str, Peer], rows, columns, repeats: int) -> dict[str, float]:
    """Median milliseconds for one request of all the bulk penguins, each server in its own request form."""
    cases: dict[str, tuple[str, bytes]] = {
        "ours typed columns": (urls["ours", 1] + ROUTE, json.dumps({"penguins": columns}).encode()),
        "ours classify columns": (
            urls["ours", 1] + "/classify",
            json.dumps({"penguins": columns, "model": ALGORITHM}).encode(),
        ),
        "ours typed rows": (urls["ours", 1] + ROUTE, json.dumps({"penguins": rows}).encode()),
        "ours classify rows": (
            urls["ours", 1] + "/classify",
            json.dumps({"penguins": rows, "model": ALGORITHM}).encode(),
        ),
    }
    for name, peer in catalogue.items():
        cases[name] = (urls[name, 1] + peer.path, json.dumps(peer.body(rows)).encode())
    times: dict[str, list[float]] = {case: [] for case in cases}
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats + 1):  # interleaved; the first round is a warm-up
            for case, (url, body) in cases.items():
                start = time.perf_counter()
                response = client.post(url, content=body, headers={"Content-Type": "application/json"})
                times[case].append(time.perf_counter() - start)
                response.raise_for_status()
            settle(SETTLE_S)
    return {case: statistics.median(t[1:]) * 1e3 for case, t in times.items()}


def _median(points: list[dict], figure: str) -> float | None:
    return statistics.median(p[figure] for p in points) if points else None


def _paired(mine: list[dict], theirs: list[dict], figure: str = "rps") -> float | None:
    pairs = list(zip(mine, theirs, strict=True))
    if not pairs or not all(t[figure] for _, t in pairs):
        return None
    return statistics.median(m[figure] / t[figure] for m, t in pairs)


def _table(results: dict, catalogue: list[Peer]) -> dict[str, Any]:
    load, bulk = results["load"], results["bulk_ms"]
    table: dict[str, Any] = {}
    for name in ["ours", *(p.name for p in catalogue)]:
        one, two = load[f"{name}/w1"], load[f"{name}/w2"]
        table[name] = {
            "c1_p50_ms": _median(one["c1"], "p50_ms"),
            "c32_rps": _median(one["c32"], "rps"),
            "c32_p99_ms": _median(one["c32"], "p99_ms"),
            "c32_rps_2_workers": _median(two["c32"], "rps"),
            "cpu_ms_per_request_c32": _median(one["c32"], "cpu_ms_per_request"),
            "two_workers_over_one_c32": _paired(two["c32"], one["c32"]),
            "ours_over_this_c32": _paired(load["ours/w1"]["c32"], one["c32"]),
            "ours_over_this_c32_2_workers": _paired(load["ours/w2"]["c32"], two["c32"]),
            "bulk_ms": bulk["ours typed columns"] if name == "ours" else bulk[name],
            "errors": _errors(one) + _errors(two),
        }
    fastest_peer = min(bulk[p.name] for p in catalogue)
    onnx = table["fastapi-onnx"]
    table["goals"] = {
        "two_workers_over_one_c32 >= 1.8": table["ours"]["two_workers_over_one_c32"],
        "c32 vs fastapi-onnx, 1 worker >= 0.6": onnx["ours_over_this_c32"],
        "c32 vs fastapi-onnx, 2 workers >= 0.6": onnx["ours_over_this_c32_2_workers"],
        "c1 p50 ms <= 2": table["ours"]["c1_p50_ms"],
        "bulk typed (columns) ms < fastest peer": bulk["ours typed columns"],
        "bulk classify (columns) ms < fastest peer": bulk["ours classify columns"],
        "fastest peer bulk ms": fastest_peer,
        "c32 vs mlserver >= 10": table["mlserver"]["ours_over_this_c32"],
        "c32 vs kserve >= 10": table["kserve"]["ours_over_this_c32"],
        "cores at c32 with 2 workers, ours / wrk (of 2)": " / ".join(
            _f(_median(load["ours/w2"]["c32"], key), ".2f") for key in ("server_cores", "wrk_cores")
        ),
        "errors (ours) == 0": table["ours"]["errors"],
    }
    return table


def _f(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def _print(results: dict, catalogue: dict[str, Peer]) -> None:
    from rich.console import Console
    from rich.table import Table

    table, bulk = results["table"], results["bulk_ms"]
    console = Console(width=200)
    title = (
        f"ours and the peers, random forest, one penguin per request (wrk); median of {results['rounds']} "
        f"interleaved rounds of {results['seconds_per_point']} s"
    )
    out = Table(title=title)
    columns = ("server", "c1 p50 ms", "c32 req/s", "c32 p99 ms", "bulk 10,000 ms", "CPU ms/req c32")
    columns += ("2 workers ÷ 1 c32", "ours ÷ this c32 (1 w)", "ours ÷ this c32 (2 w)", "errors")
    for column in columns:
        out.add_column(column, justify="right")
    labels = {"ours": f"ours, {ROUTE} (ONNX, batching)", **{n: p.label for n, p in catalogue.items()}}
    for name, label in labels.items():
        row = table[name]
        bulk_cell = _f(row["bulk_ms"], ",.0f")
        if name == "ours":
            bulk_cell += f" (/classify: {bulk['ours classify columns']:,.0f}; rows {bulk['ours typed rows']:,.0f})"
        out.add_row(
            label,
            _f(row["c1_p50_ms"], ".2f"),
            _f(row["c32_rps"], ",.0f"),
            _f(row["c32_p99_ms"], ",.0f"),
            bulk_cell,
            _f(row["cpu_ms_per_request_c32"], ".2f"),
            _f(row["two_workers_over_one_c32"], ".2f", "×") + f" ({_f(row['c32_rps_2_workers'], ',.0f')} req/s)",
            "" if name == "ours" else _f(row["ours_over_this_c32"], ".2f", "×"),
            "" if name == "ours" else _f(row["ours_over_this_c32_2_workers"], ".2f", "×"),
            str(row["errors"]),
        )
    console.print(out)
    console.print("goals (issue 19):")
    for goal, value in table["goals"].items():
        console.print(f"  {goal}: {_f(value, '.2f') if isinstance(value, float) else value}")
    console.print(f"bulk, every form (ms): {json.dumps({k: round(v) for k, v in bulk.items()})}")
    console.print(
        "\nas Markdown (docs/performance.md):\n" + markdown(results, catalogue), markup=False, highlight=False
    )


def markdown(results: dict, catalogue: dict[str, Peer]) -> str:
    """The table of docs/performance.md."""
    table, bulk = results["table"], results["bulk_ms"]
    lines = [
        "| server | c1 p50 ms | c32 req/s | c32 p99 ms | bulk 10,000 ms | CPU ms/request at c32 | 2 workers ÷ 1 at c32 "
        "| ours ÷ this at c32, 1 / 2 workers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"ours": f"ours, `{ROUTE}` (ONNX, batching)", **{n: p.label for n, p in catalogue.items()}}
    for name, label in labels.items():
        row = table[name]
        cell = _f(row["bulk_ms"], ",.0f")
        if name == "ours":
            cell += f" (`/classify`: {bulk['ours classify columns']:,.0f}; as rows: {bulk['ours typed rows']:,.0f})"
        ratio = (
            ""
            if name == "ours"
            else (
                f"{_f(row['ours_over_this_c32'], '.2f', '×')} / {_f(row['ours_over_this_c32_2_workers'], '.2f', '×')}"
            )
        )
        lines.append(
            f"| {label} | {_f(row['c1_p50_ms'], '.1f')} | {_f(row['c32_rps'], ',.0f')} "
            f"| {_f(row['c32_p99_ms'], ',.0f')} "
            f"| {cell} | {_f(row['cpu_ms_per_request_c32'], '.2f')} "
            f"| {_f(row['two_workers_over_one_c32'], '.2f', '×')} ({_f(row['c32_rps_2_workers'], ',.0f')} req/s) "
            f"| {ratio} |"
        )
    return "\n".join(lines)
