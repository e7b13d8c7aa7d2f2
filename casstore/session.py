"""Sessions: an SQL index plus a content store, with MLtraq's methods.

Persist never loses data (P6): blobs are written first, under a lease; then one transaction
swaps the experiment row and its reference rows; the old state goes only once the new one
is committed. Load extracts every archive field, checks each blob's digest, and reports every
field that failed in one LoadError after extracting the others (P7)."""

from __future__ import annotations

import logging
import os
import re
import uuid
from shutil import rmtree
from typing import Any, Callable, Iterator, Optional

from casstore import stores
from casstore.cas.digest import checked_id
from casstore.cas.gc import DEFAULT_GRACE_S, GcReport, collect
from casstore.cas.index.engine import safe_url
from casstore.cas.index.facts import BlobFacts, facts_of
from casstore.cas.index.queries import ExperimentRecord, Index, Ref
from casstore.cas.live.leases import Lease
from casstore.cas.live.moves import record_datastore, settle_registration
from casstore.cas.live.registry import register
from casstore.cas.live.roots import FieldRoot
from casstore.cas.progress import Meter, Report, meter
from casstore.cas.store.content_store import ContentStore
from casstore.cas.tar.scan import Entry
from casstore.cas.verify import VerifyReport, verify
from casstore.errors import (BlobNotFound, CasStoreError, DatastoreError, ExperimentAlreadyExists,
                             ExperimentNotFound, FieldFailure, FieldsUnreadable, InvalidInput, LoadError)
from casstore.experiment import Experiment, archive_fields, table_name
from casstore.mltraq import datapak, frames
from casstore.mltraq.runs import read_runs_meta, run_hex, runs_meta
from casstore.opts import DEFAULT_VALUES, options
from casstore.storage.archivestore import ARCHIVE_TAG, ARCHIVESTORE_TAG, Archive, ArchiveStore
from casstore.utils.bunch import Bunch
from casstore.version import __version__

log = logging.getLogger(__name__)

IF_EXISTS = ("fail", "replace")
_UUID_TEXT = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
DECODERS: dict[str, Callable[[Any], Any]] = {ARCHIVESTORE_TAG: ArchiveStore.from_ref, ARCHIVE_TAG: Archive.from_bytes}
# Loading decodes numpy, pandas and pyarrow values too; gc and verify, which only look for
# archives, leave them as they are (DECODERS).
FIELD_DECODERS: dict[str, Callable[[Any], Any]] = {**DECODERS, **frames.DECODERS}


