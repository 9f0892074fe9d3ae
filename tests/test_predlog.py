"""The prediction log: one parseable JSON line per answered prediction, written before the answer completes."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from penguins.predlog import PredictionLog
from tests.harness import read_prediction_log


def test_each_answered_prediction_is_one_line_with_id_model_input_output_latency(client, log_dir, example):
    response = client.post("/classify_svm", json={"penguins": [example]}, headers={"x-request-id": "req-svm-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-svm-1"
    generic = client.post(
        "/classify",
        content=json.dumps({"penguins": [example, example]}, indent=2),
        headers={"content-type": "application/json"},
    )
    rejected = client.post("/classify", json={"penguins": [{**example, "island": "Atlantis"}]})
    assert rejected.status_code == 400

    log = read_prediction_log(log_dir).set_index("request_id")
    row = log.loc["req-svm-1"]
    assert row["route"] == "/classify_svm" and row["model"] == response.json()[0]["model"]
    assert row["input"] == {"penguins": [example]}
    (logged,), (answered,) = row["output"], response.json()
    assert logged["species"] == answered["species"] and logged["model"] == answered["model"]
    assert logged["probabilities"] == pytest.approx(answered["probabilities"], rel=1e-12)
    assert row["latency_ms"] > 0 and pd.Timestamp(row["ts"]).tzinfo is not None
    pretty = log.loc[generic.headers["x-request-id"]]  # a pretty-printed body still makes one line
    assert len(pretty["output"]) == 2
    # Only answered ones, whatever form other tests' requests took (columnar ones are logged as rows).
    assert "Atlantis" not in json.dumps(list(log["input"]))


def test_rotation_keeps_a_bounded_number_of_whole_lines(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=2000, backups=3, worker=7)
    for i in range(200):
        log.write(f"r{i}", "/classify", b'{"penguins": []}', b'[{"model": "m:1"}]', 0.001)
    files = sorted(tmp_path.glob("predictions-w7.jsonl*"))
    assert len(files) == 4  # the live file and three backups
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert all(line["model"] == "m:1" for line in lines)
    assert "r199" in {line["request_id"] for line in lines}


def test_rotation_counts_what_an_earlier_worker_left_in_the_file(tmp_path):
    earlier = PredictionLog(tmp_path, max_bytes=2000, backups=1, worker=3)
    while earlier.path.stat().st_size < 1900:
        earlier.write("before", "/classify", b"{}", b"[]", 0.001)
    earlier.close()  # the earlier worker exited
    PredictionLog(tmp_path, max_bytes=2000, backups=1, worker=3).write("after", "/classify", b"{}", b"[]", 0.001)
    live, backup = tmp_path / "predictions-w3.jsonl", tmp_path / "predictions-w3.jsonl.1"
    assert [json.loads(line)["request_id"] for line in live.read_text().splitlines()] == ["after"]
    assert backup.stat().st_size <= 2000


def test_a_failing_write_is_reported_once_and_never_raises(tmp_path, caplog):
    log = PredictionLog(tmp_path, max_bytes=10_000, backups=1, worker=2)
    os.close(log._fd)  # as a full disk or a vanished volume would fail it
    for i in range(3):
        log.write(f"r{i}", "/classify", b"{}", b"[]", 0.001)
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "predictions-w2.jsonl" in caplog.text


def test_a_hostile_request_id_cannot_break_a_line(tmp_path):
    log = PredictionLog(tmp_path, max_bytes=10_000, backups=1, worker=1)
    log.write('x", "model": "forged\n', "/classify", b'{"penguins": []}', b'[{"model": "m:1"}]', 0.001)
    (line,) = (tmp_path / "predictions-w1.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["request_id"] == 'x", "model": "forged\n' and record["model"] == "m:1"


def test_the_log_is_on_by_default_beside_the_store(tmp_path, monkeypatch):
    from penguins.gateway import Gateway
    from penguins.settings import Settings

    monkeypatch.setattr("penguins.gateway.default_store_dir", lambda: tmp_path / "home" / "models")
    gateway = Gateway(app=None, settings=Settings(log_dir=None))
    assert gateway.prediction_log().path.parent == tmp_path / "home" / "prediction-logs"


def test_an_unwritable_log_directory_disables_the_log_not_the_service(tmp_path):
    from penguins.gateway import Gateway
    from penguins.settings import Settings

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    gateway = Gateway(app=None, settings=Settings(log_dir=blocker / "logs"))
    assert gateway.prediction_log() is None and gateway.prediction_log() is None  # and it does not retry each time


def test_replicas_on_one_log_volume_write_and_rotate_only_their_own_files(tmp_path):
    """Two replicas' worker 1 on one shared folder: separate files, and one's rotation leaves the other's alone."""
    a = PredictionLog(tmp_path, max_bytes=2000, backups=2, worker=1, replica="api-a")
    b = PredictionLog(tmp_path, max_bytes=2000, backups=2, worker=1, replica="api-b")
    assert a.path.name == "predictions-api-a-w1.jsonl" and b.path.name == "predictions-api-b-w1.jsonl"
    b.write("b0", "/classify", b"{}", b"[]", 0.001)
    for i in range(100):  # several rotations of a's files
        a.write(f"a{i}", "/classify", b"{}", b"[]", 0.001)
    b.write("b1", "/classify", b"{}", b"[]", 0.001)
    assert [json.loads(line)["request_id"] for line in b.path.read_text().splitlines()] == ["b0", "b1"]
    assert sorted(p.name for p in tmp_path.glob("predictions-api-b-*")) == ["predictions-api-b-w1.jsonl"]
    assert len(list(tmp_path.glob("predictions-api-a-w1.jsonl*"))) == 3
    everything = read_prediction_log(tmp_path)  # the README's read-back reads every replica's files
    assert {"b0", "b1", "a99"} <= set(everything["request_id"])


