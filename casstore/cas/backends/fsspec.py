"""Blobs in any fsspec filesystem (gcs://, memory://, ...): the layout of a local folder
(layout.py) under the URL's path, through fsspec's file operations.

What differs from a local folder (docs/teams.md): there is no atomic rename and no
create-only publish, so a blob is streamed to `casstore/tmp/<uuid>.partial` and then copied
to its id unless the id is there (check-then-copy: two writers of the same id can both copy,
and since ids name content the second copy holds the same TAR). There are no locks: a temp
key of an interrupted write is told from a live one by its age alone (gc only offers keys
older than its grace period and a minute). A repair's quarantine checks, copies, deletes.

S3 (s3.py) is this store with conditional requests in place of the checks; the methods it
overrides are the ones whose S3 request differs. fsspec itself is imported only when a store
is opened: `import casstore` stays light."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import Any, BinaryIO, Iterator

from casstore.cas.backends.base import BlobStat, BlobStore, DamageCheck, Ingest, ObjectStat, Outcome, checked_blob_key
from casstore.cas.backends.layout import FORMAT_KEY, TMP_PREFIX
from casstore.errors import BlobNotFound, DatastoreError, UnreadableObject

MiB = 1 << 20
READ_BLOCK = 8 * MiB            # read-ahead of a blob being read


class FsspecBlobStore(BlobStore):
    """A datastore below an fsspec URL."""

    read_ahead = 4  # a GET per chunk: four at a time overlap their latency

    extra: str | None = None
    """The casstore extra that installs this backend's filesystem, named when it is missing."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, read_block: int = READ_BLOCK):
        if "://" not in url:
            raise DatastoreError(f"not an fsspec URL: {url}")
        protocol, rest = url.split("://", 1)
        self.url = url
        self.protocol = protocol
        self._root = rest.strip("/")
        if not self._root:
            raise DatastoreError(f"datastore URL {url} names no bucket (expected {protocol}://bucket/prefix)")
        self.read_block = read_block
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self._pid = 0
        _filesystem_class(protocol, url, self.extra)  # fails now, with the extra to install, if missing

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; made again in a forked child (fsspec's loops are not
        fork-safe)."""
        if self._fs is None or self._pid != os.getpid():
            options = self._fs_options(dict(self._options))
            try:
                self._fs = _filesystem_class(self.protocol, self.url, self.extra)(**options)
            except (TypeError, ValueError) as exc:
                raise DatastoreError(f"cannot open datastore {self.url}: {exc}") from exc
            self._pid = os.getpid()
        return self._fs

    def _fs_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The filesystem's options: the caller's `storage_options` and this store's defaults."""
        options.setdefault("skip_instance_cache", True)
        return options

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

    def _generic(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call fsspec; its errors other than OSError become DatastoreError."""
        try:
            return func(*args, **kwargs)
        except OSError:
            raise
        except Exception as exc:
            raise DatastoreError(f"datastore {self.url}: {exc.__class__.__name__}: {exc}") from exc

    def _head(self, key: str) -> tuple[int, float] | None:
        """(size, mtime) of an object, None if there is none."""
        try:
            info = self._generic(self.fs.info, self._path(key))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return int(info["size"]), _mtime(info)

    # -- the interface -----------------------------------------------------------------

    def exists(self) -> bool:
        return self._head(FORMAT_KEY) is not None

    def find(self, blob_id: str) -> BlobStat | None:
        for codec in self.ns.suffixes:
            found = self._head(self.ns.blob_key(blob_id, codec))
            if found is not None:
                return self.stat_of(blob_id, found[0], codec, found[1])
        return None

    def open_copy(self, blob_id: str, codec: str) -> tuple[BinaryIO, BlobStat]:
        key = self.ns.blob_key(blob_id, codec)
        found = self._head(key)
        if found is None:
            raise BlobNotFound(f"{self.ns.what} {blob_id} is not in the datastore {self.url}")
        stat = self.stat_of(blob_id, found[0], codec, found[1])
        return self._open_key(key, stat), stat

    def _open_key(self, key: str, found: BlobStat, **options: Any) -> BinaryIO:
        """The object at `key`, read through a bounded read-ahead; `options` go to fs.open."""
        kwargs: dict[str, Any] = {"block_size": self.read_block, "cache_type": "readahead", **options}
        try:
            f: BinaryIO = self._generic(self.fs.open, self._path(key), "rb", **kwargs)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"{self.ns.what} {found.blob_id} is not in the datastore {self.url}") from exc
        return f

    def quarantine(self, blob: BlobStat, damaged: DamageCheck) -> Outcome:
        """Read the object and check it; only if it is damaged, and is still the object that
        was read (`_identity` before and after the read), copy it into the quarantine and
        delete it if it is still that object (`_delete_if_unchanged`). Here the identity is
        the size and the delete unconditional: check, copy, delete (see the module's
        docstring); S3 makes both exact (s3.py)."""
        key = self.ns.blob_key(blob.blob_id, blob.codec)
        before = self._identity(key)
        if before is None:
            return "gone"
        found = self.stat_of(blob.blob_id, before[0], blob.codec, before[1])
        try:
            with self._open_key(key, found) as f:
                if not damaged(f, found):
                    return "sound"
        except (BlobNotFound, FileNotFoundError):
            return "gone"
        if self._identity(key) != before:
            return "gone"
        target = self.ns.quarantine_key(blob.blob_id, blob.codec, time.time_ns())
        try:
            self._copy(key, target, found.stored_size, exclusive=False)
        except FileNotFoundError:
            return "gone"
        if not self._delete_if_unchanged(key, before[2]):
            self.delete_object(target)
            return "gone"
        return "moved"

    def _identity(self, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, version tag) of an object: here the size alone (mtimes may be
        missing, and then read as now)."""
        found = self._head(key)
        return None if found is None else (found[0], 0.0, "")

    def _delete_if_unchanged(self, key: str, tag: str) -> bool:
        """Delete `key` if it is still the object whose `_identity` had `tag`; False if it
        is not. Here: deleted, whatever it is."""
        self.delete_object(key)
        return True

    def begin_ingest(self) -> Ingest:
        return _FsspecIngest(self)

    def delete_blob(self, blob_id: str, codec: str) -> None:
        self.delete_object(self.ns.blob_key(blob_id, codec))

    def put_object(self, key: str, data: bytes, durable: bool = True) -> None:
        """One write of the whole object."""
        self._generic(self.fs.pipe_file, self._path(key), bytes(data))

    def get_object(self, key: str, *, max_bytes: int) -> bytes | None:
        """One read of at most `max_bytes` + 1 bytes (a ranged read): a larger object is
        refused, and no more of it than that is ever transferred."""
        data = self._get_range(key, max_bytes + 1)
        if data is not None and len(data) > max_bytes:
            raise UnreadableObject(f"{key!r} is larger than the {max_bytes} bytes its reader trusts: not read")
        return data

    def _get_range(self, key: str, limit: int) -> bytes | None:
        """The first `limit` bytes of an object, None if there is none."""
        try:
            data: bytes = self._generic(self.fs.cat_file, self._path(key), start=0, end=limit)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data

    def delete_object(self, key: str) -> None:
        try:
            self._generic(self.fs.rm_file, self._path(key))
        except FileNotFoundError:
            pass

    def list_objects(self, prefix: str, specials: list[ObjectStat] | None = None) -> Iterator[ObjectStat]:
        """Every object below `prefix`, recursively, in key order. `specials` is never
        filled: an object store holds objects only (and fsspec's other entries are not
        followed)."""
        prefix = prefix.strip("/")
        try:
            found = self._generic(self.fs.find, self._path(prefix), detail=True)
        except FileNotFoundError:
            return
        skip = len(self._root) + 1
        for name, info in sorted(found.items()):
            name = name.split("://", 1)[-1].lstrip("/")
            if info.get("type", "file") == "file" and name.startswith(self._root + "/"):
                yield ObjectStat(name[skip:], int(info.get("size") or 0), _mtime(info))

    def move_to_trash(self, blob: BlobStat) -> str | None:
        """Copy to the trash key, then delete the blob (there is no rename). gc re-reads
        leases afterwards, so a writer that found the blob between the two steps gets it back."""
        source = checked_blob_key(blob, self.ns)
        key = self.ns.trash_key(blob.blob_id, blob.codec)
        try:
            self._copy(source, key, blob.stored_size, exclusive=False)
        except FileNotFoundError:
            return None
        self.delete_object(source)
        return key

    def restore_from_trash(self, key: str) -> None:
        """As the interface says; a key that is not a trash key is left alone."""
        parsed = self.ns.trash_key_blob(key)
        if parsed is None:
            return
        found = self._head(key)
        if found is not None and self.find(parsed[0]) is None:
            try:
                self._copy(key, self.ns.blob_key(*parsed), found[0], exclusive=True)
            except (FileExistsError, FileNotFoundError):  # put back by another, or gc deleted it
                pass
        self.delete_object(key)

    def delete_leftover(self, key: str) -> bool:
        """No locks on an object store: a temp key is taken for abandoned by its age alone.
        gc offers only keys whose mtime is older than its grace period (and than a minute);
        a live write holds its temp key only while it copies it to its id."""
        self.delete_object(key)
        return True

    # -- copies and publishing ---------------------------------------------------------

    def _copy(self, source: str, target: str, size: int, *, exclusive: bool) -> None:
        """Copy an object within the filesystem. `exclusive`: fail with FileExistsError
        rather than overwrite `target` (here a check before the copy)."""
        if exclusive and self._head(target) is not None:
            raise FileExistsError(target)
        self._generic(self.fs.copy, self._path(source), self._path(target))

    def _published(self, blob_id: str, codec: str) -> BlobStat:
        """The blob that won a publish race we lost (the caller holds a lease on it)."""
        found = self.find_leased(blob_id)
        if found is None:
            raise DatastoreError(f"blob {blob_id}: the datastore refused to overwrite it, yet it is not there "
                                 f"(deleted meanwhile?); write it again")
        return found


class _FsspecIngest(Ingest):
    """Streams into a temp file of the filesystem, then copies it to its id unless the id is
    there (check-then-copy: see the module's docstring)."""

    def __init__(self, store: FsspecBlobStore):
        self._store = store
        self.key = f"{TMP_PREFIX}/{uuid.uuid4().hex}.partial"
        self._file: Any = store._generic(store.fs.open, store._path(self.key), "wb")
        self._size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError("write to an ingest that was committed or aborted")
        self._file.write(bytes(data))
        self._size += len(data)

    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        store = self._store
        if self._file is None:
            raise ValueError("commit of an ingest that was committed or aborted")
        try:
            self._file.close()
            self._file = False
            return store.publish_unless_stored(blob_id, damaged, lambda: self._copy_to(blob_id, codec))
        finally:
            self.abort()

    def _copy_to(self, blob_id: str, codec: str) -> BlobStat | None:
        """Copy the uploaded temp key to the blob's key, create-only; None if it is taken."""
        try:
            self._store._copy(self.key, self._store.ns.blob_key(blob_id, codec), self._size, exclusive=True)
        except FileExistsError:
            return None
        return self._store._published(blob_id, codec)

    def abort(self) -> None:
        if self._file:
            try:
                self._file.discard() if hasattr(self._file, "discard") else self._file.close()
            except Exception:
                pass
        self._file = None
        try:
            self._store.delete_object(self.key)
        except Exception:
            pass


def _filesystem_class(protocol: str, url: str, extra: str | None) -> Any:
    """fsspec's filesystem class for `protocol`, imported now; DatastoreError naming what to
    install (`pip install 'casstore[<extra>]'` if a casstore extra provides it)."""
    hint = f"pip install 'casstore[{extra}]'" if extra else "install fsspec and the package for this protocol"
    try:
        import fsspec
    except ImportError as exc:
        raise DatastoreError(f"datastore {url} needs fsspec: {hint}") from exc
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise DatastoreError(f"datastore {url} needs the {protocol!r} filesystem: {hint} ({exc})") from exc
    except ValueError as exc:
        raise DatastoreError(f"datastore URL scheme {protocol!r} is not supported: {url}") from exc


def _mtime(info: dict[str, Any]) -> float:
    """Modification time of an fsspec info dict; unknown counts as now (gc keeps it)."""
    for name in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return time.time()