class Session:
    """A handle on one project database (default: option `database.url`)."""

    def __init__(self, url: Optional[str] = None, datastore: Optional[str] = None, read_only: bool = False):
        """`datastore` (a path or URL) overrides the datastore the database records;
        `read_only` opens the database without ever writing it (loads only)."""
        self.index = Index.open(url or options().get("database.url"), read_only=read_only)
        self._datastore = datastore
        self._settled: set[str] = set()  # datastores this session registered in

    def __repr__(self) -> str:
        return f"Session(db={self.index.engine.url.render_as_string(hide_password=True)!r})"

    # the datastore of this project

    def content_store(self, for_write: bool = False) -> ContentStore:
        """The project's content store: the datastore the database records, else the
        option's, recorded (with this database registered in it) at the first write. A
        write also brings the records up to date (a moved project's absolute one follows it:
        cas/live/moves.py); any use of a writable session registers the project where it is."""
        url, source = stores.project_datastore(self.index, self._datastore)
        if source == "recorded":
            self._check_recorded(url)
        store = stores.content_store(url)
        if for_write and source != "given":
            if source == "option":
                store.blobs.ensure_format()
            record_datastore(self.index, store.blobs.url)
        if source == "recorded" and not for_write and not self.index.read_only:
            self._settle(store, strict=False)
        return store

    def _settle(self, store: ContentStore, strict: bool = True) -> None:
        """Register this project in the datastore where it is now (moves.settle_registration,
        once per session; then each persist only repairs its own entry); a load that cannot
        write the datastore goes on."""
        if store.blobs.url in self._settled:
            if strict:  # each persist repairs its own entry, as it always did
                register(store.blobs, self.index.engine.url, self.index.project_id())
            return
        try:
            settle_registration(store.blobs, self.index)
        except (CasStoreError, OSError) as exc:
            if strict:
                raise
            log.info("could not register this database in datastore %s: %s", store.blobs.url, exc)
            return
        self._settled.add(store.blobs.url)

    def _check_recorded(self, recorded: str) -> None:
        """The recorded datastore must be there, and option datastore.url, if set, must
        name it: writing elsewhere would split the project."""
        relocate = f"casstore relocate --db {safe_url(self.index.url)} --datastore PATH"
        if "://" not in recorded and not os.path.isdir(os.path.join(recorded, "casstore")):
            raise DatastoreError(f"this database uses datastore {recorded}, which is not there: if the project's "
                                 f"datastore moved, run `{relocate}` with its new place")
        option = options().get("datastore.url")
        if option != DEFAULT_VALUES["datastore"]["url"] and stores.datastore_url() != recorded:
            raise DatastoreError(f"this database uses datastore {recorded}, but option datastore.url "
                                 f"names {stores.datastore_url()}: if the project's datastore moved there, run "
                                 f"`{relocate.replace('PATH', stores.datastore_url())}`")

    # experiments

    def create_experiment(self, name: Optional[str] = None, **fields: Any) -> Experiment:
        return Experiment(self, name=name, fields=fields)

    def load_experiment(self, name: Optional[str] = None, id_experiment: Optional[uuid.UUID | str] = None,
                        progress: Optional[Report] = None) -> Experiment:
        """Load by name or id and extract its archives into the documented layout; `progress`
        is given a Step (task "load", item the field) as each archive's bytes are read."""
        experiment = self.read_experiment(name, id_experiment)
        self.extract_fields(experiment, progress=progress)
        return experiment

    def read_experiment(self, name: Optional[str] = None, id_experiment: Optional[uuid.UUID | str] = None) -> Experiment:
        """The stored experiment, without extracting anything."""
        if id_experiment is not None and not isinstance(id_experiment, uuid.UUID):
            id_experiment = parse_experiment_id(id_experiment)
        record = self.index.get_experiment(name=name, id_experiment=id_experiment)
        if record is None:
            raise ExperimentNotFound(f"experiment {name or id_experiment!r} not found")
        fields = datapak.loads(record.fields, FIELD_DECODERS)
        return Experiment(self, record.id_experiment, record.name, fields, record.meta)

    def extract_fields(self, experiment: Experiment, target: Optional[str] = None,
                       only: Optional[str] = None, progress: Optional[Report] = None) -> list[str]:
        """Extract the experiment's archives (or field `only`) into `target` (default
        `<archivestore>/<experiment id>`): its archive fields, then the archives its runs
        reference (MLtraq extracts those into the same folder). Returns the fields done."""
        jobs: list[tuple[str, Optional[str], Optional[int], Optional[ArchiveStore]]]
        jobs = [(p, a.blob_id, a.size, a) for p, a in archive_fields(experiment.fields)]
        jobs += [(r.label, r.blob_id, self._size_of(r.blob_id), None) for r in self._run_refs(experiment)]
        jobs = [job for job in jobs if only is None or job[0] == only]
        if not jobs:
            return []
        target = target or os.path.join(stores.archivestore_root(), str(experiment.id_experiment))
        store = self.content_store()
        store.check_readable()  # a datastore of an unknown format fails the load once, not field by field
        failures, done = [], []
        for path, blob_id, size, archive in jobs:
            try:
                blob = checked_id(blob_id)
                step = meter(progress, "load", path, size)
                store.extract(blob, target, size=size, recorded=self.index.facts_hint(blob), progress=step)
                if step is not None:
                    step.finish()
            except (CasStoreError, OSError) as exc:
                failures.append(FieldFailure(str(experiment.id_experiment), path, str(blob_id), exc))
                continue
            if archive is not None:
                archive.params.target = target
            done.append(path)
        if failures:
            raise LoadError(failures, experiment)
        return done

    def _run_refs(self, experiment: Experiment) -> list[Ref]:
        """The experiment's run-level references, in the order MLtraq extracts them: column by
        column in the meta's order, each in run-table row order, so that where runs share an
        `arc_dir` the same file wins. References that no cell names come last."""
        refs = [r for r in self.index.refs_of(experiment.id_experiment) if r.id_run]
        if not refs:
            return refs
        rank = {key: i for i, key in enumerate(_run_archive_order(self.index, experiment))}
        return sorted(refs, key=lambda r: rank.get((r.id_run, r.field), len(rank)))

    def _size_of(self, blob_id: str) -> Optional[int]:
        facts = self.index.facts_hint(blob_id)
        return facts.size if facts else None

    def persist_experiment(self, experiment: Experiment, name: Optional[str] = None,
                           if_exists: str = "fail") -> Experiment:
        """Store a copy of `experiment` in this session's database, under a new id and `name`
        if given (else the experiment's name), and return the copy (MLtraq's method). The
        experiment itself is left as it was. Copying between projects needs the archives'
        blobs in this session's datastore (a folder not yet stored is archived here)."""
        _check_if_exists(if_exists)
        runs = read_runs_meta(experiment.meta)
        if runs is not None and runs.count > 0 and runs.fields:
            raise InvalidInput(f"experiment {experiment.name!r} has {runs.count} MLtraq run(s) with fields, which "
                               "a casstore Session cannot copy (the copy would lose them): copy it with MLtraq")
        copied = experiment.copy_to(name=name, session=self)
        self.save_experiment(copied, if_exists)
        return copied

    def save_experiment(self, experiment: Experiment, if_exists: str = "fail",
                        progress: Optional[Report] = None) -> None:
        """Store `experiment` itself (what `Experiment.persist` does). Bad input is refused
        before anything is written: values casstore cannot store, archive fields whose
        dotted paths collide, folders with a member that could not be extracted. `progress`
        is given a Step (task "persist", item the field) as each folder's bytes are archived."""
        _check_if_exists(if_exists)
        datapak.encode(experiment.fields, path="fields", fallback=frames.encode)
        if if_exists == "fail" and self._exists(experiment):
            raise _already_exists(experiment)
        archives = _distinct_archive_fields(experiment)
        target = os.path.join(os.path.abspath(stores.archivestore_root()), str(experiment.id_experiment))
        scans = [None if a.src_dir is None else a.scan_for(target) for _, a in archives]
        store = self.content_store(for_write=bool(archives))
        with store.lease() as lease:
            facts = [self._store_archive(store, archive, lease, scanned, meter(progress, "persist", path))
                     for (path, archive), scanned in zip(archives, scans)]
            if archives:
                self._settle(store)
            refs = [Ref(path, f.blob_id, a.params.arc_dir) for (path, a), f in zip(archives, facts)]
            record = ExperimentRecord(experiment.id_experiment, experiment.name,
                                      datapak.dumps(experiment.fields, path="fields", fallback=frames.encode),
                                      experiment.meta or _default_meta(experiment))
            replaced = self.index.save_experiment(record, refs, facts, if_exists)
        for old in replaced:
            rmtree(os.path.join(stores.archivestore_root(), str(old)), ignore_errors=True)

    def _exists(self, experiment: Experiment) -> bool:
        return (self.index.get_experiment(name=experiment.name) is not None
                or self.index.get_experiment(id_experiment=experiment.id_experiment) is not None)

    def _store_archive(self, store: ContentStore, archive: ArchiveStore, lease: Lease,
                       scanned: Optional[list[Entry]], step: Optional[Meter] = None) -> BlobFacts:
        """Archive a folder (`scanned`, its members), or keep the blob of an ArchiveStore
        that was loaded."""
        if archive.src_dir is not None:
            codec, level = stores.codec_and_level()
            info = store.put_dir(archive.src_dir, archive.params.arc_dir, archive.params.include,
                                 archive.params.exclude, lease=lease, codec=codec, level=level,
                                 recorded=self.index.facts_hint, scanned=scanned, progress=step)
            if step is not None:
                step.finish()
            archive.stored(info)
            return info
        blob_id = checked_id(archive.blob_id)
        lease.add(blob_id)
        found = store.blobs.find_leased(blob_id)
        if found is None:
            raise BlobNotFound(f"blob {blob_id} of this experiment is not in the datastore {store.blobs.url}")
        known = self.index.facts_hint(blob_id)
        size = known.size if known else archive.size
        if size is None:  # a value written without its size, and no sound facts row: re-hash to learn it
            size = store.check(blob_id)
        return facts_of(found, size)

    def delete_experiment(self, experiment: Experiment | str | uuid.UUID) -> None:
        """Remove the experiment's row and references, then its extraction folder. Blobs stay
        until `casstore gc` finds them unreferenced. `experiment` is an Experiment (deleted
        by its id, stored or not, as MLtraq's `Experiment.delete`), a name, or an id (a UUID
        or its text; a name is looked up first, as `casstore extract` does): a name or id
        that names no stored experiment raises ExperimentNotFound."""
        if isinstance(experiment, Experiment):
            id_experiment = experiment.id_experiment
        elif isinstance(experiment, (str, uuid.UUID)):
            id_experiment = find_experiment(self.index, str(experiment)).id_experiment
        else:
            raise InvalidInput(f"delete_experiment takes an Experiment, a name or an id, got "
                               f"{type(experiment).__name__}")
        self.index.delete_experiment(id_experiment)
        rmtree(os.path.join(stores.archivestore_root(), str(id_experiment)), ignore_errors=True)

    def verify(self, deep: bool = False) -> VerifyReport:
        """`casstore verify` on this project (docs/gc.md)."""
        return verify(self.index, self.content_store(), field_roots=field_roots, deep=deep)

    def gc(self, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False,
           progress: Optional[Report] = None) -> GcReport:
        """`casstore gc` on this project's datastore (docs/gc.md)."""
        return collect(self.index, self.content_store(), field_roots=field_roots, grace_s=grace_s, dry_run=dry_run,
                       progress=progress)

    def ls(self) -> Any:
        """The stored experiments: a pandas DataFrame (id_experiment, name, table_name: the
        name of MLtraq's run table) if pandas is installed, as MLtraq returns, else a list
        of Bunch with the same keys."""
        rows = [Bunch(id_experiment=i, name=n, table_name=table_name(n)) for i, n in self.index.list_experiments()]
        try:
            import pandas as pd  # type: ignore[import-untyped]  # no stubs installed; optional dependency
        except ImportError:
            return rows
        return pd.DataFrame(rows, columns=["id_experiment", "name", "table_name"])


