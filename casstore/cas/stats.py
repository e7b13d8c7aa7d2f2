"""stats: how much a project references, and what dedup and compression save.

`logical_bytes` sums the canonical (uncompressed) TAR size of every reference, as if each
field kept its own copy; `stored_bytes` sums what the distinct referenced blobs take in the
datastore, read from the datastore itself rather than from the index: a whole blob its
file, a chunked one its manifest, and each chunk once however many blobs use it (P13).
Their ratio is what content addressing, chunking (and compression, when on) save. Knows
nothing of printing."""

from __future__ import annotations

from dataclasses import dataclass

from casstore.cas.backends.base import BlobStat
from casstore.cas.chunk_census import chunks_of, stored_chunks
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
    chunked_blobs: int = 0  # referenced blobs stored as manifests of chunks
    chunks: int = 0  # distinct chunks the chunked blobs use (counted once in stored_bytes)


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
    manifests = []
    for blob_id in sorted(distinct):
        found = store.blobs.find(blob_id)
        if found is None:
            missing += 1
        else:
            stored += found.stored_size
            if found.codec == "chunked":
                manifests.append(found)
    used = _chunks_used(store, manifests)
    stored += sum(used.values())
    ratio = logical / stored if stored else 1.0
    return Stats(blobs=len(distinct), references=references, logical_bytes=logical, stored_bytes=stored,
                 dedup_ratio=ratio, missing_blobs=missing, unknown_size=unknown, chunked_blobs=len(manifests),
                 chunks=len(used))


def _chunks_used(store: ContentStore, manifests: list[BlobStat]) -> dict[str, int]:
    """Stored bytes of each distinct chunk the manifests name (those stored)."""
    stored = stored_chunks(store.blobs)
    used: dict[str, int] = {}
    for manifest in manifests:
        for chunk_id in chunks_of(store.blobs, manifest):
            if chunk_id in stored:
                used[chunk_id] = stored[chunk_id].stored_size
    return used
