"""The `casstore` command: click commands over the library, nothing else.

The library does the work and never prints; this module turns its results into text tables
or JSON, progress bars and exit codes (docs/cli.md):

    0  fine
    1  the store is damaged (verify), or some items failed (the others were done)
    2  usage error (click's own)
    3  an argument that cannot be used: a database or datastore that does not exist or
       cannot be opened, an experiment or blob that is not there, gc refusing

Library errors become one line on stderr, `casstore: error: ...`, never a traceback.

Installed as the console script `casstore = "casstore.cli:main"`; the top-level cli.py of a
checkout only launches this (`python cli.py ...`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import click
from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from casstore import __version__
from casstore.cas.index.engine import safe_url
from casstore.errors import (BlobNotFound, CasStoreError, CorruptBlob, DatastoreError, ExperimentNotFound,
                             InvalidInput, LoadError, SchemaOutdated)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNUSABLE = 3

CHUNK = 1 << 20

# Errors that mean "this argument cannot be used"; every other library error means that
# the work failed (damage, or some items failed).
_UNUSABLE = (InvalidInput, ExperimentNotFound, BlobNotFound, DatastoreError, SchemaOutdated)


class Failure(click.ClickException):
    """One line on stderr, `casstore: error: ...`, and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(" ".join(str(message).split()) or "failed")
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"casstore: error: {self.format_message()}", err=True)


def _failure(exc: BaseException) -> Failure:
    code = EXIT_UNUSABLE if isinstance(exc, _UNUSABLE) else EXIT_FAILED
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, SQLAlchemyError):
        text = f"database error: {getattr(exc, 'orig', None) or exc.__class__.__name__}"
    elif isinstance(exc, OSError) and not isinstance(exc, CasStoreError) and exc.filename:
        text = f"{exc.strerror or exc}: {exc.filename}"
    return Failure(text, code)


def _warn(message: str) -> None:
    click.echo(f"casstore: warning: {message}", err=True)


# -- opening the database and the datastore ------------------------------------------------

def _open_engine(url: str, read_only: bool = True) -> Engine:
    """An engine on an existing database: a SQLite file that does not exist is refused
    rather than created (a typo in --db must not start an empty project). Read-only unless
    the command writes to the database: a file it refuses is left byte for byte as it was."""
    from casstore.cas.index.engine import make_engine

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise Failure(f"not a database URL: {url!r} (expected e.g. sqlite:///runs.db)", EXIT_UNUSABLE) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or str(parsed.query.get("mode", "")) == "memory":
            raise Failure(f"{url} is an in-memory database: it holds nothing another process can see",
                          EXIT_UNUSABLE)
        if not database.startswith("file:") and not os.path.isfile(database):
            raise Failure(f"database {os.path.abspath(database)} does not exist (--db {url})", EXIT_UNUSABLE)
    try:
        return make_engine(url, read_only=read_only)
    except (SQLAlchemyError, ImportError, CasStoreError) as exc:
        raise Failure(f"cannot open database {safe_url(url)}: {exc}", EXIT_UNUSABLE) from exc