def parse_experiment_id(value: str) -> uuid.UUID:
    """An experiment id from its text, matched whole: 32 hex digits, with or without the four
    dashes. `uuid.UUID` alone also takes braces, 'urn:uuid:', and (through `int`) spaces, a
    sign and underscores, so that ' 1234…' named the experiment '01234…'."""
    text = value if isinstance(value, str) else str(value)
    if _UUID_TEXT.fullmatch(text) is None:
        raise InvalidInput(f"not an experiment id: {value!r} (expected 32 hex digits, dashed or not)")
    return uuid.UUID(text)


def find_experiment(index: Index, name_or_id: str) -> ExperimentRecord:
    """The experiment named `name_or_id`, else the one with that id (as `casstore extract`
    takes either); ExperimentNotFound if there is neither."""
    record = index.get_experiment(name=name_or_id)
    if record is None:
        try:
            record = index.get_experiment(id_experiment=parse_experiment_id(name_or_id))
        except ValueError:
            record = None
    if record is None:
        raise ExperimentNotFound(f"no experiment named {name_or_id!r} or with that id in {safe_url(index.url)}")
    return record


def field_roots(index: Index) -> Iterator[FieldRoot]:
    """The archive values of every experiment's fields, and of the serialized columns of its
    MLtraq run table (run-level archives a migration rewrote), decoded as a load decodes
    them: the roots gc keeps and verify checks (casstore.cas.live.roots.FieldRoots). A value that
    does not decode raises FieldsUnreadable: which blobs it names is unknown."""
    for id_experiment, name, fields, meta in index.iter_fields():
        where = f"experiment {name!r} ({id_experiment})"
        yield from _roots_of(str(id_experiment), "", fields, "", f"{where}: its fields")
        runs = runs_meta(meta)
        if runs is None and meta is not None:
            raise FieldsUnreadable(f"{where}: its meta does not decode, so its run table cannot be read")
        for raw_id, column, value in index.iter_run_cells(*runs) if runs else ():
            yield from _roots_of(str(id_experiment), run_hex(raw_id), value, column,
                                 f"{where}: run {raw_id!r} column {column!r}")


