"""The content store: folders in, canonical TAR blobs under their digests, folders out.

Write path: scan the folder; if the stat cache knows the listing and the blob is there, done
without reading a byte. Otherwise, plain blobs are written and hashed in one pass into the
datastore's temp area and published under their id (dropped if the id is already there);
zstd blobs are hashed first and compressed only if new, since compressing costs ~75x hashing.
Read path: blob id -> stream of canonical TAR bytes, hashed as it is read and checked against
the id before anything is published into the target."""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import zstandard

from casstore.cas.blobs import BlobStat, BlobStore
from casstore.cas.digest import DEFAULT_ALGORITHM, DigestSink, digest_bytes, hasher_id, new_hasher, parse_id
from casstore.cas.extract import CHUNK, Extraction, Member, list_members
from casstore.cas.leases import Lease
from casstore.cas.statcache import StatCache, listing_key
from casstore.cas.tarball import Entry, scan, write_tar
from casstore.errors import CasStoreError, CorruptBlob, InvalidInput, NoSpace, SourceChanged, UnsafeArchive

CODECS = ("none", "zstd")
UNSIZED_LIMIT = 1 << 30  # default of option datastore.max_unsized_bytes
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    blob_id: str
    size: int
    stored_size: int
    codec: str
    new: bool = False


