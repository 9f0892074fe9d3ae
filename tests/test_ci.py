"""CI cannot go green on a tier that did not run: under CI=true a missing tool fails the tier (tests/tiers.py) and a
failed system-package install fails .ci/run, while apt waits for a lock another process holds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.cli  # runs the CI scripts

TIER = textwrap.dedent(
    """
    from tests.tiers import unavailable

    def test_needs_a_tool_that_is_missing():
        unavailable("no such tool here")
    """
)


@pytest.mark.cli  # runs pytest in a process of its own
@pytest.mark.parametrize("ci", ["true", ""])
def test_a_tier_without_its_tools_fails_under_ci_and_skips_elsewhere(tmp_path, ci):
    test_file = tmp_path / "test_tier.py"
    test_file.write_text(TIER)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(test_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if ci:
        assert run.returncode == 1 and "CI=true and this tier cannot run: no such tool here" in run.stdout, run.stdout
    else:
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout


def _fake_apt(tmp_path, script: str) -> dict[str, str]:
    """A PATH whose apt-get is `script` (bash), counting its calls in tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path / "calls"}\n{script}\n')
    apt.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CI_APT_WAIT_S": "3", "CI_APT_RETRY_S": "1"}


@pytest.mark.cli  # runs .ci/install-system-packages
@pytest.mark.skipif(os.geteuid() != 0, reason="the script installs only as root")
@pytest.mark.parametrize("ci", ["true", ""])
def test_a_failed_install_fails_ci(tmp_path, ci):
    env = {**_fake_apt(tmp_path, "exit 100"), "CI": ci}
    run = subprocess.run(
        [ROOT / ".ci" / "install-system-packages", "chromium"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == (1 if ci else 0), run.stderr
    assert ("failing (CI=true)" in run.stderr) == bool(ci), run.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) >= 2  # retried until the deadline


@pytest.mark.cli  # runs .ci/install-system-packages
@pytest.mark.skipif(os.geteuid() != 0, reason="the script installs only as root")
def test_apt_waits_for_a_held_lock(tmp_path):
    # The first call fails as apt does when another process holds the lists lock; the next ones succeed.
    env = {
        **_fake_apt(tmp_path, f"[ -e {tmp_path / 'held'} ] && exit 0; touch {tmp_path / 'held'}; exit 100"),
        "CI": "true",
    }
    run = subprocess.run(
        [ROOT / ".ci" / "install-system-packages", "wrk"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[2] for c in calls] == ["update", "update", "install"], calls
    assert all("DPkg::Lock::Timeout=3" in c for c in calls)
