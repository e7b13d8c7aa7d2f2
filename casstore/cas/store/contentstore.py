"""The content store: folders in, canonical TAR blobs under their digests, folders out.

Write path: scan the folder; if the stat cache knows the listing and the blob is there, done
without reading a byte. Otherwise, plain blobs are written and hashed in one pass into the
datastore's temp area and published under their id (dropped if the id is already there);
zstd blobs are hashed first and compressed only if new, since compressing costs ~75x hashing.
Read path: blob id -> stream of canonical TAR bytes, hashed as it is read and checked against
the id before anything is published into the target.

A dedup hit is not taken on trust (docs/datastore.md, "Damaged blobs"): a writer that holds
the bytes checks the copy found under the id against what it knows for sure (the TAR's size
and first block; a zstd frame's magic and recorded content size) and, where there is only a
suspicion (damage a reader recorded, index facts that disagree), re-hashes it. A copy shown
damaged is moved into the quarantine and the writer's own copy is published in its place.
A read that finds damage records it for the next writer (damage.py)."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Protocol

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore, DamageCheck, Ingest
from casstore.cas.damage import DamageRecord, clear_damage, describes, read_damage, record_damage
from casstore.cas.digest import DEFAULT_ALGORITHM, DigestSink, digest_bytes, hasher_id, new_hasher, parse_id
from casstore.cas.tar.extract import Extraction
from casstore.cas.tar.header import BLOCK, CHUNK, Member
from casstore.cas.tar.read import _check_checksum, list_members
from casstore.cas.live.leases import Lease
from casstore.cas.store.statcache import StatCache, listing_key
from casstore.cas.tar.scan import Entry, scan
from casstore.cas.tar.write import write_tar
from casstore.errors import CasStoreError, CorruptBlob, InvalidInput, NoSpace, SourceChanged, UnsafeArchive

log = logging.getLogger(__name__)

CODECS = ("none", "zstd")
UNSIZED_LIMIT = 1 << 30  # default of option datastore.max_unsized_bytes
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_MAX_FRAME_HEADER = 18
PROVEN_BY_THE_BYTES = ("digest", "unreadable")  # the CorruptBlob reasons a read records as damage
Progress = Callable[[int], None]


class StoredFacts(Protocol):
    """What an index row records of the copy it describes (index.BlobFacts has these)."""

    stored_size: int
    codec: str


Recorded = Callable[[str], "StoredFacts | None"]


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
                level: int = 3, progress: Progress | None = None, recorded: Recorded | None = None) -> BlobInfo:
        """Store the canonical archive of a folder; the blob id is added to `lease`.
        `recorded` gives the facts the caller's index holds for a blob id, if any: a copy
        found under the id that disagrees with them is re-hashed before it is trusted."""
        check_codec(codec, level)
        self._ready_for_writes()
        entries = scan(src_dir, arc_dir, include, exclude)
        key = listing_key(arc_dir, entries, self.algorithm) if self.statcache else ""
        cached = self._cached(key, lease, recorded)
        if cached is not None:
            return cached
        started_ns = time.time_ns()
        if codec == "zstd":
            info = self._ingest_zstd(entries, level, lease, progress, recorded)
        else:
            info = self._ingest_plain(entries, lease, progress, recorded)
        if self.statcache:
            self.statcache.put(key, info.blob_id, info.size, entries, started_ns)
        return info

    def _cached(self, key: str, lease: Lease, recorded: Recorded | None) -> BlobInfo | None:
        """The blob of a stat-cache hit, if the copy stored passes the cheap checks and no
        damage is recorded or suspected for it; else None, and the folder is archived (the
        write path then checks, and repairs, with the bytes in hand)."""
        hit = self.statcache.get(key) if self.statcache else None
        if hit is None:
            return None
        lease.add(hit[0])
        found = self.blobs.find(hit[0])
        if found is None or read_damage(self.blobs, hit[0]) is not None or _disagrees(found, recorded):
            return None
        try:
            f, found = self.blobs.open_copy(hit[0], found.codec)
        except (CorruptBlob, FileNotFoundError):
            return None
        with f:
            if cheap_damage(f, found, hit[1], None) is not None:
                return None
        return _info(found, hit[1], new=False)

    def _damage_check(self, blob_id: str, size: int, head: bytes,
                      recorded: Recorded | None) -> tuple[DamageCheck, DamageRecord | None]:
        """The check a writer holding the bytes of `blob_id` runs on a copy found under the
        id (blobs.DamageCheck), and the damage recorded for the id (the writer drops it once
        the id holds a copy that read correctly). A cheap check that fails is proof; damage
        recorded for the copy, or index facts that disagree with it, is only a suspicion,
        settled by re-hashing the copy."""
        record = read_damage(self.blobs, blob_id)

        def damaged(f: BinaryIO, copy: BlobStat) -> bool:
            if cheap_damage(f, copy, size, head) is not None:
                return True
            if (record is not None and describes(record, copy)) or _disagrees(copy, recorded):
                return rehash_damage(f, copy, size) is not None
            return False

        return damaged, record

    def _commit_checked(self, ingest: Ingest, blob_id: str, codec: str, size: int, head: bytes,
                        recorded: Recorded | None) -> BlobInfo:
        check, record = self._damage_check(blob_id, size, head, recorded)
        found, new = ingest.commit(blob_id, codec, check)
        if record is not None:
            self._forget_damage(blob_id)
        return _info(found, size, new)

    def _ingest_plain(self, entries: list[Entry], lease: Lease, progress: Progress | None,
                      recorded: Recorded | None = None) -> BlobInfo:
        digest, head = DigestSink(self.algorithm), HeadSink()
        with self.blobs.begin_ingest() as ingest:
            size = write_tar(entries, [digest, head, ingest], progress)
            blob_id = digest.blob_id()
            lease.add(blob_id)
            return self._commit_checked(ingest, blob_id, "none", size, head.data, recorded)

    def _ingest_zstd(self, entries: list[Entry], level: int, lease: Lease, progress: Progress | None,
                     recorded: Recorded | None = None) -> BlobInfo:
        digest, head = DigestSink(self.algorithm), HeadSink()
        size = write_tar(entries, [digest, head], progress)
        blob_id = digest.blob_id()
        lease.add(blob_id)
        existing = self.blobs.find(blob_id)
        if existing is not None:
            check, record = self._damage_check(blob_id, size, head.data, recorded)
            if self.blobs.quarantine(existing, check) == "sound":
                if record is not None:
                    self._forget_damage(blob_id)
                return _info(existing, size, False)
        again = DigestSink(self.algorithm)
        compressor = zstandard.ZstdCompressor(level=level, threads=-1)
        with self.blobs.begin_ingest() as ingest:
            try:
                with compressor.stream_writer(ingest, size=size, closefd=False) as writer:
                    write_tar(entries, [again, writer])
            except zstandard.ZstdError as exc:  # the second read gave another size than the first
                raise SourceChanged("the folder changed while it was archived (two reads differ)") from exc
            if again.blob_id() != blob_id:
                raise SourceChanged("the folder changed while it was archived (two reads differ)")
            return self._commit_checked(ingest, blob_id, "zstd", size, head.data, recorded)

    def put_tar_bytes(self, data: bytes, *, lease: Lease) -> BlobInfo:
        """Store TAR bytes that are already canonical (used by migration and tests)."""
        self._ready_for_writes()
        blob_id = digest_bytes(data, self.algorithm)
        lease.add(blob_id)
        with self.blobs.begin_ingest() as ingest:
            ingest.write(data)
            return self._commit_checked(ingest, blob_id, "none", len(data), data[:BLOCK], None)

    def _forget_damage(self, blob_id: str) -> None:
        try:
            clear_damage(self.blobs, blob_id)
        except OSError as exc:  # the next writer re-reads the copy once more: only costs time
            log.warning("could not drop the damage record of %s: %s", blob_id, exc)

    @contextlib.contextmanager
    def open_tar(self, blob_id: str, size: int | None = None,
                 recorded: StoredFacts | None = None) -> Iterator[VerifyingReader]:
        """The blob's canonical TAR bytes (decompressed), hashed as they are read (without a
        recorded `size`, at most `unsized_limit` bytes). Of two
        stored copies, the one that matches `size` and the index's `recorded` facts is read.
        A CorruptBlob met while reading is recorded in the datastore for the next writer."""
        f, found = self.blobs.open_blob(blob_id, functools.partial(matches_facts, size=size, recorded=recorded))
        with f:
            try:
                if found.codec == "zstd":
                    with zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK) as raw:
                        yield VerifyingReader(raw, blob_id, size, self.unsized_limit)
                else:
                    yield VerifyingReader(f, blob_id, size, self.unsized_limit)
            except CorruptBlob as exc:
                self._note_damage(found, exc)
                raise

    def _note_damage(self, copy: BlobStat, exc: CorruptBlob) -> None:
        """Record what a read found in the bytes themselves (a digest mismatch, a zstd stream
        or TAR headers that do not parse), never a size that differs from the reader's
        expectation: that may come from a named reference anyone can write or another
        project's stale facts, and a record makes every project's verify report the blob.
        A datastore that takes no writes (read-only) only loses the hint."""
        if exc.reason not in PROVEN_BY_THE_BYTES:
            return
        try:
            record_damage(self.blobs, copy, exc.reason, str(exc))
        except (OSError, CasStoreError) as error:
            log.warning("could not record the damage of %s: %s", copy.blob_id, error)

    def extract(self, blob_id: str, target: str, *, size: int | None = None,
                members: list[str] | None = None, recorded: StoredFacts | None = None) -> list[str]:
        """Extract a blob into `target`, only after its digest checked out."""
        with no_space(f"into {target}"), self.open_tar(blob_id, size, recorded) as reader, \
                Extraction(target, members) as extraction:
            try:
                extraction.stage(reader)
            except (CorruptBlob, UnsafeArchive) as exc:
                _prefer_digest_error(reader, exc)
                raise
            reader.verify()
            return extraction.publish()

    def copy_checked(self, blob_id: str, size: int, out: BinaryIO, recorded: StoredFacts | None = None) -> None:
        """Write the blob's canonical TAR into `out`, parsing its headers and hashing it on
        the way: when this returns, `out` holds bytes that match the id and read as a TAR.
        On CorruptBlob or UnsafeArchive the caller must discard `out`."""
        with no_space(f"a temp copy of blob {blob_id}"), self.open_tar(blob_id, size, recorded) as reader:
            try:
                list_members(_Tee(reader, out))
            except (CorruptBlob, UnsafeArchive) as exc:
                _prefer_digest_error(reader, exc)
                raise
            reader.verify()

    def members(self, blob_id: str, size: int | None = None, recorded: StoredFacts | None = None) -> list[Member]:
        """The blob's members, once its digest checked out (listing reads it to the end)."""
        with self.open_tar(blob_id, size, recorded) as reader:
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


