"""The SQL data layer against SQLite, a real MariaDB and a real PostgreSQL server: ingest, clean, re-runs, bad
rows counted, schemas kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import create_engine, inspect, select, text

from penguins.contract import FEATURES, TARGET
from penguins.data import fingerprint, load_penguins
from penguins.db import CLEAN_TABLE, RAW_TABLE, SchemaMismatch, clean, clean_table, ingest, load_clean, raw_table
from tests.harness import ROOT

GOOD = "Gentoo,Biscoe,46.1,13.2,211,4500,female,2009"
BAD_CSV = textwrap.dedent(
    f"""\
    species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year
    {GOOD}
    {GOOD}
    GENTOO , biscoe ,46.1,13.2,211.0,4500.0,FEMALE,2009
    Emperor,Biscoe,46.1,13.2,211,4500,female,2009
    ,Biscoe,46.1,13.2,211,4500,female,2009
    Adelie,Atlantis,39.1,18.7,181,3750,male,2007
    Adelie,Dream,39.1,18.7,181,heavy,male,2007
    Adelie,Dream,39.1,18.7,181,0,male,2007
    Adelie,Dream,39.1,18.7,181,3.75e9,male,2007
    Adelie,Dream,39.1,18.7,inf,3750,male,2007
    Adelie,Dream,NA,NA,NA,NA,NA,2007
    Chinstrap,dream,46.5,17.9,192,3500,unknown,2007
    Chinstrap,Dream,50.0,19.5,196,3900,,2007
    Adélie,Dream,39.1,18.7,181,3750,male,2007
    Adelie,Dream 🐧,39.1,18.7,181,3750,male,2007
    Adelie,{"Dream" * 60},39.1,18.7,181,3750,male,2007
    Adelie,Dream,39.1,18.7,181,3750,ma\x00le,2007
    Chinstrap,Dream,50.0,19.5,196,3900,male,2007,an,extra,field
    """
)


def _rows(url: str, table) -> list[dict]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [dict(r) for r in connection.execute(select(table).order_by(*table.primary_key.columns)).mappings()]
    engine.dispose()
    return rows


def _columns(url: str, table: str) -> list[tuple[str, str, bool]]:
    engine = create_engine(url)
    columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspect(engine).get_columns(table)]
    engine.dispose()
    return columns


def test_bundled_rows_ingest_and_clean_to_the_training_data(db_url):
    ingested = ingest(db_url)
    assert (ingested.rows_read, ingested.rows_written, ingested.raw_rows_total) == (344, 344, 344)
    assert ingested.ignored_columns == ["year"] and ingested.absent_columns == []
    report = clean(db_url)
    assert (report.rows_in, report.rows_out, report.duplicates) == (344, 342, 0)
    # The two rows without any measurement; the first missing field is named.
    assert report.rejected == {"missing:bill_length_mm": 2} and report.rows_rejected == 2
    assert report.missing_sex == 9
    assert [e["source_row"] for e in report.examples] == [4, 272]
    frame = load_clean(db_url)
    bundled = load_penguins()
    assert list(frame.columns) == [*FEATURES, TARGET]
    # Same rows as the bundled training data: same fingerprint, so the model metadata names them.
    assert fingerprint(frame) == fingerprint(bundled)


def test_ingest_and_clean_are_idempotent(db_url):
    ingest(db_url)
    first = clean(db_url)
    rows, columns = _rows(db_url, clean_table), _columns(db_url, CLEAN_TABLE)
    again = ingest(db_url)
    assert again.replaced == 344 and again.raw_rows_total == 344
    second = clean(db_url)
    assert second.as_dict() == first.as_dict()
    assert _rows(db_url, clean_table) == rows and _columns(db_url, CLEAN_TABLE) == columns


def test_bad_rows_are_counted_by_reason_and_never_crash(db_url, tmp_path):
    # The clean table as the contract defines it, before any row is judged.
    assert clean(db_url).rows_in == 0
    schema = _columns(db_url, CLEAN_TABLE)
    assert [c[0] for c in schema] == [c.name for c in clean_table.columns]
    csv = tmp_path / "field-notes.csv"
    csv.write_text(BAD_CSV)
    ingested = ingest(db_url, csv=csv)
    assert ingested.source == "field-notes.csv"
    assert ingested.malformed_lines == 1 and ingested.rows_written == 17
    # Stored anyway (an emoji and accents in MariaDB too; a NUL, which PostgreSQL refuses, as U+FFFD), and counted.
    assert ingested.truncated_values == 1 and ingested.nul_values == 1
    report = clean(db_url)
    assert report.rejected == {
        f"missing:{TARGET}": 1,
        f"unknown_value:{TARGET}": 2,
        "unknown_value:island": 3,
        "not_a_number:body_mass_g": 1,
        "out_of_range:body_mass_g": 2,
        "out_of_range:flipper_length_mm": 1,
        "missing:bill_length_mm": 1,
    }
    # The first line, its exact duplicate and its spelling variant (case, spaces, 211 vs 211.0) are one penguin.
    assert report.duplicates == 2
    assert report.unknown_sex_set_missing == 2 and report.missing_sex == 1
    assert report.rows_out == 4 == report.rows_in - report.rows_rejected - report.duplicates
    # Reported: the first rejected rows, each with its reason.
    assert len(report.examples) == 10 and {e["reason"] for e in report.examples} <= set(report.rejected)
    rows = _rows(db_url, clean_table)
    assert [(r[TARGET], r["island"], r["sex"]) for r in rows] == [
        ("Gentoo", "Biscoe", "female"),
        ("Chinstrap", "Dream", None),
        ("Chinstrap", "Dream", None),
        ("Adelie", "Dream", None),
    ]
    assert rows[0]["body_mass_g"] == 4500.0 and rows[0]["source_row"] == 1
    # Bad rows never change the clean table's schema: same columns, types and nullability.
    assert _columns(db_url, CLEAN_TABLE) == schema


def test_sources_accumulate_and_duplicates_across_them_are_dropped(db_url, tmp_path):
    ingest(db_url)
    bundled = load_penguins()
    csv = tmp_path / "again.csv"
    bundled.head(10).to_csv(csv, index=False)
    (tmp_path / "new.csv").write_text(BAD_CSV.splitlines()[0] + "\n" + "Gentoo,Biscoe,51.23,15.9,225,5432,male,2009\n")
    ingest(db_url, csv=csv)
    ingest(db_url, csv=tmp_path / "new.csv")
    report = clean(db_url)
    assert report.rows_in == 344 + 10 + 1 and report.duplicates == 10 and report.rows_out == 343


def test_a_csv_without_a_required_column_is_refused_before_touching_the_table(db_url, tmp_path):
    ingest(db_url)
    csv = tmp_path / "no-species.csv"
    csv.write_text("island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g\nDream,39,18,181,3750\n")
    with pytest.raises(ValueError, match="species"):
        ingest(db_url, csv=csv)
    assert len(_rows(db_url, raw_table)) == 344


def test_a_foreign_clean_table_is_refused_not_altered(db_url):
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {CLEAN_TABLE} (id INTEGER PRIMARY KEY, species VARCHAR(20))"))
        connection.execute(text(f"INSERT INTO {CLEAN_TABLE} VALUES (1, 'kept')"))
    engine.dispose()
    ingest(db_url)
    with pytest.raises(SchemaMismatch, match="not changed"):
        clean(db_url)
    assert [c[0] for c in _columns(db_url, CLEAN_TABLE)] == ["id", "species"]
    engine = create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(text(f"SELECT species FROM {CLEAN_TABLE}")).scalar_one() == "kept"
    engine.dispose()


def test_load_clean_says_what_to_run_when_there_is_no_table(tmp_path):
    with pytest.raises(LookupError, match="ingest and clean"):
        load_clean(f"sqlite:///{tmp_path / 'empty.db'}")


@pytest.mark.cli
def test_the_cli_prints_the_reports(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for command in ("ingest", "clean"):
        done = subprocess.run(
            [sys.executable, "-m", "penguins.db", command, "--url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert '"rows_out": 342' in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "penguins.db", "ingest", "--url", url, "--csv", str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_raw_table_keeps_values_as_text(db_url, tmp_path):
    csv = tmp_path / "odd.csv"
    csv.write_text(BAD_CSV)
    ingest(db_url, csv=csv)
    heavy = [r for r in _rows(db_url, raw_table) if r["body_mass_g"] == "heavy"]
    assert len(heavy) == 1 and heavy[0]["source"] == "odd.csv"
    assert RAW_TABLE in inspect(create_engine(db_url)).get_table_names()


@pytest.mark.cli
def test_train_cli_trains_from_the_clean_table_and_records_which_rows(tmp_path):
    from bentoml._internal.models.model import Model

    from penguins.scan import scan
    from tests.harness import run_train

    url = f"sqlite:///{tmp_path / 'train.db'}"
    ingest(url)
    csv = tmp_path / "extra.csv"
    csv.write_text(BAD_CSV)
    ingest(url, csv=csv)
    clean(url)
    home = tmp_path / "home"
    done = run_train(home, "--models", "knn", "--data", url)
    rows = len(load_clean(url))
    assert rows > 342 and f"{rows} rows" in done.stdout  # the bundled rows and the CSV's new clean ones
    (stored,) = scan(home / "models")[0]
    metadata = Model.from_path(stored.path).info.metadata
    assert metadata["data_fingerprint"] == fingerprint(load_clean(url)) != fingerprint(load_penguins())
    assert metadata["data_rows"] == rows and metadata["data_source"] == f"{url}#penguins_clean"
