"""casstore: a content-addressed archive store with a dedup index.

MLtraq's archive API (ArchiveStore, ArchiveStoreIO, Archive) on a store where a folder is
kept once, as a canonical TAR under its content digest, whatever experiment, field or
project attaches it. Switch from MLtraq by replacing `mltraq` with `casstore` in imports."""

__version__ = "0.1.0"

from casstore.errors import (  # noqa: E402
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
from casstore.experiment import Experiment  # noqa: E402
from casstore.opts import options  # noqa: E402
from casstore.session import Session, create_session  # noqa: E402
from casstore.storage.archivestore import Archive, ArchiveStore, ArchiveStoreIO  # noqa: E402
from casstore.utils.bunch import Bunch  # noqa: E402

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
    "create_session",
    "options",
]
