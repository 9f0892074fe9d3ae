"""Train the penguin classifiers and save each into the BentoML model store.

python train.py                                 # all algorithms into $BENTOML_HOME (default ~/bentoml)
python train.py --models random-forest svm --seed 7 --store ./store
python train.py --if-empty                      # only when the store holds no penguin model yet
python train.py --data sqlite:///penguins.db     # from the clean table (python -m penguins.db ingest / clean)
python train.py --tolerance 0.02                # promotion gate: reject a version whose test accuracy is worse
                                                # than the served one's by more than this (default 0.01)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from penguins.gate import DEFAULT_TOLERANCE
    from penguins.training import ALGORITHMS, DEFAULT_SEED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(ALGORITHMS),
        default=list(ALGORITHMS),
        metavar="NAME",
        help=f"algorithms to train (default: all of {', '.join(ALGORITHMS)})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    parser.add_argument("--store", type=Path, help="BentoML home to save into (default: $BENTOML_HOME)")
    parser.add_argument(
        "--data",
        metavar="URL",
        help="SQLAlchemy URL of a database whose penguins_clean table to train from (default: the bundled dataset)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="promotion gate: a new version whose test accuracy is worse than the served version's by more than "
        "this is saved labelled status=rejected and not served (default: %(default)s)",
    )
    parser.add_argument("--no-gate", action="store_true", help="promote every new version, whatever its score")
    parser.add_argument("--if-empty", action="store_true", help="do nothing when penguin models are stored already")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.store:  # BentoML reads BENTOML_HOME once, when it is first imported
        os.environ["BENTOML_HOME"] = str(args.store.resolve())

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from penguins.data import load_penguins
    from penguins.gate import save_gated
    from penguins.store import default_store_dir, scan
    from penguins.training import train

    console = Console(stderr=True)
    store = default_store_dir()
    if args.if_empty:
        from penguins import repository

        repository.pull(store)  # with a model repository, what it holds counts too (fetched into this store)
    if args.if_empty and scan(store)[0]:
        console.print(f"penguin models already in {store}: nothing to train")
        return 0

    if args.data:
        from penguins.db import clean_source, load_clean

        frame, source = load_clean(args.data), clean_source(args.data)
    else:
        frame, source = load_penguins(), "palmerpenguins (bundled)"
    table = Table(title=f"Palmer Penguins classifiers (seed {args.seed}, {len(frame)} rows) -> {store}")
    for column in ("model", "CV accuracy", "test accuracy", "macro F1", "served as", "gate", "tag"):
        table.add_column(column, no_wrap=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=len(args.models))
        for algorithm in args.models:
            progress.update(task, description=f"training {algorithm}")
            trained = train(algorithm, frame, args.seed)
            trained.provenance["data_source"] = source
            tag, decision = save_gated(trained, args.tolerance, gate=not args.no_gate)
            m = trained.metrics
            table.add_row(
                algorithm,
                f"{m['cv_accuracy_mean']:.3f} ± {m['cv_accuracy_std']:.3f}",
                f"{m['test_accuracy']:.3f}",
                f"{m['macro_f1']:.3f}",
                "onnx" if trained.onnx else "sklearn",
                decision.status
                if decision.served_score is None
                else f"{decision.status} (served {decision.served_score:.3f})",
                tag,
            )
            progress.advance(task)
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
