"""The survey: what an MLtraq 0.1.165 project holds for the migration, read and never written.

`plan(db_url, datastore)` finds every `mltraq.ArchiveStore-0` reference, in the `fields` of
the experiments table and in the serialized columns of the run tables (`experiment_<name>`,
as the experiment's meta names them). DataPak bytes are read only with
`datapak.safe_unpickle`, never with MLtraq's decoder (which extracts archives as a side
effect). It also lists what a previous run committed and has still to delete (`Pending`,
casstore_meta records), and the datastore files nothing references: standalone
`ArchiveStoreIO` TARs (`<prefix>/<uuid4 hex>`), which the executor converts, and the other
orphans, which are only ever reported."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterator
from urllib.parse import urlparse

from sqlalchemy import MetaData, Table, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from casstore.cas.backends.layout import INTERNAL
from casstore.cas.backends.localfs import open_regular
from casstore.cas.index.engine import safe_url
from casstore.cas.index.queries import Index, field_label
from casstore.cas.live.refs import MAX_REF_BYTES, parse_named_ref
from casstore.errors import CasStoreError, InvalidInput, UnreadableObject
from casstore.mltraq import datapak
from casstore.mltraq.migrate.tables import EXPERIMENTS_TABLE, Cell, experiment_rows, read_engine, sha
from casstore.mltraq.runs import run_hex, runs_meta

LEGACY_TAG = datapak.TAG_ARCHIVESTORE  # "mltraq.ArchiveStore-0"
PENDING_PREFIX = "migrate.legacy."

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
        return field_label(self.field, self.id_run)


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
    kind: str  # "tar", "datapak", "file", "symlink", "other", or "reference" (a named one nothing names)


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
    engine = read_engine(db_url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            if EXPERIMENTS_TABLE not in names:
                raise InvalidInput(f"database {safe_url(db_url)} has no {EXPERIMENTS_TABLE!r} table: "
                                   "not an MLtraq project")
            warnings: list[str] = []
            datastore_files: set[str] = set()
            experiments = [_plan_experiment(conn, names, row, root, warnings, datastore_files)
                           for row in experiment_rows(conn)]
            pending = _pending(Index(engine), conn)
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



def _plan_experiment(conn: Connection, tables: set[str], row: Any, root: str, warnings: list[str],
                     datastore_files: set[str]) -> ExperimentPlan:
    id_experiment, name, fields, meta = row
    exp = ExperimentPlan(id_experiment, name)
    cell = Cell(EXPERIMENTS_TABLE, "fields", id_experiment, "", sha(fields))
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
            cell = Cell(table_name, column, raw_id, run_hex(raw_id), sha(value))
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
            elif tag == datapak.TAG_CASSTORE_ARCHIVESTORE:
                yield "casstore", keys, name, raw, reachable
            elif tag == datapak.TAG_DATASTORE:
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



def pending_key(relpath: str) -> str:
    """The casstore_meta key of a legacy file a committed experiment still has on disk."""
    return PENDING_PREFIX + hashlib.sha1(relpath.encode("utf-8", "surrogateescape")).hexdigest()


def _pending(index: Index, conn: Connection) -> list[Pending]:
    out = []
    for key, value in index.facts_with_prefix(PENDING_PREFIX, conn).items():
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
                if _in_experiment_folder(rel):  # written for a persist that never committed its row
                    out.append(Orphan(rel, size, "reference"))
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


def _in_experiment_folder(rel: str) -> bool:
    """`<dashed experiment id>/<name>`: where MLtraq (and casstore.mltraq.enable()) writes."""
    parent, _, _ = rel.rpartition("/")
    return _DASHED_UUID.fullmatch(parent) is not None


def _sniff(head: bytes) -> str:
    if len(head) >= 265 and head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x80\x05" or head.startswith(datapak.COMPRESSION_PREFIX):
        return "datapak"
    return "file"

