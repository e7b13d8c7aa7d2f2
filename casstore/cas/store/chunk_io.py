"""Chunks in the datastore (P13): one stored create-only, as a blob is (P4); one read back and
checked against its id; a chunked blob read as one stream of its canonical TAR
(`ChunkedReader`); and the check a writer or a reader runs on a manifest it finds.

A chunk is stored raw (codec "none") or as one zstd frame ("zstd") under the digest of its
uncompressed bytes, in the datastore's chunk namespace (layout.CHUNKS). Every read is
bounded by the size the manifest gives (MAX_CHUNK_BYTES at most), and a chunk whose bytes do
not hash to its id is refused: damage to every blob that uses it ("chunk")."""

from __future__ import annotations

import functools
import logging
import mmap
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore, ChunkData, DamageCheck, Ingest
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.buffers import BufferPool
from casstore.cas.chunks.manifest import ChunkRef, iter_manifest
from casstore.cas.damage import clear_damage, damaged_ids, record_damage
from casstore.cas.digest import digest_bytes, parse_id
from casstore.cas.live.leases import Lease
from casstore.errors import BlobNotFound, CasStoreError, CorruptBlob

log = logging.getLogger(__name__)


def chunk_store(blobs: BlobStore) -> BlobStore:
    """The chunks of the datastore `blobs` is (the same connection, the chunk namespace)."""
    return blobs if blobs.ns is CHUNKS else blobs.view(CHUNKS)


def zstd_bound(size: int) -> int:
    """More than zstd's worst-case frame for `size` bytes (ZSTD_COMPRESSBOUND plus headers)."""
    return size + (size >> 7) + 1024


@dataclass(frozen=True, slots=True)
class StoredChunk:
    ref: ChunkRef
    stored_size: int
    new: bool  # whether this write published it


MAX_PENDING = 256
"""New chunks published per durable point: every file of a group is fsynced at once (after
the first, each finds its data written), then linked, then each folder fsynced once."""


STAGE_THREADS = 2

READ_BUFFER = (4 << 20) + 1
"""A reader's reused buffers: a raw chunk of up to 4 MiB (the default policy's largest) and
the byte over it that shows a chunk is too long; a larger chunk is read into its own."""


