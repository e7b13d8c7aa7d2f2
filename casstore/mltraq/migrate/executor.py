"""The executor: `execute(plan, ...)` migrates what the survey found, one experiment at a time.

Each legacy TAR is turned into its canonical TAR (legacy.py) and stored under its content
digest (under a lease), the blob is re-read and checked, then one transaction replaces each
reference by casstore's (rewrite.py), inserts the index rows (run-level ones with their
id_run) and records each migrated legacy file in casstore_meta (survey.Pending). Only after
that commit are the legacy TARs deleted (`keep_legacy` keeps them), and their casstore_meta
records with them. Last, each standalone TAR is stored and checked the same way, then
replaced (one atomic rename) by a named reference at the same path (casstore.cas.live.refs),
so that the URL the user kept still opens it through ArchiveStoreIO."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.backends.localfs import open_regular
from casstore.cas.chunk_census import named_chunk_bytes
from casstore.cas.chunks.policy import policy_from
from casstore.cas.digest import DigestSink
from casstore.cas.index.engine import write_transaction
from casstore.cas.index.facts import BlobFacts
from casstore.cas.index.queries import Index, Ref
from casstore.cas.live.leases import Lease
from casstore.cas.live.refs import RefFacts, named_ref_data
from casstore.cas.live.moves import record_datastore, recorded_datastore, settle_registration
from casstore.cas.store.codecs import CODECS
from casstore.cas.store.content_store import ContentStore
from casstore.cas.tar.write import Sink
from casstore.errors import CasStoreError, CorruptBlob, DatastoreError, InvalidInput, SourceChanged, UnreadableObject
from casstore.mltraq.legacy import LegacyArchiveError, LegacyMember, canonical_members, read_members, write_canonical
from casstore.mltraq.migrate.report import (MigrationEvent, MigrationReport, Progress, RefFailure,
                                            StandaloneArchive)
from casstore.mltraq.migrate.rewrite import rewrite_datapak
from casstore.mltraq.migrate.survey import ExperimentPlan, LegacyRef, MigrationPlan, Orphan, pending_key
from casstore.mltraq.migrate.tables import Cell, read_cell, read_engine, sha, update_cell, where
from casstore.opts import options

LEGACY_ARC_DIR = "."  # member names of a legacy TAR already hold MLtraq's arc_dir

@dataclass
class _Stored:
    info: BlobFacts
    legacy_size: int
    relpath: str  # of the legacy TAR, in the datastore


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
    _Run(plan, report, dry_run, keep_legacy, progress, codec, level).run_all()
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
        self.store = ContentStore(LocalBlobStore(plan.datastore),
                                  policy=policy_from(options().get("datastore.chunks", otherwise={})))
        self.stored: dict[str, _Stored] = {}  # legacy relpath -> blob (this run)
        self.checked: set[str] = set()
        self.blobs_seen: dict[str, int] = {}  # blob id -> stored size, over migrated references
        self.new_blobs: set[str] = set()
        # References still pointing at each legacy file: deleted only when none is left.
        self.remaining: dict[str, int] = {}
        for ref in plan.refs:
            if ref.relpath:
                self.remaining[ref.relpath] = self.remaining.get(ref.relpath, 0) + 1

    def run_all(self) -> None:
        """Every experiment of the plan, then the standalone archives, between start and close."""
        try:
            self.start()
            self.finish_pending()
            for i, exp in enumerate(self.plan.experiments):
                self.experiment(exp, i)
            self.standalone(self.plan.standalone)
            blobs = self.store.blobs
            self.report.blob_bytes += named_chunk_bytes(blobs, [c for b in self.blobs_seen if (c := blobs.find(b))
                                                                and c.codec == "chunked"])
        finally:
            self.close()

    # setup

    def start(self) -> None:
        if self.dry_run:
            return
        self.index = Index.open(self.plan.db_url)
        blobs = self.store.blobs
        recorded = recorded_datastore(self.index)
        if recorded is not None and os.path.abspath(recorded) != blobs.url:
            raise DatastoreError(f"the database already uses datastore {recorded}, not {blobs.url}: migrate "
                                 "with --datastore pointing at the folder MLtraq wrote, as that one")
        blobs.ensure_format()
        record_datastore(self.index, blobs.url)
        settle_registration(blobs, self.index)

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
                self.report.count_kept(p.size)
                continue
            if self.dry_run:
                if exists:
                    self.report.count_deleted(p.size)
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
            if self.dry_run:
                info = self._planned(f, members)
            else:
                assert lease is not None
                info = self._ingest(f, members, lease)
        stored = _Stored(info, legacy_size, relpath)
        self.stored[relpath] = stored
        return stored

    def _planned(self, f: Any, members: list[LegacyMember]) -> BlobFacts:
        """The facts a real run would record for `members` (a dry run: nothing is written)."""
        digest = DigestSink(self.store.algorithm)
        size = write_canonical(f, members, [digest])
        blob_id = digest.blob_id()
        found = self.store.blobs.find(blob_id)
        new = found is None and blob_id not in self.new_blobs
        stored = found.stored_size if found else size
        return BlobFacts(blob_id, size, stored, found.codec if found else self.codec, new, stored if new else 0)

    def _ingest(self, f: Any, members: list[LegacyMember], lease: Lease) -> BlobFacts:
        """Store the canonical TAR of `members` (read from `f`) through the content store's
        ingest, which checks a copy already under the id before it trusts it."""

        def write(sinks: Sequence[Sink], _progress: object) -> int:
            return write_canonical(f, members, sinks)

        try:
            return self.store.put_tar_stream(write, lease=lease, codec=self.codec, level=self.level,
                                             source="the legacy TAR", hash_first=True)
        except SourceChanged as exc:
            raise LegacyArchiveError("the legacy TAR changed while it was read") from exc

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
                if current is None or sha(current) != cell.digest:
                    raise _ExperimentChanged("the value changed since the plan was made: run the migration again")
                new = rewrite_datapak(current, [(ref.path, _casstore_value(s.info)) for ref, s in items])
            except (CasStoreError, SQLAlchemyError) as exc:
                for ref, _ in items:
                    self._fail(ref, f"cannot rewrite {where(cell)}: {exc}")
                continue
            out[cell] = (current, new)
        return out

    def _read_cell(self, cell: Cell) -> bytes | None:
        if self.index is not None:
            return read_cell(self.index.engine, cell)
        if self._read_only is None:
            self._read_only = read_engine(self.plan.db_url)
        return read_cell(self._read_only, cell)

    def _commit(self, exp: ExperimentPlan, done: list[tuple[LegacyRef, _Stored]],
                cells: dict[Cell, tuple[bytes, bytes]]) -> None:
        """One transaction: MLtraq's cells rewritten, with the index's rows for them."""
        assert self.index is not None
        with write_transaction(self.index.engine) as conn:
            for cell, (current, new) in cells.items():
                if not update_cell(conn, cell, current, new):
                    raise _ExperimentChanged(f"{where(cell)} changed during the migration: run it again")
            self.index.put_blob_facts(conn, [s.info for _, s in done])
            self.index.put_refs(conn, exp.id_experiment, [Ref(ref.field, s.info.blob_id, LEGACY_ARC_DIR, ref.id_run)
                                                          for ref, s in done])
            for relpath in sorted({s.relpath for _, s in done}):
                stored = self.stored[relpath]
                self.index.set_fact(pending_key(relpath), json.dumps(
                    {"path": relpath, "blob": stored.info.blob_id, "size": stored.legacy_size}), conn)

    def _count_migrated(self, exp: ExperimentPlan, done: list[tuple[LegacyRef, _Stored]]) -> None:
        r = self.report
        r.experiments_migrated += 1
        r.references_migrated += len(done)
        files = {s.relpath: s for _, s in done}
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
                r.new_bytes += s.info.added

    def _clean(self, done: list[tuple[LegacyRef, _Stored]]) -> None:
        for _, s in done:
            self.remaining[s.relpath] -= 1
        for relpath in sorted({s.relpath for _, s in done}):
            stored = self.stored[relpath]
            if self.remaining[relpath] > 0:
                continue  # another reference, not migrated (yet), still needs it
            if self.keep_legacy:
                self.report.count_kept(stored.legacy_size)
                continue
            if self.dry_run:
                self.report.count_deleted(stored.legacy_size)
                continue
            self._delete_legacy(relpath, stored.legacy_size)
            self._forget_pending([pending_key(relpath)])

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
        self.report.count_deleted(size)
        parent = os.path.dirname(path)
        if parent != self.plan.datastore:
            try:
                os.rmdir(parent)  # only if empty: DataStore files of the experiment stay
            except OSError:
                pass

    def _forget_pending(self, keys: list[str]) -> None:
        assert self.index is not None
        self.index.forget_facts(keys)

    def _fail(self, ref: LegacyRef, reason: str) -> None:
        self.report.failures.append(RefFailure(ref.experiment, ref.label, ref.url, reason))

    def _emit(self, stage: str, exp: ExperimentPlan, i: int, total: int) -> None:
        if self.progress is not None:
            self.progress(MigrationEvent(stage, exp.name, i, total))



def _casstore_value(info: BlobFacts) -> dict[str, Any]:
    return {"blob": info.blob_id, "arc_dir": LEGACY_ARC_DIR, "size": info.size}
