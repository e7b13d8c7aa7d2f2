"""stats: how much a project references, and what dedup and compression save.

`logical_bytes` sums the canonical (uncompressed) TAR size of every reference, as if each
field kept its own copy; `stored_bytes` sums what the distinct referenced blobs take in the
datastore, read from the datastore itself rather than from the index. Their ratio is what
content addressing (and compression, when on) saves. Knows nothing of printing."""

from __future__ import annotations

from dataclasses import dataclass

from casstore.cas.index.queries import Index
from casstore.cas.store.content_store import ContentStore


@dataclass(frozen=True)
class Stats:
    blobs: int  # distinct blobs the project's references name
    references: int  # index rows: (experiment, run, field) -> blob
    logical_bytes: int  # uncompressed archive bytes summed over references
    stored_bytes: int  # datastore bytes of the distinct referenced blobs that are there
    dedup_ratio: float  # logical / stored; 1.0 when nothing is stored
    missing_blobs: int  # referenced blobs the datastore does not hold (see `casstore verify`)
    unknown_size: int  # references whose blob has no facts (size) in the index


def project_stats(index: Index, store: ContentStore) -> Stats:
    references = 0
    logical = 0
    unknown = 0
    distinct: set[str] = set()
    for ref in index.iter_refs():
        references += 1
        distinct.add(ref.blob_id)
        if ref.size is None:
            unknown += 1
        else:
            logical += ref.size
    stored = 0
    missing = 0
    for blob_id in sorted(distinct):
        found = store.blobs.find(blob_id)
        if found is None:
            missing += 1
        else:
            stored += found.stored_size
    ratio = logical / stored if stored else 1.0
    return Stats(blobs=len(distinct), references=references, logical_bytes=logical, stored_bytes=stored,
                 dedup_ratio=ratio, missing_blobs=missing, unknown_size=unknown)
