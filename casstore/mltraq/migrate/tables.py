"""MLtraq's tables as the migration reads and rewrites them: the `experiments` table (each
experiment's `fields`) and the run tables its meta names (their serialized columns). A
`Cell` is one DataPak value there. casstore's own tables are not written here: the index
writes them (casstore.cas.index.queries.Index), on the migration's connection where they
must commit with a rewrite of these."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import ColumnElement, MetaData, Table, create_engine, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from casstore.cas.index.engine import safe_url, sqlite_file
from casstore.cas.index.models import ExperimentRow
from casstore.errors import InvalidInput

EXPERIMENTS_TABLE = ExperimentRow.__tablename__  # "experiments"
_EXPERIMENTS: Table = ExperimentRow.metadata.tables[EXPERIMENTS_TABLE]


@dataclass(frozen=True)
class Cell:
    """A DataPak value in the database: an experiment's fields, or one run's column."""

    table: str
    column: str
    key: Any  # id_experiment (experiments) or the id_run value as read (run tables)
    id_run: str  # "" for the experiment's fields, else the run id in hex
    digest: str  # sha256 of the bytes the plan read


def read_engine(db_url: str) -> Engine:
    """An engine that only reads: no pragmas, and a SQLite file must exist (never created)."""
    try:
        parsed = make_url(db_url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {db_url!r} (expected e.g. sqlite:///mltraq.db)") from exc
    found = sqlite_file(parsed)
    if found is not None:
        if found.memory:
            raise InvalidInput(f"{db_url} is an in-memory database: there is nothing to migrate")
        if not found.uri and not found.exists():
            raise InvalidInput(f"database {os.path.abspath(found.path)} does not exist")
    try:
        return create_engine(db_url)
    except (SQLAlchemyError, ImportError) as exc:
        raise InvalidInput(f"cannot open database {safe_url(db_url)}: {exc}") from exc


def experiment_rows(conn: Connection) -> Iterator[Any]:
    """(id_experiment, name, fields, meta) of every experiment, by name."""
    t = _EXPERIMENTS
    query = select(t.c.id_experiment, t.c.name, t.c.fields, t.c.meta).order_by(t.c.name)
    yield from conn.execute(query)


def read_cell(engine: Engine, cell: Cell) -> bytes | None:
    """The bytes of `cell` now, None if its row is gone or the value is null."""
    with engine.connect() as conn:
        table, key_column = _cell_table(conn, cell)
        row = conn.execute(select(table.c[cell.column]).where(key_column == cell.key)).first()
    return None if row is None or row[0] is None else bytes(row[0])


def update_cell(conn: Connection, cell: Cell, current: bytes, new: bytes) -> bool:
    """Write `new` in place of `current`, in the caller's transaction; False if the cell no
    longer holds `current` (someone changed it since it was read)."""
    table, key_column = _cell_table(conn, cell)
    result = conn.execute(update(table).where(key_column == cell.key, table.c[cell.column] == current)
                          .values({cell.column: new}))
    return result.rowcount >= 1


def _cell_table(conn: Connection, cell: Cell) -> tuple[Table, ColumnElement[Any]]:
    if cell.table == EXPERIMENTS_TABLE:
        return _EXPERIMENTS, _EXPERIMENTS.c.id_experiment
    table = Table(cell.table, MetaData(), autoload_with=conn)
    return table, table.c.id_run


def where(cell: Cell) -> str:
    """The cell as a message names it."""
    return f"run {cell.id_run} column {cell.column!r}" if cell.id_run else "the experiment's fields"


def sha(data: bytes | None) -> str:
    return hashlib.sha256(bytes(data or b"")).hexdigest()