class VerifyingReader:
    """Reads a blob's canonical TAR, hashing it; `verify` checks id and size at the end.

    Reading past `max_size` fails at once: that bounds what a zstd bomb can inflate to. A
    blob with no recorded size is read up to `limit` bytes (the store's unsized_limit)."""

    def __init__(self, raw: BinaryIO, blob_id: str, max_size: int | None, limit: int = UNSIZED_LIMIT):
        self._raw = raw
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

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._raw.read(n if n is not None and n >= 0 else CHUNK)
        except zstandard.ZstdError as exc:
            raise CorruptBlob(f"blob {self._blob_id}: zstd stream is corrupt: {exc}") from exc
        self.count += len(data)
        self._check_bound()
        self._hasher.update(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into `buffer` (at most its length) and hash what was read: no new bytes
        object per read, which for 1 MiB reads costs an mmap and page faults each time."""
        readinto = getattr(self._raw, "readinto", None)
        if readinto is None:
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        try:
            n = readinto(buffer)
        except zstandard.ZstdError as exc:
            raise CorruptBlob(f"blob {self._blob_id}: zstd stream is corrupt: {exc}") from exc
        self.count += n
        self._check_bound()
        with memoryview(buffer) as view, view[:n] as part:
            self._hasher.update(part)
        return n

    def verify(self) -> None:
        while self.read(CHUNK):
            pass
        found = hasher_id(self._hasher, self._algorithm)
        if found != self._blob_id:
            raise CorruptBlob(f"blob {self._blob_id} is corrupt: its content hashes to {found}", "digest")
        if self._max_size is not None and self.count != self._max_size:
            raise CorruptBlob(f"blob {self._blob_id} has {self.count} bytes, {self._max_size} recorded", "size")


class _Tee:
    """A stream that copies what is read from `source` into `out`."""

    def __init__(self, source: VerifyingReader, out: BinaryIO):
        self._source = source
        self._out = out

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._out.write(data)
        return data


class ContentStore:
    """Archives folders into blobs and extracts blobs, over one BlobStore."""

    def __init__(self, blobs: BlobStore, statcache: StatCache | None = None,
                 algorithm: str = DEFAULT_ALGORITHM):
        self.blobs = blobs
        self.statcache = statcache
        self.algorithm = algorithm
        self.unsized_limit = UNSIZED_LIMIT
        self._format_checked = False

    def lease(self) -> Lease:
        return Lease(self.blobs)

    def _ready_for_writes(self) -> None:
        if not self._format_checked:
            self.blobs.ensure_format()
            self._format_checked = True

    def put_dir(self, src_dir: str, arc_dir: str = ".", include: str | list[str] = "**",
                exclude: str | list[str] | None = None, *, lease: Lease, codec: str = "none",
                level: int = 3, progress: Progress | None = None) -> BlobInfo:
        """Store the canonical archive of a folder; the blob id is added to `lease`."""
        check_codec(codec, level)
        self._ready_for_writes()
        entries = scan(src_dir, arc_dir, include, exclude)
        key = listing_key(arc_dir, entries, self.algorithm) if self.statcache else ""
        cached = self._cached(key, lease)
        if cached is not None:
            return cached
        started_ns = time.time_ns()
        if codec == "zstd":
            info = self._ingest_zstd(entries, level, lease, progress)
        else:
            info = self._ingest_plain(entries, lease, progress)
        if self.statcache:
            self.statcache.put(key, info.blob_id, info.size, entries, started_ns)
        return info

    def _cached(self, key: str, lease: Lease) -> BlobInfo | None:
        hit = self.statcache.get(key) if self.statcache else None
        if hit is None:
            return None
        lease.add(hit[0])
        found = self.blobs.find(hit[0])
        return None if found is None else _info(found, hit[1], new=False)

    def _ingest_plain(self, entries: list[Entry], lease: Lease, progress: Progress | None) -> BlobInfo:
        digest = DigestSink(self.algorithm)
        with self.blobs.begin_ingest() as ingest:
            size = write_tar(entries, [digest, ingest], progress)
            blob_id = digest.blob_id()
            lease.add(blob_id)
            found, new = ingest.commit(blob_id, "none")
        return _info(found, size, new)

    def _ingest_zstd(self, entries: list[Entry], level: int, lease: Lease, progress: Progress | None) -> BlobInfo:
        digest = DigestSink(self.algorithm)
        size = write_tar(entries, [digest], progress)
        blob_id = digest.blob_id()
        lease.add(blob_id)
        existing = self.blobs.find(blob_id)
        if existing is not None:
            return _info(existing, size, False)
        again = DigestSink(self.algorithm)
        compressor = zstandard.ZstdCompressor(level=level, threads=-1)
        with self.blobs.begin_ingest() as ingest:
            with compressor.stream_writer(ingest, closefd=False) as writer:
                write_tar(entries, [again, writer])
            if again.blob_id() != blob_id:
                raise SourceChanged("the folder changed while it was archived (two reads differ)")
            found, new = ingest.commit(blob_id, "zstd")
        return _info(found, size, new)

    def put_tar_bytes(self, data: bytes, *, lease: Lease) -> BlobInfo:
        """Store TAR bytes that are already canonical (used by migration and tests)."""
        self._ready_for_writes()
        blob_id = digest_bytes(data, self.algorithm)
        lease.add(blob_id)
        with self.blobs.begin_ingest() as ingest:
            ingest.write(data)
            found, new = ingest.commit(blob_id, "none")
        return _info(found, len(data), new)

    @contextlib.contextmanager
    def open_tar(self, blob_id: str, size: int | None = None) -> Iterator[VerifyingReader]:
        """The blob's canonical TAR bytes (decompressed), hashed as they are read; without a
        recorded `size`, at most `unsized_limit` bytes are read."""
        f, found = self.blobs.open_blob(blob_id)
        with f:
            if found.codec == "zstd":
                with zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK) as raw:
                    yield VerifyingReader(raw, blob_id, size, self.unsized_limit)
            else:
                yield VerifyingReader(f, blob_id, size, self.unsized_limit)

    def extract(self, blob_id: str, target: str, *, size: int | None = None,
                members: list[str] | None = None) -> list[str]:
        """Extract a blob into `target`, only after its digest checked out."""
        with no_space(f"into {target}"), self.open_tar(blob_id, size) as reader, \
                Extraction(target, members) as extraction:
            try:
                extraction.stage(reader)
            except (CorruptBlob, UnsafeArchive) as exc:
                _prefer_digest_error(reader, exc)
                raise
            reader.verify()
            return extraction.publish()

    def copy_checked(self, blob_id: str, size: int, out: BinaryIO) -> None:
        """Write the blob's canonical TAR into `out`, parsing its headers and hashing it on
        the way: when this returns, `out` holds bytes that match the id and read as a TAR.
        On CorruptBlob or UnsafeArchive the caller must discard `out`."""
        with no_space(f"a temp copy of blob {blob_id}"), self.open_tar(blob_id, size) as reader:
            try:
                list_members(_Tee(reader, out))
            except (CorruptBlob, UnsafeArchive) as exc:
                _prefer_digest_error(reader, exc)
                raise
            reader.verify()

    def members(self, blob_id: str, size: int | None = None) -> list[Member]:
        """The blob's members, once its digest checked out (listing reads it to the end)."""
        with self.open_tar(blob_id, size) as reader:
            try:
                found = list_members(reader)
            except (CorruptBlob, UnsafeArchive) as exc:
                _prefer_digest_error(reader, exc)
                raise
            reader.verify()
            return found

    def check(self, blob_id: str, size: int | None = None) -> int:
        """Re-hash a blob; CorruptBlob if it does not match. Returns its size."""
        with self.open_tar(blob_id, size) as reader:
            list_members(reader)
            reader.verify()
            return reader.count


def check_codec(codec: object, level: object, where: str = "") -> None:
    """InvalidInput unless `codec` is known and `level` a zstd level (1-22)."""
    if codec not in CODECS:
        raise InvalidInput(f"{where}codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise InvalidInput(f"{where}level must be an integer from 1 to 22, got {level!r}")


@contextlib.contextmanager
def no_space(where: str) -> Iterator[None]:
    """Turn a write failing for lack of room into NoSpace (an OSError with the same errno)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, CasStoreError) or exc.errno not in NO_SPACE:
            raise
        raise NoSpace(exc.errno, f"no room left to write {where} ({exc.strerror})") from exc


def _prefer_digest_error(reader: VerifyingReader, exc: Exception) -> None:
    """A blob that fails to parse is usually damaged: say so if its digest disagrees."""
    try:
        reader.verify()
    except CorruptBlob as digest_error:
        raise digest_error from exc


def _info(found: BlobStat, size: int, new: bool) -> BlobInfo:
    return BlobInfo(found.blob_id, size, found.stored_size, found.codec, new)
