"""`casstore db current` and `casstore db upgrade`: the schema revision of casstore's tables
in a project database (Alembic revisions).

These commands open the engine directly, not the index: the index refuses an outdated
schema, and these commands are how to fix one."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import click

from casstore.cli.app import Unusable, common_options, example, main, one_line_errors, project_options
from casstore.cli.output import emit_json
from casstore.cli.project import open_engine

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


@main.group(epilog=example("casstore db current --db sqlite:///runs.db", "casstore db upgrade --db sqlite:///runs.db"))
def db() -> None:
    """Schema of casstore's tables in a project database (Alembic revisions)."""


def db_command(read_only: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--db/--datastore/--json for the `db` commands; the command gets the engine (read-only
    unless `read_only` is False) and whether --json was given."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(db: str | None, datastore: str | None, as_json: bool, **kwargs: Any) -> Any:
            db, datastore, as_json = project_options(db, datastore, as_json)
            engine = open_engine(db, read_only=read_only)
            try:
                with one_line_errors():
                    return f(engine, as_json, **kwargs)
            finally:
                engine.dispose()

        return common_options(wrapper)

    return decorate


def _revision(engine: Engine) -> str | None:
    """The database's casstore schema revision; exit 3 if the database cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from casstore.cas.index.engine import safe_url
    from casstore.cas.index.schema import current_revision

    try:
        with engine.connect() as conn:
            return current_revision(conn)
    except SQLAlchemyError as exc:
        raise Unusable(f"cannot open database {safe_url(str(engine.url))}: {getattr(exc, 'orig', exc)}") from exc


@db.command("current", epilog=example("casstore db current --db sqlite:///runs.db --json"))
@db_command(read_only=True)
def db_current(engine: Engine, as_json: bool) -> None:
    """The schema revision of casstore's tables in the database, and the one this casstore needs.

    --datastore is accepted and not used."""
    from casstore.cas.index.engine import cli_command
    from casstore.cas.index.schema import HEAD

    current = _revision(engine)
    if as_json:
        emit_json("db-current", {"current": current, "head": HEAD, "up_to_date": current == HEAD})
        return
    state = "up to date" if current == HEAD else f"outdated: run `{cli_command(engine.url, 'db', 'upgrade')}`"
    click.echo(f"current  {current or 'none'}\nhead     {HEAD}\n{state}")


@db.command("upgrade", epilog=example("cp runs.db runs.db.bak && casstore db upgrade --db sqlite:///runs.db"))
@db_command(read_only=False)
def db_upgrade(engine: Engine, as_json: bool) -> None:
    """Bring casstore's tables to the revision this casstore needs (back the database up first).

    --datastore is accepted and not used."""
    from casstore.cas.index.schema import HEAD, upgrade

    before = _revision(engine)
    after = before if before == HEAD else upgrade(engine)
    if as_json:
        emit_json("db-upgrade", {"before": before, "after": after, "head": HEAD})
        return
    if before == after:
        click.echo(f"already at {after}")
    else:
        click.echo(f"upgraded {before or 'none'} -> {after}")