class ChunkStager:
    """Stores the chunks of one write, in order. A chunk the datastore has (a copy that
    passes the cheap check) is named in the lease, then looked up again (`find_leased` puts
    back one gc moved aside meanwhile) and taken; a new one, covered by the write's window
    lease (Lease.add_window), is written into a temp file at once (STAGE_THREADS at a time)
    and published with the next durable point (every MAX_PENDING new chunks, while the
    next ones are written, and at `finish`). gc, which re-reads the leases after moving its
    candidates aside, never deletes a chunk this write names. `add` and `finish` return
    the chunks settled so far, in the order they were added; call them from one thread.
    `add` keeps no reference to the batch's bytes once it returns (the writer reuses them).
    Use as a context manager: leaving it drops every chunk not yet published."""

    def __init__(self, chunks: BlobStore, codec: str, level: int, lease: Lease):
        self._chunks = chunks
        self._codec = codec
        self._level = level
        self._lease = lease
        self._local = threading.local()  # a zstd compressor per thread (they are not thread-safe)
        self._order: deque[str] = deque()  # chunk ids not yet returned
        self._settled: dict[str, StoredChunk] = {}
        self._pending: dict[str, tuple[Ingest, int]] = {}
        self._pool = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="casstore-stage")
        self._publishing: Future[dict[str, StoredChunk]] | None = None
        self._suspects: set[str] | None = None  # chunks a read found damaged: re-checked, not reused
        self._repaired: set[str] = set()

    def __enter__(self) -> ChunkStager:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for ingest, _size in self._pending.values():
            ingest.abort()
        self._pending.clear()

    def add(self, batch: list[tuple[str, ChunkData]]) -> list[StoredChunk]:
        sizes = {chunk_id: len(data) for chunk_id, data in batch}
        found = {chunk_id: self._chunks.find(chunk_id) for chunk_id in sizes if chunk_id not in self._settled}
        if self._suspects is None:
            self._suspects = damaged_ids(self._chunks)
        there = sorted(i for i, copy in found.items() if copy is not None and _plausible(copy, sizes[i]))
        reused = [i for i in there if i not in self._suspects]
        if there:
            self._lease.add_many(there)  # a suspect kept after its re-check is an old chunk too
            self._repaired.update(i for i in there if i in self._suspects)
            for chunk_id in reused:
                copy = self._chunks.find_leased(chunk_id)
                if copy is not None:
                    self._settled[chunk_id] = StoredChunk(ChunkRef(chunk_id, sizes[chunk_id], copy.codec),
                                                          copy.stored_size, False)
        new = {i: data for i, data in batch if i not in self._settled and i not in self._pending}
        staged = [(chunk_id, self._pool.submit(self._stage, data)) for chunk_id, data in new.items()]
        failed: BaseException | None = None
        for chunk_id, future in staged:  # every staged file is kept track of, so that exit drops it
            try:
                self._pending[chunk_id] = (future.result(), sizes[chunk_id])
            except BaseException as exc:  # raised below, once every other one is settled
                failed = failed or exc
        if failed is not None:
            raise failed
        self._order.extend(chunk_id for chunk_id, _ in batch)  # a chunk twice in the batch: twice in the manifest
        if len(self._pending) >= MAX_PENDING:
            self._publish()
        return self._ready()

    def finish(self) -> list[StoredChunk]:
        self._publish()
        self._settle_published(wait=True)
        return self._ready()

    def _stage(self, data: ChunkData) -> Ingest:
        ingest = self._chunks.begin_ingest()
        try:
            if self._codec == "zstd":
                compressor = getattr(self._local, "zstd", None)
                if compressor is None:
                    compressor = self._local.zstd = zstandard.ZstdCompressor(level=self._level)
                data = compressor.compress(memoryview(data))
            ingest.write_whole(data)
            ingest.start_writeback()  # the disk writes overlap the staging of the next chunks
        except BaseException:
            ingest.abort()
            raise
        return ingest

    def _publish(self) -> None:
        """Publish what is pending in the background (one durable point), once the
        previous group is published."""
        self._settle_published(wait=True)
        if self._pending:
            pending, self._pending = self._pending, {}
            self._publishing = self._pool.submit(self._commit, pending)

    def _commit(self, pending: dict[str, tuple[Ingest, int]]) -> dict[str, StoredChunk]:
        batch: list[tuple[Ingest, str, str, DamageCheck | None]] = [
            (ingest, chunk_id, self._codec, functools.partial(_differs, chunk_id=chunk_id, size=size))
            for chunk_id, (ingest, size) in pending.items()]
        try:
            published = self._chunks.commit_many(batch)
        finally:
            for ingest, *_ in batch:
                ingest.abort()
        return {chunk_id: StoredChunk(ChunkRef(chunk_id, pending[chunk_id][1], stat.codec), stat.stored_size, new)
                for (_ingest, chunk_id, _codec, _check), (stat, new) in zip(batch, published)}

    def _settle_published(self, wait: bool) -> None:
        if self._publishing is not None and (wait or self._publishing.done()):
            done, self._publishing = self._publishing, None
            settled = done.result()
            self._settled.update(settled)
            for chunk_id in self._repaired & settled.keys():  # checked (and replaced if damaged)
                _forget_damage(self._chunks, chunk_id)

    def _ready(self) -> list[StoredChunk]:
        """The chunks from the start of the order that are settled, taken off the order;
        a chunk's first use reports whether this write published it, later ones do not."""
        self._settle_published(wait=False)
        ready: list[StoredChunk] = []
        while self._order and self._order[0] in self._settled:
            chunk_id = self._order.popleft()
            stored = self._settled[chunk_id]
            ready.append(stored)
            if stored.new:
                self._settled[chunk_id] = StoredChunk(stored.ref, stored.stored_size, False)
        return ready


