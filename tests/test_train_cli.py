"""train.py as a cron job sees it: its exit status tells a rejection by the promotion gate (3) from a promotion (0)
and from a refusal (2), and its --help says what every flag does."""

from __future__ import annotations

import pytest

import train as train_cli
from penguins.names import REJECTED, STATUS_LABEL
from penguins.scan import scan
from tests.harness import run_train

pytestmark = pytest.mark.cli


def test_a_rejection_by_the_gate_exits_3_and_says_so(store):
    """The session store's random-forest (seed 42) scores 1.0 held out, seed 7 0.971: rejected at tolerance 0.01."""
    home = store.parent
    served = {m.name: m.tag for m in scan(store)[0]}
    done = run_train(home, "--models", "random-forest", "--seed", "7", check=False)
    assert done.returncode == train_cli.EXIT_REJECTED == 3, done.stderr[-2000:]
    assert "rejected by the promotion gate, saved but not served: penguins-random-forest:" in done.stderr
    assert {m.name: m.tag for m in scan(store)[0]} == served  # saved, not served
    from bentoml import Model

    newest = max(
        (p for p in (store / "penguins-random-forest").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    assert Model.from_path(newest).info.labels[STATUS_LABEL] == REJECTED
    # The same version let through by a looser tolerance: a promotion, status 0.
    looser = run_train(home, "--models", "random-forest", "--seed", "7", "--tolerance", "0.05", check=False)
    assert looser.returncode == 0, looser.stderr[-2000:]


def test_help_says_what_every_flag_does_and_the_exit_statuses(tmp_path):
    done = run_train(tmp_path, "--help")
    text = " ".join(done.stdout.split())
    assert "as well" not in text
    assert "--estimator IMPORT.PATH train only this scikit-learn classifier class" in text
    assert "--models NAME [NAME ...] train only these built-in algorithms" in text
    for status in ("0 every model trained was promoted", "2 refused", "3 the promotion gate rejected"):
        assert status in text
    parser, _ = train_cli.parse_args([])
    assert all(action.help for action in parser._actions), "every flag has a help text"
