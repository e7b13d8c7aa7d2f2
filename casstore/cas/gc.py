"""gc: delete blobs nothing references, leftovers of interrupted writes, expired leases.

Safe by construction (docs/gc.md):
1. Blobs in the trash of an interrupted gc are put back first. Reference rows of experiments
   that no longer exist are deleted.
2. Candidates: blobs older than the grace period that no lease, no registered database (its
   reference rows and the archive values of its fields, `field_roots`) and no named
   reference keeps alive (leases read before references; see roots.py).
3. Candidates are moved to the trash, out of writers' sight. A writer that now checks for a
   candidate finds it missing and writes it again.
4. Leases and references are read again; a candidate that became live meanwhile (a writer
   leased it after step 2 and found it before step 3) is put back.
5. Only then is the trash emptied, and the facts of deleted blobs leave this index.
6. Damaged copies a repair moved into the quarantine go once the grace period has passed
   since they were moved; damage records of ids with no stored copy go at the same age.
7. Chunks (P13) go the same way, once the blobs are done: candidates are chunks older than
   the grace period that no lease names or covers (a chunked write's window lease covers
   every chunk stored since it began) and no manifest still stored names (chunk_census.py);
   they are moved to the chunk trash, leases and manifests are read again, the ones a
   writer named meanwhile are put back, the rest deleted. While a manifest does not read,
   no chunk is deleted (it may name any of them).
A registered database that cannot be read stops gc before any blob is deleted: if that
happens at step 4, the candidates go back from the trash first.

What the grace period alone keeps (at steps 2, 6 and 7: blobs, leftovers, quarantined
copies, chunks) is reported in `held`, with when each becomes reclaimable: a dry run that
deletes nothing still says what verify's reclaimable bytes are waiting for."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.backends.layout import Quarantined
from casstore.cas.damage import DAMAGE_PREFIX, damage_prefix, parse_damage_key
from casstore.cas.index.queries import Index
from casstore.cas.chunk_census import census, named_chunks
from casstore.cas.live.leases import leased_blob_ids, leased_since, read_leases
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.live.roots import FieldRoots, leftovers, live_blob_ids
from casstore.cas.progress import Meter, Report, meter
from casstore.cas.store.content_store import ContentStore
from casstore.errors import InvalidInput

DEFAULT_GRACE_S = 3600.0
MIN_LEFTOVER_AGE_S = 60.0  # a temp file younger than this may be a write that just started
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


@dataclass(frozen=True)
class Deleted:
    blob: str | None
    path: str | None
    bytes: int
    kind: str


@dataclass(frozen=True)
class Held:
    """Something gc would delete but for the grace period, and when it stops holding it."""

    blob: str | None
    path: str | None
    bytes: int
    kind: str
    reclaimable_at: float  # epoch seconds: from then on a gc with the same grace period deletes it


@dataclass
class GcReport:
    deleted: list[Deleted] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False
    kept: list[str] = field(default_factory=list)  # why something that looked reclaimable was kept
    held: list[Held] = field(default_factory=list)  # kept by the grace period alone
    grace_s: float = DEFAULT_GRACE_S

    @property
    def held_bytes(self) -> int:
        return sum(h.bytes for h in self.held)

    @property
    def first_reclaimable(self) -> float | None:
        return min((h.reclaimable_at for h in self.held), default=None)

    @property
    def last_reclaimable(self) -> float | None:
        return max((h.reclaimable_at for h in self.held), default=None)


def parse_duration(text: str) -> float:
    """'0', '90s', '30m', '1h', '7d' -> seconds."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or (match.group(2) == "" and float(match.group(1)) != 0):
        raise InvalidInput(f"not a duration: {text!r} (examples: 0, 90s, 30m, 1h, 7d)")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)