def _open_index(url: str, read_only: bool = True):
    """The project's index; its tables are looked at read-only first, and the database is
    opened for writing (SQLite switched to WAL) only if `read_only` is False."""
    from casstore.cas.index.queries import Index
    from casstore.cas.index.models import CASSTORE_TABLES

    engine = _open_engine(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
    except SQLAlchemyError as exc:
        raise Failure(f"cannot open database {safe_url(url)}: {getattr(exc, 'orig', None) or exc}",
                      EXIT_UNUSABLE) from exc
    finally:
        engine.dispose()
    if not any(t.name in names for t in CASSTORE_TABLES):
        raise Failure(f"database {safe_url(url)} holds no casstore tables (not a casstore project?)", EXIT_UNUSABLE)
    try:
        return Index.open(url, read_only=read_only)
    except SchemaOutdated as exc:
        raise Failure(str(exc), EXIT_UNUSABLE) from exc
    except (CasStoreError, SQLAlchemyError) as exc:
        raise Failure(f"cannot open database {safe_url(url)}: {exc}", EXIT_UNUSABLE) from exc


class Project:
    """What a command works on: the database of --db and the datastore it uses."""

    def __init__(self, db: str, datastore: str | None, as_json: bool):
        self.db = db
        self.datastore_arg = datastore
        self.as_json = as_json
        self._index = None
        self._store = None

    @property
    def index(self):
        """The index, read-only unless writable_index() opened it first."""
        if self._index is None:
            self._index = _open_index(self.db)
        return self._index

    def writable_index(self):
        """The index opened for writing, for the commands that change the database (gc):
        a database this process may not write is refused before anything changes."""
        if self._index is None:
            self._index = _open_index(self.db, read_only=False)
        if self._index.read_only:
            raise Failure(f"database {safe_url(self.db)} is read-only (no write permission), and this "
                          "command writes to it", EXIT_UNUSABLE)
        return self._index

    @property
    def store(self):
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def datastore_url(self) -> tuple[str, str]:
        """(url, where it came from)."""
        from casstore import stores
        from casstore.cas.index.queries import DATASTORE_KEY

        if self.datastore_arg:
            return self.datastore_arg, "--datastore"
        recorded = self.index.get_fact(DATASTORE_KEY)
        if recorded:
            return recorded, "recorded by the database"
        return stores.datastore_url(), "option datastore.url (the database records none; pass --datastore)"

    def _open_store(self):
        from casstore.cas.backends.factory import open_blobstore
        from casstore.cas.backends.layout import FORMAT_KEY, FORMAT_TEXT, MAX_FORMAT_BYTES
        from casstore.cas.backends.local import LocalBlobStore
        from casstore.cas.store.content_store import ContentStore
        from casstore.opts import options

        url, source = self.datastore_url()
        try:
            blobs = open_blobstore(url, options().get("datastore.storage_options", otherwise={}))
        except CasStoreError as exc:
            raise Failure(f"cannot open datastore {url} ({source}): {exc}", EXIT_UNUSABLE) from exc
        if isinstance(blobs, LocalBlobStore) and not os.path.isdir(blobs.root):
            raise Failure(f"datastore {blobs.root} does not exist ({source})", EXIT_UNUSABLE)
        try:
            found = blobs.get_object(FORMAT_KEY, max_bytes=MAX_FORMAT_BYTES)
        except OSError as exc:
            raise Failure(f"cannot read datastore {blobs.url} ({source}): {exc}", EXIT_UNUSABLE) from exc
        if found is None:
            raise Failure(f"{blobs.url} is not a casstore datastore: no {FORMAT_KEY} ({source})", EXIT_UNUSABLE)
        if found != FORMAT_TEXT:
            raise Failure(f"datastore {blobs.url} has an unsupported format {found.strip()!r}", EXIT_UNUSABLE)
        return ContentStore(blobs)

    def close(self) -> None:
        if self._index is not None:
            self._index.dispose()
            self._index = None

    def emit(self, document: Any) -> None:
        click.echo(json.dumps(document, indent=2, sort_keys=False))


# -- options every command takes ---------------------------------------------------------

def _common_options(f: Callable) -> Callable:
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print one JSON document on stdout (logs, warnings and progress go to stderr).")(f)
    f = click.option("--datastore", metavar="PATH_OR_URL", envvar="CASSTORE_DATASTORE",
                     help="The datastore (default: the one the database records, else option "
                          "datastore.url). Env: CASSTORE_DATASTORE.")(f)
    f = click.option("--db", "db", metavar="URL", envvar="CASSTORE_DB", required=True,
                     help="The project's database, as an SQLAlchemy URL (sqlite:///runs.db). Env: CASSTORE_DB.")(f)
    return f


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Library errors become one line on stderr and an exit code; click's own pass through."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (CasStoreError, OSError, SQLAlchemyError) as exc:
        raise _failure(exc) from exc


def project_command(f: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command a Project built from --db/--datastore/--json, close it afterwards,
    and turn library errors into one line and an exit code."""

    @functools.wraps(f)
    def wrapper(db: str, datastore: str | None, as_json: bool, **kwargs: Any) -> Any:
        project = Project(db, datastore, as_json)
        try:
            with _one_line_errors():
                return f(project, **kwargs)
        finally:
            project.close()

    return _common_options(wrapper)


# -- text output ------------------------------------------------------------------------

def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def human_age(seconds: float) -> str:
    if seconds < 0:
        return f"in {human_age(-seconds)}"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns aligned; `right` lists the columns aligned right (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def _field_name(field: str, id_run: str) -> str:
    """A field as the session names it: `data`, `inputs.train`, or `runs[<id_run>].<field>`."""
    return f"runs[{id_run}].{field}" if id_run else field


# -- the commands -----------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="casstore")
def main() -> None:
    """casstore: a content-addressed archive store with a dedup index.

    Every command takes --db URL (env CASSTORE_DB), --datastore PATH_OR_URL (env
    CASSTORE_DATASTORE) and --json. Exit codes: 0 fine, 1 damage found or some items
    failed, 2 usage error, 3 an argument that cannot be used. See docs/cli.md."""


@main.command()
@project_command
def stats(project: Project) -> None:
    """Blobs and references of the project, logical vs stored bytes, and the dedup ratio.

    logical_bytes sums the uncompressed archive size over references; stored_bytes sums what
    the distinct referenced blobs take in the datastore; dedup_ratio = logical / stored."""
    from casstore.cas.stats import project_stats

    result = project_stats(project.index, project.store)
    if result.missing_blobs:
        _warn(f"{result.missing_blobs} referenced blob(s) are missing from the datastore: run `casstore verify`")
    if project.as_json:
        project.emit({**asdict(result), "datastore": project.store.blobs.url})
        return
    rows = [("datastore", project.store.blobs.url),
            ("blobs", result.blobs),
            ("references", result.references),
            ("logical bytes", f"{result.logical_bytes} ({human_bytes(result.logical_bytes)})"),
            ("stored bytes", f"{result.stored_bytes} ({human_bytes(result.stored_bytes)})"),
            ("dedup ratio", f"{result.dedup_ratio:.2f}")]
    if result.missing_blobs:
        rows.append(("missing blobs", result.missing_blobs))
    if result.unknown_size:
        rows.append(("unknown sizes", f"{result.unknown_size} reference(s) whose blob has no facts in the index"))
    width = max(len(k) for k, _ in rows)
    click.echo("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


@main.command("ls")
@project_command
def ls_command(project: Project) -> None:
    """One row per reference: experiment, field, blob and its uncompressed size."""
    refs = list(project.index.iter_refs())
    items = [{"experiment": str(r.id_experiment), "name": r.name, "field": _field_name(r.field, r.id_run),
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
@click.option("--deep", is_flag=True, help="Re-hash every referenced blob (reads all of them; progress bar on a terminal).")
@project_command
def verify(project: Project, deep: bool) -> None:
    """Check the index against the datastore: damage and what gc could reclaim.

    Damage (exit 1): a referenced blob missing, of the wrong size, with --deep of the wrong
    digest, an archive that does not read, index facts that disagree with the store or are
    not facts, a second copy that disagrees with them, damage a load recorded and no persist
    has repaired yet, fields and reference rows that name different blobs, fields that do not
    decode, a file in the blobs folder that is not a blob (foreign).
    Reclaimable (exit 0): unreferenced blobs, leftovers of interrupted writes, expired leases,
    damaged copies a repair moved into the quarantine, reference rows of experiments that no
    longer exist."""
    from casstore.cas.verify import verify as run_verify
    from casstore.session import field_roots

    index, store = project.index, project.store
    with contextlib.ExitStack() as stack:
        progress = None
        if deep and _stderr_is_terminal():
            sizes = {r.blob_id: r.size or 0 for r in index.iter_refs()}
            bar = stack.enter_context(click.progressbar(length=sum(sizes.values()) or 1, label="re-hashing",
                                                        file=sys.stderr, show_pos=False))
            progress = bar.update
        report = run_verify(index, store, field_roots=field_roots, deep=deep, progress=progress)
    if project.as_json:
        project.emit({
            "problems": [{"kind": p.kind, "blob": p.blob, "experiment": p.experiment, "field": p.field,
                          "detail": p.detail} for p in report.problems],
            "reclaimable": [_blob_or_path(r.kind, r.blob, r.path, r.bytes) for r in report.reclaimable],
        })
    else:
        _print_verify(project, report, deep)
    if report.problems:
        raise click.exceptions.Exit(EXIT_FAILED)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _blob_or_path(kind: str, blob: str | None, path: str | None, size: int) -> dict[str, Any]:
    item: dict[str, Any] = {"kind": kind}
    if blob is not None:
        item["blob"] = blob
    else:
        item["path"] = path
    item["bytes"] = size
    return item


def _print_verify(project: Project, report: Any, deep: bool) -> None:
    names = {str(i): n for i, n in project.index.list_experiments()}
    out = []
    if report.problems:
        out.append(f"problems ({len(report.problems)}):")
        out.append(table(["KIND", "BLOB", "EXPERIMENT", "FIELD", "DETAIL"],
                         [(p.kind, p.blob, names.get(p.experiment or "", p.experiment or "-"), p.field or "-",
                           p.detail) for p in report.problems]))
    reclaim = sum(r.bytes for r in report.reclaimable)
    if report.reclaimable:
        out.append(f"reclaimable ({len(report.reclaimable)}, {human_bytes(reclaim)}; `casstore gc` deletes "
                   "those older than its grace period):")
        out.append(table(["KIND", "BLOB OR PATH", "SIZE", "AGE"],
                         [(r.kind, r.blob or r.path, human_bytes(r.bytes), human_age(r.age_s))
                          for r in report.reclaimable], right=[2, 3]))
    how = "re-hashed" if deep else "checked"
    out.append(f"{report.blobs_checked} referenced blob(s) {how}: {len(report.problems)} problem(s), "
               f"{len(report.reclaimable)} reclaimable item(s) ({human_bytes(reclaim)})")
    click.echo("\n".join(out))


class Duration(click.ParamType):
    """0, 90s, 30m, 1h, 7d."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


def parse_duration(text: str) -> float:
    """'0', '90s', '30m', '1h', '7d' -> seconds (the library's parser)."""
    from casstore.cas.gc import parse_duration as library_parse

    return library_parse(text)


@main.command()
@click.option("--dry-run", is_flag=True, help="List what would be deleted and the bytes freed; delete nothing.")
@click.option("--grace", type=Duration(), default="1h", show_default=True,
              help="Keep anything younger than this: 0, 90s, 30m, 1h, 7d.")
@project_command
def gc(project: Project, dry_run: bool, grace: float) -> None:
    """Delete what verify calls reclaimable and is older than the grace period.

    Reads every database registered in the datastore, its reference rows and its fields, and
    refuses (exit 3), naming it, if one cannot be opened or its fields do not decode; blobs
    leased by a write in progress are never deleted."""
    from casstore.cas.gc import collect
    from casstore.session import field_roots

    index = project.index if dry_run else project.writable_index()
    report = collect(index, project.store, field_roots=field_roots, grace_s=grace, dry_run=dry_run)
    if project.as_json:
        project.emit({"deleted": [_without_kind(_blob_or_path(d.kind, d.blob, d.path, d.bytes)) for d in report.deleted],
                      "freed_bytes": report.freed_bytes})
        return
    if report.deleted:
        click.echo(table(["KIND", "BLOB OR PATH", "SIZE"],
                         [(d.kind, d.blob or d.path, human_bytes(d.bytes)) for d in report.deleted], right=[2]))
    verb = "would delete" if dry_run else "deleted"
    freed = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(report.deleted)} item(s), {freed} {report.freed_bytes} bytes "
               f"({human_bytes(report.freed_bytes)})" + (" (dry run)" if dry_run else ""))