def _run_archive_order(index: Index, experiment: Experiment) -> Iterator[tuple[str, str]]:
    """(id_run, field) of the archives in the experiment's run table, in MLtraq's load order:
    it decodes the serialized columns one after the other, in the meta's order, each down
    the rows. A cell that does not decode is skipped (its archive is extracted last)."""
    runs = read_runs_meta(experiment.meta)
    if runs is None:
        return
    for column in runs.serialized:
        for raw_id, _, value in index.iter_run_cells(runs.table_name, [column]):
            try:
                roots = _roots_of(str(experiment.id_experiment), run_hex(raw_id), value, column, "")
            except FieldsUnreadable:
                continue
            yield from ((root.id_run, root.field) for root in roots)


def _roots_of(experiment: str, id_run: str, data: bytes, prefix: str, where: str) -> list[FieldRoot]:
    try:
        found = [(path, checked_id(archive.blob_id))
                 for path, archive in archive_fields(datapak.loads(data, DECODERS), prefix)]
    except (CasStoreError, KeyError, TypeError, ValueError) as exc:
        raise FieldsUnreadable(f"{where} do not decode ({exc}): which blobs they name is unknown") from exc
    return [FieldRoot(experiment, id_run, path, blob_id) for path, blob_id in found]



def _distinct_archive_fields(experiment: Experiment) -> list[tuple[str, ArchiveStore]]:
    """The experiment's archive fields (`archive_fields`), refused with InvalidInput if two
    have one dotted path (`"a.b"` and `a={"b": ...}`): the index names a field by its path."""
    archives = list(archive_fields(experiment.fields))
    seen: set[str] = set()
    for path, _ in archives:
        if path in seen:
            raise InvalidInput(f"experiment {experiment.name!r} has two archive fields named {path!r} once "
                               "flattened (such as 'a.b' and a={'b': ...}): rename one")
        seen.add(path)
    return archives


