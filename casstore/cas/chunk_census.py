"""The chunks of a datastore and the manifests that name them, counted in one pass: what gc
may delete (chunks no manifest names), what verify reports (a manifest that names a chunk
that is not stored, or one that does not read), what stats counts once (P13).

A chunk is live while any manifest stored in the datastore names it, whichever project's
blob that manifest is: whether the blob itself is live is the blob gc's question (P8), and
a manifest goes only once it has answered it. A manifest that does not parse names chunks
nobody can list, so while there is one, no chunk is provably unreferenced: gc deletes none
(`unreadable`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from casstore.cas.backends.base import BlobStat, BlobStore, ObjectStat
from casstore.cas.chunks.manifest import iter_manifest
from casstore.cas.damage import damaged_ids
from casstore.cas.store.chunk_io import chunk_store, zstd_bound
from casstore.errors import BlobNotFound, CorruptBlob


@dataclass
class ChunkCensus:
    stored: dict[str, BlobStat] = field(default_factory=dict)  # chunk id -> a stored copy
    named: set[str] = field(default_factory=set)  # chunk ids some manifest names
    missing: dict[str, list[str]] = field(default_factory=dict)  # blob id -> chunks its manifest lacks
    unreadable: dict[str, str] = field(default_factory=dict)  # blob id -> why its manifest does not read
    uses: dict[str, int] = field(default_factory=dict)  # blob id -> stored bytes of its distinct chunks
    recorded: dict[str, list[str]] = field(default_factory=dict)  # blob id -> its chunks a read found damaged
    strangers: list[ObjectStat] = field(default_factory=list)  # what under chunks/ is no chunk
    damaged: set[str] = field(default_factory=set)  # chunk ids with a damage record


def stored_chunks(blobs: BlobStore, strangers: list[ObjectStat] | None = None) -> dict[str, BlobStat]:
    """Every stored chunk by id (of two copies, raw and zstd, the first listed)."""
    found: dict[str, BlobStat] = {}
    for chunk in chunk_store(blobs).iter_blobs(strangers):
        found.setdefault(chunk.blob_id, chunk)
    return found


def census(blobs: BlobStore, manifests: list[BlobStat] | None = None) -> ChunkCensus:
    """The chunks stored and those the manifests name: `manifests` (the chunked copies of a
    blob listing) or every one stored."""
    result = ChunkCensus()
    result.stored = stored_chunks(blobs, result.strangers)
    result.damaged = damaged_ids(chunk_store(blobs))
    if manifests is None:
        manifests = [b for b in blobs.iter_blobs() if b.codec == "chunked"]
    for manifest in manifests:
        _count(blobs, manifest, result)
    return result


def named_chunks(blobs: BlobStore, unreadable: dict[str, str]) -> set[str]:
    """The chunk ids every manifest stored now names (gc's second look); manifests that do
    not read go into `unreadable`."""
    result = ChunkCensus()
    for manifest in (b for b in blobs.iter_blobs() if b.codec == "chunked"):
        _count(blobs, manifest, result)
    unreadable.update(result.unreadable)
    return result.named


def named_chunk_bytes(blobs: BlobStore, manifests: list[BlobStat]) -> int:
    """The stored bytes of the chunks `manifests` name, each chunk once however many name it."""
    found = census(blobs, manifests)
    return sum(found.stored[c].stored_size for c in found.named if c in found.stored)


def chunks_of(blobs: BlobStore, manifest: BlobStat) -> set[str]:
    """The chunk ids one manifest names (none if it does not read: verify says why)."""
    result = ChunkCensus()
    _count(blobs, manifest, result)
    return result.named


def _count(blobs: BlobStore, manifest: BlobStat, result: ChunkCensus) -> None:
    distinct: set[str] = set()
    try:
        f, _copy = blobs.open_copy(manifest.blob_id, "chunked")
    except BlobNotFound:
        return  # deleted since the listing: it names nothing any more
    except CorruptBlob as exc:
        result.unreadable[manifest.blob_id] = str(exc)
        return
    try:
        with f:
            for ref in iter_manifest(f, manifest.blob_id):
                result.named.add(ref.chunk_id)
                stored = result.stored.get(ref.chunk_id)
                if stored is None or not _fits(stored, ref.size):
                    result.missing.setdefault(manifest.blob_id, []).append(ref.chunk_id)
                elif ref.chunk_id in result.damaged:
                    result.recorded.setdefault(manifest.blob_id, []).append(ref.chunk_id)
                if stored is not None and ref.chunk_id not in distinct:
                    distinct.add(ref.chunk_id)
                    result.uses[manifest.blob_id] = result.uses.get(manifest.blob_id, 0) + stored.stored_size
    except (CorruptBlob, OSError) as exc:
        result.unreadable[manifest.blob_id] = str(exc)


def _fits(copy: BlobStat, size: int) -> bool:
    """Whether a stored chunk can hold `size` bytes (a raw one exactly)."""
    return copy.stored_size == size if copy.codec == "none" else copy.stored_size <= zstd_bound(size)
