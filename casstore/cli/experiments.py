"""The commands on experiments: `ls` (the experiments, or with --refs the references),
`show` (one experiment's fields and archives), `rm` (delete experiments, as
Session.delete_experiment does) and `du` (the bytes each one takes, shared and exclusive;
computed by casstore.cas.usage). Library modules that need SQLAlchemy are imported inside
the commands."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from casstore.cli import output  # output.stdin_is_terminal is looked up when called (tests fake a terminal)
from casstore.cli.app import Refused, example, main
from casstore.cli.ids import resolve_experiment, short_ids
from casstore.cli.output import human_bytes, printable, table
from casstore.cli.project import Project, project_command

if TYPE_CHECKING:
    from casstore.cas.index.queries import ExperimentRecord, Index
    from casstore.cas.usage import ExperimentUsage

NAME_WIDTH = 36  # names longer than this are cut in tables, which fit 100 columns
VALUE_WIDTH = 56  # a field's value is summarised to this many characters (show fits 100 columns)


def _when(epoch: float | None) -> str | None:
    """An epoch as ISO 8601 in UTC, to the second; None stays None."""
    if epoch is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cut(text: str, width: int) -> str:
    text = printable(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def _selected(index: Index, names: tuple[str, ...]) -> list[ExperimentRecord] | None:
    """The experiments `names` name (names, ids or short ids), None for all."""
    return [resolve_experiment(index, n) for n in names] if names else None


@main.command("ls", epilog=example("casstore ls --db sqlite:///runs.db", "casstore ls baseline --json",
                                   "casstore ls --refs"))
@click.argument("names", nargs=-1, metavar="[NAME|ID]...")
@click.option("--refs", is_flag=True, help="One row per reference (experiment, field, blob, size) instead.")
@project_command
def ls_command(project: Project, names: tuple[str, ...], refs: bool) -> None:
    """The experiments (or those NAMEd): name, short id, when first stored, archive
    fields, logical size, and the bytes only it holds (what `rm` and gc would free).

    NAME is an experiment's name, id or an id's first 8 or more hex digits."""
    selected = _selected(project.index, names)
    wanted = None if selected is None else {r.id_experiment for r in selected}
    if refs:
        _ls_refs(project, wanted)
    else:
        _ls_experiments(project, wanted)


def _ls_experiments(project: Project, wanted: set[Any] | None) -> None:
    from casstore.cas.usage import first_stored, project_usage

    found = [u for u in project_usage(project.index, project.store).experiments
             if wanted is None or u.id_experiment in wanted]
    when = first_stored(project.index)
    ids = short_ids([u.id_experiment.hex for u in found], [i.hex for i, _ in project.index.list_experiments()])
    if project.as_json:
        project.emit("ls", {"experiments": [
            {"experiment": str(u.id_experiment), "short_id": ids[u.id_experiment.hex], "name": u.name,
             "when": _when(when.get(u.id_experiment)), "archives": u.archives, "logical_bytes": u.logical_bytes,
             "exclusive_bytes": u.exclusive_bytes} for u in found]})
        return
    if not found:
        click.echo("no experiments")
        return
    click.echo(table(["NAME", "ID", "WHEN", "ARCHIVES", "SIZE", "EXCLUSIVE"],
                     [(_cut(u.name, NAME_WIDTH), ids[u.id_experiment.hex],
                       (_when(when.get(u.id_experiment)) or "-").replace("T", " ")[:16], u.archives,
                       human_bytes(u.logical_bytes), human_bytes(u.exclusive_bytes)) for u in found],
                     right=[3, 4, 5]))


def _ls_refs(project: Project, wanted: set[Any] | None) -> None:
    index = project.index
    rows = [r for r in index.iter_refs() if wanted is None or r.id_experiment in wanted]
    if project.as_json:
        project.emit("ls-refs", {"refs": [{"experiment": str(r.id_experiment), "name": r.name, "field": r.label,
                                           "blob": r.blob_id, "size": r.size} for r in rows]})
        return
    if not rows:
        click.echo("no references")
        return
    blobs = short_ids([r.blob_id for r in rows], index.blob_ids_with_prefix(""))
    exps = short_ids([r.id_experiment.hex for r in rows], [i.hex for i, _ in index.list_experiments()])
    click.echo(table(["NAME", "ID", "FIELD", "BLOB", "SIZE"],
                     [(_cut(r.name, 28), exps[r.id_experiment.hex], _cut(r.label, 28), blobs[r.blob_id],
                       human_bytes(r.size)) for r in rows], right=[4]))


@main.command(epilog=example("casstore show baseline --db sqlite:///runs.db", "casstore show 2e78074b --json"))
@click.argument("experiment", metavar="NAME|ID")
@project_command
def show(project: Project, experiment: str) -> None:
    """One experiment: its fields (values summarised) and each archive field with its blob
    id, size and codec.

    NAME|ID is an experiment's name, id or an id's first 8 or more hex digits."""
    from casstore.cas.usage import first_stored
    from casstore.mltraq import datapak
    from casstore.session import FIELD_DECODERS

    index = project.index
    record = resolve_experiment(index, experiment)
    fields = _summaries(datapak.loads(record.fields, FIELD_DECODERS))
    archives: list[dict[str, Any]] = [{"field": r.label, "blob": r.blob_id, "size": r.size, "stored_size": r.stored_size,
                 "codec": r.codec} for r in index.iter_refs() if r.id_experiment == record.id_experiment]
    when = _when(first_stored(index).get(record.id_experiment))
    if project.as_json:
        project.emit("show", {"experiment": str(record.id_experiment), "name": record.name, "when": when,
                              "fields": fields, "archives": archives})
        return
    lines = [f"experiment  {printable(record.name)}", f"id          {record.id_experiment}",
             f"when        {when or '-'}", "", "fields:"]
    lines += ["  " + line for line in table(["FIELD", "TYPE", "VALUE"], [
        (_cut(f["field"], 20), _cut(f["type"], 14), f["value"]) for f in fields]).splitlines()] if fields else ["  (none)"]
    lines += ["", "archives:"]
    if archives:
        lines += ["  " + line for line in table(
            ["FIELD", "BLOB", "SIZE", "CODEC"],
            [(_cut(a["field"], 24), a["blob"], human_bytes(a["size"]), a["codec"] or "?") for a in archives],
            right=[2]).splitlines()]
    else:
        lines.append("  (none)")
    click.echo("\n".join(lines))


def _summaries(fields: Any, path: str = "") -> list[dict[str, str]]:
    """Each leaf of the fields (nested dicts flattened to dotted names): its type and a
    one-line summary of its value."""
    from casstore.storage.archivestore import ArchiveStore

    if isinstance(fields, dict) and (fields or not path):
        found: list[dict[str, str]] = []
        for key, value in fields.items():
            found += _summaries(value, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(fields, ArchiveStore):
        text = f"arc_dir={fields.params.arc_dir!r} (its blob: under archives)"
    else:
        text = " ".join(repr(fields).split())
    return [{"field": path, "type": type(fields).__name__, "value": _cut(text, VALUE_WIDTH)}]


@main.command(epilog=example("casstore rm rerun --dry-run --db sqlite:///runs.db", "casstore rm rerun --yes",
                             "casstore gc   # frees what the deleted experiments alone held"))
@click.argument("names", nargs=-1, required=True, metavar="NAME|ID...")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking (needed when stdin is not a terminal).")
@project_command
def rm(project: Project, names: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Delete experiments: their rows, their references and their extracted folders, as
    Session.delete_experiment does (in a project MLtraq writes with casstore.mltraq.enable(),
    also the references in the experiment's datastore folder, as MLtraq's delete does).
    Their blobs stay until `casstore gc` finds nothing references them.

    Asks for confirmation on a terminal; --yes skips it. Without a terminal and without
    --yes it refuses (exit 2)."""
    from casstore import stores

    records = list({r.id_experiment: r for r in (resolve_experiment(project.index, n) for n in names)}.values())
    plan: list[dict[str, Any]] = [{"experiment": str(r.id_experiment), "name": r.name,
             "archives": [ref.label for ref in project.index.refs_of(r.id_experiment)],
             "folder": os.path.join(os.path.abspath(stores.archivestore_root()), str(r.id_experiment))}
            for r in records]
    if not dry_run and not yes:
        _confirm(plan)
    if not dry_run:
        _delete(project, records)
    if project.as_json:
        project.emit("rm", {"dry_run": dry_run, "experiments": plan})
        return
    verb = "would delete" if dry_run else "deleted"
    for item in plan:
        click.echo(f"{verb} experiment {printable(item['name'])} ({item['experiment']}), "
                   f"{len(item['archives'])} archive field(s)")
    if not dry_run:
        click.echo(f"blobs stay until gc: `{project.suggest('gc')}` frees those nothing else references")


