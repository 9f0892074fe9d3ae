"""`penguins`: one command for the model store's life cycle (`train.py` stays the training entry).

    penguins models                     # every version: served, rejected (the gate's reason), skipped (why), predictor
    penguins prune --keep 3             # dry run: what would go (never the served version); --yes deletes it
    penguins repository status          # the S3 model repository (PENGUINS_MODEL_REPOSITORY): status, publish, pull
    penguins db ingest | clean          # the SQL tables the pipeline trains from
    penguins pipeline [STEP ...]        # the retraining pipeline's steps (ingest clean train gate reload), in order
    penguins bootstrap                  # the compose stack's one-shot trainer: train if empty, then reload the API

Every subcommand has --help. The store is $BENTOML_HOME/models (default ~/bentoml/models), or --store HOME's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

# Before anything imports bentoml (none of the modules below does at import time): BentoML reads both once.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from penguins import bootstrap, db, publishing  # noqa: E402
from penguins import pipeline as steps  # noqa: E402
from penguins.bucket import Repository, RepositoryError  # noqa: E402
from penguins.install import present  # noqa: E402
from penguins.lifecycle import (  # noqa: E402
    STORE,
    delete_local,
    delete_remote,
    inventory,
    plan_repository,
    plan_store,
)
from penguins.names import default_store_dir  # noqa: E402
from penguins.startup import train_command  # noqa: E402

# Subcommands whose module has a command line of its own: everything after the name goes to its main.
PASSED_ON = {
    "db": (db.main, "the SQL tables: ingest raw rows, clean them (python -m penguins.db)"),
}
PIPELINE_STEPS = ("ingest", "clean", "train", "gate", "reload")
EXIT_REJECTED = 3  # as train.py's: the promotion gate rejected a model (saved, not served)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="penguins", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser(
        "models",
        help="every version in the store: served, rejected, skipped, with its predictor",
        description="Every version of every penguin model in the store, newest first per name: served, rejected by "
        "the promotion gate (with its reason), not served (which version is), skipped or failed (why), and the "
        "predictor it is served with (onnx, or sklearn and why not ONNX: the model's compiled.reason).",
    )
    _store_option(models)
    models.add_argument("--json", action="store_true", help="print the versions as JSON instead of a table")

    prune = commands.add_parser(
        "prune",
        help="delete all but the newest versions (dry run unless --yes)",
        description="Per model name, delete every version but the --keep newest. Never the served version, nor the "
        "one BentoML's `latest` names. A dry run by default: it lists what would go and deletes nothing until run "
        "with --yes. With a model repository (PENGUINS_MODEL_REPOSITORY) the same rule prunes it too (never its "
        "newest version not rejected, the one every replica's pull serves).",
    )
    prune.add_argument("--keep", type=int, required=True, metavar="N", help="how many newest versions to keep per name")
    prune.add_argument("--yes", action="store_true", help="delete for real (without it: a dry run)")
    prune.add_argument(
        "--local-only", action="store_true", help="leave the model repository alone even when one is configured"
    )
    _store_option(prune)

    _repository_parser(commands)

    for name, (_, summary) in PASSED_ON.items():
        commands.add_parser(name, help=summary, add_help=False)

    pipeline = commands.add_parser(
        "pipeline",
        help="run the retraining pipeline's steps (what the Airflow DAG runs)",
        description="Run steps of the retraining pipeline (penguins.pipeline) in order, each printing its JSON "
        "report; `gate` takes the report of the `train` run before it. Settings come from PENGUINS_* variables "
        "(PENGUINS_DATABASE_URL, PENGUINS_MODELS, PENGUINS_TOLERANCE, PENGUINS_API_URL, ...); the store is "
        "$BENTOML_HOME's. Default: every step. Exits 3 when the gate rejected a model (as train.py does), 2 on a "
        "bad step list.",
    )
    pipeline.add_argument(
        "steps",
        nargs="*",
        metavar="STEP",
        help=f"steps to run, in this order: {' '.join(PIPELINE_STEPS)} (gate needs train before it)",
    )

    commands.add_parser(
        "bootstrap",
        help="the compose stack's one-shot trainer: train when the store is empty, then reload the API",
        description=bootstrap.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return top


def _repository_parser(commands: argparse._SubParsersAction) -> None:
    repository = commands.add_parser(
        "repository",
        help="the S3 model repository: status, publish, pull (python -m penguins.cli repository)",
        description="The object-storage model repository (PENGUINS_MODEL_REPOSITORY=s3://bucket/prefix, "
        "docs/replicas.md), for the local store ($BENTOML_HOME).",
    )
    actions = repository.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="what the repository holds and what the local store lacks")
    publish = actions.add_parser("publish", help="publish local versions")
    publish.add_argument("tags", nargs="*", metavar="TAG")
    publish.add_argument("--missing", action="store_true", help="every local penguin version not published")
    actions.add_parser("pull", help="fetch what the local store lacks (what `reload` does first)")
    repository.set_defaults(parser=repository)


def _store_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--store", type=Path, metavar="HOME", help="the BentoML home to read (default: $BENTOML_HOME, else ~/bentoml)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSED_ON:  # its own parser, its own --help
        return PASSED_ON[argv[0]][0](argv[1:])
    args = parser().parse_args(argv)
    if getattr(args, "store", None):  # BentoML reads BENTOML_HOME once, when it is first imported
        os.environ["BENTOML_HOME"] = str(args.store.resolve())
    run: dict[str, Callable[[argparse.Namespace], int]] = {
        "models": models,
        "prune": prune,
        "pipeline": pipeline,
        "repository": repository,
        "bootstrap": lambda _: bootstrap.main(),
    }
    return run[args.command](args)


def _console():
    from rich.console import Console  # lazily: only the tables need rich

    # Piped: 200 columns unless COLUMNS says otherwise (rich reads it).
    return Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)


def models(args: argparse.Namespace) -> int:
    from rich.table import Table  # lazily: only the tables need rich

    store = default_store_dir()
    versions = inventory(store)
    if args.json:
        print(json.dumps([_plain(v) for v in versions], indent=2))
        return 0
    console = _console()
    if not versions:
        console.print(f"no penguin model in {store}: train one with `{train_command(store)}`", soft_wrap=True)
        return 0
    table = Table(title=f"penguin models in {store}")
    for column in ("tag", "status", "why", "predictor", "why not ONNX", "test accuracy", "created"):
        table.add_column(column, overflow="fold")
    styles = {"served": "green", "rejected": "red", "failed": "red", "skipped": "yellow"}
    for v in versions:
        accuracy = "" if v.test_accuracy is None else f"{v.test_accuracy:.3f}"
        status = f"[{styles.get(v.status, 'default')}]{v.status}[/]" + (" (latest)" if v.latest else "")
        table.add_row(v.tag or v.name, status, v.why, v.predictor, v.not_onnx, accuracy, v.created)
    console.print(table)
    return 0


def prune(args: argparse.Namespace) -> int:
    if args.keep < 0:
        print("penguins prune: error: --keep must be 0 or more", file=sys.stderr)
        return 2
    store = default_store_dir()
    versions = inventory(store)
    paths = {v.tag: v.path for v in versions if v.path is not None}
    planned = plan_store(versions, args.keep)
    repository = None if args.local_only else publishing.configured()
    if repository is not None:
        try:
            planned += plan_repository(repository, args.keep)
        except RepositoryError as error:
            print(f"penguins prune: error: {error}", file=sys.stderr)
            return 1
    console = _console()
    doomed = [p for p in planned if p.delete]
    where = f"{store}" + (f" and {repository.url}" if repository is not None else "")
    _print_plan(console, planned, f"prune --keep {args.keep}: {where}" + ("" if args.yes else " (dry run)"), args.yes)
    if not doomed:
        console.print("nothing to prune")
        return 0
    if not args.yes:
        what = "this version" if len(doomed) == 1 else f"these {len(doomed)} versions"
        console.print(f"dry run: nothing deleted; run again with --yes to delete {what}")
        return 0
    return _delete(console, doomed, paths, repository)


def _print_plan(console, planned: list, title: str, for_real: bool) -> None:
    from rich.table import Table  # lazily: only the tables need rich

    table = Table(title=title)
    for column in ("where", "tag", "status", "action", "why"):
        table.add_column(column, overflow="fold")
    for p in planned:
        action = ("[red]delete[/]" if for_real else "[red]would delete[/]") if p.delete else "keep"
        table.add_row(p.where, p.tag, p.status, action, p.why)
    console.print(table)


def _delete(console, doomed: list, paths: dict[str, Path], repository: Repository | None) -> int:
    """Delete each planned version; 1 when any could not be."""
    failed = 0
    for p in doomed:
        try:
            if p.where == STORE:
                delete_local(paths[p.tag])
            else:
                delete_remote(repository, p.tag)
            console.print(f"deleted {p.tag} from the {p.where}")
        except (OSError, RepositoryError) as error:
            failed += 1
            console.print(f"[red]could not delete {p.tag} from the {p.where}: {error}[/]")
    return 1 if failed else 0


def repository(args: argparse.Namespace) -> int:
    """`penguins repository status | publish TAG... | publish --missing | pull`."""
    configured = publishing.configured()
    if configured is None:
        args.parser.error("PENGUINS_MODEL_REPOSITORY is not set")
    if args.action == "publish" and not args.tags and not args.missing:
        args.parser.error("name TAGs or pass --missing")
    store = default_store_dir()
    try:
        if args.action == "status":
            _repository_status(configured, store)
        elif args.action == "publish":
            if args.missing:
                done = publishing.publish_missing(store)
            else:
                done = [publishing.publish(tag, store) for tag in args.tags]
            for manifest in done:
                print(f"published {manifest.tag} ({manifest.size} bytes, sha256 {manifest.sha256})")
        else:
            return _repository_pull(configured, store)
    except RepositoryError as error:
        print(f"error: {error}")
        return 1
    return 0


def _repository_status(configured: Repository, store: Path) -> None:
    found, incomplete, broken = configured.manifests()
    for manifest, _ in found:
        here = "here" if present(store, manifest.name, manifest.version) else "missing here"
        status = manifest.labels.get("status", "")
        print(f"{manifest.tag}  {status:<9} {manifest.size:>10} bytes  {manifest.created}  {here}")
    for tag in incomplete:
        print(f"{tag}  incomplete (an archive without a manifest: never pulled)")
    for failure in broken:
        print(f"{failure.tag}  {failure.reason}")
    print(f"reload signal: {configured.generation() or 'never written'}")


def _repository_pull(configured: Repository, store: Path) -> int:
    result = configured.pull(store)
    for tag in result.pulled:
        print(f"pulled {tag}")
    for failure in result.failures:
        print(f"FAILED {failure.tag}: {failure.reason}")
    if result.store_error:
        print(result.store_error)
        return 1
    return 1 if result.failures else 0


def pipeline(args: argparse.Namespace) -> int:
    chosen = args.steps or list(PIPELINE_STEPS)
    unknown = [s for s in chosen if s not in PIPELINE_STEPS]
    if unknown:
        print(
            f"penguins pipeline: error: unknown steps {unknown}; choose from {' '.join(PIPELINE_STEPS)}",
            file=sys.stderr,
        )
        return 2
    order = [s for s in PIPELINE_STEPS if s in chosen]
    if "gate" in order and "train" not in order:
        print("penguins pipeline: error: gate takes the report of a train step run before it", file=sys.stderr)
        return 2
    trained, status = None, 0
    for step in order:
        report = steps.gate(trained) if step == "gate" else getattr(steps, step)()
        if step == "train":
            trained = report
        print(json.dumps({step: report}, indent=2), flush=True)
        if step == "gate" and report.get("rejected"):  # the next steps still run: reload serves what was promoted
            rejected = ", ".join(report["rejected"])
            print(f"rejected by the promotion gate, saved but not served: {rejected}", file=sys.stderr)
            status = EXIT_REJECTED  # train.py's status for the same outcome
    return status


def _plain(version) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(version).items()}


if __name__ == "__main__":
    sys.exit(main())
