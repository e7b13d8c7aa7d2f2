"""A chunked write (P13): the canonical TAR a writer streams is cut into chunks as it goes by
(chunks/cutter.py); the chunks are stored in batches of BATCH_BYTES (chunk_io.ChunkStager:
those the datastore has already are only looked up, the new ones written into temp files at
once and published with one durable point per group) by a thread of their own, so that the disk writes and fsyncs of one batch
overlap the reading and cutting of the next; the manifest is written as the batches are
stored, in order. The blob's manifest is published (ingest.py) only once every chunk it
names is (P4).

Leases come first: the write takes a window lease (every chunk stored from its start on)
before it stores a chunk, and names the old chunks it reuses before it relies on them, so
gc never deletes a chunk this write goes on to name. Memory is bounded: the batch being cut,
and at most IN_FLIGHT batches being stored.

A stream shorter than the policy's `whole_below` is kept in memory and stored as a whole
blob instead (`small`)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from casstore.cas.backends.base import BlobStore, ChunkData, Ingest
from casstore.cas.chunks.cutter import TarCutter
from casstore.cas.chunks.manifest import MAGIC, chunk_line, end_line
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.digest import digest_bytes
from casstore.cas.live.leases import Lease
from casstore.cas.store.chunk_io import ChunkStager, StoredChunk, chunk_store

BATCH_BYTES = 8 << 20
IN_FLIGHT = 2


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
        self._batch: list[tuple[str, ChunkData]] = []
        self._batch_bytes = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="casstore-chunks")
        self._in_flight: deque[tuple[Future[list[StoredChunk]], list[ChunkData]]] = deque()  # and its blocks
        self._manifest: Ingest | None = None
        self._stager = ChunkStager(self._chunks, codec, level, lease)
        self._count = 0
        self._total = 0
        self.new_bytes = 0  # stored bytes of the chunks this write published

    def __enter__(self) -> ChunkedWrite:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stager.__exit__(*exc)
        if self._manifest is not None:
            self._manifest.abort()

    def write(self, data: bytes | memoryview) -> None:
        if self._cutter is not None:
            self._cutter.write(data)
            return
        assert self.small is not None
        self.small += data
        if len(self.small) >= self._policy.whole_below:
            self._lease.add_window()
            self._manifest = self._blobs.begin_ingest()
            self._manifest.write(MAGIC)
            self._cutter = TarCutter(self._policy, self._chunk)
            head, self.small = self.small, None
            self._cutter.write(head)

    def lend(self, n: int) -> memoryview | None:
        """The cutter's block for a large file's next bytes, once cutting (tar/write.Lender)."""
        return self._cutter.lend(n) if self._cutter is not None else None

    def took(self, n: int) -> None:
        assert self._cutter is not None
        self._cutter.took(n)

    def finish(self, blob_id: str, size: int) -> Ingest | None:
        """The manifest, every chunk it names stored, ready to be committed under
        `blob_id`; None if the stream stayed under whole_below (then `small` holds it)."""
        if self._cutter is None or self._manifest is None:
            return None
        self._cutter.finish()
        self._send_batch()
        self._in_flight.append((self._pool.submit(self._stager.finish), []))
        while self._in_flight:
            self._record_next()
        if self._total != size:
            raise AssertionError(f"chunked {self._total} bytes of a {size}-byte stream")
        self._manifest.write(end_line(blob_id, size, self._count))
        manifest, self._manifest = self._manifest, None
        return manifest

    def _chunk(self, data: ChunkData) -> None:
        self._batch.append((digest_bytes(memoryview(data), self._algorithm), data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._send_batch()

    def _send_batch(self) -> None:
        if not self._batch:
            return
        while len(self._in_flight) >= IN_FLIGHT:
            self._record_next()
        blocks = [data for _, data in self._batch]
        self._in_flight.append((self._pool.submit(self._stager.add, self._batch), blocks))
        self._batch, self._batch_bytes = [], 0

    def _record_next(self) -> None:
        assert self._manifest is not None and self._cutter is not None
        future, blocks = self._in_flight.popleft()
        settled = future.result()
        for data in blocks:  # the stager has taken their bytes: the cutter may refill them
            self._cutter.pool.give_back(data)
        for stored in settled:
            self._manifest.write(chunk_line(stored.ref))
            self._count += 1
            self._total += stored.ref.size
            if stored.new:
                self.new_bytes += stored.stored_size
