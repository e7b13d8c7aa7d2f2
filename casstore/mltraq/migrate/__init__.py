"""Migrate an MLtraq 0.1.165 project in place: legacy TARs into the content store.

The entry point for callers (the `casstore migrate` command, tests). Two steps, dvc's
prepare()/migrate() split:

* `plan(db_url, datastore)` (survey.py) reads the database and the datastore, and never
  writes either: every `mltraq.ArchiveStore-0` reference, the legacy files a previous run
  still has to delete, standalone ArchiveStoreIO TARs, and the orphans it only reports.
* `execute(plan, ...)` (executor.py) migrates one experiment at a time: blobs stored and
  checked under a lease, then one transaction rewrites MLtraq's rows (tables.py, with the
  byte-exact DataPak rewrite of rewrite.py) together with casstore's index rows, then the
  legacy TARs are deleted; last, standalone TARs become named references at the same path.
  It returns a `MigrationReport` (report.py).

Every state is resumable: a killed run leaves either an experiment untouched (legacy
references; at most unreferenced blobs that gc reclaims) or committed (the legacy files it
still had are recorded in casstore_meta, and the next run deletes them after checking
their blobs again). Re-running a finished migration changes nothing. See docs/migration.md.

`execute_in_place(plan, ...)` (mltraq_form.py, `casstore migrate --form mltraq`) keeps the
database byte for byte and replaces each legacy TAR by a named reference to its blob: the
form `casstore.mltraq.enable()` writes and reads."""

from casstore.mltraq.migrate.executor import execute
from casstore.mltraq.migrate.mltraq_form import execute_in_place
from casstore.mltraq.migrate.report import MigrationEvent, MigrationReport, Progress, RefFailure, StandaloneArchive
from casstore.mltraq.migrate.rewrite import rewrite_datapak
from casstore.mltraq.migrate.survey import (ExperimentPlan, LegacyRef, MigrationPlan, Orphan, Pending, datastore_path,
                                            plan)

__all__ = ["ExperimentPlan", "LegacyRef", "MigrationEvent", "MigrationPlan", "MigrationReport", "Orphan", "Pending",
           "Progress", "RefFailure", "StandaloneArchive", "datastore_path", "execute", "execute_in_place", "plan",
           "rewrite_datapak"]