def _without_kind(item: dict[str, Any]) -> dict[str, Any]:
    item.pop("kind", None)
    return item


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
    from casstore.session import Session

    index = project.index
    record = _find_experiment(index, experiment)
    session = Session(project.db, datastore=project.store.blobs.url, read_only=True)
    try:
        exp = session.read_experiment(id_experiment=record.id_experiment)
        available = [p for p, _ in archive_fields(exp.fields)]
        available += [_field_name(r.field, r.id_run) for r in index.refs_of(record.id_experiment) if r.id_run]
        if field is not None and field not in available:
            raise Failure(f"experiment {record.name!r} has no archive field {field!r} "
                          f"(archive fields: {', '.join(available) or 'none'})", EXIT_UNUSABLE)
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
        raise Failure(str(error), EXIT_FAILED)


def _find_experiment(index: Any, ref: str) -> Any:
    from casstore.session import parse_experiment_id

    record = index.get_experiment(name=ref)
    if record is None:
        try:
            record = index.get_experiment(id_experiment=parse_experiment_id(ref))
        except ValueError:
            record = None
    if record is None:
        raise Failure(f"no experiment named {ref!r} or with that id in {safe_url(index.url)}", EXIT_UNUSABLE)
    return record


@main.command()
@click.argument("blob")
@project_command
def cat(project: Project, blob: str) -> None:
    """Write blob BLOB's canonical TAR, decompressed, on stdout (casstore cat ID | tar -t).

    The content is hashed while it is written; if it does not match BLOB the exit code is 1
    (the bytes already written cannot be taken back). --json has no effect."""
    from casstore.cas.digest import parse_id

    parse_id(blob)
    facts = project.index.facts_hint(blob)
    sys.stdout.flush()
    out = sys.stdout.buffer  # binary-safe (click.get_binary_stream is deprecated in click 8.5)
    try:
        with project.store.open_tar(blob, facts.size if facts else None, facts) as reader:
            while chunk := reader.read(CHUNK):
                out.write(chunk)
            reader.verify()
        out.flush()
    except CorruptBlob as exc:
        raise Failure(f"{exc}; the bytes already written to stdout are damaged", EXIT_FAILED) from exc
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): say so once, without a traceback at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise Failure("stdout was closed before the whole blob was written; it was not verified", EXIT_FAILED)


