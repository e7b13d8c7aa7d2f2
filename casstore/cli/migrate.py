"""`casstore migrate`: an MLtraq project's archives into casstore's content store, in place.

Registered in the `casstore` group by casstore/cli.py (`main.add_command(migrate)`); it
imports nothing from there, so either module can be imported first. Exit codes as the
other commands (docs/cli.md): 0 everything migrated (or nothing left to do), 1 some
references could not be migrated (reported; left as they were; the rest is done), 2 usage,
3 a database or datastore that cannot be used. Errors are one line on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from casstore.errors import CasStoreError, DatastoreError, InvalidInput, SchemaOutdated

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 3


class _Failure(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(" ".join(str(message).split()) or "failed")
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"casstore: error: {self.format_message()}", err=True)


@click.command("migrate")
@click.option("--db", "db", metavar="URL", envvar="CASSTORE_DB", required=True,
              help="The MLtraq project's database, as an SQLAlchemy URL (sqlite:///mltraq.db). Env: CASSTORE_DB.")
@click.option("--datastore", metavar="PATH_OR_URL", envvar="CASSTORE_DATASTORE", required=True,
              help="The datastore folder MLtraq wrote (mltraq.datastore), or its file URL. It becomes the "
                   "project's casstore datastore. Env: CASSTORE_DATASTORE.")
@click.option("--dry-run", is_flag=True, help="Report what would change (references, blobs, bytes saved); "
                                              "change nothing.")
@click.option("--keep-legacy", is_flag=True, help="Keep the legacy TAR files after their content is migrated "
                                                  "and verified (default: delete them).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (progress goes to stderr).")
def migrate(db: str, datastore: str, dry_run: bool, keep_legacy: bool, as_json: bool) -> None:
    """Move every MLtraq ArchiveStore of a project into the content store.

    Archive references in experiment fields and in run tables are rewritten to casstore
    references; identical contents are stored once. Every other value keeps its bytes. A
    legacy TAR is deleted only after its content is verified in the store and the
    experiment is committed. Datastore files nothing references are reported, never
    deleted. Safe to run again: a finished migration is a no-op, an interrupted one
    resumes. Exit 1 if some references could not be migrated (they are listed and left as
    they were). See docs/migration.md."""
    from casstore.mltraq import migrate as library

    try:
        plan = library.plan(db, datastore)
        report = library.execute(plan, dry_run=dry_run, keep_legacy=keep_legacy, progress=_progress(as_json))
    except (InvalidInput, DatastoreError, SchemaOutdated) as exc:
        raise _Failure(str(exc), EXIT_UNUSABLE) from exc
    except SQLAlchemyError as exc:
        raise _Failure(f"database error: {getattr(exc, 'orig', None) or exc.__class__.__name__}", EXIT_FAILED) from exc
    except CasStoreError as exc:
        raise _Failure(str(exc), EXIT_FAILED) from exc
    except OSError as exc:
        text = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        raise _Failure(text, EXIT_FAILED) from exc
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report))
    if report.exit_code:
        raise click.exceptions.Exit(EXIT_FAILED)


def _progress(as_json: bool):
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal:
        return None

    def show(event: Any) -> None:
        if event.stage == "cleaned":
            click.echo(f"[{event.done + 1}/{event.total}] {event.experiment}", err=True)

    return show


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def _text(value: str) -> str:
    """Printable whatever the bytes of a name (non-UTF-8 names come as surrogates)."""
    return os.fsencode(value).decode("utf-8", "backslashreplace")


def render(report: Any) -> str:
    """The report as text."""
    r = report
    would = "would be " if r.dry_run else ""
    lines = [f"{'dry run: ' if r.dry_run else ''}{r.references_migrated} of {r.references_found} archive "
             f"reference(s) {'would be ' if r.dry_run else ''}migrated, in {r.experiments_migrated} of "
             f"{r.experiments} experiment(s)"]
    rows = [
        ("datastore", r.datastore),
        ("references", f"{r.references_found} legacy, {r.references_migrated} {would}migrated, "
                       f"{len(r.failures)} not migrated, {r.references_already} migrated before"),
        ("before", f"{r.legacy_files} legacy TAR file(s), {r.legacy_bytes} bytes ({_bytes(r.legacy_bytes)})"),
        ("after", f"{r.blobs} blob(s), {r.blob_bytes} bytes ({_bytes(r.blob_bytes)}); {r.blobs_new} new, "
                  f"{r.new_bytes} bytes ({_bytes(r.new_bytes)}) {would}added"),
        ("saved", f"{r.bytes_saved} bytes ({_bytes(max(r.bytes_saved, 0))})"
                  + (" once the legacy files are deleted" if r.keep_legacy else "")),
        ("legacy files", f"{r.deleted_files} {would}deleted ({_bytes(r.deleted_bytes)})"
                         + (f", {r.kept_files} kept ({_bytes(r.kept_bytes)})" if r.kept_files else "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if r.failures:
        lines.append("not migrated (left as they were):")
        lines += [f"  {f.experiment}  {_text(f.field)}  {_text(f.url)}: {_text(f.reason)}" for f in r.failures]
    if r.standalone:
        lines.append(f"standalone ArchiveStoreIO archives {would}replaced by named references (same URL):")
        lines += [f"  {_text(a.path)}  {a.blob}  {_bytes(a.legacy_bytes)}" for a in r.standalone]
    if r.orphans:
        lines.append("datastore files nothing references (reported, not deleted):")
        lines += [f"  {_text(o.path)}  {o.kind}  {_bytes(o.size)}" for o in r.orphans]
    lines += [f"warning: {_text(w)}" for w in r.warnings]
    if not r.dry_run and r.references_migrated:
        lines.append("check with: casstore verify --deep --db URL")
    return "\n".join(lines)
