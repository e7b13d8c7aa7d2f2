"""Writing a blob: the canonical TAR that a caller writes (a scanned folder, a rewritten
legacy TAR, bytes in hand), stored under its digest with the datastore's atomic publish.

Plain blobs are written and hashed in one pass into the datastore's temp area and published
under their id (dropped if the id is already there); zstd blobs are hashed first and
compressed only if new, since compressing costs ~75x hashing. A copy found under the id is
not taken on trust (copy_checks): one shown damaged is quarantined and the writer's own copy
published in its place, and the damage recorded for the id is dropped once it holds a copy
that read correctly (damage.py)."""

from __future__ import annotations

import logging
from typing import BinaryIO, Callable, Sequence, cast

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore, DamageCheck, Ingest
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.damage import DamageRecord, clear_damage, describes, read_damage
from casstore.cas.digest import DigestSink
from casstore.cas.index.facts import BlobFacts, facts_of
from casstore.cas.live.leases import Lease
from casstore.cas.progress import Progress
from casstore.cas.store.chunked_ingest import ChunkedWrite
from casstore.cas.store.copy_checks import Recorded, cheap_damage, disagrees, rehash_damage
from casstore.cas.tar.header import BLOCK
from casstore.cas.tar.write import Sink
from casstore.errors import SourceChanged

log = logging.getLogger(__name__)

TarWriter = Callable[[Sequence[Sink], "Progress | None"], int]
"""Writes one canonical TAR into every sink (reporting its bytes to the progress callback,
if any) and returns its size. It may be called twice and must write the same bytes each
time: `functools.partial(write_tar, entries)` is one."""


