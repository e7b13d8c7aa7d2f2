"""stats: how much a project references, and what dedup and compression save.

`logical_bytes` sums the canonical (uncompressed) TAR size of every reference, as if each
field kept its own copy; `stored_bytes` sums what the distinct referenced blobs take in the
datastore, read from the datastore itself rather than from the index: a whole blob its
file, a chunked one its manifest, and each chunk once however many blobs use it (P13).
Their ratio is what content addressing, chunking (and compression, when on) save.

Of the whole datastore: `on_disk_bytes`, everything it holds for casstore (every blob copy,
manifests included, and every chunk copy, each once; damaged copies in the quarantine;
temp files of interrupted writes), of which `reclaimable_bytes` is what gc could delete (no
project, named reference or write in progress keeps it; the grace period aside: verify's
list) and `referenced_bytes` the rest. Reclaimable bytes need every registered database
(the field roots): without them, or when one cannot be read, they are None and
`reclaimable_unknown` says why. `standalone_archives` counts the named references
(ArchiveStoreIO) as verify checks them. Knows nothing of printing."""

from __future__ import annotations

from dataclasses import dataclass, replace

from casstore.cas.backends.base import BlobStat
from casstore.cas.chunk_census import chunks_of, stored_chunks
from casstore.cas.index.queries import Index
from casstore.cas.live.refs import NamedRef, owned_refs
from casstore.cas.live.roots import FieldRoots, leftovers
from casstore.cas.reclaim import reclaimable, stored_copies
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.store.content_store import ContentStore
from casstore.errors import DatastoreError


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
    on_disk_bytes: int = 0  # what the datastore holds: blob copies, chunk copies, quarantine, temp files
    referenced_bytes: int | None = None  # on_disk_bytes less reclaimable_bytes
    reclaimable_bytes: int | None = None  # what gc could delete, the grace period aside (verify's list)
    reclaimable_unknown: str | None = None  # why reclaimable_bytes is None
    standalone_archives: int = 0  # named references (ArchiveStoreIO) in the datastore


def project_stats(index: Index, store: ContentStore, field_roots: FieldRoots | None = None) -> Stats:
    """The project's references and the datastore's bytes; the reclaimable bytes only with
    `field_roots` (roots.FieldRoots), which decode the fields of every registered database."""
    owned, others = owned_refs(store.blobs, {i for i, _ in index.list_experiments()})
    found = _project_stats(index, store, [named for _owner, named in owned])
    on_disk = _on_disk_bytes(store)
    standalone = len(others)
    why: str | None = "the fields of the registered databases were not read"
    reclaim: int | None = None
    if field_roots is not None:
        try:
            reclaim = sum(r.bytes for r in reclaimable(index, store, field_roots))
            why = None
        except DatastoreError as exc:  # a registered database gc would refuse on: verify and gc say more
            why = str(exc)
    return replace(found, on_disk_bytes=on_disk, standalone_archives=standalone, reclaimable_bytes=reclaim,
                   referenced_bytes=None if reclaim is None else on_disk - reclaim, reclaimable_unknown=why)


def _on_disk_bytes(store: ContentStore) -> int:
    """Every blob copy and chunk copy (each once, however many blobs use a chunk), the
    quarantined copies and the temp files of interrupted writes."""
    blobs, chunks = store.blobs, chunk_store(store.blobs)
    total = sum(copy.stored_size for found in stored_copies(store).values() for copy in found)
    total += sum(copy.stored_size for copy in chunks.iter_blobs())
    total += sum(q.size for ns in (blobs, chunks) for q in ns.iter_quarantine())
    return total + sum(o.size for o in leftovers(blobs))


def _project_stats(index: Index, store: ContentStore, owned: list[NamedRef]) -> Stats:
    """`owned`: the archives of an MLtraq-form project, references in its experiments'
    folders (refs.owned_refs), counted as references too."""
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
    for named in owned:
        references += 1
        if named.blob_id is not None:  # owned_refs gives only references that name a blob
            distinct.add(named.blob_id)
        logical += named.size or 0
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
