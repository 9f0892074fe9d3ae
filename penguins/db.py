"""The SQL data layer: raw penguin rows in, clean penguin rows out, in any database SQLAlchemy reaches.

    ingest  the Palmer Penguins rows (or a CSV you name) -> `penguins_raw`, every value kept as text
    clean   `penguins_raw` -> `penguins_clean`: the rows the API would accept, typed, deduplicated, with a label

Both are idempotent: re-running `ingest` replaces the rows of that source, re-running `clean` rewrites the clean table
from the raw one in one transaction. Bad rows never stop a run: they are left out and counted by reason in the
returned report. The clean table's schema comes from the contract and is never altered: a table of that name with
other columns is refused with an error, not "fixed".

    python -m penguins.db ingest [--url URL] [--csv FILE] [--source NAME]
    python -m penguins.db clean [--url URL]

Default URL: $PENGUINS_DATABASE_URL, else a SQLite file `penguins.db` in the working directory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import (
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    make_url,
    select,
)

from penguins.contract import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES, SEXES, SPECIES, TARGET, Penguin
from penguins.data import prepare
from penguins.settings import DEFAULT_DATABASE_URL, get_settings

RAW_TABLE = "penguins_raw"
CLEAN_TABLE = "penguins_clean"
BUNDLED_SOURCE = "palmerpenguins"
# Raw values are text; longer ones are cut (they are not valid penguin values anyway).
RAW_TEXT = 255
# Columns a raw source must have; the others of the contract (sex) may be absent and are then missing.
REQUIRED_COLUMNS: tuple[str, ...] = (TARGET, *[f for f in FEATURES if Penguin.model_fields[f].is_required()])
# Text that means "no value" in a CSV or a raw cell.
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "null", "none", "."})

metadata = MetaData()
# MySQL/MariaDB: every character a CSV can hold (their `utf8` is 3 bytes: an emoji would be refused and stop the run),
# compared exactly (a case-insensitive collation would make sources `A.csv` and `a.csv` one). Ignored elsewhere.
TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

raw_table = Table(
    RAW_TABLE,
    metadata,
    Column("source", String(RAW_TEXT), primary_key=True),
    Column("source_row", Integer, primary_key=True, autoincrement=False),
    *[Column(name, String(RAW_TEXT), nullable=True) for name in (TARGET, *FEATURES)],
    **TABLE_OPTIONS,
)

clean_table = Table(
    CLEAN_TABLE,
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column(TARGET, String(32), nullable=False),
    *[Column(name, String(32), nullable=not Penguin.model_fields[name].is_required()) for name in CATEGORICAL_FEATURES],
    *[Column(name, Double, nullable=not Penguin.model_fields[name].is_required()) for name in NUMERIC_FEATURES],
    Column("source", String(RAW_TEXT), nullable=False),
    Column("source_row", Integer, nullable=False),
    **TABLE_OPTIONS,
)


class SchemaMismatch(RuntimeError):
    """A table with our name exists with other columns: we refuse to write into it or to change it."""


@dataclass
class IngestReport:
    url: str
    table: str
    source: str
    rows_read: int
    rows_written: int
    replaced: int = 0  # rows of this source that were there before
    ignored_columns: list[str] = field(default_factory=list)
    absent_columns: list[str] = field(default_factory=list)
    malformed_lines: int = 0
    truncated_values: int = 0
    nul_values: int = 0  # values holding a NUL character (PostgreSQL stores none): each NUL became U+FFFD
    raw_rows_total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CleanReport:
    url: str
    table: str
    rows_in: int
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    missing_sex: int = 0
    unknown_sex_set_missing: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_rejected": self.rows_rejected}


def default_url() -> str:
    return get_settings().database_url


def safe_url(url: str) -> str:
    """The URL with its password hidden: what reports, logs and model metadata may show."""
    return make_url(url).render_as_string(hide_password=True)


def clean_source(url: str) -> str:
    """How a model's metadata names the rows it trained on when they came from the clean table (password hidden)."""
    return f"{safe_url(url)}#{CLEAN_TABLE}"


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    """An engine for one operation, disposed of (its pooled connections closed) when the operation ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, pool_pre_ping=True)
    try:
        yield engine
    finally:
        engine.dispose()


def _check_schema(engine: Engine, table: Table) -> None:
    """Create the table when absent; refuse one of that name whose columns differ from ours."""
    inspector = inspect(engine)
    if not inspector.has_table(table.name):
        table.create(engine, checkfirst=True)
        return
    existing = {c["name"] for c in inspector.get_columns(table.name)}
    expected = {c.name for c in table.columns}
    if existing != expected:
        raise SchemaMismatch(
            f"table {table.name} exists with columns {sorted(existing)}, expected {sorted(expected)}; "
            "rename or drop it yourself: it is not changed here"
        )


# --- ingest --------------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    text = str(value).strip()
    return None if text.lower() in MISSING_MARKERS else text


def _read_csv(csv: Path) -> tuple[pd.DataFrame, int]:
    malformed: list[list[str]] = []

    def bad_line(line: list[str]) -> None:
        malformed.append(line)
        return None

    frame = pd.read_csv(
        csv, dtype=str, keep_default_na=False, engine="python", on_bad_lines=bad_line, skipinitialspace=True
    )
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame, len(malformed)


def ingest(url: str | None = None, csv: str | Path | None = None, source: str | None = None) -> IngestReport:
    """Load raw rows into `penguins_raw`, replacing the rows this source put there before.

    Without `csv`, the Palmer Penguins rows the `palmerpenguins` package ships (source `palmerpenguins`); with it,
    that CSV (source: its file name, unless given). Values are stored as text, as they came: cleaning judges them.
    A CSV that lacks a required column is refused before the table is touched.
    """
    url = url or default_url()
    malformed = 0
    if csv is None:
        import palmerpenguins  # lazily: only the bundled rows need it

        frame = palmerpenguins.load_penguins()
        source = source or BUNDLED_SOURCE
    else:
        csv = Path(csv)
        frame, malformed = _read_csv(csv)
        source = source or csv.name
    columns = (TARGET, *FEATURES)
    absent = [c for c in columns if c not in frame.columns]
    missing_required = [c for c in absent if c in REQUIRED_COLUMNS]
    if missing_required:
        has = ", ".join(map(str, frame.columns))
        raise ValueError(f"{source}: no column {', '.join(missing_required)} (has: {has})")
    truncated = nuls = 0
    rows: list[dict[str, Any]] = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        row: dict[str, Any] = {"source": source[:RAW_TEXT], "source_row": number}
        for column in columns:
            value = _text(record.get(column))
            if value is not None and len(value) > RAW_TEXT:
                value, truncated = value[:RAW_TEXT], truncated + 1
            if value is not None and "\x00" in value:
                value, nuls = value.replace("\x00", "\ufffd"), nuls + 1
            row[column] = value
        rows.append(row)

    with engine_for(url) as engine:
        _check_schema(engine, raw_table)
        with engine.begin() as connection:
            replaced = connection.execute(delete(raw_table).where(raw_table.c.source == source[:RAW_TEXT])).rowcount
            if rows:
                connection.execute(insert(raw_table), rows)
            total = connection.execute(select(func.count()).select_from(raw_table)).scalar_one()
    return IngestReport(
        url=safe_url(url),
        table=RAW_TABLE,
        source=source,
        rows_read=len(frame),
        rows_written=len(rows),
        replaced=max(replaced or 0, 0),
        ignored_columns=sorted(str(c) for c in frame.columns if c not in columns),
        absent_columns=absent,
        malformed_lines=malformed,
        truncated_values=truncated,
        nul_values=nuls,
        raw_rows_total=int(total),
    )


# --- clean ---------------------------------------------------------------------------------------------------

_SEXES = {s.lower(): s for s in SEXES}
_SPECIES = {s.lower(): s for s in SPECIES}
_ERROR_KINDS = {
    "missing": "missing",
    "float_parsing": "not_a_number",
    "float_type": "not_a_number",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "finite_number": "out_of_range",
    "literal_error": "unknown_value",
}


def _judge(row: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(clean values, None, sex note) for a good row; (None, reason, None) for a rejected one.

    A row is clean when its species is known and the API would accept its features (the contract's `Penguin`:
    known island, every measurement a finite number within the contract's bounds). An unknown sex becomes missing,
    as the API allows; the pipeline imputes it.
    """
    species = row.get(TARGET)
    if species is None:
        return None, f"missing:{TARGET}", None
    if species.strip().lower() not in _SPECIES:
        return None, f"unknown_value:{TARGET}", None
    features = {name: row.get(name) for name in FEATURES}
    sex_note = None
    sex = features.get("sex")
    if sex is None:
        sex_note = "missing"
    elif sex.strip().lower() not in _SEXES:
        features["sex"], sex_note = None, "unknown"
    try:
        penguin = Penguin.model_validate({k: v for k, v in features.items() if v is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "row"
        return None, f"{_ERROR_KINDS.get(first['type'], first['type'])}:{where}", None
    return {TARGET: _SPECIES[species.strip().lower()], **penguin.model_dump()}, None, sex_note


def clean(url: str | None = None, examples: int = 10) -> CleanReport:
    """Rewrite `penguins_clean` from `penguins_raw`: valid rows only, typed, duplicates dropped, all in one go.

    Duplicates are rows equal in every contract column (label included); the first, by source and row, is kept.
    The report counts rejected rows by reason (`<kind>:<column>`, e.g. `out_of_range:body_mass_g`) and shows a few.
    """
    url = url or default_url()
    with engine_for(url) as engine:
        _check_schema(engine, raw_table)
        _check_schema(engine, clean_table)
        with engine.begin() as connection:
            raw_rows = (
                connection.execute(select(raw_table).order_by(raw_table.c.source, raw_table.c.source_row))
                .mappings()
                .all()
            )
            report = CleanReport(url=safe_url(url), table=CLEAN_TABLE, rows_in=len(raw_rows), rows_out=0)
            rejected: Counter[str] = Counter()
            seen: set[tuple[Any, ...]] = set()
            cleaned: list[dict[str, Any]] = []
            for raw in raw_rows:
                values, reason, sex_note = _judge(dict(raw))
                if values is None:
                    rejected[reason] += 1  # type: ignore[index]
                    if len(report.examples) < examples:
                        report.examples.append(
                            {"source": raw["source"], "source_row": raw["source_row"], "reason": reason}
                        )
                    continue
                key = tuple(values[c] for c in (TARGET, *FEATURES))
                if key in seen:
                    report.duplicates += 1
                    continue
                seen.add(key)
                report.missing_sex += sex_note == "missing"
                report.unknown_sex_set_missing += sex_note == "unknown"
                cleaned.append(
                    {"id": len(cleaned) + 1, **values, "source": raw["source"], "source_row": raw["source_row"]}
                )
            connection.execute(delete(clean_table))
            if cleaned:
                connection.execute(insert(clean_table), cleaned)
    report.rejected = dict(sorted(rejected.items()))
    report.rows_out = len(cleaned)
    return report


def load_clean(url: str | None = None) -> pd.DataFrame:
    """The clean table as a training frame (contract columns, in id order), shaped by `data.prepare`."""
    url = url or default_url()
    with engine_for(url) as engine:
        if not inspect(engine).has_table(CLEAN_TABLE):
            raise LookupError(f"{safe_url(url)} has no table {CLEAN_TABLE}: run ingest and clean first")
        columns = [clean_table.c[name] for name in (*FEATURES, TARGET)]
        with engine.connect() as connection:
            rows = connection.execute(select(*columns).order_by(clean_table.c.id)).all()
    frame = pd.DataFrame(rows, columns=[*FEATURES, TARGET])
    if frame.empty:
        raise LookupError(f"{CLEAN_TABLE} in {safe_url(url)} is empty: nothing to train on")
    return prepare(frame)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m penguins.db", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ingest_cmd = commands.add_parser("ingest", help=f"load raw rows into {RAW_TABLE}")
    ingest_cmd.add_argument("--csv", type=Path, help="a CSV with the contract's columns (default: bundled dataset)")
    ingest_cmd.add_argument("--source", help="name of the source in the raw table (default: the CSV's file name)")
    clean_cmd = commands.add_parser("clean", help=f"rewrite {CLEAN_TABLE} from {RAW_TABLE}")
    for command in (ingest_cmd, clean_cmd):
        command.add_argument(
            "--url", default=None, help=f"SQLAlchemy URL (default: $PENGUINS_DATABASE_URL or {DEFAULT_DATABASE_URL})"
        )
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "ingest":
            result = ingest(args.url, csv=args.csv, source=args.source).as_dict()
        else:
            result = clean(args.url).as_dict()
    except (ValueError, SchemaMismatch, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
