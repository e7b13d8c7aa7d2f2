"""`casstore format`: how the datastore stores blobs ("chunked" or "whole", docs/datastore.md
"Formats"), and changing it, converting the blobs stored the other way if asked."""

from __future__ import annotations

from dataclasses import asdict

import click

from casstore.cli.app import EXIT_FAILED, example, main
from casstore.cli.output import key_values, warn
from casstore.cli.project import Project, project_command


@main.command(name="format", epilog=example("casstore format --db sqlite:///runs.db", "casstore format chunked --convert --db sqlite:///runs.db"))
@click.argument("target", required=False, type=click.Choice(["chunked", "whole"]))
@click.option("--convert", is_flag=True, help="Also re-store each blob stored the other way (resumable: run it "
                                              "again after an interruption; each new copy is checked before the "
                                              "old one is deleted).")
@project_command
def format_command(project: Project, target: str | None, convert: bool) -> None:
    """Show how the datastore stores blobs, or set it to TARGET.

    chunked (format 2, the default of a new datastore): blobs of 1 MiB and more are stored as
    a manifest of chunks, so near-identical folders share what they have in common. whole
    (format 1): every blob is one .tar or .tar.zst file, as casstore 0.1.0 writes and reads.
    Setting chunked changes no stored blob unless --convert; setting whole is refused while
    blobs are stored chunked, unless --convert stores them whole first. Everyone sharing the
    datastore needs a casstore that reads its format (0.1.0 reads only whole)."""
    from casstore.cas.format_change import change_format, describe

    if target is None:
        report = describe(project.store)
    else:
        index = project.writable_index()
        bar = None if project.as_json else click.echo
        report = change_format(project.store, target, convert=convert, index=index,
                               progress=(lambda blob_id: bar(f"converted {blob_id}")) if bar and convert else None)
    if project.as_json:
        project.emit("format", {**asdict(report), "datastore": project.store.blobs.url})
    else:
        click.echo("\n".join(key_values([("datastore", project.store.blobs.url), ("format", report.format),
                                         ("whole blobs", report.whole), ("chunked blobs", report.chunked)])))
    for blob_id, why in sorted(report.skipped.items()):
        warn(f"blob {blob_id} not converted: {why}")
    if report.skipped:
        raise SystemExit(EXIT_FAILED)
