"""The content store: folders in, canonical TAR blobs under their digests, folders out.

Write path: scan the folder; if the stat cache knows the listing and the blob is there, done
without reading a byte; otherwise the folder's TAR is written into the blob store (ingest.py),
as any canonical TAR stream a caller writes is (`put_tar_stream`): whole, or in a chunked
datastore as a manifest of chunks (chunked_ingest.py, P13). Read path: blob id ->
stream of canonical TAR bytes (a chunked copy through its chunks, chunk_io.py), hashed as it is read and checked against the id before
anything is published into the target (reader.py). A read that finds damage records it for
the next writer (damage.py); a writer checks the copy it finds before trusting it
(copy_checks.py)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from typing import BinaryIO, Iterator, Sequence, cast

import zstandard

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.chunks.policy import DEFAULT_POLICY, ChunkPolicy
from casstore.cas.damage import read_damage, record_damage
from casstore.cas.digest import DEFAULT_ALGORITHM
from casstore.cas.index.facts import BlobFacts, facts_of
from casstore.cas.live.leases import Lease
from casstore.cas.store.chunk_io import ChunkedReader, chunk_store
from casstore.cas.store.codecs import check_codec, decompressed
from casstore.cas.store.copy_checks import Recorded, StoredFacts, cheap_damage, disagrees, matches_facts
from casstore.cas.store.extract_cache import ExtractCache
from casstore.cas.progress import Meter, Progress
from casstore.cas.store.ingest import TarIngest, TarWriter
from casstore.cas.store.no_space import no_space
from casstore.cas.store.reader import UNSIZED_LIMIT, Tee, VerifyingReader, prefer_digest_error
from casstore.cas.store.statcache import StatCache, listing_key
from casstore.cas.tar.extract import Extraction
from casstore.cas.tar.header import CHUNK, Member
from casstore.cas.tar.read import list_members
from casstore.cas.tar.scan import Entry, scan
from casstore.cas.tar.write import Sink, write_tar
from casstore.errors import CasStoreError, CorruptBlob, InvalidInput, UnsafeArchive

log = logging.getLogger(__name__)

PROVEN_BY_THE_BYTES = ("digest", "unreadable")  # the CorruptBlob reasons a read records as damage


class ContentStore:
    """Archives folders into blobs and extracts blobs, over one BlobStore."""

    def __init__(self, blobs: BlobStore, statcache: StatCache | None = None,
                 algorithm: str = DEFAULT_ALGORITHM, policy: ChunkPolicy = DEFAULT_POLICY):
        self.blobs = blobs
        self.statcache = statcache
        self.algorithm = algorithm
        self.policy = policy
        self.unsized_limit = UNSIZED_LIMIT
        self._readable = False

    def lease(self) -> Lease:
        return Lease(self.blobs)

    def _ready_for_writes(self) -> str:
        """The datastore's format ("whole" or "chunked"), created if there is none yet; read
        again before each write, so that a format change (format_change.py) applies to
        long-running writers from their next blob on."""
        return self.blobs.ensure_format()

    def check_readable(self) -> None:
        """Refuse a datastore of a format this casstore does not read (DatastoreError), once
        per store: every read, gc and verify start here."""
        if not self._readable:
            self.blobs.check_format()
            self._readable = True

    # writing

    def put_dir(self, src_dir: str, arc_dir: str = ".", include: str | list[str] = "**",
                exclude: str | list[str] | None = None, *, lease: Lease, codec: str = "none",
                level: int = 3, progress: Progress | None = None, recorded: Recorded | None = None,
                scanned: list[Entry] | None = None) -> BlobFacts:
        """Store the canonical archive of a folder; the blob id is added to `lease`.
        `recorded` gives the facts the caller's index holds for a blob id, if any: a copy
        found under the id that disagrees with them is re-hashed before it is trusted.
        `scanned` is the caller's `scan` of the same folder, arc_dir, include and exclude,
        made to check the members before anything is written (then not scanned again)."""
        check_codec(codec, level)
        datastore_format = self._ready_for_writes()  # a datastore that cannot be used is refused before the scan
        entries = scan(src_dir, arc_dir, include, exclude) if scanned is None else scanned
        key = listing_key(arc_dir, entries, self.algorithm) if self.statcache else ""
        total = sum(e.size for e in entries) if progress is not None else 0  # the file bytes write_tar reports
        if isinstance(progress, Meter):
            progress.expect(total)
        cached = self._cached(key, lease, recorded)
        if cached is not None:
            if progress is not None:
                progress(total)  # nothing to read: all of it is done
            return cached
        started_ns = time.time_ns()
        ingest = TarIngest(self.blobs, self.algorithm, lease, recorded, "the folder")
        facts = self._ingest(ingest, functools.partial(write_tar, entries), datastore_format, codec, level, progress)
        if self.statcache:
            self.statcache.put(key, facts.blob_id, facts.size, entries, started_ns)
        return facts

    def put_tar_stream(self, write: TarWriter, *, lease: Lease, codec: str = "none", level: int = 3,
                       progress: Progress | None = None, recorded: Recorded | None = None,
                       source: str = "the TAR stream", hash_first: bool = False) -> BlobFacts:
        """Store the canonical TAR that `write(sinks, progress)` writes into every sink and
        whose size it returns (ingest.TarWriter); the blob id is added to `lease` before
        anything is published. `write` is called once, or twice for zstd and with
        `hash_first` (hashed first, written only if the id holds no sound copy: for a caller
        whose blobs are often stored already): the two passes must write the same bytes, else
        SourceChanged ("<source> changed while it was archived"). A copy already under the id
        is checked before it is trusted, and re-hashed if `recorded` disagrees with it."""
        check_codec(codec, level)
        ingest = TarIngest(self.blobs, self.algorithm, lease, recorded, source)
        return self._ingest(ingest, write, self._ready_for_writes(), codec, level, progress, hash_first)

    def _ingest(self, ingest: TarIngest, write: TarWriter, datastore_format: str, codec: str, level: int,
                progress: Progress | None, hash_first: bool = False) -> BlobFacts:
        """The write the datastore's format and the codec call for."""
        if datastore_format == "chunked":
            return ingest.chunked(write, codec, level, self.policy, progress)
        if codec == "zstd":
            return ingest.zstd(write, level, progress)
        return ingest.plain(write, progress, hash_first=hash_first)

    def put_tar_bytes(self, data: bytes, *, lease: Lease) -> BlobFacts:
        """Store TAR bytes that are already canonical (used by tests)."""

        def write(sinks: Sequence[Sink], _progress: Progress | None) -> int:
            for sink in sinks:
                sink.write(data)
            return len(data)

        return self.put_tar_stream(write, lease=lease, source="the TAR bytes")

    def _cached(self, key: str, lease: Lease, recorded: Recorded | None) -> BlobFacts | None:
        """The blob of a stat-cache hit, if the copy stored passes the cheap checks and no
        damage is recorded or suspected for it; else None, and the folder is archived (the
        write path then checks, and repairs, with the bytes in hand)."""
        hit = self.statcache.get(key) if self.statcache else None
        if hit is None:
            return None
        lease.add(hit[0])
        found = self.blobs.find(hit[0])
        if found is None or read_damage(self.blobs, hit[0]) is not None or disagrees(found, recorded):
            return None
        try:
            f, found = self.blobs.open_copy(hit[0], found.codec)
        except (CorruptBlob, FileNotFoundError):
            return None
        with f:
            if cheap_damage(f, found, hit[1], None, self.blobs) is not None:
                return None
        return facts_of(found, hit[1])

    # reading

    @contextlib.contextmanager
    def open_tar(self, blob_id: str, size: int | None = None, recorded: StoredFacts | None = None,
                 progress: Progress | None = None) -> Iterator[VerifyingReader]:
        """The blob's canonical TAR bytes (decompressed), hashed as they are read (without a
        recorded `size`, at most `unsized_limit` bytes); `progress` is told the bytes read. Of two
        stored copies, the one that matches `size` and the index's `recorded` facts is read.
        A CorruptBlob met while reading is recorded in the datastore for the next writer."""
        self.check_readable()
        f, found = self.blobs.open_blob(blob_id, functools.partial(matches_facts, size=size, recorded=recorded))
        with f:
            try:
                if found.codec == "chunked":
                    with ChunkedReader(f, chunk_store(self.blobs), blob_id, size) as chunked:
                        yield VerifyingReader(chunked, blob_id, size, self.unsized_limit, progress)
                elif found.codec == "zstd":
                    with decompressed(f, CHUNK) as raw:
                        yield VerifyingReader(raw, blob_id, size, self.unsized_limit, progress)
                else:
                    yield VerifyingReader(f, blob_id, size, self.unsized_limit, progress)
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
                members: list[str] | None = None, recorded: StoredFacts | None = None,
                progress: Progress | None = None) -> list[str]:
        """Extract a blob into `target`, only after its digest checked out. A whole blob
        (no `members`) is not read at all if the target still holds exactly what its last
        extraction there wrote (extract_cache.py); a full extraction is recorded for that."""
        cache = ExtractCache(self.statcache, target, blob_id) if self.statcache and members is None else None
        skipped = cache.still_there() if cache else None
        if skipped is not None:
            if progress is not None and size:
                progress(size)  # nothing to read: all of it is done
            return skipped
        with no_space(f"into {target}"), self.open_tar(blob_id, size, recorded, progress) as reader, \
                Extraction(target, members, digests=cache is not None) as extraction:
            try:
                extraction.stage(_stream(reader))
            except (CorruptBlob, UnsafeArchive) as exc:
                prefer_digest_error(reader, exc)
                raise
            reader.verify()
            done = extraction.publish()
        if cache:
            cache.record(extraction.written)
        return done

    def copy_checked(self, blob_id: str, size: int | None, out: Sink, recorded: StoredFacts | None = None,
                     progress: Progress | None = None) -> None:
        """Write the blob's canonical TAR into `out`, parsing its headers and hashing it on
        the way: when this returns, `out` holds bytes that match the id and read as a TAR.
        On CorruptBlob or UnsafeArchive the caller must discard `out`."""
        with no_space(f"a temp copy of blob {blob_id}"), self.open_tar(blob_id, size, recorded, progress) as reader:
            try:
                list_members(_stream(Tee(reader, out)))
            except (CorruptBlob, UnsafeArchive) as exc:
                prefer_digest_error(reader, exc)
                raise
            reader.verify()

    def export(self, blob_id: str, path: str, *, size: int | None = None, recorded: StoredFacts | None = None,
               zstd_level: int | None = None, progress: Progress | None = None) -> int:
        """Write the blob's canonical TAR (with `zstd_level`, one zstd frame around it) to the
        new file `path` and return its size. The bytes go to a temp file beside `path`, hashed
        and parsed on the way, are fsynced, and only then linked to `path`: a blob that does not
        check out leaves nothing there, and an existing `path` is never overwritten
        (InvalidInput)."""
        if os.path.lexists(path):
            raise InvalidInput(f"{path} exists: export never overwrites a file")
        folder = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".casstore-export-")
        except OSError as exc:
            raise InvalidInput(f"cannot export into folder {folder}: {exc.strerror or exc}") from exc
        try:
            with no_space(f"into {path}"), os.fdopen(fd, "wb") as f:
                if zstd_level is None:
                    self.copy_checked(blob_id, size, f, recorded, progress)
                else:
                    check_codec("zstd", zstd_level)
                    with zstandard.ZstdCompressor(level=zstd_level).stream_writer(f, closefd=False) as writer:
                        self.copy_checked(blob_id, size, writer, recorded, progress)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InvalidInput(f"{path} exists: export never overwrites a file") from None
            return os.stat(path).st_size
        finally:
            os.unlink(tmp)

    def members(self, blob_id: str, size: int | None = None, recorded: StoredFacts | None = None) -> list[Member]:
        """The blob's members, once its digest checked out (listing reads it to the end)."""
        with self.open_tar(blob_id, size, recorded) as reader:
            try:
                found = list_members(_stream(reader))
            except (CorruptBlob, UnsafeArchive) as exc:
                prefer_digest_error(reader, exc)
                raise
            reader.verify()
            return found

    def check(self, blob_id: str, size: int | None = None) -> int:
        """Re-hash a blob; CorruptBlob if it does not match. Returns its size."""
        with self.open_tar(blob_id, size) as reader:
            list_members(_stream(reader))
            reader.verify()
            return reader.count


def _stream(reader: VerifyingReader | Tee) -> BinaryIO:
    """`reader` for the TAR reader, which is typed for a file but only calls read()."""
    return cast(BinaryIO, reader)
