"""The blob store's interface: what casstore needs of a datastore, whatever holds it.

`BlobStore` is the interface every backend implements (one module each: local.py, fsspec.py,
s3.py; factory.py picks one for a URL), `Ingest` a blob being written into it, `BlobStat` and
`ObjectStat` what a listing or a lookup finds. The keys are layout.py's.

A blob is published only complete and never overwritten (P4): `publish_unless_stored` is
the loop every backend's publish runs, the backend supplying its one create-only step."""

from __future__ import annotations

import copy
import mmap
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Literal

from casstore.cas.backends.layout import (BLOBS, BULK_PREFIXES, FORMAT_KEY, FORMAT_TEXT, FORMATS, MAX_FORMAT_BYTES,
                                          Namespace, Quarantined, blob_key)
from casstore.errors import BlobNotFound, CorruptBlob, DatastoreError, UnreadableObject

ChunkData = bytes | bytearray | mmap.mmap
"""A chunk's bytes in memory: an mmap is page-aligned (a pooled block, cas/buffers.py),
which a local write can hand to the disk as it is."""

PUBLISH_TRIES = 100


@dataclass(frozen=True, slots=True)
class BlobStat:
    """A stored blob. `key` is the object that holds it, as listed or found: gc moves and
    deletes that object, never one whose name it rebuilt from a parse."""

    blob_id: str
    stored_size: int
    codec: str
    mtime: float
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", blob_key(self.blob_id, self.codec))


@dataclass(frozen=True, slots=True)
class ObjectStat:
    key: str
    size: int
    mtime: float


def checked_blob_key(blob: BlobStat, ns: Namespace = BLOBS) -> str:
    """The object `blob` was listed or found as, refused unless it is exactly its id's key
    (a BlobStat built by hand with another key must never make gc move that object)."""
    if ns.parse_blob_key(blob.key) != (blob.blob_id, blob.codec):
        raise DatastoreError(f"{blob.key!r} is not the key of blob {blob.blob_id} ({blob.codec})")
    return blob.key


DamageCheck = Callable[[BinaryIO, "BlobStat"], bool]
"""Reads a stored copy (the open file, at offset 0, and its facts); True if it is damaged."""
Outcome = Literal["moved", "sound", "gone"]


