"""A per-machine stat cache: an unchanged folder maps to its blob id without reading files.

The key is a digest of every member's name, type, mode, size, link target, and the source's
mtime_ns, ctime_ns, inode and device (git's index and DVC's state db use the same facts).
A chmod, a touch, a copy (new inodes) or an edit changes the key, so the folder is hashed
again. Racy-timestamp guard: a listing with any file modified within RACY_WINDOW_NS of the
start of hashing is not cached, since a write landing in the same timestamp tick would
otherwise go unseen. The cache lives in the user's cache folder because inodes and mtimes
mean nothing on another machine. Any failure of the cache only costs speed: it is logged and
the cache turns itself off for the process.

It also keeps, per extraction target and blob, what a load wrote there (the
`extraction_records` table, read and written by extract_cache.py): the same facts per file, so that a load into a
target that holds exactly the blob's files already writes nothing."""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading

import xxhash

from casstore.cas.tar.header import FORMAT_NAME
from casstore.cas.tar.scan import Entry

log = logging.getLogger(__name__)

RACY_WINDOW_NS = 1_000_000_000
MAX_EXTRACTIONS = 512
"""Load records kept (the latest): a record of 20,000 files is about 2 MB."""


def default_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "casstore", "statcache.sqlite")


_PACK = struct.Struct("<cIQqqQQ").pack  # kind, mode, size, mtime_ns, ctime_ns, ino, dev


def listing_key(arc_dir: str, entries: list[Entry], algorithm: str) -> str:
    """XXH3-128 of `casstore-tar-1\\0<algorithm>\\0<arc_dir>\\0` then, per entry in order,
    `name \\0 linkname \\0` and the entry's kind, mode, size, mtime_ns, ctime_ns, inode and
    device packed into 45 bytes (little-endian). Names are never empty and names and link
    targets hold no NUL, and the packed part has a fixed length: two different listings
    never give the same bytes. Everything is hashed in one `update` (a call per entry costs
    more than the hashing).

    A value that does not fit the packed form (an mtime after 2262 is over 2**63 ns) makes
    the whole listing use the repr of each fingerprint, one per line, after a NUL (no name
    starts with one)."""
    h = xxhash.xxh3_128()
    h.update(f"{FORMAT_NAME}\0{algorithm}\0{arc_dir}\0".encode())
    try:
        data = b"".join([b"%s\0%s\0%s" % (e.name, e.linkname, _PACK(e.kind, e.mode, e.size, e.mtime_ns,
                                                                     e.ctime_ns, e.ino, e.dev))
                         for e in entries])
    except struct.error:
        data = b"\0" + b"".join([repr(e.fingerprint()).encode() + b"\n" for e in entries])
    h.update(data)
    return h.hexdigest()


def is_racy(entries: list[Entry], started_ns: int) -> bool:
    horizon = started_ns - RACY_WINDOW_NS
    return any(e.mtime_ns >= horizon or e.ctime_ns >= horizon for e in entries)


class StatCache:
    """listing key -> (blob id, uncompressed size), in a small SQLite file."""

    def __init__(self, path: str | None = None):
        self.path = path or default_path()
        self._local = threading.local()
        self._broken = False

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS listings (key TEXT PRIMARY KEY, blob_id TEXT NOT NULL, size INTEGER NOT NULL)")
            conn.execute("DROP TABLE IF EXISTS extractions")  # its records judged racy members otherwise
            conn.execute("CREATE TABLE IF NOT EXISTS extraction_records (target TEXT NOT NULL, blob_id TEXT NOT NULL, "
                         "racy_from_ns INTEGER NOT NULL, names BLOB NOT NULL, facts BLOB NOT NULL, "
                         "PRIMARY KEY (target, blob_id))")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> tuple[str, int] | None:
        if self._broken:
            return None
        try:
            row = self._conn().execute("SELECT blob_id, size FROM listings WHERE key = ?", (key,)).fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)
            return None
        return None if row is None else (row[0], int(row[1]))

    def put(self, key: str, blob_id: str, size: int, entries: list[Entry], started_ns: int) -> None:
        if self._broken or is_racy(entries, started_ns):
            return
        try:
            self._conn().execute("INSERT OR REPLACE INTO listings (key, blob_id, size) VALUES (?, ?, ?)",
                                 (key, blob_id, size))
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)

    def forget(self, key: str) -> None:
        if not self._broken:
            try:
                self._conn().execute("DELETE FROM listings WHERE key = ?", (key,))
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)

    def extraction(self, target: str, blob_id: str) -> tuple[int, bytes, bytes] | None:
        """The record of the last full extraction of `blob_id` into `target` (a real path):
        the stamp from which its members are racy, and its names and facts as
        extract_cache.py encodes them."""
        if self._broken:
            return None
        try:
            row = self._conn().execute("SELECT racy_from_ns, names, facts FROM extraction_records "
                                       "WHERE target = ? AND blob_id = ?", (target, blob_id)).fetchone()
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)
            return None
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def put_extraction(self, target: str, blob_id: str, racy_from_ns: int, names: bytes, facts: bytes) -> None:
        """Record an extraction; beyond MAX_EXTRACTIONS records, the oldest go."""
        if not self._broken:
            try:
                conn = self._conn()
                conn.execute("INSERT OR REPLACE INTO extraction_records (target, blob_id, racy_from_ns, names, facts) "
                             "VALUES (?, ?, ?, ?, ?)", (target, blob_id, racy_from_ns, names, facts))
                conn.execute("DELETE FROM extraction_records WHERE rowid NOT IN (SELECT rowid FROM extraction_records "
                             "ORDER BY racy_from_ns DESC LIMIT ?)", (MAX_EXTRACTIONS,))
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)

    def _disable(self, exc: BaseException) -> None:
        log.warning("stat cache %s disabled for this process: %s", self.path, exc)
        self._broken = True
