"""Reading a blob back: its canonical TAR bytes, hashed as they are read, and checked against
the blob id (and the recorded size) before the caller may trust what it read (P7).

A read that goes past the recorded size fails at once: that bounds what a zstd bomb can
inflate to. A blob with no recorded size is read up to a limit (option
datastore.max_unsized_bytes)."""

from __future__ import annotations

from typing import Protocol

import zstandard

from casstore.cas.digest import hasher_id, new_hasher, parse_id
from casstore.cas.progress import Progress
from casstore.cas.tar.header import CHUNK
from casstore.cas.tar.write import Sink
from casstore.errors import CorruptBlob

UNSIZED_LIMIT = 1 << 30  # default of option datastore.max_unsized_bytes


class Readable(Protocol):
    """A stream of bytes: a file, or a zstd decompression reader."""

    def read(self, n: int = -1, /) -> bytes: ...


class VerifyingReader:
    """Reads a blob's canonical TAR, hashing it; `verify` checks id and size at the end.

    Reading past `max_size` fails at once. A blob with no recorded size is read up to
    `limit` bytes (the store's unsized_limit)."""

    def __init__(self, raw: Readable, blob_id: str, max_size: int | None, limit: int = UNSIZED_LIMIT,
                 progress: Progress | None = None):
        self._raw = raw
        self._progress = progress
        self._blob_id = blob_id
        self._algorithm = parse_id(blob_id)[0]
        self._hasher = new_hasher(self._algorithm)
        self._max_size = max_size
        self._limit = limit
        self.count = 0

    def _check_bound(self) -> None:
        if self._max_size is not None:
            if self.count > self._max_size:
                raise CorruptBlob(f"blob {self._blob_id} is larger than its recorded {self._max_size} bytes", "size")
        elif self.count > self._limit:
            raise CorruptBlob(f"blob {self._blob_id} has no recorded size and is larger than the {self._limit}-byte "
                              "limit for such reads (option datastore.max_unsized_bytes)", "size")

    def read(self, n: int | None = -1) -> bytes:
        try:
            data = self._raw.read(n if n is not None and n >= 0 else CHUNK)
        except zstandard.ZstdError as exc:
            raise CorruptBlob(f"blob {self._blob_id}: zstd stream is corrupt: {exc}") from exc
        self._took(data)
        return data

    def _took(self, data: bytes | memoryview) -> None:
        """Count, bound, report and hash the bytes a read gave."""
        self.count += len(data)
        self._check_bound()
        if self._progress is not None:
            self._progress(len(data))
        self._hasher.update(data)

    def read_view(self, n: int) -> memoryview | None:
        """The next bytes (at most `n`) as a view into the copy's own buffer, hashed, where
        the copy reads that way (a chunked blob: no copy out of its chunks); None where it
        does not (then use readinto). The view is valid until the next read."""
        read_view = getattr(self._raw, "read_view", None)
        if read_view is None:
            return None
        view: memoryview = read_view(n)
        self._took(view)
        return view

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into `buffer` (at most its length) and hash what was read: no new bytes
        object per read, which for 1 MiB reads costs an mmap and page faults each time."""
        readinto = getattr(self._raw, "readinto", None)
        if readinto is None:
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        try:
            n: int = readinto(buffer)
        except zstandard.ZstdError as exc:
            raise CorruptBlob(f"blob {self._blob_id}: zstd stream is corrupt: {exc}") from exc
        with memoryview(buffer) as view, view[:n] as part:
            self._took(part)
        return n

    def verify(self) -> None:
        while self.read(CHUNK):
            pass
        found = hasher_id(self._hasher, self._algorithm)
        if found != self._blob_id:
            raise CorruptBlob(f"blob {self._blob_id} is corrupt: its content hashes to {found}", "digest")
        if self._max_size is not None and self.count != self._max_size:
            raise CorruptBlob(f"blob {self._blob_id} has {self.count} bytes, {self._max_size} recorded", "size")


class Tee:
    """A stream that copies what is read from `source` into `out`."""

    def __init__(self, source: VerifyingReader, out: Sink):
        self._source = source
        self._out = out

    def read(self, n: int | None = -1) -> bytes:
        data = self._source.read(n)
        self._out.write(data)
        return data


def prefer_digest_error(reader: VerifyingReader, exc: Exception) -> None:
    """A blob that fails to parse is usually damaged: say so if its digest disagrees."""
    try:
        reader.verify()
    except CorruptBlob as digest_error:
        raise digest_error from exc
