"""Opening what a command works on: the database of --db (its engine, its index) and the
datastore it uses (--datastore, else the one the database records, else option
datastore.url).

Everything here refuses rather than creates: a typo in --db or --datastore must not start
an empty project, and a database file the CLI refuses is left byte for byte as it was
(docs/reliability.md). Refusals are `Unusable` (exit 3). The decisions are the library's
(`stores.project_datastore`, `stores.existing_content_store`, the index's
`require_casstore_tables`); this module maps their errors."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Callable

from casstore.cli.app import Unusable, common_options, one_line_errors, project_options
from casstore.cli.output import emit_json
from casstore.errors import CasStoreError, DatastoreError, InvalidInput, SchemaOutdated

# SQLAlchemy and the index are imported when a command opens its database, not for --help.
if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from casstore.cas.index.queries import Index
    from casstore.cas.store.content_store import ContentStore


# How the messages name where the datastore came from (casstore.stores.project_datastore).
DATASTORE_SOURCES = {"given": "--datastore", "recorded": "recorded by the database",
                     "option": "option datastore.url (the database records none; pass --datastore)"}


def open_engine(url: str, read_only: bool = True) -> Engine:
    """An engine on an existing database: a SQLite file that does not exist is refused
    rather than created (a typo in --db must not start an empty project). Read-only unless
    the command writes to the database: a file it refuses is left byte for byte as it was."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from casstore.cas.index.engine import make_engine, safe_url, sqlite_file

    try:
        found = sqlite_file(make_url(url))
    except ArgumentError:
        raise Unusable(f"not a database URL: {url!r} (expected e.g. sqlite:///runs.db)") from None
    if found is not None:
        if found.memory:
            raise Unusable(f"{url} is an in-memory database: it holds nothing another process can see")
        if not found.uri and not found.exists():
            raise Unusable(f"database {os.path.abspath(found.path)} does not exist (--db {url})")
    try:
        return make_engine(url, read_only=read_only)
    except (SQLAlchemyError, ImportError, CasStoreError) as exc:
        raise Unusable(f"cannot open database {safe_url(url)}: {exc}") from exc


def open_index(url: str, read_only: bool = True) -> Index:
    """The project's index; its tables are looked at read-only first, and the database is
    opened for writing (SQLite switched to WAL) only if `read_only` is False."""
    from sqlalchemy.exc import SQLAlchemyError

    from casstore.cas.index.engine import safe_url
    from casstore.cas.index.queries import Index
    from casstore.cas.index.schema import require_casstore_tables

    engine = open_engine(url)
    try:
        require_casstore_tables(engine)
    except SQLAlchemyError as exc:
        raise Unusable(f"cannot open database {safe_url(url)}: {getattr(exc, 'orig', None) or exc}") from exc
    except InvalidInput as exc:
        raise Unusable(str(exc)) from exc
    finally:
        engine.dispose()
    try:
        return Index.open(url, read_only=read_only)
    except SchemaOutdated as exc:
        raise Unusable(str(exc)) from exc
    except (CasStoreError, SQLAlchemyError) as exc:
        raise Unusable(f"cannot open database {safe_url(url)}: {exc}") from exc


class Project:
    """What a command works on: the database of --db and the datastore it uses, each
    opened on first use."""

    def __init__(self, db: str, datastore: str | None, as_json: bool):
        self.db = db
        self.datastore_arg = datastore
        self.as_json = as_json
        self._index: Index | None = None
        self._store: ContentStore | None = None

    @property
    def index(self) -> Index:
        """The index, read-only unless writable_index() opened it first."""
        if self._index is None:
            self._index = open_index(self.db)
        return self._index

    def writable_index(self) -> Index:
        """The index opened for writing, for the commands that change the database (gc):
        a database this process may not write is refused before anything changes."""
        from casstore.cas.index.engine import safe_url

        if self._index is None:
            self._index = open_index(self.db, read_only=False)
        if self._index.read_only:
            raise Unusable(f"database {safe_url(self.db)} is read-only (no write permission), and this "
                           "command writes to it")
        return self._index

    @property
    def store(self) -> ContentStore:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> ContentStore:
        from casstore import stores
        from casstore.cas.index.engine import safe_url

        url, source = stores.project_datastore(self.index, self.datastore_arg or None)
        try:
            store = stores.existing_content_store(url, named_by=DATASTORE_SOURCES[source])
        except DatastoreError as exc:
            hint = (f": if the project's datastore moved, run `casstore relocate --db {safe_url(self.db)} "
                    "--datastore PATH` with its new place") if source == "recorded" else ""
            raise Unusable(f"{exc}{hint}") from exc
        if source == "recorded":
            _settle(store, self.index)
        return store

    def close(self) -> None:
        if self._index is not None:
            self._index.dispose()
            self._index = None

    def suggest(self, *words: str) -> str:
        """A command on this project as the user gave it: `words`, then --db and --datastore
        (if given), quoted for a shell (engine.cli_command)."""
        from casstore.cas.index.engine import cli_command

        return cli_command(self.db, *words, datastore=self.datastore_arg)

    def emit(self, schema: str, document: dict[str, Any]) -> None:
        """The command's JSON document, of stable schema `schema` (output.SCHEMAS)."""
        emit_json(schema, document)


def _settle(store: ContentStore, index: Index) -> None:
    """Register the project where it is now (a moved project protects its blobs again as
    soon as any command opens it: cas/live/moves.py); a datastore this process cannot write
    only costs that."""
    from casstore.cas.live.moves import settle_registration

    try:
        settle_registration(store.blobs, index)
    except (CasStoreError, OSError) as exc:
        import logging  # imported when needed: the start of every command stays short

        logging.getLogger(__name__).info("could not register the database in datastore %s: %s", store.blobs.url, exc)


def project_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command a Project built from --db/--datastore/--json, close it afterwards,
    and turn library errors into one line and an exit code."""

    @functools.wraps(f)
    def wrapper(db: str | None, datastore: str | None, as_json: bool, **kwargs: Any) -> Any:
        project = Project(*project_options(db, datastore, as_json))
        try:
            with one_line_errors():
                return f(project, **kwargs)
        finally:
            project.close()

    return common_options(wrapper)