def _forget_damage(chunks: BlobStore, chunk_id: str) -> None:
    try:
        clear_damage(chunks, chunk_id)
    except OSError as exc:  # the next writer re-checks the chunk once more: only costs time
        log.warning("could not drop the damage record of chunk %s: %s", chunk_id, exc)


def _plausible(copy: BlobStat, size: int) -> bool:
    if copy.codec == "none":
        return copy.stored_size == size
    return 9 <= copy.stored_size <= zstd_bound(size)


def _differs(f: BinaryIO, copy: BlobStat, *, chunk_id: str, size: int) -> bool:
    """Whether a copy another writer published under `chunk_id` is not that chunk."""
    try:
        return digest_bytes(chunk_bytes(f, copy, size), parse_id(chunk_id)[0]) != chunk_id
    except CorruptBlob:
        return True


def chunk_bytes(f: BinaryIO, copy: BlobStat, size: int, into: mmap.mmap | None = None) -> bytes | memoryview:
    """The uncompressed bytes of the chunk copy open in `f`, which must be `size` bytes
    (CorruptBlob "chunk" otherwise); the digest is the caller's to check. A raw chunk is
    read into `into` if given (of more than `size` bytes), and is a view of it."""
    what = f"chunk {copy.blob_id}"
    data: bytes | memoryview
    if copy.codec == "none" and into is not None:
        view = memoryview(into)
        data = view[:_read_into(f, view[:size + 1])]
    elif copy.codec == "none":
        data = f.read(size + 1)
    else:
        compressed = f.read(zstd_bound(size) + 1)
        if len(compressed) > zstd_bound(size):
            raise CorruptBlob(f"{what} is larger than a zstd frame of {size} bytes can be", "chunk")
        try:  # a frame that records its size is decompressed to that size: it must be ours
            recorded = zstandard.get_frame_parameters(compressed).content_size
            if recorded not in (size, zstandard.CONTENTSIZE_UNKNOWN):
                raise CorruptBlob(f"{what}: its zstd frame holds {recorded} bytes, its manifest says {size}", "chunk")
            data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptBlob(f"{what} does not decompress: {exc}", "chunk") from exc
    if len(data) != size:
        raise CorruptBlob(f"{what} has {'more' if len(data) > size else len(data)} bytes, its manifest says {size}",
                          "chunk")
    return data


def _read_into(f: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `f` up to its end or `f`'s; the bytes read."""
    done = 0
    while done < len(view) and (n := f.readinto(view[done:])):  # type: ignore[attr-defined]
        done += n
    return done


def read_chunk(chunks: BlobStore, ref: ChunkRef, blob_id: str, into: mmap.mmap | None = None) -> bytes | memoryview:
    """The bytes of chunk `ref` of blob `blob_id`, checked against the chunk's id (read into
    `into`, as chunk_bytes says, if given)."""
    try:
        f, found = chunks.open_blob(ref.chunk_id, lambda copy: copy.codec == ref.codec)
    except BlobNotFound:
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} is missing", "chunk") from None
    except CorruptBlob as exc:
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} cannot be read: {exc}", "chunk") from exc
    with f:
        try:
            data = chunk_bytes(f, found, ref.size, into)
        except CorruptBlob as exc:
            _note_damage(chunks, found, str(exc))
            raise CorruptBlob(f"blob {blob_id}: {exc}", "chunk") from exc
    found_id = digest_bytes(data, parse_id(ref.chunk_id)[0])
    if found_id != ref.chunk_id:
        _note_damage(chunks, found, f"its bytes hash to {found_id}")
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} is corrupt (its bytes hash to {found_id})",
                          "chunk")
    return data


