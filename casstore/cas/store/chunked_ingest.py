"""A chunked write (P13): the canonical TAR a writer streams is cut into chunks as it goes by
(chunks/cutter.py); each chunk is leased, then stored unless the datastore has it already
(chunk_io.store_chunk), by a few threads so that disk writes and fsyncs overlap the writer;
the manifest is written as the chunks are stored, in their order. The blob's manifest is
published (ingest.py) only once every chunk it names is (P4).

Leases come first: a batch of chunks is leased in one write before any of them is looked up
or stored, so gc, which re-reads the leases after moving its candidates aside, never deletes
a chunk this write is about to name. Memory is bounded: a batch of BATCH_BYTES waiting for
its lease, and at most MAX_IN_FLIGHT chunks being stored.

A stream shorter than the policy's `whole_below` is kept in memory and stored as a whole
blob instead (`small`)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from casstore.cas.backends.base import BlobStore, Ingest
from casstore.cas.chunks.cutter import TarCutter
from casstore.cas.chunks.manifest import MAGIC, chunk_line, end_line
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.digest import digest_bytes
from casstore.cas.live.leases import Lease
from casstore.cas.store.chunk_io import StoredChunk, chunk_store, store_chunk

BATCH_BYTES = 16 << 20
MAX_IN_FLIGHT = 8
WORKERS = 4


class ChunkedWrite:
    """A sink for one canonical TAR (use as a context manager: leaving it without `finish`
    drops the manifest being written; chunks stored already stay, for gc to judge)."""

    def __init__(self, blobs: BlobStore, algorithm: str, lease: Lease, codec: str, level: int, policy: ChunkPolicy):
        self._chunks = chunk_store(blobs)
        self._blobs = blobs
        self._algorithm = algorithm
        self._lease = lease
        self._codec = codec
        self._level = level
        self._policy = policy
        self.small: bytearray | None = bytearray()  # the stream while it is under whole_below
        self._cutter: TarCutter | None = None
        self._batch: list[tuple[str, bytes]] = []
        self._batch_bytes = 0
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="casstore-chunks")
        self._in_flight: deque[Future[StoredChunk]] = deque()
        self._manifest: Ingest | None = None
        self._count = 0
        self._total = 0
        self.new_bytes = 0  # stored bytes of the chunks this write published

    def __enter__(self) -> ChunkedWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._manifest is not None:
            self._manifest.abort()

    def write(self, data: bytes | memoryview) -> None:
        if self._cutter is not None:
            self._cutter.write(data)
            return
        assert self.small is not None
        self.small += data
        if len(self.small) >= self._policy.whole_below:
            self._manifest = self._blobs.begin_ingest()
            self._manifest.write(MAGIC)
            self._cutter = TarCutter(self._policy, self._chunk)
            head, self.small = self.small, None
            self._cutter.write(head)

    def finish(self, blob_id: str, size: int) -> Ingest | None:
        """The manifest, every chunk it names stored, ready to be committed under
        `blob_id`; None if the stream stayed under whole_below (then `small` holds it)."""
        if self._cutter is None or self._manifest is None:
            return None
        self._cutter.finish()
        self._lease_batch()
        while self._in_flight:
            self._store_next()
        if self._total != size:
            raise AssertionError(f"chunked {self._total} bytes of a {size}-byte stream")
        self._manifest.write(end_line(blob_id, size, self._count))
        manifest, self._manifest = self._manifest, None
        return manifest

    def _chunk(self, data: bytes) -> None:
        self._batch.append((digest_bytes(data, self._algorithm), data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._lease_batch()

    def _lease_batch(self) -> None:
        if not self._batch:
            return
        self._lease.add_many([chunk_id for chunk_id, _ in self._batch])
        for chunk_id, data in self._batch:
            while len(self._in_flight) >= MAX_IN_FLIGHT:
                self._store_next()
            self._in_flight.append(self._pool.submit(store_chunk, self._chunks, chunk_id, data, self._codec,
                                                     self._level))
        self._batch, self._batch_bytes = [], 0

    def _store_next(self) -> None:
        stored = self._in_flight.popleft().result()
        assert self._manifest is not None
        self._manifest.write(chunk_line(stored.ref))
        self._count += 1
        self._total += stored.ref.size
        if stored.new:
            self.new_bytes += stored.stored_size