def _confirm(plan: list[dict[str, Any]]) -> None:
    if not output.stdin_is_terminal():
        raise Refused("refusing to delete without confirmation: stdin is not a terminal; pass --yes "
                      "(or --dry-run to list what would be deleted)")
    names = ", ".join(printable(p["name"]) for p in plan)
    if not click.confirm(f"delete {len(plan)} experiment(s) ({names})?", err=True):
        raise Refused("nothing deleted")


def _delete(project: Project, records: list[ExperimentRecord]) -> None:
    from casstore.cas.live.refs import delete_owned_refs
    from casstore.session import Session

    session = Session(project.db)
    try:
        for record in records:
            session.delete_experiment(session.read_experiment(id_experiment=record.id_experiment))
        delete_owned_refs(project.store.blobs, {r.id_experiment for r in records})  # an MLtraq-form project's archives
    finally:
        session.index.dispose()


@main.command(epilog=example("casstore du --db sqlite:///runs.db", "casstore du baseline --json"))
@click.argument("names", nargs=-1, metavar="[NAME|ID]...")
@project_command
def du(project: Project, names: tuple[str, ...]) -> None:
    """Per experiment, the datastore bytes its archives take: shared (with another
    experiment or a standalone archive) and exclusive (what deleting it would free).

    Chunks are counted once however many blobs use them."""
    from casstore.cas.usage import project_usage

    usage = project_usage(project.index, project.store)
    selected = _selected(project.index, names)
    wanted = None if selected is None else {r.id_experiment for r in selected}
    found = [u for u in usage.experiments if wanted is None or u.id_experiment in wanted]
    if project.as_json:
        project.emit("du", {"datastore": project.store.blobs.url, "stored_bytes": usage.stored_bytes,
                            "experiments": [_du_json(u) for u in found]})
        return
    ids = short_ids([u.id_experiment.hex for u in found], [i.hex for i, _ in project.index.list_experiments()])
    click.echo(table(["NAME", "ID", "ARCHIVES", "STORED", "SHARED", "EXCLUSIVE"],
                     [(_cut(u.name, NAME_WIDTH), ids[u.id_experiment.hex], u.archives, human_bytes(u.stored_bytes),
                       human_bytes(u.shared_bytes), human_bytes(u.exclusive_bytes)) for u in found],
                     right=[2, 3, 4, 5]))
    click.echo(f"project stored {human_bytes(usage.stored_bytes)}; exclusive to one experiment "
               f"{human_bytes(usage.exclusive_bytes)}")


def _du_json(u: ExperimentUsage) -> dict[str, Any]:
    return {"experiment": str(u.id_experiment), "name": u.name, "archives": u.archives,
            "logical_bytes": u.logical_bytes, "stored_bytes": u.stored_bytes, "shared_bytes": u.shared_bytes,
            "exclusive_bytes": u.exclusive_bytes, "missing_blobs": u.missing_blobs}
