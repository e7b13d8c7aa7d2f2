"""`casstore migrate`: an MLtraq project's archives into casstore's content store, in place.

It takes its own --db and --datastore (both required: an MLtraq project records no
datastore). Exit codes as the other commands (docs/cli.md): 0 everything migrated (or
nothing left to do), 1 some references could not be migrated (reported; left as they were;
the rest is done), 2 usage, 3 a database or datastore that cannot be used. Errors are one
line on stderr."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import click

from casstore.cas.progress import Step
from casstore.cli.app import EXIT_FAILED, example, main, one_line_errors, project_options
from casstore.cli.output import emit_json, human_bytes, key_values, printable
from casstore.cli.progress import bar_for
from casstore.errors import DatastoreError, InvalidInput, SchemaOutdated

# The errors that mean "this database or datastore cannot be used"; any other error is a
# failure of the migration (exit 1).
UNUSABLE = (InvalidInput, DatastoreError, SchemaOutdated)
FORMS = ("casstore", "mltraq")
MLTRAQ_NOTICE = ("note: MLtraq reads this project only with casstore's integration from now on: call "
                 "casstore.mltraq.enable() before loading or persisting with MLtraq (docs/mltraq-integration.md)")


@main.command("migrate", epilog=example("casstore migrate --db sqlite:///mltraq.db --datastore mltraq.datastore --dry-run",
                                         "casstore migrate --db sqlite:///mltraq.db --datastore mltraq.datastore"))
@click.option("--db", "db", metavar="URL",
              help="The MLtraq project's database, as an SQLAlchemy URL (sqlite:///mltraq.db). Env: CASSTORE_DB.")
@click.option("--datastore", metavar="PATH_OR_URL",
              help="The datastore folder MLtraq wrote (mltraq.datastore), or its file URL. It becomes the "
                   "project's casstore datastore. Env: CASSTORE_DATASTORE.")
@click.option("--dry-run", is_flag=True, help="Report what would change (references, blobs, bytes saved); "
                                              "change nothing.")
@click.option("--keep-legacy", is_flag=True, help="Keep the legacy TAR files after their content is migrated "
                                                  "and verified (default: delete them).")
@click.option("--form", type=click.Choice(FORMS), default="casstore", show_default=True,
              help="casstore: fields rewritten to casstore references (casstore's sessions and MLtraq with "
                   "the integration read them). mltraq: the database keeps every byte, each legacy TAR is "
                   "replaced by a named reference at its path (the form casstore.mltraq.enable() writes).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (progress goes to stderr).")
def migrate(db: str | None, datastore: str | None, dry_run: bool, keep_legacy: bool, form: str, as_json: bool) -> None:
    """Move every MLtraq ArchiveStore of a project into the content store.

    Archive references in experiment fields and in run tables are rewritten to casstore
    references; identical contents are stored once. Every other value keeps its bytes. A
    legacy TAR is deleted only after its content is verified in the store and the
    experiment is committed. Datastore files nothing references are reported, never
    deleted. Safe to run again: a finished migration is a no-op, an interrupted one
    resumes. Exit 1 if some references could not be migrated (they are listed and left as
    they were). After it, MLtraq reads the project only with casstore.mltraq.enable().
    See docs/migration.md."""
    from casstore.mltraq import migrate as library

    db, datastore, as_json = project_options(db, datastore, as_json)
    if not datastore:
        raise click.UsageError("Missing option '--datastore': migrate needs the folder MLtraq wrote "
                               "(before or after the command, or CASSTORE_DATASTORE).")

    if form == "mltraq" and keep_legacy:
        raise click.UsageError("--keep-legacy does not apply to --form mltraq: the reference takes the TAR's place")
    with one_line_errors(UNUSABLE), _progress(as_json) as progress:
        plan = library.plan(db, datastore)
        if form == "mltraq":
            report = library.execute_in_place(plan, dry_run=dry_run, progress=progress)
        else:
            report = library.execute(plan, dry_run=dry_run, keep_legacy=keep_legacy, progress=progress)
    if as_json:
        emit_json("migrate", report.to_dict())
    else:
        from casstore.cas.index.engine import cli_command

        click.echo(render(report, cli_command(db, "verify", "--deep", datastore=datastore)))
    if not dry_run:
        click.echo(MLTRAQ_NOTICE, err=True)
    if report.exit_code:
        raise click.exceptions.Exit(EXIT_FAILED)


@contextlib.contextmanager
def _progress(as_json: bool) -> Iterator[Callable[[Any], None] | None]:
    """A bar on stderr counting the experiments migrated, on a terminal only."""
    with bar_for(as_json, "migrating") as bar:
        if bar is None:
            yield None
            return

        def show(event: Any) -> None:
            finished = event.done + (1 if event.stage == "cleaned" else 0)
            bar(Step("migrate", event.experiment, finished, event.total, unit="experiments"))

        yield show


def render(report: Any, check_command: str) -> str:
    """The report as text; `check_command`: the verify that checks the migrated project."""
    r = report
    would = "would be " if r.dry_run else ""
    lines = [f"{'dry run: ' if r.dry_run else ''}{r.references_migrated} of {r.references_found} archive "
             f"reference(s) {'would be ' if r.dry_run else ''}migrated, in {r.experiments_migrated} of "
             f"{r.experiments} experiment(s)"]
    rows = [
        ("datastore", r.datastore),
        ("references", f"{r.references_found} legacy, {r.references_migrated} {would}migrated, "
                       f"{len(r.failures)} not migrated, {r.references_already} migrated before"),
        ("before", f"{r.legacy_files} legacy TAR file(s), {r.legacy_bytes} bytes ({human_bytes(r.legacy_bytes)})"),
        ("after", f"{r.blobs} blob(s), {r.blob_bytes} bytes ({human_bytes(r.blob_bytes)}); {r.blobs_new} new, "
                  f"{r.new_bytes} bytes ({human_bytes(r.new_bytes)}) {would}added"),
        ("saved", f"{r.bytes_saved} bytes ({human_bytes(max(r.bytes_saved, 0))})"
                  + (" once the legacy files are deleted" if r.keep_legacy else "")),
        ("legacy files", f"{r.deleted_files} {would}deleted ({human_bytes(r.deleted_bytes)})"
                         + (f", {r.kept_files} kept ({human_bytes(r.kept_bytes)})" if r.kept_files else "")),
    ]
    lines += key_values(rows, indent="  ")
    if r.failures:
        lines.append("not migrated (left as they were):")
        lines += [f"  {f.experiment}  {printable(f.field)}  {printable(f.url)}: {printable(f.reason)}" for f in r.failures]
    if r.standalone:
        lines.append(f"standalone ArchiveStoreIO archives {would}replaced by named references (same URL):")
        lines += [f"  {printable(a.path)}  {a.blob}  {human_bytes(a.legacy_bytes)}" for a in r.standalone]
    if r.orphans:
        lines.append("datastore files nothing references (reported, not deleted):")
        lines += [f"  {printable(o.path)}  {o.kind}  {human_bytes(o.size)}" for o in r.orphans]
    lines += [f"warning: {printable(w)}" for w in r.warnings]
    if not r.dry_run and r.references_migrated:
        lines.append(f"check with: {check_command}")
    return "\n".join(lines)
