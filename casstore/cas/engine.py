"""Database engines. SQLite gets WAL, a long busy timeout, and BEGIN IMMEDIATE for the
transactions that write (plain BEGIN for reads, which with WAL never wait for a writer).
PostgreSQL write transactions take an advisory lock first, so writers queue there too."""

from __future__ import annotations

import sqlite3
import time

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from casstore.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_S = 300
WRITE_OPTION = "casstore_write"
# PostgreSQL: casstore's write transactions take this transaction-level advisory lock first,
# so they queue as SQLite's BEGIN IMMEDIATE makes them queue (reads never take it).
PG_WRITE_LOCK_KEY = 0x6361_7373  # "cass"


def safe_url(url: str) -> str:
    """`url` for messages: its password, if any, masked (an unparsable URL as given)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return _server_engine(url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {url!r}") from exc
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise InvalidInput(f"no driver for database URL {parsed.render_as_string(hide_password=True)!r}: {exc} "
                           "(PostgreSQL: pip install 'casstore[postgres]')") from exc
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    memory = parsed.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        if not memory:
            _use_wal(dbapi_conn)
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _server_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            if conn.get_execution_options().get(WRITE_OPTION, False):
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK_KEY})")

    return engine


def write_transaction(engine: Engine):  # noqa: ANN201
    """A transaction that will write: on SQLite it takes the write lock at BEGIN (waiting on
    the busy timeout), so it can never fail later on a lock upgrade."""
    return engine.execution_options(**{WRITE_OPTION: True}).begin()


def _use_wal(dbapi_conn: sqlite3.Connection) -> None:
    """Switch a database file to WAL once. Switching needs a lock that the busy timeout
    does not wait for, so several processes opening a new database retry briefly."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
