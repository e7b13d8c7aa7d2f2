"""The blob store: immutable blobs under their ids, plus the small objects that live beside
them in the datastore (named references, leases, the registry of databases).

Layout of a datastore (docs/datastore.md):

    casstore/FORMAT                              "casstore-datastore 1"
    casstore/blobs/<algo>/<hex[:2]>/<hex[2:]>.tar[.zst]   read-only blobs
    casstore/tmp/<random>.partial                ingests in progress (or interrupted)
    casstore/leases/<lease id>.json              blobs a writer is about to reference
    casstore/registry/<key>.json                 databases that reference blobs here
    casstore/damaged/<algo>/<hex>.json           damage a reader saw in a blob (damage.py)
    casstore/quarantine/<algo>-<hex><suffix>.<ns>.<uuid hex>   damaged copies a repair moved aside
    <prefix>/<uuid hex>                          named references (ArchiveStoreIO.create)

`BlobStore` is the interface every backend implements; `LocalBlobStore` is the local folder.
A blob is published only complete: written to tmp, fsynced, then hard-linked to its final
name, which fails instead of overwriting when the id is already there."""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import re
import stat
import sys
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator, Literal

from casstore.cas.digest import id_or_none, parse_id
from casstore.errors import BlobNotFound, CorruptBlob, DatastoreError, InvalidInput, UnreadableObject

FORMAT_KEY = "casstore/FORMAT"
FORMAT_TEXT = b"casstore-datastore 1\n"
INTERNAL = "casstore"
TRASH_PREFIX = f"{INTERNAL}/trash"
TORN_SUFFIX = ".tmp"
MAX_FORMAT_BYTES = 4096
_TORN_INSIDE = re.compile(rf"{INTERNAL}/.+\.[0-9a-f]{{32}}\.tmp")
_TORN_REF = re.compile(r"(?:[^/]+/)*[0-9a-f]{32}\.[0-9a-f]{32}\.tmp")


def is_torn_object(key: str) -> bool:
    """A small object's temp file (`<key>.<uuid hex>.tmp`) that a crash left behind, where
    casstore writes one: anywhere below casstore/ (leases, registry entries, the format
    file), and outside it only a named reference's `<prefix>/<uuid hex>.<uuid hex>.tmp`.
    Anything else outside casstore/ (a user's `notes/results.<hex>.tmp`) is not casstore's."""
    if key.startswith(f"{INTERNAL}/"):
        return _TORN_INSIDE.fullmatch(key) is not None
    return _TORN_REF.fullmatch(key) is not None


CODEC_SUFFIX = {"none": ".tar", "zstd": ".tar.zst"}
QUARANTINE_PREFIX = f"{INTERNAL}/quarantine"
BULK_PREFIXES = (f"{INTERNAL}/blobs/", f"{TRASH_PREFIX}/", f"{QUARANTINE_PREFIX}/")  # what list_small_objects skips
_QUARANTINE_NAME = re.compile(r"(xxh128|sha256)-([0-9a-f]{32,64})(\.tar|\.tar\.zst)\.([0-9]{1,20})\.[0-9a-f]{32}")


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


def blob_key(blob_id: str, codec: str) -> str:
    algorithm, hexdigest = parse_id(blob_id)
    return f"{INTERNAL}/blobs/{algorithm}/{hexdigest[:2]}/{hexdigest[2:]}{CODEC_SUFFIX[codec]}"


def parse_blob_key(key: str) -> tuple[str, str] | None:
    """(blob id, codec) of a blob key, None for anything else found under blobs/. A key is
    a blob's only if it is exactly the key of what it parses to (`blob_key(...) == key`):
    `<hex>\\n.tar` or a three-digit shard folder is a stranger, not another name of a blob."""
    parts = key.split("/")
    if len(parts) != 5 or parts[:2] != [INTERNAL, "blobs"]:
        return None
    for codec, suffix in sorted(CODEC_SUFFIX.items(), key=lambda kv: -len(kv[1])):
        if parts[4].endswith(suffix):
            candidate = f"{parts[2]}:{parts[3]}{parts[4][:-len(suffix)]}"
            try:
                canonical = blob_key(candidate, codec)
            except ValueError:
                return None
            return (candidate, codec) if canonical == key else None
    return None


