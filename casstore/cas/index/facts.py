"""What casstore knows of a blob: its id, its size (the canonical TAR's bytes), and the copy
stored under the id (its stored size and codec). The index keeps these in `casstore_blobs`;
a write returns them for the caller to record; verify compares them with the datastore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from casstore.cas.backends.base import BlobStat
from casstore.cas.backends.layout import CODEC_SUFFIX
from casstore.errors import DamagedIndex


@dataclass(frozen=True, slots=True)
class BlobFacts:
    """The facts of one blob. `new` says whether the write that returned these facts
    published the copy (False for facts read back from the index), `added` how many bytes it
    added to the datastore; neither is compared."""

    blob_id: str
    size: int
    stored_size: int
    codec: str
    new: bool = field(default=False, compare=False)
    added: int = field(default=0, compare=False)  # bytes the write added to the datastore (its copy, new chunks)


def facts_of(copy: BlobStat, size: int, new: bool = False, chunk_bytes: int = 0) -> BlobFacts:
    """The facts of a stored copy whose canonical TAR has `size` bytes; `chunk_bytes`: the
    stored bytes of the chunks the write published for it."""
    return BlobFacts(copy.blob_id, size, copy.stored_size, copy.codec, new,
                     (copy.stored_size if new else 0) + chunk_bytes)


def checked_facts(blob_id: str, size: Any, stored_size: Any, codec: Any) -> BlobFacts:
    """The facts of a `casstore_blobs` row; DamagedIndex if another tool wrote what no
    writer of casstore does (SQLite stores 'big' in an integer column as it is)."""
    for name, value in (("size", size), ("stored_size", stored_size)):
        if type(value) is not int or value < 0:
            raise DamagedIndex(f"casstore_blobs row of {blob_id} has {name} {value!r}, not a byte count")
    if codec not in CODEC_SUFFIX:
        raise DamagedIndex(f"casstore_blobs row of {blob_id} has the unknown codec {codec!r}")
    return BlobFacts(blob_id, size, stored_size, codec)
