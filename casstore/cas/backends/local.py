"""A datastore in a local folder (layout.py's keys are its paths below the root).

A blob is published only complete: written to tmp (local_ingest.py), fsynced, then
hard-linked to its final name, which fails instead of overwriting when the id is already
there. Small objects are replaced atomically (temp file, fsync, rename). Nothing is read,
written, moved or deleted through a symlink, and only regular files are objects
(docs/reliability.md)."""

from __future__ import annotations

import fcntl
import os
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

from casstore.cas.backends.base import BlobStat, BlobStore, DamageCheck, Ingest, ObjectStat, Outcome, blobs_of, checked_blob_key
from casstore.cas.backends.layout import BULK_PREFIXES, FORMAT_KEY, TMP_PREFIX, TORN_SUFFIX
from casstore.cas.backends.local_ingest import LocalIngest
from casstore.cas.backends.localfs import fsync_dir, open_regular
from casstore.errors import BlobNotFound, CorruptBlob, DatastoreError, InvalidInput, UnreadableObject


SYNC_THREADS = 16


class LocalBlobStore(BlobStore):
    """A datastore in a local folder."""

    read_ahead = 8
    """Chunks are written around the page cache (O_DIRECT), so a load reads them from the
    disk: one at a time left the disk idle between reads (a cold load of 1 GB took 1.5x a
    whole blob's, which the kernel reads ahead as one file)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = self.root
        self._tmp = self._path(TMP_PREFIX)

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
        for codec in self.ns.suffixes:
            try:
                st = os.lstat(self._path(self.ns.blob_key(blob_id, codec)))
            except FileNotFoundError:
                continue
            return self.stat_of(blob_id, st.st_size, codec, st.st_mtime)
        return None

    def open_copy(self, blob_id: str, codec: str) -> tuple[BinaryIO, BlobStat]:
        """Opened as `open_regular` opens (no symlink followed, no FIFO waited on); anything
        but a regular file under a blob's name is CorruptBlob."""
        try:
            fd = open_regular(self._path(self.ns.blob_key(blob_id, codec)))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobNotFound(f"{self.ns.what} {blob_id} is not in the datastore {self.root}") from exc
        except (UnreadableObject, IsADirectoryError) as exc:
            raise CorruptBlob(f"{self.ns.what} {blob_id}: {exc}") from exc
        st = os.fstat(fd)
        return os.fdopen(fd, "rb"), self.stat_of(blob_id, st.st_size, codec, st.st_mtime)

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
        path = self._path(self.ns.blob_key(blob.blob_id, blob.codec))
        opened: tuple[BinaryIO, BlobStat] | None
        try:
            opened = self.open_copy(blob.blob_id, blob.codec)
        except BlobNotFound:
            return "gone"
        except CorruptBlob:  # not a regular file: damaged by definition
            opened = None
        try:
            if opened is not None and not damaged(*opened):
                return "sound"
            checked = os.fstat(opened[0].fileno()) if opened is not None else os.lstat(path)
        except FileNotFoundError:
            return "gone"
        finally:
            if opened is not None:
                opened[0].close()
        key = self.ns.quarantine_key(blob.blob_id, blob.codec, time.time_ns())
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
        fsync_dir(os.path.dirname(target))
        fsync_dir(os.path.dirname(path))
        return "moved"

    def begin_ingest(self) -> Ingest:
        os.makedirs(self._tmp, exist_ok=True)
        while True:
            path = os.path.join(self._tmp, f"{uuid.uuid4().hex}.partial")
            f = open(path, "xb", buffering=0)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_nlink > 0:
                return LocalIngest(self.publish, path, f)
            f.close()  # gc took it between create and lock: it is gone, take another name

    def delete_blob(self, blob_id: str, codec: str) -> None:
        try:
            os.unlink(self._path(self.ns.blob_key(blob_id, codec)))
        except FileNotFoundError:
            pass

    def put_object(self, key: str, data: bytes, durable: bool = True) -> None:
        """As the interface says (not `durable`: no fsync, the rename is still atomic for
        every other process); refused (DatastoreError) if a folder on the way to `key`
        is a symlink: nothing is written outside the datastore."""
        self._refuse_through_symlink(key, "writes")
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}{TORN_SUFFIX}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except (IsADirectoryError, NotADirectoryError) as exc:
            os.unlink(tmp)
            raise UnreadableObject(f"{key!r} is a folder in datastore {self.root}, not an object: "
                                   "not written (remove the folder)") from exc
        if durable:
            fsync_dir(os.path.dirname(path))

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
        yield from blobs_of(self.list_objects(self.ns.prefix, specials), strangers, self.ns)
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
        source = checked_blob_key(blob, self.ns)
        key = self.ns.trash_key(blob.blob_id, blob.codec)
        self._refuse_through_symlink(key, "moves")
        os.makedirs(self._path(self.ns.trash_prefix), exist_ok=True)
        try:
            os.rename(self._path(source), self._path(key))
        except FileNotFoundError:
            return None
        return key

    def restore_from_trash(self, key: str) -> None:
        """As the interface says; a symlink, FIFO or device at a trash name (a writer's
        `find_leased` names it, no listing did), a key that is not a trash key, and anything
        reached through a symlinked folder are not gc's: never published nor deleted."""
        parsed = self.ns.trash_key_blob(key)
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

    def commit_many(self, batch: list[tuple[Ingest, str, str, DamageCheck | None]]) -> list[tuple[BlobStat, bool]]:
        """One durable point for a batch: every file's disk writes started, the files
        fsynced by SYNC_THREADS threads at once (the file system commits its journal once for
        fsyncs that wait together, so a batch costs a few commits, not one a file), then
        linked, then each folder linked into fsynced once, in the same way. Nothing is linked
        before every file of the batch is on disk, and `commit_many` returns only once every
        link is (P4: a chunk is durable before a manifest names it)."""
        ingests = [ingest for ingest, *_ in batch]
        for ingest in ingests:
            ingest.start_writeback()
        with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="casstore-fsync") as pool:
            list(pool.map(lambda ingest: ingest.make_durable(), ingests))
            folders: set[str] = set()
            results = [ingest.commit(blob_id, codec, damaged, folders) if isinstance(ingest, LocalIngest)
                       else ingest.commit(blob_id, codec, damaged) for ingest, blob_id, codec, damaged in batch]
            list(pool.map(fsync_dir, sorted(folders)))
        return results

    def publish(self, tmp_path: str, blob_id: str, codec: str,
                damaged: DamageCheck | None = None, folders: set[str] | None = None) -> tuple[BlobStat, bool]:
        """Link `tmp_path` to its final name unless the id exists (in either codec) in a
        copy `damaged` does not refuse (a refused copy is moved into the quarantine first).

        With `folders`, the shard folder linked into is added there, and fsyncing it is
        the caller's (commit_many). The final name is never stat'ed after the link: gc may move it into its trash at
        any instant (and puts it back once it sees the writer's lease). The facts come from
        `tmp_path`, the same inode, before the link."""
        final = self._path(self.ns.blob_key(blob_id, codec))
        shard = os.path.dirname(final)

        def link() -> BlobStat | None:
            st = os.stat(tmp_path)
            if not os.path.isdir(shard):
                os.makedirs(shard, exist_ok=True)
                if folders is None:
                    fsync_dir(os.path.dirname(shard))
                else:
                    folders.add(os.path.dirname(shard))
            try:
                os.link(tmp_path, final)
            except FileExistsError:
                return None  # published meanwhile by another writer (or put back by gc): take that
            if folders is None:
                fsync_dir(shard)
            else:
                folders.add(shard)
            return self.stat_of(blob_id, st.st_size, codec, st.st_mtime)

        return self.publish_unless_stored(blob_id, damaged, link)