def trash_key(blob_id: str, codec: str) -> str:
    """Where gc keeps a blob between moving it out of sight and deleting it."""
    return f"{TRASH_PREFIX}/{blob_key(blob_id, codec).split('/', 2)[2].replace('/', '-')}"


def trash_key_blob(key: str) -> tuple[str, str] | None:
    """(blob id, codec) of a trash key `casstore/trash/<algo>-<hex[:2]>-<hex[2:]><suffix>`."""
    name = key.rsplit("/", 1)[-1]
    parts = name.split("-", 2)
    if len(parts) != 3:
        return None
    parsed = parse_blob_key(f"{INTERNAL}/blobs/{parts[0]}/{parts[1]}/{parts[2]}")
    return parsed if parsed is not None and trash_key(*parsed) == key else None


def checked_blob_key(blob: BlobStat) -> str:
    """The object `blob` was listed or found as, refused unless it is exactly its id's key
    (a BlobStat built by hand with another key must never make gc move that object)."""
    if parse_blob_key(blob.key) != (blob.blob_id, blob.codec):
        raise DatastoreError(f"{blob.key!r} is not the key of blob {blob.blob_id} ({blob.codec})")
    return blob.key


def quarantine_key(blob_id: str, codec: str, now_ns: int) -> str:
    """Where a repair keeps a damaged copy it moved aside: the id, the codec and the time it
    was moved (gc's grace period runs from then: a rename keeps the blob's old mtime), and a
    random part, so two repairs of one id never collide."""
    algorithm, hexdigest = parse_id(blob_id)
    return f"{QUARANTINE_PREFIX}/{algorithm}-{hexdigest}{CODEC_SUFFIX[codec]}.{now_ns}.{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Quarantined:
    key: str
    blob_id: str
    codec: str
    moved: float  # unix time the copy was moved aside
    size: int


def parse_quarantine_key(key: str, size: int = 0) -> Quarantined | None:
    """The quarantined copy a key names, None for anything else (the whole name must match)."""
    prefix, _, name = key.rpartition("/")
    match = _QUARANTINE_NAME.fullmatch(name) if prefix == QUARANTINE_PREFIX else None
    if match is None:
        return None
    blob_id = id_or_none(match.group(1), match.group(2))
    if blob_id is None:
        return None
    codec = "zstd" if match.group(3) == CODEC_SUFFIX["zstd"] else "none"
    return Quarantined(key, blob_id, codec, int(match.group(4)) / 1e9, size)


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

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BlobStore(ABC):
    """What casstore needs of a datastore. Keys are '/'-separated, relative to its root."""

    url: str

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
        for codec in CODEC_SUFFIX:
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
            raise unusable or BlobNotFound(f"blob {blob_id} is not in the datastore {self.url}")
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
        raise DatastoreError(f"blob {blob_id}: its name in {self.url} keeps appearing and vanishing; write it again")

    def iter_quarantine(self) -> Iterator[Quarantined]:
        for obj in self.list_objects(QUARANTINE_PREFIX):
            found = parse_quarantine_key(obj.key, obj.size)
            if found is not None:
                yield found

    def find_leased(self, blob_id: str) -> BlobStat | None:
        """`find` for a caller that holds a lease on `blob_id`. gc moves a candidate into its
        trash before it re-reads the leases, and puts back the leased ones: a blob can look
        missing for that moment. This caller may put it back itself instead of failing."""
        found = self.find(blob_id)
        if found is not None:
            return found
        for codec in CODEC_SUFFIX:
            self.restore_from_trash(trash_key(blob_id, codec))
        return self.find(blob_id)

    @abstractmethod
    def begin_ingest(self) -> Ingest: ...

    @abstractmethod
    def delete_blob(self, blob_id: str, codec: str) -> None: ...

    def iter_blobs(self, strangers: list[ObjectStat] | None = None) -> Iterator[BlobStat]:
        """Every blob, from one listing of the blobs prefix. An object there whose key is not
        exactly a blob's (`parse_blob_key`) is no blob: never yielded, so gc never moves it
        nor mistakes it for the blob it resembles; it is appended to `strangers` if given."""
        return _blobs_of(self.list_objects(f"{INTERNAL}/blobs"), strangers)

    @abstractmethod
    def put_object(self, key: str, data: bytes) -> None:
        """Write a small object atomically (readers see the old or the new content)."""

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
        return self.list_objects(TRASH_PREFIX)

    def ensure_format(self) -> None:
        """Create the datastore's format file, or refuse a datastore of another format."""
        try:
            found = self.get_object(FORMAT_KEY, max_bytes=MAX_FORMAT_BYTES)
            if found is None:
                self.put_object(FORMAT_KEY, FORMAT_TEXT)
        except (NotADirectoryError, FileExistsError, PermissionError) as exc:
            raise DatastoreError(f"{self.url} cannot be used as a datastore: {exc}") from exc
        if found is not None and found != FORMAT_TEXT:
            raise DatastoreError(f"{self.url}: unsupported datastore format {found.strip()!r}")


