"""Train the penguin classifiers and save each into the BentoML model store, through the promotion gate.

python train.py                                 # all built-in algorithms into $BENTOML_HOME (default ~/bentoml)
python train.py --models random-forest svm --seed 7 --store ./store
python train.py --estimator sklearn.ensemble.ExtraTreesClassifier --name extra-trees --param n_estimators=300
                                                # any scikit-learn classifier by import path, saved as
                                                # penguins-<name>; --param values are JSON when they parse
python train.py --if-empty                      # only when the store holds no penguin model yet
python train.py --data sqlite:///penguins.db     # from the clean table (python -m penguins.db ingest / clean)
python train.py --tolerance 0.02                # promotion gate: reject a version whose test accuracy is worse
                                                # than the served one's by more than this (default 0.01)

exit status:
  0  every model trained was promoted (or, with --if-empty, the store held penguin models already)
  2  refused: a bad argument, or a classifier that cannot be trained or served (nothing is saved)
  3  the promotion gate rejected at least one of the models asked for: every model was saved, the rejected ones
     labelled status=rejected and not served (the table's gate column says which); a cron job can tell this
     from a promotion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

# Before anything imports bentoml (none of the modules below does at import time): BentoML reads it once.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from penguins import publishing  # noqa: E402
from penguins.data import BUNDLED_SOURCE, load_penguins  # noqa: E402
from penguins.db import clean_source, load_clean  # noqa: E402
from penguins.gate import DEFAULT_TOLERANCE, save_gated  # noqa: E402
from penguins.names import check_model_name, default_store_dir  # noqa: E402
from penguins.scan import scan  # noqa: E402
from penguins.training import ALGORITHMS, DEFAULT_SEED, Estimator, EstimatorError, train  # noqa: E402

EXIT_REFUSED = 2  # argparse's own status for a bad argument; also a classifier that cannot be trained or served
EXIT_REJECTED = 3  # the promotion gate rejected at least one of the models asked for


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def built_in(name: str) -> str:
        if name not in ALGORITHMS:  # the usual mistake: an own classifier's name where a built-in's goes
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a built-in (choose from {', '.join(ALGORITHMS)}); to train a classifier of your "
                f"own: --estimator <import.path.Class> --name {name}"
            )
        return name

    parser.add_argument(
        "--models",
        nargs="+",
        type=built_in,
        metavar="NAME",
        help=f"train only these built-in algorithms (default: all of {', '.join(ALGORITHMS)}; with --estimator: "
        "none unless named here)",
    )
    parser.add_argument(
        "--estimator",
        metavar="IMPORT.PATH",
        help="train only this scikit-learn classifier class (plus the built-ins --models names, if any), e.g. "
        "sklearn.ensemble.ExtraTreesClassifier, wrapped in the contract's preprocessing; needs --name",
    )
    parser.add_argument(
        "--name", help="the --estimator's model name: saved as penguins-<name>, served at classify_<name>"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor parameter of --estimator, repeatable; VALUE is JSON when it parses "
        "(n_estimators=300, hidden_layer_sizes=[32,16]), else a string",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the train/test split, the cross-validation folds and every random_state an estimator leaves "
        "unset (default: %(default)s)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="the BentoML home to save into, as the server's BENTOML_HOME (default: $BENTOML_HOME, else ~/bentoml)",
    )
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
    parser.add_argument(
        "--no-gate", action="store_true", help="skip the promotion gate: promote every new version, whatever its score"
    )
    parser.add_argument(
        "--if-empty",
        action="store_true",
        help="train only when the store holds no penguin model yet, else do nothing and exit 0 (with a model "
        "repository, PENGUINS_MODEL_REPOSITORY, what it holds is pulled first and counts)",
    )
    return parser, parser.parse_args(argv)


def estimators(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, Estimator]]:
    """(name, estimator) for every model to train: the chosen built-ins, then --estimator."""
    if (args.name or args.param) and not args.estimator:
        parser.error("--name and --param go with --estimator")
    chosen = args.models or ([] if args.estimator else list(ALGORITHMS))
    jobs = [(name, ALGORITHMS[name]) for name in chosen]
    if args.estimator:
        if not args.name:
            parser.error("--estimator needs --name (the model is saved as penguins-<name>)")
        params: dict[str, Any] = {}
        for item in args.param:
            key, sep, text = item.partition("=")
            if not sep or not key:
                parser.error(f"--param takes KEY=VALUE, got {item!r}")
            if key in params:
                parser.error(f"--param {key} is given twice")
            try:
                params[key] = json.loads(text)
            except json.JSONDecodeError:
                params[key] = text
        jobs.append((args.name, Estimator(args.estimator, params)))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.store:  # BentoML reads BENTOML_HOME once, when it is first imported
        os.environ["BENTOML_HOME"] = str(args.store.resolve())
    jobs = estimators(parser, args)

    from rich.console import Console  # lazily: only a run that trains needs rich
    from rich.table import Table

    def refuse(error: ValueError) -> NoReturn:
        """A classifier that cannot be trained or served: one line, argparse's exit status, nothing saved."""
        parser.exit(EXIT_REFUSED, f"{parser.prog}: error: {error}\n")

    try:  # every name and estimator (import, class, parameters) is checked before anything trains
        classifiers = [(check_model_name(name), estimator(args.seed)) for name, estimator in jobs]
    except ValueError as error:  # EstimatorError, or check_model_name's
        refuse(error)
    console = Console(stderr=True)
    store = default_store_dir()
    if args.if_empty:
        publishing.pull(store)  # with a model repository, what it holds counts too (fetched into this store)
    if args.if_empty and scan(store)[0]:
        console.print(f"penguin models already in {store}: nothing to train")
        return 0

    if args.data:
        frame, source = load_clean(args.data), clean_source(args.data)
    else:
        frame, source = load_penguins(), BUNDLED_SOURCE
    table = Table(title=f"Palmer Penguins classifiers (seed {args.seed}, {len(frame)} rows) -> {store}")
    for column in ("model", "CV accuracy", "test accuracy", "macro F1", "served as", "gate", "tag"):
        table.add_column(column, no_wrap=True)
    # All are trained before any is saved: a classifier that fails to fit leaves the store as it was.
    try:
        trained_models = _fit_all(classifiers, frame, args.seed, source, console)
    except EstimatorError as error:  # it failed to fit
        refuse(error)
    rejected = _save_all(trained_models, args, table)
    Console(width=None if sys.stdout.isatty() else 180).print(table)
    if rejected:
        console.print(f"rejected by the promotion gate, saved but not served: {'; '.join(rejected)}", soft_wrap=True)
        return EXIT_REJECTED
    return 0