class HeadSink:
    """Keeps the first block of what it is given (a TAR's first header)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes | memoryview) -> None:
        if len(self.data) < BLOCK:
            self.data += bytes(data[:BLOCK - len(self.data)])


class TarIngest:
    """One write of a canonical TAR into `blobs`; its blob id is added to `lease` before
    anything is published. `recorded` gives the facts the caller's index holds for a blob
    id: a copy found under the id that disagrees with them is re-hashed before it is trusted.
    `source` names what is written, for SourceChanged."""

    def __init__(self, blobs: BlobStore, algorithm: str, lease: Lease, recorded: Recorded | None = None,
                 source: str = "the TAR stream"):
        self.blobs = blobs
        self.algorithm = algorithm
        self.lease = lease
        self.recorded = recorded
        self.source = source

    def plain(self, write: TarWriter, progress: Progress | None = None, hash_first: bool = False) -> BlobFacts:
        """Store the TAR as it is (`.tar`): written and hashed in one pass, or with
        `hash_first` hashed first and written only if the id holds no sound copy (for a
        caller whose blobs are often stored already: the migration)."""
        if hash_first:
            size, blob_id, head = self._hash(write, progress)
            found = self._sound_copy(blob_id, size, head)
            return found if found is not None else self._write_again(write, blob_id, "none", size, head, None)
        digest, head_sink = DigestSink(self.algorithm), HeadSink()
        with self.blobs.begin_ingest() as ingest:
            size = write([digest, head_sink, ingest], progress)
            blob_id = digest.blob_id()
            self.lease.add(blob_id)
            return self._commit_checked(ingest, blob_id, "none", size, head_sink.data)

    def zstd(self, write: TarWriter, level: int, progress: Progress | None = None) -> BlobFacts:
        """Store the TAR as one zstd frame (`.tar.zst`): hashed first, compressed only if
        the id holds no sound copy; SourceChanged if the second pass writes other bytes."""
        size, blob_id, head = self._hash(write, progress)
        found = self._sound_copy(blob_id, size, head)
        if found is not None:
            return found
        return self._write_again(write, blob_id, "zstd", size, head, zstandard.ZstdCompressor(level=level, threads=-1))

    def chunked(self, write: TarWriter, codec: str, level: int, policy: ChunkPolicy,
                progress: Progress | None = None) -> BlobFacts:
        """Store the TAR as a manifest of chunks (P13), in one pass: chunks are stored as the
        writer writes (those the datastore has already are only looked up), the manifest
        published once all are. A TAR under the policy's whole_below is stored whole."""
        digest, head = DigestSink(self.algorithm), HeadSink()
        with ChunkedWrite(self.blobs, self.algorithm, self.lease, codec, level, policy) as chunks:
            size = write([digest, head, chunks], progress)
            blob_id = digest.blob_id()
            self.lease.add(blob_id)
            manifest = chunks.finish(blob_id, size)
            if manifest is not None:
                with manifest:
                    return self._commit_checked(manifest, blob_id, "chunked", size, head.data, chunks.new_bytes)
            assert chunks.small is not None
            return self._store_small(bytes(chunks.small), blob_id, codec, level, head.data)

    def _store_small(self, data: bytes, blob_id: str, codec: str, level: int, head: bytes) -> BlobFacts:
        """A TAR held in memory, stored whole (one zstd frame with codec zstd)."""
        found = self._sound_copy(blob_id, len(data), head)
        if found is not None:
            return found
        with self.blobs.begin_ingest() as ingest:
            ingest.write(zstandard.ZstdCompressor(level=level).compress(data) if codec == "zstd" else data)
            return self._commit_checked(ingest, blob_id, codec, len(data), head)

    def _hash(self, write: TarWriter, progress: Progress | None) -> tuple[int, str, bytes]:
        """A first pass that only hashes: the TAR's size, its blob id (leased) and first block."""
        digest, head = DigestSink(self.algorithm), HeadSink()
        size = write([digest, head], progress)
        blob_id = digest.blob_id()
        self.lease.add(blob_id)
        return size, blob_id, head.data

    def _sound_copy(self, blob_id: str, size: int, head: bytes) -> BlobFacts | None:
        """The facts of the copy stored under `blob_id` if it passes the writer's check (a
        damaged one is moved into the quarantine), else None."""
        existing = self.blobs.find(blob_id)
        if existing is None:
            return None
        check, record = self._damage_check(blob_id, size, head)
        if self.blobs.quarantine(existing, check) != "sound":
            return None
        if record is not None:
            self._forget_damage(blob_id)
        return facts_of(existing, size)

    def _write_again(self, write: TarWriter, blob_id: str, codec: str, size: int, head: bytes,
                     compressor: zstandard.ZstdCompressor | None) -> BlobFacts:
        """The second pass: the TAR into a new copy (through `compressor`, if any), which must
        hash to `blob_id` (SourceChanged if the source gave other bytes this time)."""
        again = DigestSink(self.algorithm)
        changed = f"{self.source} changed while it was archived (two reads differ)"
        with self.blobs.begin_ingest() as ingest:
            if compressor is None:
                write([again, ingest], None)
            else:
                try:  # zstandard's stubs ask for a whole file; the writer only calls write()
                    with compressor.stream_writer(cast(BinaryIO, ingest), size=size, closefd=False) as writer:
                        write([again, writer], None)
                except zstandard.ZstdError as exc:  # the second read gave another size than the first
                    raise SourceChanged(changed) from exc
            if again.blob_id() != blob_id:
                raise SourceChanged(changed)
            return self._commit_checked(ingest, blob_id, codec, size, head)

    def _damage_check(self, blob_id: str, size: int, head: bytes) -> tuple[DamageCheck, DamageRecord | None]:
        """The check a writer holding the bytes of `blob_id` runs on a copy found under the
        id (blobs.DamageCheck), and the damage recorded for the id (the writer drops it once
        the id holds a copy that read correctly). A cheap check that fails is proof; damage
        recorded for the copy, or index facts that disagree with it, is only a suspicion,
        settled by re-hashing the copy."""
        record = read_damage(self.blobs, blob_id)

        def damaged(f: BinaryIO, copy: BlobStat) -> bool:
            if cheap_damage(f, copy, size, head, self.blobs) is not None:
                return True
            if (record is not None and describes(record, copy)) or disagrees(copy, self.recorded):
                return rehash_damage(f, copy, size, self.blobs) is not None
            return False

        return damaged, record

    def _commit_checked(self, ingest: Ingest, blob_id: str, codec: str, size: int, head: bytes,
                        chunk_bytes: int = 0) -> BlobFacts:
        check, record = self._damage_check(blob_id, size, head)
        found, new = ingest.commit(blob_id, codec, check)
        if record is not None:
            self._forget_damage(blob_id)
        return facts_of(found, size, new, chunk_bytes)

    def _forget_damage(self, blob_id: str) -> None:
        try:
            clear_damage(self.blobs, blob_id)
        except OSError as exc:  # the next writer re-reads the copy once more: only costs time
            log.warning("could not drop the damage record of %s: %s", blob_id, exc)