def test_a_second_live_writer_of_the_same_name_gets_its_own_file(tmp_path):
    """Two servers on one host with one log folder and no PENGUINS_REPLICA_NAME: same host name, same worker index.
    The second must not append to (and later rotate) the first one's file."""
    first = PredictionLog(tmp_path, max_bytes=10_000, backups=1, worker=1, replica="host")
    second = PredictionLog(tmp_path, max_bytes=10_000, backups=1, worker=1, replica="host")
    assert first.path != second.path and second.path.name == f"predictions-host-w1-p{os.getpid()}.jsonl"
    first.write("one", "/classify", b"{}", b"[]", 0.001)
    second.write("two", "/classify", b"{}", b"[]", 0.001)
    assert [json.loads(line)["request_id"] for line in first.path.read_text().splitlines()] == ["one"]
    assert [json.loads(line)["request_id"] for line in second.path.read_text().splitlines()] == ["two"]


def _lines_parse(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_short_write_leaves_no_partial_line(tmp_path, monkeypatch):
    from penguins import predlog

    log = PredictionLog(tmp_path, max_bytes=100_000, backups=1, worker=4)
    log.write("before", "/classify", b"{}", b'[{"model": "m:1"}]', 0.001)
    real_write, failures = os.write, predlog.failures_counter()
    counted = failures._value.get()
    monkeypatch.setattr(predlog.os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))  # disk full
    log.write("cut", "/classify", b"{}", b'[{"model": "m:1"}]', 0.001)
    monkeypatch.setattr(predlog.os, "write", real_write)  # space again
    log.write("after", "/classify", b"{}", b'[{"model": "m:1"}]', 0.001)
    assert [r["request_id"] for r in _lines_parse(log.path)] == ["before", "after"]
    assert failures._value.get() == counted + 1


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, unmounted on every exit path (needs root and mount(8))."""
    import shutil
    import subprocess

    from tests.tiers import unavailable

    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        unavailable("a tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {made.stderr.decode()[-300:]}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.cli  # mounts a small tmpfs (mount, umount)
def test_a_full_disk_cuts_no_line_and_the_file_parses_once_space_returns(small_disk):
    from penguins import predlog

    filler = small_disk / "filler"
    filler.write_bytes(b"x" * 40_000)
    log = PredictionLog(small_disk / "logs", max_bytes=1_000_000, backups=1, worker=5)
    failures = predlog.failures_counter()
    counted = failures._value.get()
    output = b'[{"species": "Gentoo", "model": "m:1", "pad": "' + b"p" * 900 + b'"}]'
    written = 0
    for i in range(60):  # ~60 KB of lines into the ~24 KB left: the disk fills up, mid-line for one of them
        log.write(f"r{i}", "/classify", b'{"penguins": []}', output, 0.001)
        written += 1
        _lines_parse(log.path)  # whole lines only, at every step
    full = failures._value.get() - counted
    assert full > 0, "the disk never filled up: this test would prove nothing"
    kept = len(_lines_parse(log.path))
    assert kept + full == written
    filler.unlink()  # space returns
    log.write("after", "/classify", b'{"penguins": []}', output, 0.001)
    records = _lines_parse(log.path)
    assert len(records) == kept + 1 and records[-1]["request_id"] == "after"
