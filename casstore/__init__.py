"""casstore: a content-addressed archive store with a dedup index.

MLtraq's archive API (ArchiveStore, ArchiveStoreIO, Archive) on a store where a folder is
kept once, as a canonical TAR under its content digest, whatever experiment, field or
project attaches it. Switch from MLtraq by replacing `mltraq` with `casstore` in imports."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from casstore.errors import (
    BlobNotFound,
    CasStoreError,
    CorruptBlob,
    ExperimentAlreadyExists,
    ExperimentNotFound,
    InvalidInput,
    LoadError,
    SourceNotFound,
    UnsafeArchive,
    UnsupportedValue,
)
from casstore.version import __version__

if TYPE_CHECKING:
    from casstore.experiment import Experiment
    from casstore.opts import options
    from casstore.session import Session, create_experiment, create_session
    from casstore.storage.archivestore import Archive, ArchiveStore, ArchiveStoreIO
    from casstore.utils.bunch import Bunch

# The user API is imported on first use (PEP 562), so that `import casstore` and the CLI's
# `--help` do not import SQLAlchemy, Alembic, zstandard or the blob store backends
# (docs/performance.md, "Start-up").
_LAZY = {
    "Archive": "casstore.storage.archivestore",
    "ArchiveStore": "casstore.storage.archivestore",
    "ArchiveStoreIO": "casstore.storage.archivestore",
    "Bunch": "casstore.utils.bunch",
    "Experiment": "casstore.experiment",
    "Session": "casstore.session",
    "create_experiment": "casstore.session",
    "create_session": "casstore.session",
    "options": "casstore.opts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'casstore' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Archive",
    "ArchiveStore",
    "ArchiveStoreIO",
    "BlobNotFound",
    "Bunch",
    "CasStoreError",
    "CorruptBlob",
    "Experiment",
    "ExperimentAlreadyExists",
    "ExperimentNotFound",
    "InvalidInput",
    "LoadError",
    "Session",
    "SourceNotFound",
    "UnsafeArchive",
    "UnsupportedValue",
    "__version__",
    "create_experiment",
    "create_session",
    "options",
]
