"""The manifest of a chunked blob (`casstore-manifest-1`, docs/datastore.md): the chunks whose
bytes, concatenated in order, are the blob's canonical TAR. A text file, one line each:

    casstore-manifest 1
    chunk xxh128:<hex> <bytes> none|zstd       (one line per chunk, in order)
    end xxh128:<blob hex> <blob bytes> <number of chunks>

A chunk line names the chunk by the digest of its (uncompressed) bytes, its size, and the
codec it is stored in (`casstore/chunks/<algo>/<hex[:2]>/<hex[2:]>`, `.zst` for zstd: one
zstd frame). The blob's id comes last because a writer learns it last: the manifest is
written as the chunks are, in bounded memory, and read the same way.

Anyone who can write the datastore can write a manifest, so the parser takes nothing on
trust: every line is matched whole and bounded in length, ids are parsed whole, a chunk is 1
byte to MAX_CHUNK_BYTES, the chunks may never add up to more than the blob's recorded size,
and the end line must name the blob the manifest is stored under, with the sum of its chunks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Protocol

from casstore.cas.backends.layout import CHUNKS
from casstore.cas.chunks.policy import MAX_CHUNK_BYTES
from casstore.cas.digest import id_or_none
from casstore.errors import CorruptBlob

MAGIC = b"casstore-manifest 1\n"
MAX_LINE = 200
_CHUNK_LINE = re.compile(rb"chunk (xxh128|sha256):([0-9a-f]{32,64}) ([1-9][0-9]{0,15}) ([a-z]{1,8})\n")
_END_LINE = re.compile(rb"end (xxh128|sha256):([0-9a-f]{32,64}) (0|[1-9][0-9]{0,19}) (0|[1-9][0-9]{0,19})\n")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    chunk_id: str
    size: int
    codec: str


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Lines:
    """Lines of a stream, each at most `limit` bytes, read through `read` alone (a
    backend's file may have no bounded `readline`: fsspec's takes no size)."""

    def __init__(self, stream: Readable, block: int = 64 << 10):
        self._stream = stream
        self._block = block
        self._buffer = b""
        self._eof = False

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self._buffer[:limit] and len(self._buffer) < limit and not self._eof:
            more = self._stream.read(self._block)
            self._eof = not more
            self._buffer += more
        end = self._buffer.find(b"\n", 0, limit)
        cut = limit if end < 0 else end + 1
        line, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return line


def chunk_line(ref: ChunkRef) -> bytes:
    return f"chunk {ref.chunk_id} {ref.size} {ref.codec}\n".encode()


def end_line(blob_id: str, size: int, count: int) -> bytes:
    return f"end {blob_id} {size} {count}\n".encode()


def iter_manifest(source: Readable, blob_id: str, size: int | None = None) -> Iterator[ChunkRef]:
    """The chunks of the manifest `source` holds for `blob_id`, read line by line. CorruptBlob
    ("unreadable") for anything that is not exactly a manifest of `blob_id` (with `size`
    bytes, if known), at the first line that is not: a caller that must trust the whole
    list reads it to the end."""
    stream = _Lines(source)
    if stream.readline(len(MAGIC) + 1) != MAGIC:
        raise _corrupt(blob_id, "it does not start as a casstore manifest")
    total = count = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if line.startswith(b"end "):
            _check_end(line, blob_id, size, total, count)
            if stream.readline(1):
                raise _corrupt(blob_id, "bytes after its end line")
            return
        ref = _chunk(line, blob_id)
        total, count = total + ref.size, count + 1
        if size is not None and total > size:
            raise _corrupt(blob_id, f"its chunks add up to more than the blob's {size} bytes")
        yield ref


def _chunk(line: bytes, blob_id: str) -> ChunkRef:
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise _corrupt(blob_id, f"a line that is not a chunk: {line[:80]!r}")
    chunk_id = id_or_none(match.group(1).decode(), match.group(2).decode())
    codec = match.group(4).decode()
    size = int(match.group(3))
    if chunk_id is None or codec not in CHUNKS.suffixes or size > MAX_CHUNK_BYTES:
        raise _corrupt(blob_id, f"a chunk line it cannot use: {line[:80]!r}")
    return ChunkRef(chunk_id, size, codec)


def _check_end(line: bytes, blob_id: str, size: int | None, total: int, count: int) -> None:
    match = _END_LINE.fullmatch(line)
    named = id_or_none(match.group(1).decode(), match.group(2).decode()) if match else None
    if match is None or named != blob_id:
        raise _corrupt(blob_id, f"its end line does not name it: {line[:100]!r}")
    if (int(match.group(3)), int(match.group(4))) != (total, count) or (size is not None and total != size):
        raise _corrupt(blob_id, f"its end line {line.strip()[-40:]!r} does not match its {count} chunks of {total} bytes"
                       + (f" (the blob has {size})" if size is not None else ""))


def _corrupt(blob_id: str, why: str) -> CorruptBlob:
    return CorruptBlob(f"blob {blob_id}: its manifest is corrupt: {why}", "unreadable")
