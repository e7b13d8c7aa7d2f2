"""What gc could delete, ignoring the grace period (gc applies it): blobs nothing references,
chunks no manifest names, temp files of interrupted writes, expired leases, damaged copies
a repair moved into the quarantine. Verify lists them; stats sums them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from casstore.cas.backends.base import BlobStat, ObjectStat
from casstore.cas.backends.layout import CODEC_SUFFIX
from casstore.cas.chunk_census import ChunkCensus, census
from casstore.cas.index.queries import Index
from casstore.cas.live.leases import leased_blob_ids, leased_since, read_leases
from casstore.cas.live.roots import FieldRoots, leftovers, live_blob_ids
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.store.content_store import ContentStore


@dataclass(frozen=True)
class Reclaimable:
    kind: str
    blob: str | None
    path: str | None
    bytes: int
    age_s: float


def reclaimable(index: Index, store: ContentStore, field_roots: FieldRoots,
                copies: dict[str, list[BlobStat]] | None = None,
                chunks: ChunkCensus | None = None) -> list[Reclaimable]:
    """What gc could delete, ignoring the grace period (gc applies it)."""
    now = time.time()
    copies = copies if copies is not None else stored_copies(store)
    chunks = chunks if chunks is not None else census(store.blobs)
    live = live_blob_ids(store.blobs, index, field_roots)
    items = [Reclaimable("unreferenced", b.blob_id, None, b.stored_size, now - b.mtime)
             for found in copies.values() for b in found if b.blob_id not in live]
    items += [Reclaimable("leftover", None, o.key, o.size, now - o.mtime) for o in leftovers(store.blobs)]
    items += [Reclaimable("expired_lease", None, lease.key, 0, now - lease.expires)
              for lease in read_leases(store.blobs) if lease.expired(now)]
    items += [Reclaimable("quarantined", None, q.key, q.size, now - q.moved) for q in store.blobs.iter_quarantine()]
    leased, window = leased_blob_ids(store.blobs, now), leased_since(store.blobs, now)
    items += [Reclaimable("unreferenced_chunk", c.blob_id, None, c.stored_size, now - c.mtime)
              for c in chunks.stored.values()
              if c.blob_id not in chunks.named and c.blob_id not in leased and c.mtime < window]
    items += [Reclaimable("quarantined", None, q.key, q.size, now - q.moved)
              for q in chunk_store(store.blobs).iter_quarantine()]
    return items


def stored_copies(store: ContentStore, strangers: list[ObjectStat] | None = None) -> dict[str, list[BlobStat]]:
    """Every stored blob by id, from one listing; the copy readers use comes first (`find`'s
    codec order). Two writers racing with different codecs can leave a `.tar` and a
    `.tar.zst` of one id (docs/datastore.md); both are sound."""
    order = list(CODEC_SUFFIX)
    copies: dict[str, list[BlobStat]] = {}
    for blob in store.blobs.iter_blobs(strangers):
        copies.setdefault(blob.blob_id, []).append(blob)
    for found in copies.values():
        found.sort(key=lambda b: order.index(b.codec))
    return copies