@main.command()
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
            raise Failure(f"{forget} is neither the key nor the URL of an entry in the registry of datastore "
                          f"{blobs.url} (`casstore registry` lists them)", EXIT_UNUSABLE)
        if mine is not None and entry_key(mine) in forgotten:
            _warn("this database was forgotten; its next persist registers it again, and until then gc run "
                  "from another project sharing the datastore does not see its references")
    _print_registry(project, read_registry(blobs), mine, forgotten)


def _print_registry(project: Project, registry: Any, mine: str | None, forgotten: list[str]) -> None:
    from casstore.cas.live.trust import trusted_urls

    entries, broken = registry
    confirmed = trusted_urls()
    rows = [{"key": e.key, "url": e.url, "project": e.project, "this": e.url == mine, "exists": exists,
             "trusted": None if exists is not None else (e.url in confirmed or e.url == mine)}
            for e in entries for exists in [_sqlite_exists(e.url)]]
    bad = [{"key": b.key, "reason": b.reason} for b in broken]
    url = project.store.blobs.url
    if project.as_json:
        project.emit({"datastore": url, "databases": rows, "unreadable": bad, "forgotten": forgotten})
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


def _registry_note(row: dict[str, Any]) -> str:
    if row["this"]:
        return "this database"
    if row["exists"] is False:
        return "missing (gc refuses until it is back or forgotten)"
    if row["trusted"] is False:
        return "not confirmed (gc refuses until `casstore registry --trust URL`)"
    return ""


