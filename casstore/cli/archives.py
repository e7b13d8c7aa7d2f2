"""The commands that read archives: `cat` (one blob's TAR on stdout), `extract` (an
experiment's archives into a folder, as a load would, or one blob's) and `export` (one
blob's TAR into a file). A blob is named by its id or a short id (ids.py), or as an
experiment and one of its archive fields."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, BinaryIO, Iterator, cast

import click

from casstore.cli.app import Failure, Unusable, example, main
from casstore.cli.ids import is_blob_id, resolve_blob, resolve_experiment
from casstore.cas.progress import Meter, meter
from casstore.cli.output import human_bytes
from casstore.cli.progress import bar_for
from casstore.cli.project import Project, project_command
from casstore.errors import CorruptBlob, LoadError

CHUNK = 1 << 20


@main.command(epilog=example("casstore extract baseline --db sqlite:///runs.db", "casstore extract rerun data --target out",
                             "casstore extract xxh128:08f8e669 --target out"))
@click.argument("experiment", metavar="EXPERIMENT|BLOB")
@click.argument("field", required=False)
@click.option("--target", type=click.Path(file_okay=False), metavar="DIR",
              help="Extract here instead of <archivestore>/<experiment id> (option archivestore.url).")
@project_command
def extract(project: Project, experiment: str, field: str | None, target: str | None) -> None:
    """Extract an experiment's archives (or only FIELD) as a load would.

    EXPERIMENT is a name, an id or an id's first 8 or more hex digits. BLOB (a blob id, or
    'xxh128:' and its first 8 or more hex digits) extracts that blob into --target. Files
    already in the target are overwritten, others left. If some fields fail, the others are
    still extracted and the exit code is 1."""
    from casstore import stores
    from casstore.experiment import archive_fields
    from casstore.session import Session

    index = project.index
    if is_blob_id(experiment) and field is None:
        _extract_blob(project, resolve_blob(index, experiment), target)
        return
    record = resolve_experiment(index, experiment)
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
            with bar_for(project.as_json, "extract") as bar:
                done = session.extract_fields(exp, target, only=field, progress=bar)
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
        project.emit("extract", {"experiment": str(record.id_experiment), "name": record.name, "blob": None,
                                 "target": target, "fields": done, "failed": failed})
    elif done:
        click.echo(f"extracted {', '.join(done)} of experiment {record.name} ({record.id_experiment}) into {target}")
    elif not failed:
        click.echo(f"experiment {record.name} ({record.id_experiment}) has no archive fields")
    if error is not None:
        raise Failure(str(error))


def _extract_blob(project: Project, blob: str, target: str | None) -> None:
    """One blob's archive into `target` (required: a blob has no experiment folder)."""
    if target is None:
        raise click.UsageError("give --target DIR to extract a blob (it belongs to no experiment folder)")
    target = os.path.abspath(target)
    facts = project.index.facts_hint(blob)
    size = facts.size if facts else None
    with _blob_bar(project, "extract", blob, size) as step:
        project.store.extract(blob, target, size=size, recorded=facts, progress=step)
    if project.as_json:
        project.emit("extract", {"experiment": None, "name": None, "blob": blob, "target": target, "fields": [],
                                 "failed": []})
    else:
        click.echo(f"extracted blob {blob} into {target}")


@contextlib.contextmanager
def _blob_bar(project: Project, label: str, blob: str, size: int | None) -> Iterator[Meter | None]:
    """A progress meter over one blob's `size` bytes, drawn as a bar on a terminal (else None)."""
    with bar_for(project.as_json, label) as bar:
        step = meter(bar, label, blob.partition(":")[2][:8], size)
        yield step
        if step is not None:
            step.finish()


def _blob_of(project: Project, blob_or_experiment: str, field: str | None) -> str:
    """The blob id named by BLOB (an id or a short id), or by EXPERIMENT FIELD."""
    if field is None:
        return resolve_blob(project.index, blob_or_experiment)
    record = resolve_experiment(project.index, blob_or_experiment)
    refs = {r.label: r.blob_id for r in project.index.refs_of(record.id_experiment)}
    if field not in refs:
        raise Unusable(f"experiment {record.name!r} has no archive field {field!r} "
                       f"(archive fields: {', '.join(sorted(refs)) or 'none'})")
    return refs[field]


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


@main.command(epilog=example("casstore cat baseline data --db sqlite:///runs.db | tar -t",
                             "casstore cat 08f8e669 | tar -t", "casstore cat xxh128:08f8e669fd315903317fd140423438f8 --zstd > data.tar.zst"))
@click.argument("blob", metavar="BLOB|EXPERIMENT")
@click.argument("field", required=False)
@ZSTD_OPTION
@project_command
def cat(project: Project, blob: str, field: str | None, zstd_level: int | None) -> None:
    """Write a blob's canonical TAR, decompressed, on stdout (casstore cat ID | tar -t).

    The blob is BLOB (its id, or its first 8 or more hex digits), or EXPERIMENT FIELD (an
    experiment's name or id and one of its archive fields, as `casstore ls --refs` names
    them). The content is hashed while it is written; if it does not match the id the exit
    code is 1 (the bytes already written cannot be taken back). --json has no effect."""
    blob = _blob_of(project, blob, field)
    facts = project.index.facts_hint(blob)
    sys.stdout.flush()
    out = sys.stdout.buffer  # binary-safe (click.get_binary_stream is deprecated in click 8.5)
    size = facts.size if facts else None
    try:
        with _blob_bar(project, "cat", blob, size) as step, project.store.open_tar(blob, size, facts, step) as reader, \
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


@main.command(epilog=example("casstore export 08f8e669 baseline.tar --db sqlite:///runs.db",
                             "casstore export 08f8e669 baseline.tar.zst --zstd"))
@click.argument("blob")
@click.argument("file", type=click.Path(dir_okay=False))
@ZSTD_OPTION
@project_command
def export(project: Project, blob: str, file: str, zstd_level: int | None) -> None:
    """Write blob BLOB's canonical TAR to the new file FILE (tar -xf FILE reads it).

    The blob is hashed and its headers parsed as it is written; FILE appears only once all of
    it checked out (exit 1 and no FILE otherwise). An existing FILE is never overwritten."""
    blob = resolve_blob(project.index, blob)
    facts = project.index.facts_hint(blob)
    size = facts.size if facts else None
    try:
        with _blob_bar(project, "export", blob, size) as step:
            written = project.store.export(blob, file, size=size, recorded=facts, zstd_level=zstd_level,
                                           progress=step)
    except CorruptBlob as exc:
        raise Failure(f"{exc}; nothing was written to {file}") from exc
    codec = "zstd" if zstd_level is not None else "none"
    if project.as_json:
        project.emit("export", {"blob": blob, "path": os.path.abspath(file), "bytes": written, "codec": codec})
    else:
        click.echo(f"exported blob {blob} to {file} ({human_bytes(written)}{', zstd' if zstd_level else ''})")