class LocalBlobStore(BlobStore):
    """A datastore in a local folder."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = self.root
        self._tmp = os.path.join(self.root, INTERNAL, "tmp")

    def _path(self, key: str) -> str:
        """The file of `key`, always inside the datastore: a key with a `..` part (a named
        reference URL such as `file:///../x`) would name a file outside it, and is refused."""
        parts = key.split("/")
        if ".." in parts:
            raise InvalidInput(f"{key!r} is not a key of datastore {self.root}: a '..' part would lead out of it")
        return os.path.join(self.root, *parts)

    def through_symlink(self, key: str) -> bool:
        folder = os.path.dirname(self._path(key))
        return os.path.realpath(folder) != os.path.normpath(os.path.join(os.path.realpath(self.root),
                                                                          *key.split("/")[:-1]))

    def exists(self) -> bool:
        return os.path.isfile(self._path(FORMAT_KEY))

    def find(self, blob_id: str) -> BlobStat | None:
        for codec in CODEC_SUFFIX:
            try:
                st = os.lstat(self._path(blob_key(blob_id, codec)))
            except FileNotFoundError:
                continue
            return BlobStat(blob_id, st.st_size, codec, st.st_mtime)
        return None

    def open_copy(self, blob_id: str, codec: str) -> tuple[BinaryIO, BlobStat]:
        """Opened as `open_regular` opens (no symlink followed, no FIFO waited on); anything
        but a regular file under a blob's name is CorruptBlob."""
        try:
            fd = open_regular(self._path(blob_key(blob_id, codec)))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobNotFound(f"blob {blob_id} is not in the datastore {self.root}") from exc
        except (UnreadableObject, IsADirectoryError) as exc:
            raise CorruptBlob(f"blob {blob_id}: {exc}") from exc
        st = os.fstat(fd)
        return os.fdopen(fd, "rb"), BlobStat(blob_id, st.st_size, codec, st.st_mtime)

    def quarantine(self, blob: BlobStat, damaged: DamageCheck) -> Outcome:
        """Check the open copy, rename its name into the quarantine, then make sure the
        inode moved is the one checked (another repair may have swapped in a good copy in
        between: that one is put back). Why this is safe with others at work:

        - a concurrent writer of the id only links when the name is free, and its copy is
          its own bytes, hashed: whichever good copy ends up under the name is right;
        - gc: the repairing writer holds a lease on the id, so gc may move it into its trash
          and back (G4-G6) but never deletes it. A rename that finds the name gone is
          "gone": the caller looks again and publishes, and gc's put-back then finds the
          name taken. gc deletes a quarantined copy only after the grace period (from the
          time in its name), and never reads one as a blob;
        - a reader that opened the damaged copy keeps reading it (and fails its digest check,
          as it would have); one that opens the name between the rename and the publish
          gets BlobNotFound for that moment, as in gc's trash window;
        - a crash between the rename and the publish leaves the id missing and its damaged
          copy in the quarantine: no intact byte is lost, and the next persist of the
          folder writes it (verify says so)."""
        path = self._path(blob_key(blob.blob_id, blob.codec))
        try:
            f, found = self.open_copy(blob.blob_id, blob.codec)
        except BlobNotFound:
            return "gone"
        except CorruptBlob:  # not a regular file: damaged by definition
            f, found = None, None
        try:
            if f is not None and not damaged(f, found):
                return "sound"
            checked = os.fstat(f.fileno()) if f is not None else os.lstat(path)
        except FileNotFoundError:
            return "gone"
        finally:
            if f is not None:
                f.close()
        key = quarantine_key(blob.blob_id, blob.codec, time.time_ns())
        self._refuse_through_symlink(key, "moves")
        target = self._path(key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return "gone"
        moved = os.lstat(target)
        if (moved.st_dev, moved.st_ino) != (checked.st_dev, checked.st_ino):
            self._put_back(key, blob.blob_id, blob.codec)
            return "gone"
        _fsync_dir(os.path.dirname(target))
        _fsync_dir(os.path.dirname(path))
        return "moved"

    def begin_ingest(self) -> Ingest:
        os.makedirs(self._tmp, exist_ok=True)
        while True:
            path = os.path.join(self._tmp, f"{uuid.uuid4().hex}.partial")
            f = open(path, "xb", buffering=0)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_nlink > 0:
                return _LocalIngest(self, path, f)
            f.close()  # gc took it between create and lock: it is gone, take another name

    def delete_blob(self, blob_id: str, codec: str) -> None:
        try:
            os.unlink(self._path(blob_key(blob_id, codec)))
        except FileNotFoundError:
            pass

    def put_object(self, key: str, data: bytes) -> None:
        """As the interface says; refused (DatastoreError) if a folder on the way to `key`
        is a symlink: nothing is written outside the datastore."""
        self._refuse_through_symlink(key, "writes")
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}{TORN_SUFFIX}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except (IsADirectoryError, NotADirectoryError) as exc:
            os.unlink(tmp)
            raise UnreadableObject(f"{key!r} is a folder in datastore {self.root}, not an object: "
                                   "not written (remove the folder)") from exc
        _fsync_dir(os.path.dirname(path))

    def get_object(self, key: str, *, max_bytes: int) -> bytes | None:
        try:
            fd = open_regular(self._path(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1) if os.fstat(fd).st_size <= max_bytes else None
        if data is None or len(data) > max_bytes:
            raise UnreadableObject(f"{key!r} is larger than the {max_bytes} bytes its reader trusts: not read")
        return data

    def delete_object(self, key: str) -> None:
        """Unlink `key` itself (a symlink there is removed, never followed); an empty folder
        there (one planted under a registry entry's name) is removed too. Refused
        (DatastoreError) if a folder on the way to it is a symlink: what it leads to is not
        the datastore's."""
        self._refuse_through_symlink(key, "deletes")
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            os.rmdir(path)

    def list_objects(self, prefix: str, specials: list[ObjectStat] | None = None) -> Iterator[ObjectStat]:
        """As the interface says. Also appended to `specials`: a symlink to a folder (never
        entered) and an empty folder (an entry's name taken by a folder). A prefix whose path
        below the root passes through a symlink (`casstore/trash` made a link to a user's
        folder) lists nothing at all, and that symlink is appended to `specials`: everything
        gc deletes it takes from a listing, so nothing outside the datastore is ever listed
        as deletable (yielding nothing is safe for the trash, the leases, the quarantine and
        the damage records), while the registry, which passes `specials`, refuses: skipping
        a symlinked registry would hide the projects it names."""
        specials = [] if specials is None else specials
        link = self._symlink_on_the_way(prefix)
        if link is not None:
            specials.append(link)
            return iter(())
        return self._walk(self._path(prefix), set(), specials, empty_folders=True)

    def _symlink_on_the_way(self, key: str) -> ObjectStat | None:
        """The first folder of `key`'s path below the root (`key` itself included) that is
        a symlink, None if there is none (or the path ends before)."""
        path = self.root
        for part in (p for p in key.split("/") if p):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                return ObjectStat(os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size, st.st_mtime)
        return None

    def _refuse_through_symlink(self, key: str, action: str) -> None:
        """DatastoreError if a folder on the way to `key` (not `key` itself) is a symlink."""
        link = self._symlink_on_the_way(key.rpartition("/")[0])
        if link is not None:
            raise DatastoreError(f"{self.root}: {link.key!r} is a symlink, not a folder of the datastore; "
                                 f"casstore {action} nothing through it ({key!r})")

    def list_small_objects(self) -> Iterator[ObjectStat]:
        return self._walk(self.root, {self._path(p.rstrip("/")) for p in BULK_PREFIXES})

    def iter_blobs(self, strangers: list[ObjectStat] | None = None) -> Iterator[BlobStat]:
        """As the interface says, from one walk; a symlink, FIFO or device under blobs/ (never
        an object, never read) is a stranger too, so that verify reports it."""
        specials: list[ObjectStat] = []
        yield from _blobs_of(self.list_objects(f"{INTERNAL}/blobs", specials), strangers)
        if strangers is not None:  # an empty shard folder is what deleting its blobs leaves
            strangers.extend(s for s in specials if not self._is_folder(s.key))

    def _is_folder(self, key: str) -> bool:
        """Whether `key` is a folder (not a symlink to one)."""
        try:
            return stat.S_ISDIR(os.lstat(self._path(key)).st_mode)
        except FileNotFoundError:
            return False

    def _walk(self, base: str, skip: set[str], specials: list[ObjectStat] | None = None, *,
              empty_folders: bool = False) -> Iterator[ObjectStat]:
        """Every regular file below `base`, not entering the folders in `skip` nor any
        symlink to a folder (os.walk never follows one below `base`); anything else found
        (and, with `empty_folders`, a folder below `base` holding nothing) is appended to
        `specials` if given. `base` itself must not be a symlink: os.walk follows that one."""
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
            if empty_folders and not dirs and not files and dirpath != base and specials is not None:
                found = self._stat_of(dirpath)
                if found is not None:
                    specials.append(found)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                found = ObjectStat(os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size, st.st_mtime)
                if stat.S_ISREG(st.st_mode):
                    yield found
                elif specials is not None:  # a symlink, FIFO or device is not an object
                    specials.append(found)

    def _stat_of(self, path: str) -> ObjectStat | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return ObjectStat(os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size, st.st_mtime)

    def delete_leftover(self, key: str) -> bool:
        try:
            fd = open_regular(self._path(key))
        except FileNotFoundError:
            return True
        except UnreadableObject:
            return False  # not a file casstore wrote: never deleted
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            self.delete_object(key)
            return True
        finally:
            os.close(fd)

    def move_to_trash(self, blob: BlobStat) -> str | None:
        source = checked_blob_key(blob)
        key = trash_key(blob.blob_id, blob.codec)
        self._refuse_through_symlink(key, "moves")
        os.makedirs(self._path(TRASH_PREFIX), exist_ok=True)
        try:
            os.rename(self._path(source), self._path(key))
        except FileNotFoundError:
            return None
        return key

    def restore_from_trash(self, key: str) -> None:
        """As the interface says; a symlink, FIFO or device at a trash name (a writer's
        `find_leased` names it, no listing did), a key that is not a trash key, and anything
        reached through a symlinked folder are not gc's: never published nor deleted."""
        parsed = trash_key_blob(key)
        if parsed is None or self._symlink_on_the_way(key.rpartition("/")[0]) is not None:
            return
        try:
            if not stat.S_ISREG(os.lstat(self._path(key)).st_mode):
                return
        except FileNotFoundError:
            return
        self._put_back(key, *parsed)

    def _put_back(self, key: str, blob_id: str, codec: str) -> None:
        """Publish the object at `key` under its id unless the id exists, then drop `key`."""
        try:
            self.publish(self._path(key), blob_id, codec)
        except FileNotFoundError:  # not there (any more)
            pass
        self.delete_object(key)

    def publish(self, tmp_path: str, blob_id: str, codec: str,
                damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        """Link `tmp_path` to its final name unless the id exists (in either codec) in a
        copy `damaged` does not refuse (a refused copy is moved into the quarantine first).

        The final name is never stat'ed after the link: gc may move it into its trash at
        any instant (and puts it back once it sees the writer's lease). The facts come from
        `tmp_path`, the same inode, before the link."""
        final = self._path(blob_key(blob_id, codec))
        shard = os.path.dirname(final)

        def link() -> BlobStat | None:
            st = os.stat(tmp_path)
            if not os.path.isdir(shard):
                os.makedirs(shard, exist_ok=True)
                _fsync_dir(os.path.dirname(shard))
            try:
                os.link(tmp_path, final)
            except FileExistsError:
                return None  # published meanwhile by another writer (or put back by gc): take that
            _fsync_dir(shard)
            return BlobStat(blob_id, st.st_size, codec, st.st_mtime)

        return self.publish_unless_stored(blob_id, damaged, link)


PUBLISH_TRIES = 100


@functools.lru_cache(maxsize=None)
def _libc_sync_file_range():
    """libc's sync_file_range through ctypes, or None where there is none (not Linux).
    Looked up on first use: most processes never write 8 MiB."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the dirty pages, do not wait
WRITEBACK_KICK = 8 << 20


class _LocalIngest(Ingest):
    def __init__(self, store: LocalBlobStore, path: str, locked_file: BinaryIO):
        self._store = store
        self.path = path
        self._file: BinaryIO | None = locked_file
        self._written = 0
        self._kicked = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append `data` to the temp file; after every WRITEBACK_KICK (8 MiB) written, start
        the disk writes of those bytes with `sync_file_range(SYNC_FILE_RANGE_WRITE)`.

        Why: `commit` must fsync before the blob is published (P4: a published blob is on
        disk). Without the kick the kernel starts writing the dirty pages only when that
        fsync comes (or when they are 30 s old, or pass the background dirty ratio), so a
        1.5 GiB persist copied for 0.7 s and then waited 0.7 s more in fsync: the disk
        time added to the copy time. Started every 8 MiB, the disk writes overlap the copy
        and the fsync in `commit` only waits for the last few MiB (write + fsync of
        1.5 GiB: 1.24-1.51 s -> 0.75-0.87 s on the benchmark machine, docs/performance.md).
        SYNC_FILE_RANGE_WRITE does not wait and makes nothing durable (it writes neither
        the file's metadata nor flushes the disk's cache), so the fsync in `commit` stays.
        It is only a hint: where it is missing (not Linux) or fails (e.g. a file system
        without it), nothing happens and nothing is raised."""
        assert self._file is not None
        view = memoryview(data)
        self._written += view.nbytes
        while view:
            view = view[self._file.write(view):]
        if self._written - self._kicked >= WRITEBACK_KICK:
            sync_file_range = _libc_sync_file_range()
            if sync_file_range is not None:
                sync_file_range(self._file.fileno(), self._kicked, self._written - self._kicked, _SYNC_FILE_RANGE_WRITE)
            self._kicked = self._written

    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        """fsync, then publish while the file (and its lock, which gc respects) is held."""
        assert self._file is not None
        os.fsync(self._file.fileno())
        os.fchmod(self._file.fileno(), 0o444)
        try:
            return self._store.publish(self.path, blob_id, codec, damaged)
        finally:
            self.abort()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at `path`, never following a symlink and
    never blocking (a FIFO opens at once and is refused): UnreadableObject for anything but a
    regular file, FileNotFoundError if there is nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableObject(f"{path} is a symlink, not a regular file: not read") from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        raise UnreadableObject(f"{path} is not a regular file (mode {stat.filemode(mode)}): not read")
    os.set_blocking(fd, True)
    return fd


def _blobs_of(objects: Iterable[ObjectStat], strangers: list[ObjectStat] | None) -> Iterator[BlobStat]:
    """The blobs among `objects`; the others appended to `strangers` if given."""
    for obj in objects:
        parsed = parse_blob_key(obj.key)
        if parsed is not None:
            yield BlobStat(parsed[0], obj.size, parsed[1], obj.mtime, obj.key)
        elif strangers is not None:
            strangers.append(obj)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def open_blobstore(url: str, storage_options: dict | None = None) -> BlobStore:
    """The blob store at `url`: a local path, `file:///relative`, `file:////absolute`, or
    (with the `s3` extra) an fsspec URL such as `s3://bucket/prefix`."""
    if "://" not in url:
        return LocalBlobStore(url)
    scheme = url.split("://", 1)[0]
    if scheme == "file":
        from casstore.opts import file_url_to_path

        return LocalBlobStore(file_url_to_path(url))
    from casstore.cas.backends.remote import FsspecBlobStore

    return FsspecBlobStore(url, storage_options)