def _registry_trust(project: Project, trust: str | None, revoke: str | None) -> None:
    """--trust, --revoke and --trusted: the user's own list, outside the datastore."""
    from casstore.cas.live import trust as confirmations
    from casstore.cas.live.registry import read_registry

    done: dict[str, Any] = {}
    if trust is not None:
        if "://" not in trust:  # the key of an entry, as gc's refusal names it
            by_key = {e.key: e.url for e in read_registry(project.store.blobs)[0]}
            if trust not in by_key:
                raise Failure(f"{trust} is neither a database URL nor the key of an entry in the registry of "
                              f"datastore {project.store.blobs.url}", EXIT_UNUSABLE)
            trust = by_key[trust]
        done = {"trusted": confirmations.trust(trust)}
    elif revoke is not None:
        if not confirmations.revoke(revoke):
            raise Failure(f"{safe_url(revoke)} is not a confirmed database ({confirmations.trust_file()})",
                          EXIT_UNUSABLE)
        done = {"revoked": confirmations.server_url(revoke)}
    confirmed = sorted(confirmations.trusted_urls())
    if project.as_json:
        project.emit({**done, "file": confirmations.trust_file(), "confirmed": confirmed})
        return
    for verb, url in done.items():
        click.echo(f"{'confirmed' if verb == 'trusted' else 'revoked'} {url} (in {confirmations.trust_file()})")
    if not done:
        click.echo("\n".join(confirmed) if confirmed else f"no confirmed databases ({confirmations.trust_file()})")


