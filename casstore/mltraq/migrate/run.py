"""Migrate an MLtraq 0.1.165 project in place: legacy TARs into the content store.

Two steps, dvc's prepare()/migrate() split:

* `plan(db_url, datastore)` reads the database (and never writes it) and finds every
  `mltraq.ArchiveStore-0` reference, in the `fields` of the experiments table and in the
  serialized columns of the run tables (`experiment_<name>`, as the experiment's meta
  names them). DataPak bytes are read only with `datapak.safe_unpickle`, never with
  MLtraq's decoder (which extracts archives as a side effect). It also lists the datastore
  files nothing references: standalone `ArchiveStoreIO` TARs (`<prefix>/<uuid4 hex>`),
  and the other orphans, which are only ever reported.
* `execute(plan, ...)` migrates one experiment at a time: each legacy TAR is turned into
  its canonical TAR (legacy.py) and stored under its content digest (under a lease), the
  blob is re-read and checked, then one transaction replaces each reference by casstore's
  `{"DATAPAK-0": "casstore.ArchiveStore-0", "value": {"blob", "arc_dir", "size"}}`, inserts
  the index rows (run-level ones with their id_run) and records each migrated legacy file
  in casstore_meta. Only after that commit are the legacy TARs deleted (`keep_legacy`
  keeps them), and their casstore_meta records with them. Last, each standalone TAR is
  stored and checked the same way, then replaced (one atomic rename) by a named reference
  at the same path, so that the URL the user kept still opens it through ArchiveStoreIO.

Every state is resumable: a killed run leaves either an experiment untouched (legacy
references; at most unreferenced blobs that gc reclaims) or committed (the legacy files it
still had are recorded in casstore_meta, and the next run deletes them after checking
their blobs again). Re-running a finished migration changes nothing.

The rewrite changes only the referencing sub-value. A DataPak is a pickle of plain
containers; it is re-read by an unpickler that keeps sets in their pickled order and is
re-pickled only if that round trip gives the very same bytes, so every other value keeps
its bytes. A value that does not round-trip is left unmigrated and reported."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import posixpath
import re
import stat
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from sqlalchemy import MetaData, Table, create_engine, delete, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from casstore.cas.backends.layout import INTERNAL
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.backends.localfs import open_regular
from casstore.cas.store.contentstore import CODECS, BlobInfo, ContentStore
from casstore.cas.digest import DigestSink
from casstore.cas.index.engine import safe_url, write_transaction
from casstore.cas.index.queries import DATASTORE_KEY, Index
from casstore.cas.live.leases import Lease
from casstore.mltraq.legacy import LegacyArchiveError, canonical_members, read_members, write_canonical
from casstore.cas.index.models import BlobRow, ExperimentRow, MetaRow, RefRow
from casstore.cas.live.registry import register
from casstore.cas.live.roots import MAX_REF_BYTES, RefFacts, named_ref_data, parse_named_ref
from casstore.errors import CasStoreError, CorruptBlob, DatastoreError, InvalidInput, UnreadableObject
from casstore.mltraq import datapak

LEGACY_TAG = datapak.TAG_ARCHIVESTORE  # "mltraq.ArchiveStore-0"
CASSTORE_TAG = "casstore.ArchiveStore-0"  # casstore.storage.archivestore.ARCHIVESTORE_TAG
DATASTORE_TAG = "mltraq.DataStore-0"
LEGACY_ARC_DIR = "."  # member names of a legacy TAR already hold MLtraq's arc_dir
PENDING_PREFIX = "migrate.legacy."
EXPERIMENTS_TABLE = "experiments"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Cell:
    """A DataPak value in the database: an experiment's fields, or one run's column."""

    table: str
    column: str
    key: Any  # id_experiment (experiments) or the id_run value as read (run tables)
    id_run: str  # "" for the experiment's fields, else the run id in hex
    digest: str  # sha256 of the bytes the plan read


@dataclass(frozen=True)
class LegacyRef:
    """One `mltraq.ArchiveStore-0` reference."""

    experiment: str
    id_experiment: uuid.UUID
    cell: Cell
    path: tuple  # keys from the cell's value down to the tagged dict
    field: str  # dotted field name, as the session names fields (casstore_refs.field)
    url: str
    relpath: str | None  # datastore-relative path of the legacy TAR
    problem: str | None = None  # why it cannot be migrated, known from the plan

    @property
    def id_run(self) -> str:
        return self.cell.id_run

    @property
    def label(self) -> str:
        return f"runs[{self.id_run}].{self.field}" if self.id_run else self.field


@dataclass
class ExperimentPlan:
    id_experiment: uuid.UUID
    name: str
    refs: list[LegacyRef] = field(default_factory=list)
    already: int = 0  # references already migrated (casstore tags)


@dataclass(frozen=True)
class Orphan:
    path: str  # relative to the datastore, '/'-separated
    size: int
    kind: str  # "tar", "datapak", "file", "symlink" or "other"


@dataclass(frozen=True)
class Pending:
    """A legacy file a committed migration still has on disk (casstore_meta record)."""

    key: str
    path: str
    blob: str
    size: int


@dataclass
class MigrationPlan:
    db_url: str
    datastore: str  # absolute path
    experiments: list[ExperimentPlan]
    orphans: list[Orphan]
    pending: list[Pending]
    warnings: list[str]
    standalone: list[Orphan] = field(default_factory=list)  # ArchiveStoreIO TARs

    @property
    def refs(self) -> list[LegacyRef]:
        return [r for e in self.experiments for r in e.refs]


def plan(db_url: str, datastore: str) -> MigrationPlan:
    """Read the project and list what `execute` would migrate. Writes nothing."""
    root = datastore_path(datastore)
    engine = _read_engine(db_url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            if EXPERIMENTS_TABLE not in names:
                raise InvalidInput(f"database {safe_url(db_url)} has no {EXPERIMENTS_TABLE!r} table: "
                                   "not an MLtraq project")
            warnings: list[str] = []
            datastore_files: set[str] = set()
            experiments = [_plan_experiment(conn, names, row, root, warnings, datastore_files)
                           for row in _experiment_rows(conn)]
            pending = _pending(conn) if MetaRow.__tablename__ in names else []
    except SQLAlchemyError as exc:
        raise InvalidInput(f"cannot read database {safe_url(db_url)}: {getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()
    _mark_collisions(experiments)
    referenced = {r.relpath for e in experiments for r in e.refs if r.relpath}
    referenced |= {p.path for p in pending}
    referenced |= datastore_files
    found = _orphans(root, referenced)
    standalone = [o for o in found if _is_standalone(o)]
    orphans = [o for o in found if not _is_standalone(o)]
    return MigrationPlan(db_url, root, experiments, orphans, pending, warnings, standalone)


def datastore_path(datastore: str) -> str:
    """The legacy datastore folder: a path, or a file URL with MLtraq's rule."""
    if not isinstance(datastore, str) or not datastore:
        raise InvalidInput("give the datastore folder (--datastore PATH)")
    if "://" in datastore:
        from casstore.cas.backends.urls import file_url_to_path

        datastore = file_url_to_path(datastore)
    root = os.path.abspath(datastore)
    if not os.path.isdir(root):
        raise InvalidInput(f"datastore {root} does not exist or is not a folder")
    return root


