"""A blob being written into a local folder: a locked temp file in casstore/tmp, its disk
writes started as it grows, fsynced and hard-linked to its id at commit (local.py publishes)."""

from __future__ import annotations

import errno
import functools
import mmap
import os
import sys
from typing import BinaryIO, Callable

from casstore.cas.backends.base import BlobStat, ChunkData, DamageCheck, Ingest

Publish = Callable[[str, str, str, "DamageCheck | None", "set[str] | None"], tuple[BlobStat, bool]]
"""`publish(temp path, blob id, codec, damage check, folders)`: the store's publish
(local.py); with `folders`, the folders it linked into are added there for the caller to
fsync, instead of each being fsynced at once."""

_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the dirty pages, do not wait
WRITEBACK_KICK = 8 << 20


@functools.lru_cache(maxsize=None)
def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
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


DIRECT_ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the logical block size
DIRECT_MIN = 256 << 10
_direct_refused: set[int] = set()  # devices whose file system refused O_DIRECT


def direct_write(path: str, fd: int, data: mmap.mmap) -> bool:
    """Write `data` (page-aligned: an mmap) into the empty file `path`, its bytes up to the
    last whole DIRECT_ALIGN with O_DIRECT (the disk reads them from `data` itself, nothing
    goes through the page cache), the few after through the page cache (on `fd`, the file
    opened as usual); False, having written nothing, where that cannot be done: under
    DIRECT_MIN bytes, no O_DIRECT (not Linux), or a file system that refuses it. Makes
    nothing durable: the fsync at commit does (it also flushes the disk's cache)."""
    size = len(data)
    aligned = size - size % DIRECT_ALIGN
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or aligned < DIRECT_MIN:
        return False
    device = os.fstat(fd).st_dev
    if device in _direct_refused:
        return False
    try:
        direct = os.open(path, os.O_WRONLY | flag)
    except OSError:
        return False
    try:
        try:
            done = os.write(direct, memoryview(data)[:aligned])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _direct_refused.add(device)
            return False
    finally:
        os.close(direct)
    while done < size:  # the unaligned tail, and the rest of a short write
        done += os.pwrite(fd, memoryview(data)[done:], done)
    return True


class LocalIngest(Ingest):
    """Holds its temp file open and locked (gc deletes only a temp file it can lock) until
    it is published or dropped."""

    def __init__(self, publish: Publish, path: str, locked_file: BinaryIO):
        self._publish = publish
        self.path = path
        self._file: BinaryIO | None = locked_file
        self._written = 0
        self._kicked = 0
        self._durable = False

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

    def write_whole(self, data: ChunkData) -> None:
        """Write `data`, the whole file: a large file's block (a pooled mmap) around the
        page cache (`direct_write`), other chunks through it, as `write`. Why: copying a
        gigabyte of blocks into the page cache cost most of a chunked first persist's
        kernel time, but the small files' chunks (1 MiB on average) written with O_DIRECT
        wait for the disk one by one: 190 of them took 0.64-0.77 s against 0.42-0.46 s
        through the page cache (docs/performance.md)."""
        assert self._file is not None
        if self._written == 0 and isinstance(data, mmap.mmap) and direct_write(self.path, self._file.fileno(), data):
            self._written = self._kicked = self._file.seek(len(data))  # a later write appends
            return
        self.write(memoryview(data))

    def start_writeback(self) -> None:
        """Start the disk writes of everything written so far, without waiting (the hint
        `write` gives every WRITEBACK_KICK bytes, for a file that stays smaller)."""
        assert self._file is not None
        sync_file_range = _libc_sync_file_range()
        if sync_file_range is not None and self._written > self._kicked:
            sync_file_range(self._file.fileno(), self._kicked, self._written - self._kicked, _SYNC_FILE_RANGE_WRITE)
            self._kicked = self._written

    def make_durable(self) -> None:
        """fsync and make read-only (once)."""
        assert self._file is not None
        if not self._durable:
            os.fsync(self._file.fileno())
            os.fchmod(self._file.fileno(), 0o444)
            self._durable = True

    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None,
               folders: set[str] | None = None) -> tuple[BlobStat, bool]:
        """fsync, then publish while the file (and its lock, which gc respects) is held."""
        self.make_durable()
        try:
            return self._publish(self.path, blob_id, codec, damaged, folders)
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
