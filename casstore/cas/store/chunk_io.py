"""Chunks in the datastore (P13): one stored create-only, as a blob is (P4); one read back and
checked against its id; a chunked blob read as one stream of its canonical TAR
(`ChunkedReader`); and the check a writer or a reader runs on a manifest it finds.

A chunk is stored raw (codec "none") or as one zstd frame ("zstd") under the digest of its
uncompressed bytes, in the datastore's chunk namespace (layout.CHUNKS). Every read is
bounded by the size the manifest gives (MAX_CHUNK_BYTES at most), and a chunk whose bytes do
not hash to its id is refused: damage to every blob that uses it ("chunk")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.chunks.manifest import ChunkRef, iter_manifest
from casstore.cas.digest import digest_bytes, parse_id
from casstore.errors import BlobNotFound, CorruptBlob


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


def store_chunk(chunks: BlobStore, chunk_id: str, data: bytes, codec: str, level: int) -> StoredChunk:
    """Store `data` under `chunk_id` (its digest) unless a copy is there that passes the
    cheap check (a `.zst` of a plausible size, a raw copy of exactly its size); one that
    fails it, or a racing copy that does not read as `data`, is moved into the quarantine
    and this one published in its place. The caller holds a lease on `chunk_id`."""
    found = chunks.find(chunk_id)
    if found is not None and _plausible(found, len(data)):
        return StoredChunk(ChunkRef(chunk_id, len(data), found.codec), found.stored_size, False)
    body = zstandard.ZstdCompressor(level=level).compress(data) if codec == "zstd" else data
    with chunks.begin_ingest() as ingest:
        ingest.write(body)
        stat, new = ingest.commit(chunk_id, codec, lambda f, copy: _differs(f, copy, data))
    return StoredChunk(ChunkRef(chunk_id, len(data), stat.codec), stat.stored_size, new)


def _plausible(copy: BlobStat, size: int) -> bool:
    if copy.codec == "none":
        return copy.stored_size == size
    return 9 <= copy.stored_size <= zstd_bound(size)


def _differs(f: BinaryIO, copy: BlobStat, data: bytes) -> bool:
    try:
        return chunk_bytes(f, copy, len(data)) != data
    except CorruptBlob:
        return True


def chunk_bytes(f: BinaryIO, copy: BlobStat, size: int) -> bytes:
    """The uncompressed bytes of the chunk copy open in `f`, which must be `size` bytes
    (CorruptBlob "chunk" otherwise); the digest is the caller's to check."""
    what = f"chunk {copy.blob_id}"
    if copy.codec == "none":
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


def read_chunk(chunks: BlobStore, ref: ChunkRef, blob_id: str) -> bytes:
    """The bytes of chunk `ref` of blob `blob_id`, checked against the chunk's id."""
    try:
        f, found = chunks.open_blob(ref.chunk_id, lambda copy: copy.codec == ref.codec)
    except BlobNotFound:
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} is missing", "chunk") from None
    except CorruptBlob as exc:
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} cannot be read: {exc}", "chunk") from exc
    with f:
        try:
            data = chunk_bytes(f, found, ref.size)
        except CorruptBlob as exc:
            raise CorruptBlob(f"blob {blob_id}: {exc}", "chunk") from exc
    found_id = digest_bytes(data, parse_id(ref.chunk_id)[0])
    if found_id != ref.chunk_id:
        raise CorruptBlob(f"blob {blob_id}: its chunk {ref.chunk_id} is corrupt (its bytes hash to {found_id})",
                          "chunk")
    return data


class ChunkedReader:
    """The canonical TAR of a chunked blob, from its manifest (open in `manifest`) and its
    chunks, each checked against its id as it is read. The whole blob's digest is the
    caller's to check (VerifyingReader), as for any copy."""

    def __init__(self, manifest: BinaryIO, chunks: BlobStore, blob_id: str, size: int | None = None):
        self._refs: Iterator[ChunkRef] = iter_manifest(manifest, blob_id, size)
        self._chunks = chunks
        self._blob_id = blob_id
        self._current = memoryview(b"")
        self._failed: CorruptBlob | None = None

    def _fill(self) -> bool:
        """Load the next chunk if the current one is read. A chunk that failed fails every
        later read too: the stream cannot go on past a hole (and a caller that reads on to
        check the digest learns which chunk it was, not that the digest differs)."""
        if self._failed is not None:
            raise self._failed
        try:
            while not self._current:
                ref = next(self._refs, None)
                if ref is None:
                    return False
                self._current = memoryview(read_chunk(self._chunks, ref, self._blob_id))
        except CorruptBlob as exc:
            self._failed = exc
            raise
        return True

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
    must be stored. None if nothing is."""
    try:
        for ref in iter_manifest(f, copy.blob_id, size):
            if chunks.find(ref.chunk_id) is None:
                return f"its chunk {ref.chunk_id} is missing"
    except CorruptBlob as exc:
        return str(exc)
    return None
