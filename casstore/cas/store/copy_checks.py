"""Checks of a stored copy against what the caller knows of its blob (docs/datastore.md,
"Damaged blobs"): a dedup hit is not taken on trust.

`cheap_damage` looks at a copy's stat and first bytes only; `rehash_damage` reads it whole;
`matches_facts` compares it with the index's facts (or a named reference's), which readers
use to prefer one of two copies and writers to decide when a copy must be re-hashed."""

from __future__ import annotations

from typing import BinaryIO, Callable, Protocol

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.store.chunk_io import ChunkedReader, chunk_store, manifest_damage
from casstore.cas.store.codecs import ZSTD_MAGIC, ZSTD_MAX_FRAME_HEADER, decompressed
from casstore.cas.store.reader import Readable, VerifyingReader
from casstore.cas.tar.header import BLOCK, CHUNK
from casstore.cas.tar.read import _check_checksum
from casstore.errors import CorruptBlob


class StoredFacts(Protocol):
    """What a record says of the copy it describes: an index row (BlobFacts) or a named
    reference (RefFacts)."""

    @property
    def stored_size(self) -> int: ...

    @property
    def codec(self) -> str: ...


Recorded = Callable[[str], "StoredFacts | None"]  # the facts the caller's index holds for a blob id


def matches_facts(copy: BlobStat, size: int | None = None, recorded: StoredFacts | None = None) -> bool:
    """Whether a stored copy agrees with what the caller knows of the blob: the index's
    codec and stored size, and for a `.tar` the uncompressed size."""
    if recorded is not None and (copy.codec, copy.stored_size) != (recorded.codec, recorded.stored_size):
        return False
    return not (copy.codec == "none" and size is not None and copy.stored_size != size)


def disagrees(copy: BlobStat, recorded: Recorded | None) -> bool:
    """Whether the caller's index records another copy than this one (another codec or
    stored size): a stale row after gc, a second copy of racing writers, or damage."""
    facts = recorded(copy.blob_id) if recorded is not None else None
    return facts is not None and not matches_facts(copy, recorded=facts)


def cheap_damage(f: BinaryIO, copy: BlobStat, size: int | None, head: bytes | None, blobs: BlobStore) -> str | None:
    """What a look at a copy's stat and first bytes proves wrong, None if nothing: a `.tar`
    must have the TAR's size; a `.tar.zst` must start with a zstd frame whose header, where
    it records the content size, records the TAR's; and the first TAR block (decompressed)
    must be `head`, or without it a valid header or an all-zero block. Reads one TAR block,
    or for zstd the compressed bytes of the first one (at most a zstd block, 128 KiB). A
    manifest (in datastore `blobs`) must parse, add up to the TAR's size, and name only
    chunks that are stored (its chunks are not read)."""
    if copy.codec == "chunked":
        return manifest_damage(f, copy, size, chunk_store(blobs))
    if copy.codec == "none":
        if size is not None and copy.stored_size != size:
            return f"{copy.stored_size} bytes stored, the TAR has {size}"
        return _first_block_damage(_read_block(f), head)
    frame = f.read(ZSTD_MAX_FRAME_HEADER)
    if not frame.startswith(ZSTD_MAGIC):
        return "not a zstd frame"
    try:
        content_size = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        return f"bad zstd frame header: {exc}"
    if size is not None and content_size != zstandard.CONTENTSIZE_UNKNOWN and content_size != size:
        return f"its zstd frame holds {content_size} bytes, the TAR has {size}"
    f.seek(0)
    try:
        with decompressed(f, 16384) as raw:
            first = _read_block(raw)
    except zstandard.ZstdError as exc:
        return f"the zstd stream does not decompress: {exc}"
    return _first_block_damage(first, head)


def _read_block(f: Readable) -> bytes:
    data = b""
    while len(data) < BLOCK and (more := f.read(BLOCK - len(data))):
        data += more
    return data


def _first_block_damage(first: bytes, head: bytes | None) -> str | None:
    if head is not None:
        return None if first == head else "its first block is not the TAR's"
    if len(first) < BLOCK:
        return "shorter than one TAR block"
    if any(first):
        try:
            _check_checksum(first)
        except CorruptBlob as exc:
            return str(exc)
    return None


def rehash_damage(f: BinaryIO, copy: BlobStat, size: int | None, blobs: BlobStore) -> str | None:
    """Read a whole copy (from its start; a manifest's chunks from datastore `blobs`) and
    check its digest and size; what is wrong, or None if it reads correctly."""
    f.seek(0)
    try:
        if copy.codec == "chunked":
            with ChunkedReader(f, chunk_store(blobs), copy.blob_id, size) as chunked:
                VerifyingReader(chunked, copy.blob_id, size).verify()
        elif copy.codec == "zstd":
            with decompressed(f, CHUNK) as raw:
                VerifyingReader(raw, copy.blob_id, size).verify()
        else:
            VerifyingReader(f, copy.blob_id, size).verify()
    except CorruptBlob as exc:
        return str(exc)
    return None
