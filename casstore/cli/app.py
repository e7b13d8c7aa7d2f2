"""The `casstore` group, the options every command takes, and exit codes.

The library does the work and never prints; the CLI turns its results into text tables or
JSON, progress bars and exit codes (docs/cli.md):

    0  fine
    1  the store is damaged (verify), or some items failed (the others were done)
    2  usage error (click's own), or `rm` without the confirmation it needs
    3  an argument that cannot be used: a database or datastore that does not exist or
       cannot be opened, an experiment or blob that is not there, gc refusing

Library errors become one line on stderr, `casstore: error: ...`, never a traceback
(`Failure`, `failure`, `one_line_errors`).

This module registers no command: each command module registers its own on `main`, and
casstore/cli/__init__.py imports them all (so the group is complete whenever the package is
imported). Installed as the console script `casstore = "casstore.cli:main"`; the top-level
cli.py of a checkout only launches it (`python cli.py ...`)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import click

from casstore import __version__
from casstore.errors import (BlobNotFound, CasStoreError, DatastoreError, ExperimentNotFound, InvalidInput,
                             SchemaOutdated)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNUSABLE = 3

# Errors that mean "this argument cannot be used"; every other library error means that
# the work failed (damage, or some items failed).
UNUSABLE: tuple[type[CasStoreError], ...] = (InvalidInput, ExperimentNotFound, BlobNotFound, DatastoreError,
                                             SchemaOutdated)


class Failure(click.ClickException):
    """One line on stderr, `casstore: error: ...`, and exit code 1: the work failed."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()) or "failed")

    def show(self, file: Any = None) -> None:
        click.echo(f"casstore: error: {self.format_message()}", err=True)


class Unusable(Failure):
    """The same line, and exit code 3: an argument that cannot be used."""

    exit_code = EXIT_UNUSABLE


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc` is an SQLAlchemyError, without importing SQLAlchemy (the CLI imports it
    only for a command that opens a database): only an imported SQLAlchemy raises one."""
    module = sys.modules.get("sqlalchemy.exc")
    return module is not None and isinstance(exc, module.SQLAlchemyError)


def failure(exc: BaseException, unusable: tuple[type[CasStoreError], ...] = UNUSABLE) -> Failure:
    """A library error as one line: `Unusable` if it is one of `unusable`, else `Failure`."""
    text = str(exc) or exc.__class__.__name__
    if is_database_error(exc):
        text = f"database error: {getattr(exc, 'orig', None) or exc.__class__.__name__}"
    elif isinstance(exc, OSError) and not isinstance(exc, CasStoreError) and exc.filename:
        text = f"{exc.strerror or exc}: {exc.filename}"
    return Unusable(text) if isinstance(exc, unusable) else Failure(text)


@contextlib.contextmanager
def one_line_errors(unusable: tuple[type[CasStoreError], ...] = UNUSABLE) -> Iterator[None]:
    """Library errors become one line on stderr and an exit code; click's own pass through."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (CasStoreError, OSError) as exc:
        raise failure(exc, unusable) from exc
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise failure(exc, unusable) from exc


class Refused(Failure):
    """The same line, and exit code 2: a command that needs a confirmation it cannot get."""

    exit_code = EXIT_USAGE


MISSING_DB = ("Missing option '--db': give --db URL (before or after the command) or set the environment "
              "variable CASSTORE_DB.")


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--db, --datastore and --json, which every command takes alike, after its name or
    before it (on the group: `project_options` merges both)."""
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON document on stdout (logs, warnings and progress go to stderr).")(f)
    f = click.option("--datastore", metavar="PATH_OR_URL",
                     help="The datastore (default: the one the database records, else option "
                          "datastore.url). Env: CASSTORE_DATASTORE.")(f)
    f = click.option("--db", "db", metavar="URL",
                     help="The project's database, as an SQLAlchemy URL (sqlite:///runs.db). Env: CASSTORE_DB.")(f)
    return f


def project_options(db: str | None, datastore: str | None, as_json: bool,
                    require_db: bool = True) -> tuple[str, str | None, bool]:
    """--db, --datastore and --json as given after the command, else before it (or in
    CASSTORE_DB / CASSTORE_DATASTORE, which the group reads); a missing --db is a usage error."""
    given = click.get_current_context().find_root().params
    db = db or given.get("db")
    if not db and require_db:
        raise click.UsageError(MISSING_DB)
    return db or "", datastore or given.get("datastore"), as_json or bool(given.get("as_json"))


def example(*lines: str) -> str:
    """A command's help epilog: its examples, printed as written."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("casstore --db sqlite:///runs.db ls", "casstore ls --db sqlite:///runs.db --json"))
@click.version_option(__version__, "--version", prog_name="casstore")
@click.option("--db", "db", metavar="URL", envvar="CASSTORE_DB",
              help="The project's database, for every command (also accepted after the command). Env: CASSTORE_DB.")
@click.option("--datastore", metavar="PATH_OR_URL", envvar="CASSTORE_DATASTORE",
              help="The datastore, for every command (also accepted after it). Env: CASSTORE_DATASTORE.")
@click.option("--json", "as_json", is_flag=True, help="JSON output, for every command (also accepted after it).")
def main(db: str | None, datastore: str | None, as_json: bool) -> None:
    """casstore: a content-addressed archive store with a dedup index.

    Every command takes --db URL (env CASSTORE_DB), --datastore PATH_OR_URL (env
    CASSTORE_DATASTORE) and --json, before or after its name. Exit codes: 0 fine, 1 damage
    found or some items failed, 2 usage error, 3 an argument that cannot be used. See
    docs/cli.md."""
