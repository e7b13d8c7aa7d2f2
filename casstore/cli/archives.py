"""The commands that read archives: `ls` (the references), `cat` (one blob's TAR on stdout)
and `extract` (an experiment's archives into a folder, as a load would)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, BinaryIO, Iterator, cast

import click

from casstore.cli.app import Failure, Unusable, main
from casstore.cli.output import human_bytes, table
from casstore.cli.project import Project, project_command
from casstore.errors import CorruptBlob, LoadError

CHUNK = 1 << 20


@main.command("ls")
@project_command
def ls_command(project: Project) -> None:
    """One row per reference: experiment, field, blob and its uncompressed size."""
    refs = list(project.index.iter_refs())
    items: list[dict[str, Any]] = [{"experiment": str(r.id_experiment), "name": r.name, "field": r.label,
              "blob": r.blob_id, "size": r.size} for r in refs]
    if project.as_json:
        project.emit(items)
        return
    if not items:
        click.echo("no references")
        return
    click.echo(table(["NAME", "EXPERIMENT", "FIELD", "BLOB", "SIZE"],
                     [(i["name"], i["experiment"], i["field"], i["blob"], human_bytes(i["size"])) for i in items],
                     right=[4]))


@main.command()
@click.argument("experiment")
@click.argument("field", required=False)
@click.option("--target", type=click.Path(file_okay=False), metavar="DIR",
              help="Extract here instead of <archivestore>/<experiment id> (option archivestore.url).")
@project_command
def extract(project: Project, experiment: str, field: str | None, target: str | None) -> None:
    """Extract an experiment's archives (or only FIELD) as a load would.

    EXPERIMENT is a name or an id. Files already in the target are overwritten, others left.
    If some fields fail, the others are still extracted and the exit code is 1."""
    from casstore import stores
    from casstore.experiment import archive_fields
    from casstore.session import Session, find_experiment

    index = project.index
    record = find_experiment(index, experiment)
    session = Session(project.db, datastore=project.store.blobs.url, read_only=True)
    try:
        exp = session.read_experiment(id_experiment=record.id_experiment)
        available = [p for p, _ in archive_fields(exp.fields)]
        available += [r.label for r in index.refs_of(record.id_experiment) if r.id_run]
        if field is not None and field not in available:
            raise Unusable(f"experiment {record.name!r} has no archive field {field!r} "
                           f"(archive fields: {', '.join(available) or 'none'})")
        target = os.path.abspath(target or os.path.join(stores.archivestore_root(), str(record.id_experiment)))
        wanted = [field] if field is not None else available
        failed: list[dict[str, str]] = []
        try:
            done = session.extract_fields(exp, target, only=field)
        except LoadError as exc:
            failed = [{"field": f.field, "blob": f.blob, "error": str(f.error)} for f in exc.failures]
            bad = {f["field"] for f in failed}
            done = [p for p in wanted if p not in bad]
            error: LoadError | None = exc
        else:
            error = None
    finally:
        session.index.dispose()
    if project.as_json:
        project.emit({"experiment": str(record.id_experiment), "name": record.name, "target": target,
                      "fields": done, "failed": failed})
    elif done:
        click.echo(f"extracted {', '.join(done)} of experiment {record.name} ({record.id_experiment}) into {target}")
    elif not failed:
        click.echo(f"experiment {record.name} ({record.id_experiment}) has no archive fields")
    if error is not None:
        raise Failure(str(error))


ZSTD_OPTION = click.option("--zstd", "zstd_level", type=click.IntRange(1, 22), default=None, is_flag=False,
                           flag_value=3, help="One zstd frame around the TAR (`tar --zstd` reads it); "
                                              "level 3 unless given (--zstd=N).")


@contextlib.contextmanager
def _zstd_wrapped(out: BinaryIO, level: int | None) -> Iterator[BinaryIO]:
    """`out`, or a zstd stream writer into it that ends its frame on exit."""
    if level is None:
        yield out
        return
    import zstandard

    with zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False) as writer:
        yield cast(BinaryIO, writer)


@main.command()
@click.argument("blob")
@ZSTD_OPTION
@project_command
def cat(project: Project, blob: str, zstd_level: int | None) -> None:
    """Write blob BLOB's canonical TAR, decompressed, on stdout (casstore cat ID | tar -t).

    The content is hashed while it is written; if it does not match BLOB the exit code is 1
    (the bytes already written cannot be taken back). --json has no effect."""
    from casstore.cas.digest import parse_id

    parse_id(blob)
    facts = project.index.facts_hint(blob)
    sys.stdout.flush()
    out = sys.stdout.buffer  # binary-safe (click.get_binary_stream is deprecated in click 8.5)
    try:
        with project.store.open_tar(blob, facts.size if facts else None, facts) as reader, \
                _zstd_wrapped(out, zstd_level) as sink:
            while chunk := reader.read(CHUNK):
                sink.write(chunk)
            reader.verify()
        out.flush()
    except CorruptBlob as exc:
        raise Failure(f"{exc}; the bytes already written to stdout are damaged") from exc
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): say so once, without a traceback at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise Failure("stdout was closed before the whole blob was written; it was not verified")


@main.command()
@click.argument("blob")
@click.argument("file", type=click.Path(dir_okay=False))
@ZSTD_OPTION
@project_command
def export(project: Project, blob: str, file: str, zstd_level: int | None) -> None:
    """Write blob BLOB's canonical TAR to the new file FILE (tar -xf FILE reads it).

    The blob is hashed and its headers parsed as it is written; FILE appears only once all of
    it checked out (exit 1 and no FILE otherwise). An existing FILE is never overwritten."""
    from casstore.cas.digest import parse_id

    parse_id(blob)
    facts = project.index.facts_hint(blob)
    try:
        written = project.store.export(blob, file, size=facts.size if facts else None, recorded=facts,
                                       zstd_level=zstd_level)
    except CorruptBlob as exc:
        raise Failure(f"{exc}; nothing was written to {file}") from exc
    codec = "zstd" if zstd_level is not None else "none"
    if project.as_json:
        project.emit({"blob": blob, "path": os.path.abspath(file), "bytes": written, "codec": codec})
    else:
        click.echo(f"exported blob {blob} to {file} ({human_bytes(written)}{', zstd' if zstd_level else ''})")
