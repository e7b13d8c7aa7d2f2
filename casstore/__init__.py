"""casstore: a content-addressed archive store with a dedup index.

MLtraq's archive API (ArchiveStore, ArchiveStoreIO, Archive) on a store where a folder is
kept once, as a canonical TAR under its content digest, whatever experiment, field or
project attaches it. Switch from MLtraq by replacing `mltraq` with `casstore` in imports."""

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
from casstore.experiment import Experiment
from casstore.opts import options
from casstore.session import Session, create_experiment, create_session
from casstore.storage.archivestore import Archive, ArchiveStore, ArchiveStoreIO
from casstore.utils.bunch import Bunch
from casstore.version import __version__

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
