"""`casstore migrate --form mltraq`: the database keeps every byte; only the datastore changes.

Each legacy TAR an experiment references is stored as its canonical TAR under a lease, the
blob is re-read and checked (durable before anything else changes), then one atomic rename
replaces the TAR by a named reference to that blob at the same path (casstore.cas.live.refs,
written to a temp file first). That is the form `casstore.mltraq.enable()` writes: fields keep
MLtraq's `mltraq.ArchiveStore-0` URL, and MLtraq reads the archive through the integration. A
file already replaced (an earlier run, or the integration) counts as migrated before. A run
killed at any point leaves each file either a TAR or a reference (plus at most a blob gc
reclaims), so running it again finishes the job. Standalone ArchiveStoreIO TARs are converted
as by the default form (executor.standalone)."""

from __future__ import annotations

import os

from casstore.cas.backends.localfs import open_regular
from casstore.cas.live.leases import Lease
from casstore.cas.live.refs import MAX_REF_BYTES, RefFacts, named_ref_data, parse_named_ref
from casstore.errors import InvalidInput, UnreadableObject
from casstore.mltraq.migrate.executor import _Run
from casstore.mltraq.migrate.report import MigrationReport, Progress
from casstore.mltraq.migrate.survey import ExperimentPlan, MigrationPlan


def execute_in_place(plan: MigrationPlan, dry_run: bool = False, progress: Progress | None = None, *,
                     codec: str = "none", level: int = 3) -> MigrationReport:
    """Migrate what `plan` found into the integration's form; see the module's docstring."""
    report = MigrationReport(dry_run, False, plan.datastore, experiments=len(plan.experiments),
                             references_found=len(plan.refs),
                             references_already=sum(e.already for e in plan.experiments),
                             orphans=list(plan.orphans), warnings=list(plan.warnings))
    if plan.pending:
        raise InvalidInput("an interrupted `casstore migrate` (the default form) has legacy files left to delete: "
                           "finish it with `casstore migrate` first")
    _InPlaceRun(plan, report, dry_run, False, progress, codec, level).run_all()
    return report


class _InPlaceRun(_Run):
    def experiment(self, exp: ExperimentPlan, i: int) -> None:
        total = len(self.plan.experiments)
        todo = []
        for ref in exp.refs:
            if ref.problem is not None:
                self._fail(ref, ref.problem)
            elif ref.relpath is not None and self._is_reference(ref.relpath):
                self.report.references_already += 1
            else:
                todo.append(ref)
        if not todo:
            return
        lease = None if self.dry_run else Lease(self.store.blobs)
        try:
            done = self._store_all(todo, lease)
            self._emit("stored", exp, i, total)
            replaced = sorted({s.relpath for _, s in done})
            if not self.dry_run:
                for relpath in replaced:
                    info = self.stored[relpath].info
                    facts = RefFacts(info.stored_size, info.codec)
                    self.store.blobs.put_object(relpath, named_ref_data(info.blob_id, info.size, facts, None))
        finally:
            if lease is not None:
                lease.release()
        if not done:
            return
        self._count_migrated(exp, done)
        for relpath in replaced:
            self.report.count_deleted(self.stored[relpath].legacy_size)
        self._emit("cleaned", exp, i, total)

    def _is_reference(self, relpath: str) -> bool:
        try:
            with os.fdopen(open_regular(os.path.join(self.plan.datastore, relpath)), "rb") as f:
                head = f.read(MAX_REF_BYTES + 1)
        except (UnreadableObject, OSError):
            return False
        return parse_named_ref(relpath, head) is not None
