"""The report of a migration: what `execute` changed (or, in a dry run, would change), what
it could not migrate and why, and the events it passes to `progress` as it goes. The CLI
prints it (casstore/cli/migrate.py) or dumps `to_dict()` as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from casstore.mltraq.migrate.survey import Orphan

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
    blob_bytes: int = 0  # their stored size (a chunked blob: its manifest and its chunks, each chunk once)
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

    def count_deleted(self, size: int) -> None:
        """A legacy TAR deleted (or that would be, dry run)."""
        self.deleted_files += 1
        self.deleted_bytes += size

    def count_kept(self, size: int) -> None:
        """A migrated legacy TAR left on disk (--keep-legacy)."""
        self.kept_files += 1
        self.kept_bytes += size

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bytes_saved"] = self.bytes_saved
        out["exit_code"] = self.exit_code
        return out