def _fit_all(classifiers: list[tuple[str, Any]], frame: Any, seed: int, source: str, console: Any) -> list[Any]:
    """Train every classifier, with a progress bar on a terminal; EstimatorError when one fails to fit."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # lazily: only training needs rich

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    trained_models = []
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("training", total=len(classifiers))
        for name, classifier in classifiers:
            progress.update(task, description=f"training {name}")
            trained = train(name, frame, seed, classifier=classifier)
            trained.provenance["data_source"] = source
            trained_models.append(trained)
            progress.advance(task)
    return trained_models


def _save_all(trained_models: list[Any], args: argparse.Namespace, table: Any) -> list[str]:
    """Save each through the promotion gate, a table row each; the rejected ones, with the gate's reason."""
    rejected = []
    for trained in trained_models:
        tag, decision = save_gated(trained, args.tolerance, gate=not args.no_gate)
        if not decision.promoted:
            rejected.append(f"{tag} ({decision.reason})")
        m = trained.metrics
        table.add_row(
            trained.algorithm,
            f"{m['cv_accuracy_mean']:.3f} ± {m['cv_accuracy_std']:.3f}",
            f"{m['test_accuracy']:.3f}",
            f"{m['macro_f1']:.3f}",
            "onnx" if trained.onnx else "sklearn",
            decision.status
            if decision.served_score is None
            else f"{decision.status} (served {decision.served_score:.3f})",
            tag,
        )
    return rejected


if __name__ == "__main__":
    sys.exit(main())