def _note_damage(chunks: BlobStore, copy: BlobStat, detail: str) -> None:
    """Record what a read found in a chunk's bytes, for the next writer that holds them
    (ChunkStager re-checks a recorded chunk instead of reusing it). A manifest's size for the
    chunk is the manifest's word, but the chunk's digest is its own: the record is a
    reason to re-read, never to replace a chunk that reads correctly. A datastore that takes
    no writes only loses the hint."""
    try:
        record_damage(chunks, copy, "digest", detail)
    except (OSError, CasStoreError) as error:
        log.warning("could not record the damage of chunk %s: %s", copy.blob_id, error)


class ChunkedReader:
    """The canonical TAR of a chunked blob, from its manifest (open in `manifest`) and its
    chunks, each checked against its id as it is read (the store's `read_ahead` of them ahead
    of the one being read, by as many threads: on an object store each is a request). The
    whole blob's digest is the caller's to check (VerifyingReader), as for any copy. Use as
    a context manager (or `close`): it stops the reads ahead."""

    def __init__(self, manifest: BinaryIO, chunks: BlobStore, blob_id: str, size: int | None = None):
        self._refs: Iterator[ChunkRef] | None = iter_manifest(manifest, blob_id, size)
        self._chunks = chunks
        self._blob_id = blob_id
        self._current = memoryview(b"")
        self._failed: CorruptBlob | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: deque[Future[bytes | memoryview]] = deque()
        self._buffers = BufferPool(READ_BUFFER)  # raw chunks are read into these, reused

    def __enter__(self) -> ChunkedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for future in self._ahead:
            future.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _top_up(self) -> None:
        while self._refs is not None and len(self._ahead) < self._chunks.read_ahead:
            ref = next(self._refs, None)
            if ref is None:
                self._refs = None
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._chunks.read_ahead, thread_name_prefix="casstore-read")
            into = self._buffers.take() if ref.codec == "none" and ref.size < READ_BUFFER else None
            self._ahead.append(self._pool.submit(read_chunk, self._chunks, ref, self._blob_id, into))

    def _fill(self) -> bool:
        """Load the next chunk if the current one is read. A chunk that failed fails every
        later read too: the stream cannot go on past a hole (and a caller that reads on to
        check the digest learns which chunk it was, not that the digest differs)."""
        if self._failed is not None:
            raise self._failed
        try:
            while not self._current:
                self._buffers.give_back(self._current.obj)  # read and copied out: reusable
                self._top_up()
                if not self._ahead:
                    return False
                self._current = memoryview(self._ahead.popleft().result())
        except CorruptBlob as exc:
            self._failed = exc
            self.close()
            raise
        return True

    def read_view(self, n: int) -> memoryview:
        """The stream's next bytes (at most `n`, empty at its end) without a copy: a view of
        the chunk being read, valid until the next read."""
        if not self._fill():
            return memoryview(b"")
        view, self._current = self._current[:n], self._current[n:]
        return view

    def read(self, n: int = -1, /) -> bytes:
        if not self._fill():
            return b""
        take = len(self._current) if n is None or n < 0 else n
        data = bytes(self._current[:take])
        self._current = self._current[take:]
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if not self._fill():
            return 0
        with memoryview(buffer) as view:
            n = min(len(view), len(self._current))
            view[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def manifest_damage(f: BinaryIO, copy: BlobStat, size: int | None, chunks: BlobStore) -> str | None:
    """What is wrong with the manifest open in `f` (copy `copy` of a blob of `size` bytes)
    without reading its chunks: it must parse, add up to the blob, and every chunk it names
    must be stored, with no damage recorded for it (a writer that holds the bytes then
    re-checks it). None if nothing is."""
    suspects = damaged_ids(chunks)
    try:
        for ref in iter_manifest(f, copy.blob_id, size):
            if chunks.find(ref.chunk_id) is None:
                return f"its chunk {ref.chunk_id} is missing"
            if ref.chunk_id in suspects:
                return f"a read found its chunk {ref.chunk_id} damaged"
    except CorruptBlob as exc:
        return str(exc)
    return None