class HeadSink:
    """Keeps the first block of what it is given (a TAR's first header)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes | memoryview) -> None:
        if len(self.data) < BLOCK:
            self.data += bytes(data[:BLOCK - len(self.data)])


def matches_facts(copy: BlobStat, size: int | None = None, recorded: StoredFacts | None = None) -> bool:
    """Whether a stored copy agrees with what the caller knows of the blob: the index's
    codec and stored size, and for a `.tar` the uncompressed size."""
    if recorded is not None and (copy.codec, copy.stored_size) != (recorded.codec, recorded.stored_size):
        return False
    return not (copy.codec == "none" and size is not None and copy.stored_size != size)


def _disagrees(copy: BlobStat, recorded: Recorded | None) -> bool:
    """Whether the caller's index records another copy than this one (another codec or
    stored size): a stale row after gc, a second copy of racing writers, or damage."""
    facts = recorded(copy.blob_id) if recorded is not None else None
    return facts is not None and not matches_facts(copy, recorded=facts)


def cheap_damage(f: BinaryIO, copy: BlobStat, size: int | None, head: bytes | None) -> str | None:
    """What a look at a copy's stat and first bytes proves wrong, None if nothing: a `.tar`
    must have the TAR's size; a `.tar.zst` must start with a zstd frame whose header, where
    it records the content size, records the TAR's; and the first TAR block (decompressed)
    must be `head`, or without it a valid header or an all-zero block. Reads one TAR block,
    or for zstd the compressed bytes of the first one (at most a zstd block, 128 KiB)."""
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
        with zstandard.ZstdDecompressor().stream_reader(f, read_size=16384, closefd=False) as raw:
            first = _read_block(raw)
    except zstandard.ZstdError as exc:
        return f"the zstd stream does not decompress: {exc}"
    return _first_block_damage(first, head)


def _read_block(f: BinaryIO) -> bytes:
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


def rehash_damage(f: BinaryIO, copy: BlobStat, size: int | None) -> str | None:
    """Read a whole copy (from its start) and check its digest and size; what is wrong, or
    None if it reads correctly."""
    f.seek(0)
    try:
        if copy.codec == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(f, read_size=CHUNK, closefd=False) as raw:
                VerifyingReader(raw, copy.blob_id, size).verify()
        else:
            VerifyingReader(f, copy.blob_id, size).verify()
    except CorruptBlob as exc:
        return str(exc)
    return None


def _info(found: BlobStat, size: int, new: bool) -> BlobInfo:
    return BlobInfo(found.blob_id, size, found.stored_size, found.codec, new)