def collect(index: Index, store: ContentStore, *, field_roots: FieldRoots, grace_s: float = DEFAULT_GRACE_S,
            dry_run: bool = False, progress: Report | None = None) -> GcReport:
    """`field_roots` decodes the fields of every database gc reads (roots.FieldRoots).
    `progress` is given a Step (task "gc") counting the stored bytes deleted of those found
    deletable, blobs first, then chunks."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or not 0 <= grace_s < math.inf:
        raise InvalidInput(f"the grace period must be a number of seconds >= 0, got {grace_s!r}")
    store.check_readable()
    report = GcReport(dry_run=dry_run, grace_s=float(grace_s))
    blobs = store.blobs
    if not dry_run:
        for namespace in (blobs, chunk_store(blobs)):
            for trashed in list(namespace.iter_trash()):
                namespace.restore_from_trash(trashed.key)
    now = time.time()
    live = live_blob_ids(blobs, index, field_roots)  # every check first: a gc that refuses deletes nothing
    orphaned = index.orphaned_refs() if dry_run else index.delete_orphaned_refs()
    if orphaned and not dry_run:
        live = live_blob_ids(blobs, index, field_roots)
    stored = list(blobs.iter_blobs())
    candidates = [b for b in stored if b.blob_id not in live and now - b.mtime >= grace_s]
    step = None if dry_run else meter(progress, "gc", "blobs", sum(b.stored_size for b in candidates))
    report.held += [Held(b.blob_id, None, b.stored_size, "unreferenced", b.mtime + grace_s)
                    for b in stored if b.blob_id not in live and now - b.mtime < grace_s]
    if dry_run:
        report.deleted = [Deleted(b.blob_id, None, b.stored_size, "unreferenced") for b in candidates]
    else:
        report.deleted = _delete_blobs(index, store, candidates, field_roots, step)
    report.deleted += [Deleted(ref.blob_id, None, 0, "orphaned_ref") for ref in orphaned]
    report.deleted += _leftovers(store, now, grace_s, dry_run, report)
    report.deleted += _past_damage(store, {b.blob_id for b in stored}, now, grace_s, dry_run, report)
    gone = frozenset(d.blob for d in report.deleted if d.kind == "unreferenced" and d.blob)
    manifests = [b for b in stored if b.codec == "chunked" and b.blob_id not in gone]
    report.deleted += _delete_chunks(store, now, grace_s, dry_run, manifests, report, step)
    report.deleted += _past_chunk_damage(store, now, grace_s, dry_run, report)
    report.freed_bytes = sum(d.bytes for d in report.deleted)
    if step is not None:
        step.finish()
    return report


def _delete_blobs(index: Index, store: ContentStore, candidates: list[BlobStat],
                  field_roots: FieldRoots, step: Meter | None = None) -> list[Deleted]:
    blobs = store.blobs
    trashed = [(b, key) for b in candidates if (key := blobs.move_to_trash(b)) is not None]
    try:
        live_now = live_blob_ids(blobs, index, field_roots)
    except BaseException:
        for _blob, key in trashed:
            blobs.restore_from_trash(key)
        raise
    deleted = []
    for blob, key in trashed:
        if blob.blob_id in live_now:
            blobs.restore_from_trash(key)
        else:
            blobs.delete_object(key)
            deleted.append(Deleted(blob.blob_id, None, blob.stored_size, "unreferenced"))
        if step is not None:
            step(blob.stored_size)
    index.forget_blob_facts([d.blob for d in deleted if d.blob])
    return deleted


def _leftovers(store: ContentStore, now: float, grace_s: float, dry_run: bool, report: GcReport) -> list[Deleted]:
    blobs = store.blobs
    min_age = max(grace_s, MIN_LEFTOVER_AGE_S)
    found = leftovers(blobs)
    stale = [o for o in found if now - o.mtime >= min_age]
    report.held += [Held(None, o.key, o.size, "leftover", o.mtime + min_age) for o in found if now - o.mtime < min_age]
    expired = [lease.key for lease in read_leases(blobs) if lease.expired(now)]
    leases = [Deleted(None, key, 0, "expired_lease") for key in expired]
    if dry_run:
        return [Deleted(None, o.key, o.size, "leftover") for o in stale] + leases
    for key in expired:
        blobs.delete_object(key)
    return [Deleted(None, o.key, o.size, "leftover") for o in stale if blobs.delete_leftover(o.key)] + leases


def _past_damage(store: ContentStore, stored: set[str], now: float, grace_s: float, dry_run: bool,
                 report: GcReport) -> list[Deleted]:
    """Quarantined copies moved aside at least the grace period ago (the time is in their
    key: a rename keeps a blob's old mtime), and damage records at least that old whose id
    has no stored copy (the listing of step 2; a record younger than the grace period may
    be about a blob published since)."""
    blobs = store.blobs
    quarantine = list(blobs.iter_quarantine())
    found = [(q.key, q.size, "quarantined") for q in quarantine if now - q.moved >= grace_s]
    report.held += _held_quarantine(quarantine, now, grace_s)
    found += [(o.key, o.size, "damage_record") for o in blobs.list_objects(DAMAGE_PREFIX)
              if (blob_id := parse_damage_key(o.key)) is not None and blob_id not in stored
              and now - o.mtime >= grace_s]
    if not dry_run:
        for key, _size, _kind in found:
            blobs.delete_object(key)
    return [Deleted(None, key, size, kind) for key, size, kind in found]


def _delete_chunks(store: ContentStore, now: float, grace_s: float, dry_run: bool, manifests: list[BlobStat],
                   report: GcReport, step: Meter | None = None) -> list[Deleted]:
    """Step 7: chunks no manifest names. `manifests`: the chunked copies of step 2's listing
    that step 5 left (the dry run: that it would leave); a manifest published since is the
    work of a writer whose lease covers its chunks, and the second look lists them again."""
    chunks = chunk_store(store.blobs)
    leased = leased_blob_ids(store.blobs, now)  # leases before manifests, as for blobs
    window = leased_since(store.blobs, now)
    found = census(store.blobs, manifests)
    if found.unreadable:
        report.kept += [f"every unreferenced chunk: the manifest of blob {blob_id} does not read ({why})"
                        for blob_id, why in sorted(found.unreadable.items())]
        return []
    unnamed = [c for c in found.stored.values() if c.blob_id not in found.named and c.blob_id not in leased
               and c.mtime < window]
    candidates = [c for c in unnamed if now - c.mtime >= grace_s]
    report.held += [Held(c.blob_id, None, c.stored_size, "unreferenced_chunk", c.mtime + grace_s)
                    for c in unnamed if now - c.mtime < grace_s]
    if dry_run:
        return [Deleted(c.blob_id, None, c.stored_size, "unreferenced_chunk") for c in candidates]
    trashed = [(c, key) for c in candidates if (key := chunks.move_to_trash(c)) is not None]
    if not trashed:
        return []
    if step is not None:
        step.item = "chunks"
        step.expect((step.total or 0) + sum(c.stored_size for c, _key in trashed))
    unreadable: dict[str, str] = {}
    try:
        window = leased_since(store.blobs)
        live = leased_blob_ids(store.blobs) | named_chunks(store.blobs, unreadable)
    except BaseException:
        _put_back(chunks, trashed)
        raise
    if unreadable:
        _put_back(chunks, trashed)
        report.kept += [f"every unreferenced chunk: the manifest of blob {blob_id} does not read ({why})"
                        for blob_id, why in sorted(unreadable.items())]
        return []
    deleted = []
    for chunk, key in trashed:
        if chunk.blob_id in live or chunk.mtime >= window:
            chunks.restore_from_trash(key)
        else:
            chunks.delete_object(key)
            deleted.append(Deleted(chunk.blob_id, None, chunk.stored_size, "unreferenced_chunk"))
        if step is not None:
            step(chunk.stored_size)
    return deleted


def _put_back(chunks: BlobStore, trashed: list[tuple[BlobStat, str]]) -> None:
    for _chunk, key in trashed:
        chunks.restore_from_trash(key)


def _past_chunk_damage(store: ContentStore, now: float, grace_s: float, dry_run: bool,
                       report: GcReport) -> list[Deleted]:
    """Step 6 for chunks: quarantined chunk copies moved aside at least the grace period ago,
    and damage records at least that old of chunks no longer stored (records are few: each is
    looked up)."""
    chunks = chunk_store(store.blobs)
    prefix = damage_prefix(chunks)
    quarantine = list(chunks.iter_quarantine())
    found = [(q.key, q.size, "quarantined") for q in quarantine if now - q.moved >= grace_s]
    report.held += _held_quarantine(quarantine, now, grace_s)
    found += [(o.key, o.size, "damage_record") for o in chunks.list_objects(prefix)
              if (chunk_id := parse_damage_key(o.key, prefix)) is not None and now - o.mtime >= grace_s
              and chunks.find(chunk_id) is None]
    if not dry_run:
        for key, _size, _kind in found:
            chunks.delete_object(key)
    return [Deleted(None, key, size, kind) for key, size, kind in found]


def _held_quarantine(quarantine: list[Quarantined], now: float, grace_s: float) -> list[Held]:
    return [Held(None, q.key, q.size, "quarantined", q.moved + grace_s) for q in quarantine if now - q.moved < grace_s]
