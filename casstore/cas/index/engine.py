"""Database engines. SQLite gets WAL, a long busy timeout, and BEGIN IMMEDIATE for the
transactions that write (plain BEGIN for reads, which with WAL never wait for a writer).
PostgreSQL write transactions take an advisory lock first, so writers queue there too.

A read-only engine (commands that only read, other projects' databases read by gc) never
writes to a SQLite file: no switch to WAL, `PRAGMA query_only`, and the file opened with
`mode=ro` where this process may not write it (docs/cli.md, "Read-only databases")."""

from __future__ import annotations

import os
import shlex
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.util import asbool

from casstore.errors import DatabaseFailure, InvalidInput

SQLITE_BUSY_TIMEOUT_S = 300
# The only primary result codes worth waiting for: another connection holds the lock.
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
# Opening a WAL database whose -shm file cannot be created: a read-only mount (CANTOPEN) or
# a folder this process may not write (READONLY_DIRECTORY).
_NO_SHM = {14, 1544}
WRITE_OPTION = "casstore_write"
READ_ONLY_OPTION = "casstore_read_only"
# PostgreSQL: casstore's write transactions take this transaction-level advisory lock first,
# so they queue as SQLite's BEGIN IMMEDIATE makes them queue (reads never take it).
PG_WRITE_LOCK_KEY = 0x6361_7373  # "cass"


def safe_url(url: str) -> str:
    """`url` for messages: its password, if any, masked (an unparsable URL as given)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def cli_command(db: str | URL, *words: str, datastore: str | None = None) -> str:
    """The `casstore` command line a message suggests, as a shell runs it: `words`, then
    --db (its password masked: the user types it in) and --datastore if given, each quoted
    where a shell would split or expand it."""
    url = db.render_as_string(hide_password=True) if isinstance(db, URL) else safe_url(db)
    where = ["--db", url] + (["--datastore", datastore] if datastore else [])
    return " ".join(["casstore", *(shlex.quote(w) for w in [*words, *where])])


@dataclass(frozen=True, slots=True)
class SqliteFile:
    """Where a SQLite URL keeps its database. `path` is the URL's database as written: a
    relative path stays relative, "" or ":memory:" is in memory, a `file:` URI stays a URI."""

    path: str
    memory: bool  # "", ":memory:" or a memory URI (`?mode=memory&uri=true`): nothing another process sees

    @property
    def uri(self) -> bool:
        """`path` is a `file:` URI: SQLite parses it, casstore does not look for the file."""
        return self.path.startswith("file:")

    def exists(self) -> bool:
        """A regular file (symlinks followed) is at `path`; False in memory and for a URI."""
        return not self.memory and not self.uri and os.path.isfile(self.path)


def sqlite_file(url: str | URL) -> SqliteFile | None:
    """What the SQLite URL `url` names; None if it is another database's URL or no database
    URL at all (callers that must refuse an unparsable URL parse it with make_url first)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    path = parsed.database or ""
    return SqliteFile(path, path in ("", ":memory:") or _memory_uri(parsed, path))


def _memory_uri(parsed: URL, path: str) -> bool:
    """A `file:` URI of an in-memory database. SQLite reads `mode=memory` (or the name
    `:memory:`) only from a URI, which pysqlite passes as one only with `uri=true`: without
    it, `sqlite:///x.db?mode=memory` is the file x.db."""
    if not asbool(parsed.query.get("uri", False)):  # pysqlite's own reading of the flag
        return False
    return str(parsed.query.get("mode", "")) == "memory" or path.startswith("file::memory:")


def make_engine(url: str | URL, read_only: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE.

    `read_only` (SQLite): the engine never writes the file, not even to switch it to WAL."""
    try:
        parsed = make_url(url)
        target = sqlite_file(parsed)
        if target is None:
            return _server_engine(url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {url!r}") from exc
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise InvalidInput(f"no driver for database URL {parsed.render_as_string(hide_password=True)!r}: {exc} "
                           "(PostgreSQL: pip install 'casstore[postgres]')") from exc
    if read_only and not target.memory and not target.uri:
        path = os.path.abspath(target.path)
        engine = create_engine(url, creator=lambda: _connect_read_only(path))
    else:
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None
        if read_only:
            dbapi_conn.execute("PRAGMA query_only=ON")
        elif not target.memory:
            _use_wal(dbapi_conn, target.path)
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine.execution_options(**{READ_ONLY_OPTION: True}) if read_only else engine


def is_read_only(engine: Engine) -> bool:
    """True for an engine of make_engine(read_only=True)."""
    return bool(engine.get_execution_options().get(READ_ONLY_OPTION, False))


def _server_engine(url: str | URL) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(WRITE_OPTION, False):
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK_KEY})")

    return engine


def write_transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """A transaction that will write: on SQLite it takes the write lock at BEGIN (waiting on
    the busy timeout), so it can never fail later on a lock upgrade."""
    return engine.execution_options(**{WRITE_OPTION: True}).begin()


def is_busy(exc: sqlite3.Error) -> bool:
    """True if `exc` says another connection holds a lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (SQLITE_BUSY, SQLITE_LOCKED)


def _use_wal(dbapi_conn: sqlite3.Connection, database: str) -> None:
    """Switch a database file to WAL once. Switching needs a lock that the busy timeout
    does not wait for, so several processes opening a new database retry briefly; any
    other failure (read-only file or mount, full disk) is a DatabaseFailure at once."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            # "wal": switched; "memory": an in-memory database (however its URL spells it) keeps
            # its journal in memory; the old mode: another connection held the lock, retry.
            if dbapi_conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() in ("wal", "memory"):
                return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                dbapi_conn.close()
                raise DatabaseFailure(f"cannot open database {database} for writing: {exc} "
                                      f"({getattr(exc, 'sqlite_errorname', 'SQLITE_ERROR')})") from exc
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            dbapi_conn.close()
            raise DatabaseFailure(f"cannot switch database {database} to WAL within {SQLITE_BUSY_TIMEOUT_S} s")
        time.sleep(0.05)


def _connect_read_only(path: str) -> sqlite3.Connection:
    """A connection that cannot change the file at `path`.

    Where this process may write the file and its folder, it is opened read-write (with
    query_only set on connect), so that SQLite removes the -wal/-shm files it makes, as after
    any use; elsewhere `mode=ro`. A WAL database whose -shm cannot be created (read-only
    mount or folder) and that has neither -wal nor -shm beside it holds all its data in the
    file: it is opened `immutable=1`, which takes no locks and so assumes that nobody writes
    the file meanwhile (on a read-only mount nobody can)."""
    uri = f"file:{quote(path)}"
    writable = os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK)
    conn = _sqlite_connect(f"{uri}?mode={'rw' if writable else 'ro'}")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        conn.close()
        if exc.sqlite_errorcode not in _NO_SHM or any(os.path.lexists(path + s) for s in ("-wal", "-shm")):
            raise
        conn = _sqlite_connect(f"{uri}?mode=ro&immutable=1")
    return conn


def _sqlite_connect(uri: str) -> sqlite3.Connection:
    return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
