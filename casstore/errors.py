"""One hierarchy of errors. Each also inherits the builtin a caller would expect, so
`except FileNotFoundError` keeps working for code written against MLtraq or the stdlib."""

from __future__ import annotations

from dataclasses import dataclass


class CasStoreError(Exception):
    """Base of every error casstore raises on purpose."""

    @property
    def message(self) -> str:
        """The error's text, as MLtraq's errors (ExceptionWithMessage) carry it."""
        return str(self)


class InvalidInput(CasStoreError, ValueError):
    """An argument that cannot be used (bad arc_dir, bad option value, bad URL...)."""


class UnsupportedValue(CasStoreError, TypeError):
    """A field value of a type casstore cannot store. Raised before anything is written."""


class ExperimentNotFound(CasStoreError, LookupError):
    """No experiment with that name or id in the database."""


class ExperimentAlreadyExists(CasStoreError, FileExistsError):
    """persist(if_exists="fail") on a name that is already stored."""


class SourceNotFound(CasStoreError, FileNotFoundError):
    """The folder to archive does not exist (or vanished)."""


class SourceChanged(CasStoreError, RuntimeError):
    """A file changed while it was being archived: no blob is written for it."""


class BlobNotFound(CasStoreError, FileNotFoundError):
    """A blob id that the datastore does not hold."""


class CorruptBlob(CasStoreError, ValueError):
    """A blob whose bytes do not match its id, or that does not read as an archive.

    `reason` says which: "digest", "size" or "unreadable" (verify's problem kinds), or
    "reference" (CorruptReference)."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


class CorruptReference(CorruptBlob):
    """A named reference (ArchiveStoreIO) that cannot be trusted to bound a read: no valid
    blob id or size, or another blob than the one the caller pinned. Nothing is read."""

    def __init__(self, message: str):
        super().__init__(message, "reference")


class UnsafeArchive(CasStoreError, ValueError):
    """An archive member that would escape the target or is of a forbidden type."""


class DatastoreError(CasStoreError, OSError):
    """The datastore cannot be used (unreadable, wrong format version, not a datastore)."""


class NoSpace(CasStoreError, OSError):
    """Extraction ran out of room (ENOSPC, EDQUOT, or EFBIG under a file-size limit). The
    staging folder was removed; `errno` is the one the file system gave."""


class UnresolvedRegistryEntry(DatastoreError):
    """A registry entry that gc and verify cannot read, reach or trust: they refuse, since
    the project it names could lose its blobs. `key` names the entry (docs/gc.md)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class UnreadableObject(DatastoreError):
    """A datastore object casstore will not read: not a regular file (a symlink, a FIFO, a
    device), or larger than the bound its reader trusts. Nothing of it was read."""


class FieldsUnreadable(DatastoreError):
    """A project's fields (or run table cells) that do not decode: which blobs they name is
    unknown, so gc refuses and verify calls it damage."""


class DamagedIndex(CasStoreError, ValueError):
    """A row of casstore's tables that does not hold what it must (a size that is not a byte
    count, an unknown codec): the index is damaged."""


class DatabaseFailure(CasStoreError, OSError):
    """The project database failed (disk full, connection lost...): the transaction was
    rolled back, so what was stored stays as it was."""


class SchemaOutdated(CasStoreError, RuntimeError):
    """The database holds an older casstore schema: run `casstore db upgrade`."""


@dataclass(frozen=True)
class FieldFailure:
    """One field of an experiment that could not be extracted."""

    experiment: str
    field: str
    blob: str
    error: BaseException

    def __str__(self) -> str:
        return f"field {self.field!r} (experiment {self.experiment}, blob {self.blob}): {self.error}"


class LoadError(CasStoreError, RuntimeError):
    """Some fields of an experiment could not be extracted; the others were.

    `failures` lists every failed field; `experiment` holds the loaded experiment so that
    callers can still use the fields that did extract."""

    def __init__(self, failures: list[FieldFailure], experiment: object = None):
        self.failures = failures
        self.experiment = experiment
        lines = "; ".join(str(f) for f in failures)
        super().__init__(f"{len(failures)} field(s) failed to extract: {lines}")


# MLtraq's names, so code catching them keeps working after the import swap.
ExperimentNotFoundException = ExperimentNotFound
ExperimentAlreadyExistsException = ExperimentAlreadyExists


class TargetConflict(CasStoreError, IsADirectoryError):
    """Extraction would replace a folder of the target by a file, or write through a file."""