def _read_engine(db_url: str) -> Engine:
    """An engine that only reads: no pragmas, and a SQLite file must exist (never created)."""
    try:
        parsed = make_url(db_url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {db_url!r} (expected e.g. sqlite:///mltraq.db)") from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or str(parsed.query.get("mode", "")) == "memory":
            raise InvalidInput(f"{db_url} is an in-memory database: there is nothing to migrate")
        if not database.startswith("file:") and not os.path.isfile(database):
            raise InvalidInput(f"database {os.path.abspath(database)} does not exist")
    try:
        return create_engine(db_url)
    except (SQLAlchemyError, ImportError) as exc:
        raise InvalidInput(f"cannot open database {safe_url(db_url)}: {exc}") from exc


def _experiment_rows(conn: Connection) -> Iterator[Any]:
    t = ExperimentRow.__table__
    query = select(t.c.id_experiment, t.c.name, t.c.fields, t.c.meta).order_by(t.c.name)
    yield from conn.execute(query)


def _plan_experiment(conn: Connection, tables: set[str], row: Any, root: str, warnings: list[str],
                     datastore_files: set[str]) -> ExperimentPlan:
    id_experiment, name, fields, meta = row
    exp = ExperimentPlan(id_experiment, name)
    cell = Cell(EXPERIMENTS_TABLE, "fields", id_experiment, "", _sha(fields))
    _plan_cell(exp, cell, fields, "", root, warnings, datastore_files)
    runs = runs_meta(meta)
    if runs is None:
        if meta is not None:
            warnings.append(f"experiment {name!r}: its meta does not read as MLtraq's; its run table was not searched")
        return exp
    table_name, serialized = runs
    if not serialized or table_name not in tables:
        return exp
    table = Table(table_name, MetaData(), autoload_with=conn)
    columns = [c for c in serialized if c in table.c]
    if "id_run" not in table.c or not columns:
        warnings.append(f"experiment {name!r}: run table {table_name!r} has no id_run or no serialized column")
        return exp
    for run in conn.execute(select(table.c.id_run, *[table.c[c] for c in columns])):
        raw_id, values = run[0], run[1:]
        for column, value in zip(columns, values):
            if value is None:
                continue
            if raw_id is None:
                warnings.append(f"experiment {name!r}: a row of {table_name!r} has no id_run; not searched")
                continue
            cell = Cell(table_name, column, raw_id, run_hex(raw_id), _sha(value))
            _plan_cell(exp, cell, value, column, root, warnings, datastore_files)
    return exp


def _plan_cell(exp: ExperimentPlan, cell: Cell, data: bytes, prefix: str, root: str, warnings: list[str],
               datastore_files: set[str]) -> None:
    where = f"experiment {exp.name!r}, " + (f"run {cell.id_run} column {cell.column!r}" if cell.id_run else "fields")
    try:
        plain = datapak.safe_unpickle(bytes(data))
    except CasStoreError as exc:
        warnings.append(f"{where}: not a DataPak value, not searched ({exc})")
        return
    for kind, keys, name, raw, reachable in _walk(plain, (), prefix, True):
        if kind == "casstore":
            exp.already += 1
        elif kind == "datastore":
            relpath = _url_relpath(raw)
            if relpath is not None:
                datastore_files.add(relpath)
        else:
            exp.refs.append(_legacy_ref(exp, cell, keys, name, raw, reachable, root))


def _legacy_ref(exp: ExperimentPlan, cell: Cell, keys: tuple, name: str, raw: Any, reachable: bool,
                root: str) -> LegacyRef:
    url = raw if isinstance(raw, str) else repr(raw)
    relpath = _url_relpath(raw)
    problem = None
    if not reachable:
        problem = "it sits inside a value casstore does not decode, where a load would not find it"
    elif relpath is None:
        problem = f"{url!r} is not a file:/// URL inside the datastore"
    elif not os.path.lexists(os.path.join(root, relpath)):
        problem = f"legacy TAR {os.path.join(root, relpath)} is missing"
    elif not os.path.isfile(os.path.join(root, relpath)):
        problem = f"legacy TAR {os.path.join(root, relpath)} is not a regular file"
    return LegacyRef(exp.name, exp.id_experiment, cell, keys, name, url, relpath, problem)


def _walk(value: Any, keys: tuple, name: str, reachable: bool) -> Iterator[tuple[str, tuple, str, Any, bool]]:
    """Tagged values of interest, with their key path and field name (as the session's
    `archive_fields` names them: Bunch values are transparent, other tags opaque)."""
    kind = type(value)
    if kind is dict:
        tag = value.get(datapak.KEY_MAGIC)
        if type(tag) is str:
            raw = value.get(datapak.KEY_VALUE)
            if tag == LEGACY_TAG:
                yield "legacy", keys, name, raw, reachable
            elif tag == CASSTORE_TAG:
                yield "casstore", keys, name, raw, reachable
            elif tag == DATASTORE_TAG:
                yield "datastore", keys, name, raw, reachable
            else:
                yield from _walk(raw, keys + (datapak.KEY_VALUE,), name, reachable and tag == datapak.TAG_BUNCH)
            return
        for key, item in value.items():
            yield from _walk(item, keys + (key,), f"{name}.{key}" if name else str(key), reachable)
    elif kind is list or kind is tuple:
        for i, item in enumerate(value):
            yield from _walk(item, keys + (i,), f"{name}.{i}" if name else str(i), reachable)


def _mark_collisions(experiments: list[ExperimentPlan]) -> None:
    """Two references with one (run, field name) cannot both have an index row."""
    for exp in experiments:
        seen: set[tuple[str, str]] = set()
        for i, ref in enumerate(exp.refs):
            key = (ref.id_run, ref.field)
            if key in seen and ref.problem is None:
                exp.refs[i] = replace(ref, problem=f"another archive field is also named {ref.field!r}")
            seen.add(key)


def runs_meta(meta: bytes | None) -> tuple[str, list[str]] | None:
    """(run table name, serialized columns) from an experiment's meta, None if unreadable."""
    if meta is None:
        return None
    try:
        plain = datapak.safe_unpickle(bytes(meta))
        runs = _bunch(_bunch(plain).get("runs"))
        columns = _bunch(runs.get("columns"))
        table_name, serialized = runs.get("table_name"), columns.get("serialized", [])
    except (CasStoreError, AttributeError):
        return None
    if type(table_name) is not str or not isinstance(serialized, (list, tuple, set)):
        return None
    return table_name, sorted(c for c in serialized if type(c) is str)


def _bunch(value: Any) -> dict:
    if type(value) is dict and value.get(datapak.KEY_MAGIC) == datapak.TAG_BUNCH:
        value = value.get(datapak.KEY_VALUE)
    if type(value) is not dict:
        raise AttributeError("not a Bunch")
    return value


def _url_relpath(url: Any) -> str | None:
    """The datastore-relative path of MLtraq's `file:///<prefix>/<uuid hex>`, or None."""
    if type(url) is not str or not url.startswith("file:///"):
        return None
    path = urlparse(url).path[1:]
    norm = posixpath.normpath(path) if path else ""
    if not norm or norm in (".", "..") or norm.startswith("../") or posixpath.isabs(norm) or "\0" in norm:
        return None
    if norm.split("/")[0] == INTERNAL:
        return None
    return norm


def run_hex(raw: Any) -> str:
    """A run id as `casstore_refs.id_run` holds it: 32 hex digits."""
    if isinstance(raw, uuid.UUID):
        return raw.hex
    return str(raw).replace("-", "").lower()


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(bytes(data or b"")).hexdigest()


def _pending(conn: Connection) -> list[Pending]:
    rows = conn.execute(select(MetaRow.key, MetaRow.value).where(MetaRow.key.startswith(PENDING_PREFIX)))
    out = []
    for key, value in rows:
        try:
            body = json.loads(value)
            out.append(Pending(key, body["path"], body["blob"], int(body["size"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _orphans(root: str, referenced: set[str]) -> list[Orphan]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        if dirpath == root and INTERNAL in dirs:
            dirs.remove(INTERNAL)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel in referenced:
                continue
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):  # never open a FIFO or follow a link here
                    out.append(Orphan(rel, st.st_size, "symlink" if stat.S_ISLNK(st.st_mode) else "other"))
                    continue
                size = st.st_size
                with os.fdopen(open_regular(path), "rb") as f:  # it may have been swapped since the lstat
                    head = f.read(MAX_REF_BYTES + 1)
            except UnreadableObject:
                out.append(Orphan(rel, 0, "other"))
                continue
            except OSError:
                continue
            if parse_named_ref(rel, head) is not None:
                continue
            out.append(Orphan(rel, size, _sniff(head)))
    return out


_UUID_HEX = re.compile(r"[0-9a-f]{32}")
_DASHED_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _is_standalone(orphan: Orphan) -> bool:
    """An `ArchiveStoreIO.create` TAR: `<relative_path_prefix>/<uuid4 hex>`, outside the
    experiments' folders (named by their dashed id), that no experiment references."""
    parent, _, name = orphan.path.rpartition("/")
    folder = parent.rpartition("/")[2]
    return (orphan.kind == "tar" and bool(parent) and _UUID_HEX.fullmatch(name) is not None
            and _DASHED_UUID.fullmatch(folder) is None)


def _sniff(head: bytes) -> str:
    if len(head) >= 265 and head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x80\x05" or head.startswith(datapak.COMPRESSION_PREFIX):
        return "datapak"
    return "file"


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class RefFailure:
    experiment: str
    field: str  # as the CLI shows it: `data`, `runs[<id_run>].model`
    url: str
    reason: str


@dataclass(frozen=True)
class MigrationEvent:
    """Passed to `progress`: `stage` is "stored" (blobs written and checked), "committed"
    (the experiment's references rewritten) or "cleaned" (its legacy files deleted)."""

    stage: str
    experiment: str
    done: int  # experiments finished before this one
    total: int


Progress = Callable[[MigrationEvent], None]


@dataclass(frozen=True)
class StandaloneArchive:
    """An ArchiveStoreIO TAR replaced by a named reference at the same path (same URL)."""

    path: str
    blob: str
    legacy_bytes: int


@dataclass
class MigrationReport:
    dry_run: bool
    keep_legacy: bool
    datastore: str
    experiments: int = 0  # in the database
    experiments_migrated: int = 0  # with references migrated by this run
    references_found: int = 0  # legacy references the plan found
    references_migrated: int = 0
    references_already: int = 0  # casstore references found (migrated earlier)
    legacy_files: int = 0  # legacy TARs of the references migrated (before)
    legacy_bytes: int = 0
    blobs: int = 0  # distinct blobs those references point to now (after)
    blob_bytes: int = 0  # their stored size
    blobs_new: int = 0  # of which this run added to the datastore
    new_bytes: int = 0
    logical_bytes: int = 0  # canonical TAR bytes summed over the references migrated
    deleted_files: int = 0  # legacy TARs deleted (or that would be, dry run)
    deleted_bytes: int = 0
    kept_files: int = 0  # migrated legacy TARs left on disk (--keep-legacy)
    kept_bytes: int = 0
    failures: list[RefFailure] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    standalone: list[StandaloneArchive] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_saved(self) -> int:
        """What the datastore shrinks by once the legacy TARs are gone."""
        return self.legacy_bytes - self.new_bytes

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bytes_saved"] = self.bytes_saved
        out["exit_code"] = self.exit_code
        return out


# --------------------------------------------------------------------------- execution


@dataclass
class _Stored:
    info: BlobInfo
    legacy_size: int


class _ExperimentChanged(CasStoreError, RuntimeError):
    pass


def execute(plan: MigrationPlan, dry_run: bool = False, keep_legacy: bool = False,
            progress: Progress | None = None, *, codec: str = "none", level: int = 3) -> MigrationReport:
    """Migrate what `plan` found; see the module's docstring. `dry_run` writes nothing
    (not even casstore's tables) and reports what would change, blob ids included."""
    if codec not in CODECS:
        raise InvalidInput(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    report = MigrationReport(dry_run, keep_legacy, plan.datastore, experiments=len(plan.experiments),
                             references_found=len(plan.refs),
                             references_already=sum(e.already for e in plan.experiments),
                             orphans=list(plan.orphans), warnings=list(plan.warnings))
    run = _Run(plan, report, dry_run, keep_legacy, progress, codec, level)
    try:
        run.start()
        run.finish_pending()
        for i, exp in enumerate(plan.experiments):
            run.experiment(exp, i)
        run.standalone(plan.standalone)
    finally:
        run.close()
    return report


class _Run:
    def __init__(self, plan: MigrationPlan, report: MigrationReport, dry_run: bool, keep_legacy: bool,
                 progress: Progress | None, codec: str, level: int):
        self.plan = plan
        self.report = report
        self.dry_run = dry_run
        self.keep_legacy = keep_legacy
        self.progress = progress
        self.codec = codec
        self.level = level
        self.index: Index | None = None
        self._read_only: Engine | None = None  # dry run: the database is only read
        self.store = ContentStore(LocalBlobStore(plan.datastore))
        self.stored: dict[str, _Stored] = {}  # legacy relpath -> blob (this run)
        self.checked: set[str] = set()
        self.blobs_seen: dict[str, int] = {}  # blob id -> stored size, over migrated references
        self.new_blobs: set[str] = set()
        # References still pointing at each legacy file: deleted only when none is left.
        self.remaining: dict[str, int] = {}
        for ref in plan.refs:
            if ref.relpath:
                self.remaining[ref.relpath] = self.remaining.get(ref.relpath, 0) + 1

    # setup

    def start(self) -> None:
        if self.dry_run:
            return
        self.index = Index.open(self.plan.db_url)
        blobs = self.store.blobs
        recorded = self.index.get_fact(DATASTORE_KEY)
        if recorded is not None and os.path.abspath(recorded) != blobs.url:
            raise DatastoreError(f"the database already uses datastore {recorded}, not {blobs.url}: migrate "
                                 "with --datastore pointing at the folder MLtraq wrote, as that one")
        blobs.ensure_format()
        if recorded is None:
            self.index.set_fact(DATASTORE_KEY, blobs.url)
        register(blobs, self.index.engine.url, self.index.project_id())

    def close(self) -> None:
        if self.index is not None:
            self.index.dispose()
        if self._read_only is not None:
            self._read_only.dispose()

    # legacy files of a previous run that committed and was stopped before deleting them

    def finish_pending(self) -> None:
        for p in self.plan.pending:
            path = os.path.join(self.plan.datastore, p.path)
            if self.remaining.get(p.path):
                continue  # still referenced by a legacy reference: kept
            exists = os.path.isfile(path)
            if exists and self.keep_legacy:
                self.report.kept_files += 1
                self.report.kept_bytes += p.size
                continue
            if self.dry_run:
                if exists:
                    self._count_deleted(p.size)
                continue
            if exists:
                try:
                    self._check_blob(p.blob, None)
                except (CasStoreError, OSError) as exc:
                    self.report.warnings.append(f"kept {p.path}: its blob {p.blob} does not check out ({exc})")
                    continue
                self._delete_legacy(p.path, p.size)
            self._forget_pending([p.key])

    # one experiment

    def experiment(self, exp: ExperimentPlan, i: int) -> None:
        total = len(self.plan.experiments)
        todo = [r for r in exp.refs if r.problem is None]
        for ref in exp.refs:
            if ref.problem is not None:
                self._fail(ref, ref.problem)
        if not todo:
            return
        lease = Lease(self.store.blobs) if not self.dry_run else None
        try:
            done = self._store_all(todo, lease)
            self._emit("stored", exp, i, total)
            if not done:
                return
            cells = self._rewrite_cells(done)
            done = [(ref, s) for ref, s in done if ref.cell in cells]
            if not done:
                return
            if not self.dry_run:
                try:
                    self._commit(exp, done, cells)
                except _ExperimentChanged as exc:
                    for ref, _ in done:
                        self._fail(ref, str(exc))
                    return
        finally:
            if lease is not None:
                lease.release()
        self._count_migrated(exp, done)
        self._emit("committed", exp, i, total)
        self._clean(done)
        self._emit("cleaned", exp, i, total)

    def _store_all(self, refs: list[LegacyRef], lease: Lease | None) -> list[tuple[LegacyRef, _Stored]]:
        done = []
        for ref in refs:
            try:
                stored = self._store(ref.relpath, lease)
                if not self.dry_run:
                    self._check_blob(stored.info.blob_id, stored.info.size)
            except LegacyArchiveError as exc:
                self._fail(ref, f"legacy TAR {ref.relpath} cannot be migrated: {exc}")
            except FileNotFoundError:
                self._fail(ref, f"legacy TAR {os.path.join(self.plan.datastore, ref.relpath or '')} is missing")
            except (CasStoreError, OSError) as exc:
                self._fail(ref, f"legacy TAR {ref.relpath}: {exc}")
            else:
                done.append((ref, stored))
        return done

    def _store(self, relpath: str | None, lease: Lease | None) -> _Stored:
        assert relpath is not None
        if relpath in self.stored:
            stored = self.stored[relpath]
            if lease is not None:
                lease.add(stored.info.blob_id)
            return stored
        try:
            fd = open_regular(os.path.join(self.plan.datastore, relpath))
        except (UnreadableObject, IsADirectoryError) as exc:
            raise LegacyArchiveError(f"not a regular file: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            legacy_size = os.fstat(f.fileno()).st_size
            members = canonical_members(read_members(f))
            digest = DigestSink(self.store.algorithm)
            size = write_canonical(f, members, [digest])
            blob_id = digest.blob_id()
            found = self.store.blobs.find(blob_id)
            if self.dry_run:
                new = found is None and blob_id not in self.new_blobs
                info = BlobInfo(blob_id, size, found.stored_size if found else size,
                                found.codec if found else self.codec, new)
            else:
                assert lease is not None
                lease.add(blob_id)
                found = self.store.blobs.find(blob_id)
                if found is not None:
                    info = BlobInfo(blob_id, size, found.stored_size, found.codec, False)
                else:
                    info = self._ingest(f, members, blob_id, size)
        stored = _Stored(info, legacy_size)
        self.stored[relpath] = stored
        return stored

    def _ingest(self, f: Any, members: list, blob_id: str, size: int) -> BlobInfo:
        again = DigestSink(self.store.algorithm)
        with self.store.blobs.begin_ingest() as ingest:
            if self.codec == "zstd":
                import zstandard

                compressor = zstandard.ZstdCompressor(level=self.level, threads=-1)
                with compressor.stream_writer(ingest, closefd=False) as writer:
                    write_canonical(f, members, [again, writer])
            else:
                write_canonical(f, members, [again, ingest])
            if again.blob_id() != blob_id:
                raise LegacyArchiveError("the legacy TAR changed while it was read")
            found, new = ingest.commit(blob_id, self.codec)
        return BlobInfo(blob_id, size, found.stored_size, found.codec, new)

    def _check_blob(self, blob_id: str, size: int | None) -> None:
        if blob_id in self.checked:
            return
        found = self.store.check(blob_id, size)
        if size is not None and found != size:
            raise CorruptBlob(f"blob {blob_id} has {found} bytes, {size} expected", "size")
        self.checked.add(blob_id)

    def _rewrite_cells(self, done: list[tuple[LegacyRef, _Stored]]) -> dict[Cell, tuple[bytes, bytes]]:
        """Cell -> (bytes now, new bytes), for the cells whose rewrite is exact."""
        by_cell: dict[Cell, list[tuple[LegacyRef, _Stored]]] = {}
        for ref, stored in done:
            by_cell.setdefault(ref.cell, []).append((ref, stored))
        out = {}
        for cell, items in by_cell.items():
            try:
                current = self._read_cell(cell)
                if current is None or _sha(current) != cell.digest:
                    raise _ExperimentChanged("the value changed since the plan was made: run the migration again")
                new = rewrite_datapak(current, [(ref.path, _casstore_value(s.info)) for ref, s in items])
            except (CasStoreError, SQLAlchemyError) as exc:
                for ref, _ in items:
                    self._fail(ref, f"cannot rewrite {_where(cell)}: {exc}")
                continue
            out[cell] = (current, new)
        return out

    def _read_cell(self, cell: Cell) -> bytes | None:
        if self.index is not None:
            engine = self.index.engine
        else:
            if self._read_only is None:
                self._read_only = _read_engine(self.plan.db_url)
            engine = self._read_only
        with engine.connect() as conn:
            table, key_column = _cell_table(conn, cell)
            row = conn.execute(select(table.c[cell.column]).where(key_column == cell.key)).first()
        return None if row is None or row[0] is None else bytes(row[0])

    def _commit(self, exp: ExperimentPlan, done: list[tuple[LegacyRef, _Stored]],
                cells: dict[Cell, tuple[bytes, bytes]]) -> None:
        assert self.index is not None
        with write_transaction(self.index.engine) as conn:
            for cell, (current, new) in cells.items():
                table, key_column = _cell_table(conn, cell)
                result = conn.execute(update(table).where(key_column == cell.key, table.c[cell.column] == current)
                                      .values({cell.column: new}))
                if result.rowcount < 1:
                    raise _ExperimentChanged(f"{_where(cell)} changed during the migration: run it again")
            self._insert_blob_facts(conn, [s.info for _, s in done])
            for ref, stored in done:
                conn.execute(delete(RefRow).where(RefRow.id_experiment == exp.id_experiment,
                                                  RefRow.id_run == ref.id_run, RefRow.field == ref.field))
                conn.execute(insert(RefRow).values(id_experiment=exp.id_experiment, id_run=ref.id_run,
                                                   field=ref.field, blob_id=stored.info.blob_id,
                                                   arc_dir=LEGACY_ARC_DIR))
            for relpath in sorted({ref.relpath for ref, _ in done if ref.relpath}):
                stored = self.stored[relpath]
                key = _pending_key(relpath)
                conn.execute(delete(MetaRow).where(MetaRow.key == key))
                conn.execute(insert(MetaRow).values(key=key, value=json.dumps(
                    {"path": relpath, "blob": stored.info.blob_id, "size": stored.legacy_size})))

    @staticmethod
    def _insert_blob_facts(conn: Connection, infos: list[BlobInfo]) -> None:
        wanted = {i.blob_id: i for i in infos}
        known = set(conn.scalars(select(BlobRow.blob_id).where(BlobRow.blob_id.in_(list(wanted)))))
        for blob_id, info in sorted(wanted.items()):
            if blob_id not in known:
                conn.execute(insert(BlobRow).values(blob_id=blob_id, size=info.size, stored_size=info.stored_size,
                                                    codec=info.codec, created=time.time()))

    def _count_migrated(self, exp: ExperimentPlan, done: list[tuple[LegacyRef, _Stored]]) -> None:
        r = self.report
        r.experiments_migrated += 1
        r.references_migrated += len(done)
        files = {ref.relpath: s for ref, s in done}
        r.legacy_files += len(files)
        r.legacy_bytes += sum(s.legacy_size for s in files.values())
        for ref, s in done:
            r.logical_bytes += s.info.size
            if s.info.blob_id not in self.blobs_seen:
                self.blobs_seen[s.info.blob_id] = s.info.stored_size
                r.blobs += 1
                r.blob_bytes += s.info.stored_size
            if s.info.new and s.info.blob_id not in self.new_blobs:
                self.new_blobs.add(s.info.blob_id)
                r.blobs_new += 1
                r.new_bytes += s.info.stored_size

    def _clean(self, done: list[tuple[LegacyRef, _Stored]]) -> None:
        for ref, _ in done:
            self.remaining[ref.relpath] -= 1
        for relpath in sorted({ref.relpath for ref, _ in done}):
            stored = self.stored[relpath]
            if self.remaining[relpath] > 0:
                continue  # another reference, not migrated (yet), still needs it
            if self.keep_legacy:
                self.report.kept_files += 1
                self.report.kept_bytes += stored.legacy_size
                continue
            if self.dry_run:
                self._count_deleted(stored.legacy_size)
                continue
            self._delete_legacy(relpath, stored.legacy_size)
            self._forget_pending([_pending_key(relpath)])

    # ArchiveStoreIO archives no experiment references

    def standalone(self, archives: list[Orphan]) -> None:
        """Store each standalone TAR as a blob, check it, then replace the file, in one
        atomic rename, by a named reference at the same path: its URL (`file:///<prefix>/<uuid
        hex>`, kept by the user's code) then reads the blob through ArchiveStoreIO. With
        --keep-legacy they stay as they are (the reference would take the TAR's place)."""
        if self.keep_legacy:
            self.report.orphans += archives
            return
        lease = None if self.dry_run else Lease(self.store.blobs)
        try:
            for orphan in archives:
                converted = self._convert_standalone(orphan, lease)
                if converted is None:
                    self.report.orphans.append(orphan)
                else:
                    self.report.standalone.append(converted)
        finally:
            if lease is not None:
                lease.release()

    def _convert_standalone(self, orphan: Orphan, lease: Lease | None) -> StandaloneArchive | None:
        try:
            stored = self._store(orphan.path, lease)
            if not self.dry_run:
                self._check_blob(stored.info.blob_id, stored.info.size)
                info = stored.info
                data = named_ref_data(info.blob_id, info.size, RefFacts(info.stored_size, info.codec), None)
                self.store.blobs.put_object(orphan.path, data)
        except (LegacyArchiveError, CasStoreError, OSError) as exc:
            self.report.warnings.append(f"standalone archive {orphan.path} kept as it is: {exc}")
            return None
        return StandaloneArchive(orphan.path, stored.info.blob_id, stored.legacy_size)

    def _delete_legacy(self, relpath: str, size: int) -> None:
        path = os.path.join(self.plan.datastore, relpath)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        self._count_deleted(size)
        parent = os.path.dirname(path)
        if parent != self.plan.datastore:
            try:
                os.rmdir(parent)  # only if empty: DataStore files of the experiment stay
            except OSError:
                pass

    def _count_deleted(self, size: int) -> None:
        self.report.deleted_files += 1
        self.report.deleted_bytes += size

    def _forget_pending(self, keys: list[str]) -> None:
        assert self.index is not None
        with write_transaction(self.index.engine) as conn:
            conn.execute(delete(MetaRow).where(MetaRow.key.in_(keys)))

    def _fail(self, ref: LegacyRef, reason: str) -> None:
        self.report.failures.append(RefFailure(ref.experiment, ref.label, ref.url, reason))

    def _emit(self, stage: str, exp: ExperimentPlan, i: int, total: int) -> None:
        if self.progress is not None:
            self.progress(MigrationEvent(stage, exp.name, i, total))


def _cell_table(conn: Connection, cell: Cell) -> tuple[Table, Any]:
    if cell.table == EXPERIMENTS_TABLE:
        table = ExperimentRow.__table__
        return table, table.c.id_experiment
    table = Table(cell.table, MetaData(), autoload_with=conn)
    return table, table.c.id_run


def _where(cell: Cell) -> str:
    return f"run {cell.id_run} column {cell.column!r}" if cell.id_run else "the experiment's fields"


def _pending_key(relpath: str) -> str:
    return PENDING_PREFIX + hashlib.sha1(relpath.encode("utf-8", "surrogateescape")).hexdigest()


def _casstore_value(info: BlobInfo) -> dict[str, Any]:
    return {"blob": info.blob_id, "arc_dir": LEGACY_ARC_DIR, "size": info.size}


# --------------------------------------------------------------------------- DataPak rewrite


class _PickledSet(list):
    """A set as it was pickled: its items in the pickle's order. (A set of str comes back
    in another order in another process, so re-pickling a real set would move bytes.)"""

    __slots__ = ()


class _OrderedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, refusing every global, with sets kept as `_PickledSet`.

    Only ever run on bytes `datapak.safe_unpickle` accepted (plain containers only)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        raise InvalidInput(f"DataPak data references the global {module}.{name}: refusing to load it")

    def persistent_load(self, pid: Any) -> Any:
        raise InvalidInput("DataPak data references a persistent id: refusing to load it")

    def _load_empty_set(self) -> None:
        self.append(_PickledSet())

    def _load_additems(self) -> None:
        items = self.pop_mark()
        self.stack[-1].extend(items)

    dispatch[pickle.EMPTY_SET[0]] = _load_empty_set
    dispatch[pickle.ADDITEMS[0]] = _load_additems


class _OrderedPickler(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler, writing a `_PickledSet` exactly as a set is pickled."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_pickled_set(self, obj: _PickledSet) -> None:
        self.write(pickle.EMPTY_SET)
        self.memoize(obj)
        for start in range(0, len(obj), self._BATCHSIZE):
            self.write(pickle.MARK)
            for item in obj[start:start + self._BATCHSIZE]:
                self.save(item)
            self.write(pickle.ADDITEMS)

    dispatch[_PickledSet] = _save_pickled_set


def _ordered_loads(raw: bytes) -> Any:
    return _OrderedUnpickler(io.BytesIO(raw)).load()


def _ordered_dumps(tree: Any) -> bytes:
    buf = io.BytesIO()
    _OrderedPickler(buf, protocol=datapak.PICKLE_PROTOCOL).dump(tree)
    return buf.getvalue()


def _decompress(data: bytes) -> tuple[bytes, bool]:
    """As datapak reads it: (pickle bytes, whether it had MLtraq's b"C01" + zlib form)."""
    if data.startswith(datapak.COMPRESSION_PREFIX):
        try:
            return zlib.decompress(data[len(datapak.COMPRESSION_PREFIX):]), True
        except zlib.error:
            pass
    return data, False


def rewrite_datapak(data: bytes, replacements: list[tuple[tuple, Any]]) -> bytes:
    """DataPak `data` with the tagged value at each key path turned into casstore's
    ArchiveStore tag holding the given value; every other value keeps its bytes.

    Raises InvalidInput if `data` is not a DataPak, if its pickle does not re-pickle to the
    same bytes (then nothing could be promised about the other values), if a path does not
    lead to an `mltraq.ArchiveStore-0` value, or if the result does not read back as
    expected."""
    before = datapak.safe_unpickle(data)  # the safety check: plain containers only
    raw, compressed = _decompress(bytes(data))
    tree = _ordered_loads(raw)
    if _ordered_dumps(tree) != raw:
        raise InvalidInput("its DataPak does not re-pickle to the same bytes, so it is left as it was")
    for keys, value in replacements:
        for target in (_follow(tree, keys), _follow(before, keys)):
            if type(target) is not dict or target.get(datapak.KEY_MAGIC) != LEGACY_TAG:
                raise InvalidInput(f"no {LEGACY_TAG} value at {keys!r}")
            # Assigning to existing keys keeps the key objects and their order: only the
            # tag string and the value change in the pickle.
            target[datapak.KEY_MAGIC] = CASSTORE_TAG
            target[datapak.KEY_VALUE] = dict(value)
    new = _ordered_dumps(tree)
    if compressed:
        new = datapak.COMPRESSION_PREFIX + zlib.compress(new)
    if not _same(datapak.safe_unpickle(new), before):
        raise InvalidInput("the rewritten DataPak does not read back as expected")
    return new


def _follow(tree: Any, keys: tuple) -> Any:
    node = tree
    for key in keys:
        node = node[key]
    return node


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down and dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is float and a != a:
        return b != b
    return a == b