def _sqlite_exists(url: str) -> bool | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    return os.path.isfile(parsed.database or "")


@main.group()
def db() -> None:
    """Schema of casstore's tables in a project database (Alembic revisions)."""


def db_command(read_only: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--db/--datastore/--json for the `db` commands, which open the engine directly: the
    index refuses an outdated schema, and these commands are how to fix one."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(db: str, datastore: str | None, as_json: bool, **kwargs: Any) -> Any:
            engine = _open_engine(db, read_only=read_only)
            try:
                with _one_line_errors():
                    return f(engine, as_json, **kwargs)
            finally:
                engine.dispose()

        return _common_options(wrapper)

    return decorate


def _revision(engine: Engine) -> str | None:
    """The database's casstore schema revision; exit 3 if the database cannot be read."""
    from casstore.cas.index.schema import current_revision

    try:
        with engine.connect() as conn:
            return current_revision(conn)
    except SQLAlchemyError as exc:
        raise Failure(f"cannot open database {safe_url(str(engine.url))}: {getattr(exc, 'orig', exc)}",
                      EXIT_UNUSABLE) from exc


@db.command("current")
@db_command(read_only=True)
def db_current(engine: Engine, as_json: bool) -> None:
    """The schema revision of casstore's tables in the database, and the one this casstore needs.

    --datastore is accepted and not used."""
    from casstore.cas.index.schema import HEAD

    current = _revision(engine)
    if as_json:
        click.echo(json.dumps({"current": current, "head": HEAD, "up_to_date": current == HEAD}, indent=2))
        return
    state = "up to date" if current == HEAD else "outdated: run `casstore db upgrade`"
    click.echo(f"current  {current or 'none'}\nhead     {HEAD}\n{state}")


@db.command("upgrade")
@db_command(read_only=False)
def db_upgrade(engine: Engine, as_json: bool) -> None:
    """Bring casstore's tables to the revision this casstore needs (back the database up first).

    --datastore is accepted and not used."""
    from casstore.cas.index.schema import HEAD, known_revisions, upgrade

    before = _revision(engine)
    if before is not None and before not in known_revisions():
        raise Failure(f"the database holds casstore schema {before}, newer than this casstore knows "
                      f"({HEAD}): upgrade casstore", EXIT_UNUSABLE)
    after = before if before == HEAD else upgrade(engine)
    if as_json:
        click.echo(json.dumps({"before": before, "after": after, "head": HEAD}, indent=2))
        return
    if before == after:
        click.echo(f"already at {after}")
    else:
        click.echo(f"upgraded {before or 'none'} -> {after}")


from casstore.cli.migrate import migrate as _migrate  # noqa: E402

main.add_command(_migrate)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="casstore")