def _check_if_exists(if_exists: str) -> None:
    if if_exists not in IF_EXISTS:
        raise InvalidInput(f"if_exists must be one of {', '.join(IF_EXISTS)}, got {if_exists!r}")


def _already_exists(experiment: Experiment) -> CasStoreError:
    return ExperimentAlreadyExists(
        f"experiment {experiment.name!r} already exists, pass if_exists=\"replace\" to overwrite it")


def _default_meta(experiment: Experiment) -> bytes:
    meta = Bunch(runs=Bunch(count=0, table_name=table_name(experiment.name),
                            columns=Bunch(types={}, serialized=[], non_serialized=[])),
                 version=Bunch(casstore=__version__))
    return datapak.dumps(meta)


def create_session(url: Optional[str] = None) -> Session:
    """A session on the database at `url` (default: option `database.url`, in memory)."""
    return Session(url)


def create_experiment(name: Optional[str] = None, url: Optional[str] = None, ask_password: Optional[bool] = None,
                      **fields: Any) -> Experiment:
    """MLtraq's shortcut: a new experiment bound to a new session on `url` (default: option
    `database.url`). `ask_password=True` (MLtraq prompts for the password) is refused:
    put the password in the URL or in the driver's environment (PGPASSWORD)."""
    if ask_password:
        raise InvalidInput("ask_password is not supported: give the password in the URL or the driver's "
                           "environment (PGPASSWORD)")
    return create_session(url).create_experiment(name=name, **fields)
