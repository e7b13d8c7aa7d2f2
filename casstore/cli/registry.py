"""`casstore registry`: the databases registered in the datastore (which gc and verify read,
docs/gc.md), forgetting an entry, and the user's own list of confirmed server databases
(--trust, --revoke, --trusted; docs/teams.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from casstore.cli.app import Unusable, example, main
from casstore.cli.output import table, warn
from casstore.cli.project import Project, project_command

if TYPE_CHECKING:
    from casstore.cas.live.registry import BrokenEntry, Entry


@main.command(epilog=example("casstore registry --db sqlite:///runs.db", "casstore registry --forget 0f6b1c2e9a7d4e3f8b5a6c7d8e9f0a1b --db sqlite:///runs.db"))
@click.option("--forget", metavar="KEY_OR_URL", help="Drop a registry entry, named by its key (as gc's refusal names "
                                                      "it) or its URL (e.g. a project deleted for good), so that gc "
                                                      "goes on without it.")
@click.option("--trust", metavar="URL_OR_KEY", help="Confirm a server database (its URL, or the key of its entry), "
                                                     "so that gc and verify connect to it. Kept in your config, "
                                                     "not in the datastore.")
@click.option("--revoke", metavar="URL", help="Withdraw the confirmation of a server database.")
@click.option("--trusted", is_flag=True, help="List the server databases you confirmed.")
@project_command
def registry(project: Project, forget: str | None, trust: str | None, revoke: str | None, trusted: bool) -> None:
    """The databases registered in the datastore: gc and verify read every one of them.

    SQLite files are opened as files; a server database only once you confirmed it with
    --trust (docs/teams.md). An entry that cannot be read, or a database that cannot be
    reached or is not confirmed, makes gc and verify refuse, naming the entry."""
    if sum(x is not None for x in (forget, trust, revoke)) + trusted > 1:
        raise click.UsageError("give at most one of --forget, --trust, --revoke, --trusted")
    if trust is not None or revoke is not None or trusted:
        _registry_trust(project, trust, revoke)
        return
    from casstore.cas.live.registry import forget as forget_entry
    from casstore.cas.live.registry import entry_key, read_registry, registry_url

    blobs = project.store.blobs
    mine = registry_url(project.index.engine.url)
    forgotten: list[str] = []
    if forget is not None:
        forgotten = forget_entry(blobs, forget)
        if not forgotten:
            raise Unusable(f"{forget} is neither the key nor the URL of an entry in the registry of datastore "
                           f"{blobs.url} (`{project.suggest('registry')}` lists them)")
        if mine is not None and entry_key(mine) in forgotten:
            warn("this database was forgotten; its next persist registers it again, and until then gc run "
                 "from another project sharing the datastore does not see its references")
    entries, broken = read_registry(blobs)
    _print_registry(project, entries, broken, mine, forgotten)


@main.command(epilog=example("casstore relocate --datastore ../moved.datastore --db sqlite:///runs.db"))
@project_command
def relocate(project: Project) -> None:
    """Re-point a moved project at its datastore and register it there.

    A project whose database and datastore moved together, in one folder, needs no command:
    the database records the datastore relative to itself. Run this on the database that
    moved when its datastore is elsewhere now (give it with --datastore), or when gc refuses
    because a registry entry names the database where it was before it moved to another
    disk, machine or backup: the database records the datastore, registers itself there,
    and the entries of this project whose database file is gone are dropped. The datastore
    must hold every blob the project references, else nothing changes.

    \b
    Example:
      casstore relocate --db sqlite:////new/place/runs.db --datastore /new/place/datastore
    """
    from casstore.cas.live.moves import relocate as relocate_project

    index = project.writable_index()
    settled = relocate_project(index, project.store.blobs)
    url = project.store.blobs.url
    if project.as_json:
        project.emit("relocate", {"datastore": url, "registered": settled.registered, "dropped": list(settled.dropped)})
        return
    click.echo(f"this database uses datastore {url}, registered there as {settled.registered}")
    for key in settled.dropped:
        click.echo(f"dropped registry entry {key}, which named this database where it was before")


def _print_registry(project: Project, entries: list[Entry], broken: list[BrokenEntry], mine: str | None,
                    forgotten: list[str]) -> None:
    from casstore.cas.live.trust import entry_statuses

    rows = [{"key": s.entry.key, "url": s.entry.url, "project": s.entry.project, "this": s.entry.url == mine,
             "exists": s.exists, "trusted": s.trusted} for s in entry_statuses(entries, mine)]
    bad = [{"key": b.key, "reason": b.reason} for b in broken]
    url = project.store.blobs.url
    if project.as_json:
        project.emit("registry", {"datastore": url, "databases": rows, "unreadable": bad, "forgotten": forgotten})
        return
    for key in forgotten:
        click.echo(f"forgot registry entry {key}")
    if not rows and not bad:
        click.echo(f"no databases registered in {url}")
        return
    click.echo(table(["KEY", "DATABASE", "NOTE"],
                     [(r["key"], r["url"], _registry_note(r)) for r in rows]
                     + [(b["key"], "?", f"unreadable: {b['reason']} (gc refuses until it is forgotten or repaired)")
                        for b in bad]))
    for row in rows:
        if row["trusted"] is False and row["exists"] is not False and not row["this"]:
            click.echo(f"to confirm {row['url']}: {project.suggest('registry', '--trust', str(row['key']))}")


def _registry_note(row: dict[str, Any]) -> str:
    if row["this"]:
        return "this database"
    if row["exists"] is False:
        return "missing (gc refuses until it is back or forgotten)"
    if row["trusted"] is False:
        return "not confirmed (gc refuses until it is: see below)"
    return ""


def _registry_trust(project: Project, trust: str | None, revoke: str | None) -> None:
    """--trust, --revoke and --trusted: the user's own list, outside the datastore."""
    from casstore.cas.index.engine import safe_url
    from casstore.cas.live import trust as confirmations

    done: dict[str, Any] = {}
    if trust is not None:
        url = confirmations.database_url(trust, lambda: project.store.blobs)
        done = {"trusted": confirmations.trust(url)}
    elif revoke is not None:
        if not confirmations.revoke(revoke):
            raise Unusable(f"{safe_url(revoke)} is not a confirmed database ({confirmations.trust_file()})")
        done = {"revoked": confirmations.server_url(revoke)}
    confirmed = sorted(confirmations.trusted_urls())
    if project.as_json:
        project.emit("registry-trust", {**done, "file": confirmations.trust_file(), "confirmed": confirmed})
        return
    for verb, url in done.items():
        click.echo(f"{'confirmed' if verb == 'trusted' else 'revoked'} {url} (in {confirmations.trust_file()})")
    if not done:
        click.echo("\n".join(confirmed) if confirmed else f"no confirmed databases ({confirmations.trust_file()})")
