"""Schema versions of casstore's tables (Alembic, applied in code).

A database with no casstore tables gets the newest schema. A database at an older version is
refused with SchemaOutdated until `casstore db upgrade` runs: upgrading a shared team
database is a decision, not a side effect of opening it. The one exception is 0001, whose
tables are those of 0002: it lacks only the project identity, which 0002 adds as one row of
casstore_meta. It opens as it is, and gets its identity at the first write that needs one
(`Index.project_id`), so read-only commands never write to it. `check_schema`
decides what opens by reading only, so a database casstore refuses is left as it was."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect

from casstore.cas.index.engine import cli_command, write_transaction
from casstore.cas.index.models import CASSTORE_TABLES, VERSION_TABLE, ExperimentRow, table
from casstore.errors import InvalidInput, SchemaOutdated

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0002"
# Revisions opened as they are: their tables are HEAD's (0001 lacks only the project identity).
COMPATIBLE = frozenset({"0001", HEAD})


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("casstore.migrations")))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring casstore's tables to `revision`; returns the revision now in force. A schema
    newer than this casstore knows is refused (SchemaOutdated) and left as it is."""
    with write_transaction(engine) as connection:
        _refuse_newer(current_revision(connection))
        _upgrade(connection, revision)
        return current_revision(connection)


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), revision)


def ensure_schema(engine: Engine) -> None:
    """Create missing tables on a new database; refuse an outdated one.

    The common case (schema in force) only reads. Creation happens in a write transaction
    that looks again: several processes opening one new database create it once."""
    with engine.connect() as connection:
        revision, has_tables, has_experiments = _state(connection)
    if revision in COMPATIBLE and has_experiments:
        return
    with write_transaction(engine) as connection:
        revision, has_tables, _ = _state(connection)
        if revision is None and not has_tables:
            table(ExperimentRow).create(connection, checkfirst=True)
            _upgrade(connection, "head")
            return
        if revision in COMPATIBLE:
            table(ExperimentRow).create(connection, checkfirst=True)
            return
    _refuse(revision, engine)


def check_schema(engine: Engine, creatable: bool = False) -> None:
    """Refuse, reading only, a database casstore cannot use as it is. With `creatable`, a
    database that ensure_schema would complete (no casstore tables yet, or only the
    experiments table missing) passes; without, only the schema in force does."""
    with engine.connect() as connection:
        revision, has_tables, has_experiments = _state(connection)
    if revision in COMPATIBLE and (has_experiments or creatable):
        return
    if revision is None and not has_tables:
        if creatable:
            return
        raise InvalidInput("the database holds no casstore tables (not a casstore project?)")
    if revision in COMPATIBLE:
        raise InvalidInput("the database has casstore's tables but no experiments table: "
                           "it holds no experiment (the first persist creates the table)")
    _refuse(revision, engine)


def require_casstore_tables(engine: Engine) -> None:
    """Refuse (InvalidInput), reading only, a database that holds none of casstore's tables:
    not a casstore project (a typo, or a plain MLtraq database), which opening the index
    for writing would make one. SQLAlchemy's errors pass through."""
    with engine.connect() as connection:
        found = _has_casstore_tables(connection)
    if not found:
        raise InvalidInput(f"database {engine.url.render_as_string(hide_password=True)} holds no casstore tables "
                           "(not a casstore project?)")


def _has_casstore_tables(connection: Connection) -> bool:
    inspector = inspect(connection)
    return any(inspector.has_table(t.name) for t in CASSTORE_TABLES)


def _state(connection: Connection) -> tuple[str | None, bool, bool]:
    has_experiments = inspect(connection).has_table(ExperimentRow.__tablename__)
    return current_revision(connection), _has_casstore_tables(connection), has_experiments


def _refuse(revision: str | None, engine: Engine) -> None:
    if revision is None:
        raise SchemaOutdated("the database has casstore tables but no casstore schema version: it was not "
                             "made by casstore, or its version table was dropped; restore it from a backup")
    _refuse_newer(revision)
    raise SchemaOutdated(
        f"the database holds casstore schema {revision}, this casstore needs {HEAD}: "
        f"run `{cli_command(engine.url, 'db', 'upgrade')}` (back the database up first)"
    )


def _refuse_newer(revision: str | None) -> None:
    """SchemaOutdated for a revision this casstore does not know: a newer casstore wrote it."""
    if revision is not None and revision not in known_revisions():
        raise SchemaOutdated(f"the database holds casstore schema {revision}, newer than this casstore "
                             f"knows ({HEAD}): upgrade casstore")


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(resources.files("casstore.migrations")))
    return {rev.revision for rev in script.walk_revisions()}