class Ingest(ABC):
    """A blob being written. `commit` publishes it under an id; leaving without commit
    discards it."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        """Publish; returns the blob as stored and whether this copy is the one published
        (False: the id was already there and the new copy is dropped). With `damaged`, a copy
        already there that it finds damaged is moved into the quarantine (`quarantine`) and
        this copy is published in its place."""

    @abstractmethod
    def abort(self) -> None: ...

    def write_whole(self, data: ChunkData) -> None:
        """Write the whole content at once, nothing written before (a chunk): where a
        backend can do better than `write` with that knowledge, it does."""
        self.write(memoryview(data))

    def start_writeback(self) -> None:
        """Start writing what was written to disk, without waiting (a hint, where a
        backend has one): the durable point that follows then waits less."""

    def make_durable(self) -> None:
        """Make what was written durable ahead of `commit` (commit_many does it for a batch
        at once); commit still does whatever it needs."""

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BlobStore(ABC):
    """What casstore needs of a datastore. Keys are '/'-separated, relative to its root."""

    url: str
    ns: Namespace = BLOBS
    read_ahead = 1
    """How many chunks a chunked read fetches ahead of the one being read: where each is a
    request with its latency (an object store), several overlap it."""

    def view(self, ns: Namespace) -> BlobStore:
        """This datastore, working on the objects of `ns` (the chunks, say): the same
        connection, the same publish, find, trash and quarantine, other keys."""
        clone = copy.copy(self)
        clone.ns = ns
        return clone

    def stat_of(self, blob_id: str, stored_size: int, codec: str, mtime: float) -> BlobStat:
        """The BlobStat of `blob_id` in `codec` in this store's namespace."""
        return BlobStat(blob_id, stored_size, codec, mtime, self.ns.blob_key(blob_id, codec))

    @abstractmethod
    def find(self, blob_id: str) -> BlobStat | None: ...

    @abstractmethod
    def open_copy(self, blob_id: str, codec: str) -> tuple[BinaryIO, BlobStat]:
        """The stored copy of `blob_id` in `codec`; BlobNotFound if there is none."""

    def open_blob(self, blob_id: str, prefer: Callable[[BlobStat], bool] | None = None) -> tuple[BinaryIO, BlobStat]:
        """The copy readers use: the first copy (`.tar`, then `.tar.zst`) that `prefer`
        accepts (e.g. the one the index describes), else the first one there is. A name
        that holds no regular file is skipped, and its CorruptBlob raised if nothing else is."""
        fallback: tuple[BinaryIO, BlobStat] | None = None
        unusable: CorruptBlob | None = None
        for codec in self.ns.suffixes:
            try:
                f, found = self.open_copy(blob_id, codec)
            except BlobNotFound:
                continue
            except CorruptBlob as exc:
                unusable = unusable or exc
                continue
            if prefer is None or prefer(found):
                if fallback is not None:
                    fallback[0].close()
                return f, found
            if fallback is None:
                fallback = (f, found)
            else:
                f.close()
        if fallback is None:
            raise unusable or BlobNotFound(f"{self.ns.what} {blob_id} is not in the datastore {self.url}")
        return fallback

    @abstractmethod
    def quarantine(self, blob: BlobStat, damaged: DamageCheck) -> Outcome:
        """Move the copy `blob` names (its id and codec) into the quarantine if `damaged`,
        reading that very copy, says it is damaged: "moved". "sound" if it is not, "gone" if
        there is no such copy (any more) or it changed before it could be moved: look again.
        Blobs are never overwritten (P4): a repair is this move, then a normal publish."""

    def publish_unless_stored(self, blob_id: str, damaged: DamageCheck | None,
                              publish: Callable[[], BlobStat | None]) -> tuple[BlobStat, bool]:
        """The loop of every backend's publish: keep a copy already under `blob_id` unless
        `damaged` refuses it (then it goes into the quarantine and the name is looked up
        again), else `publish` this writer's copy, which returns None when the name was
        taken meanwhile (another writer, or gc putting a blob back): look again. Returns the
        blob as stored and whether this writer's copy is the one published."""
        for _ in range(PUBLISH_TRIES):
            existing = self.find(blob_id)
            if existing is not None:
                if damaged is None or self.quarantine(existing, damaged) == "sound":
                    return existing, False
                continue
            published = publish()
            if published is not None:
                return published, True
        raise DatastoreError(f"{self.ns.what} {blob_id}: its name in {self.url} keeps appearing and vanishing; write it again")

    def iter_quarantine(self) -> Iterator[Quarantined]:
        for obj in self.list_objects(self.ns.quarantine_prefix):
            found = self.ns.parse_quarantine_key(obj.key, obj.size)
            if found is not None:
                yield found

    def find_leased(self, blob_id: str) -> BlobStat | None:
        """`find` for a caller that holds a lease on `blob_id`. gc moves a candidate into its
        trash before it re-reads the leases, and puts back the leased ones: a blob can look
        missing for that moment. This caller may put it back itself instead of failing."""
        found = self.find(blob_id)
        if found is not None:
            return found
        for codec in self.ns.suffixes:
            self.restore_from_trash(self.ns.trash_key(blob_id, codec))
        return self.find(blob_id)

    @abstractmethod
    def begin_ingest(self) -> Ingest: ...

    def commit_many(self, batch: list[tuple[Ingest, str, str, DamageCheck | None]]) -> list[tuple[BlobStat, bool]]:
        """`commit(id, codec, damaged)` each ingest of `batch`, in order. A backend overrides
        it where one durable point for many objects is cheaper than one each (local.py: the
        fsyncs of a batch of chunks, then their links, then each folder once)."""
        return [ingest.commit(blob_id, codec, damaged) for ingest, blob_id, codec, damaged in batch]

    @abstractmethod
    def delete_blob(self, blob_id: str, codec: str) -> None: ...

    def iter_blobs(self, strangers: list[ObjectStat] | None = None) -> Iterator[BlobStat]:
        """Every blob, from one listing of the blobs prefix. An object there whose key is not
        exactly a blob's (`parse_blob_key`) is no blob: never yielded, so gc never moves it
        nor mistakes it for the blob it resembles; it is appended to `strangers` if given."""
        return blobs_of(self.list_objects(self.ns.prefix), strangers, self.ns)

    @abstractmethod
    def put_object(self, key: str, data: bytes, durable: bool = True) -> None:
        """Write a small object atomically (readers see the old or the new content), and
        durably unless `durable` is False: for an object only live processes need (a
        lease), whose loss in a machine crash costs nothing, since every writer it served
        died in it, and which readers take as expired if torn (leases.read_leases)."""

    @abstractmethod
    def get_object(self, key: str, *, max_bytes: int) -> bytes | None:
        """The content of a small object, None if there is none. `max_bytes` is the most
        its caller trusts it to hold: a larger object is refused (UnreadableObject) without
        being read, and so is one that is not a regular file."""

    @abstractmethod
    def delete_object(self, key: str) -> None: ...

    @abstractmethod
    def list_objects(self, prefix: str, specials: list[ObjectStat] | None = None) -> Iterator[ObjectStat]:
        """Every object below `prefix` (recursively); missing prefix: nothing. Only regular
        files are objects: a symlink, a FIFO or a device is never listed, and is appended to
        `specials` if given (a backend that has nothing but objects, S3, never fills it).
        A caller that must see everything that is there (the registry: what it cannot read
        may name a project) passes `specials` and refuses what it finds in it."""

    def list_small_objects(self) -> Iterator[ObjectStat]:
        """Every object except the blobs and gc's trash: named references, leases, registry
        entries, the format file, temp files. gc and verify read these several times and the
        blobs once (`iter_blobs`); a backend overrides this to skip the bulk prefixes without
        listing them (a million blobs are a thousand LIST requests on S3)."""
        for obj in self.list_objects(""):
            if not obj.key.startswith(BULK_PREFIXES):
                yield obj

    def through_symlink(self, key: str) -> bool:
        """Whether `key` is reached through a symlinked folder. Listings never enter one, so
        gc never sees what lies behind it: a named reference read through one is refused.
        Object stores have no symlinks."""
        return False

    @abstractmethod
    def exists(self) -> bool:
        """Whether the datastore has been created."""

    @abstractmethod
    def move_to_trash(self, blob: BlobStat) -> str | None:
        """Move the object `blob.key` out of sight (gc's first step); its trash key, None if
        it was gone."""

    @abstractmethod
    def restore_from_trash(self, key: str) -> None:
        """Put a trashed blob back (a writer leased it meanwhile); no-op if its id exists.
        A key that is not a trash key (`trash_key_blob`) is not gc's: left alone, never
        deleted (a user's file in a folder planted as the trash)."""

    def delete_leftover(self, key: str) -> bool:
        """Delete a temp file of an interrupted write; False if a live writer still holds it."""
        self.delete_object(key)
        return True

    def iter_trash(self) -> Iterator[ObjectStat]:
        return self.list_objects(self.ns.trash_prefix)

    def read_format(self) -> str | None:
        """How this datastore stores blobs, from its format file (layout.FORMATS): "whole"
        or "chunked"; None if there is no format file (nothing written yet). A format this
        casstore does not know is refused (DatastoreError) before anything reads the
        datastore: a newer casstore may keep blobs in a way this one would report as
        missing, or that its gc would misjudge. A format file that cannot be read is refused too."""
        try:
            found = self.get_object(FORMAT_KEY, max_bytes=MAX_FORMAT_BYTES)
        except (OSError, UnreadableObject) as exc:
            raise DatastoreError(f"{self.url}: cannot read the datastore's format ({FORMAT_KEY}): {exc}") from exc
        if found is None:
            return None
        if found not in FORMATS:
            name = found.strip().decode("utf-8", "replace")
            known = " or ".join(repr(f.strip().decode()) for f in FORMATS)
            raise DatastoreError(f"{self.url}: unsupported datastore format {name!r} (this casstore reads "
                                 f"{known}: a newer casstore wrote it; upgrade casstore)")
        return FORMATS[found]

    def check_format(self) -> None:
        """Refuse a datastore of a format this casstore does not read (`read_format`)."""
        self.read_format()

    def ensure_format(self) -> str:
        """The datastore's format (`read_format`), first created as FORMAT_TEXT (chunked)
        if there is none: a new datastore starts chunked, an existing one keeps its format
        until `set_format` changes it."""
        try:
            found = self.read_format()
            if found is None:
                self.put_object(FORMAT_KEY, FORMAT_TEXT)
                found = FORMATS[FORMAT_TEXT]
        except (NotADirectoryError, FileExistsError, PermissionError) as exc:
            raise DatastoreError(f"{self.url} cannot be used as a datastore: {exc}") from exc
        return found

    def set_format(self, name: str) -> None:
        """Write the format file for `name` ("whole" or "chunked"); the caller has checked
        that the datastore holds nothing the new format does not allow (format_change.py)."""
        texts = {mode: text for text, mode in FORMATS.items()}
        self.put_object(FORMAT_KEY, texts[name])


def blobs_of(objects: Iterable[ObjectStat], strangers: list[ObjectStat] | None,
             ns: Namespace = BLOBS) -> Iterator[BlobStat]:
    """The objects of `ns` among `objects`; the others appended to `strangers` if given."""
    for obj in objects:
        parsed = ns.parse_blob_key(obj.key)
        if parsed is not None:
            yield BlobStat(parsed[0], obj.size, parsed[1], obj.mtime, obj.key)
        elif strangers is not None:
            strangers.append(obj)
