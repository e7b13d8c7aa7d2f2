"""The load cache: a full extraction of a blob into a target is recorded in the stat cache,
and a later extraction of the same blob into the same target that still holds exactly those
files writes nothing and does not read the blob.

A record holds, per member written (files, symlinks, and the folders they are in), its
target-relative name, lstat facts (mode, which includes the type, size, mtime_ns, ctime_ns,
inode, device) and the XXH3-128 of the bytes as they were extracted (a symlink: of its
target). An extraction is skipped only if every recorded member is still there and its
lstat matches the record exactly (a folder: is still a folder); any difference, and the
blob is extracted in full (its digest checked as always) and recorded again. Files of the
target that the blob does not hold play no part (a load never deletes).

Racy timestamps (as git's index): a change made in the same timestamp tick as the write it
follows leaves size, mtime and ctime as they were, so a member whose mtime or ctime is
in the last tick before the record was made cannot be trusted by its stat alone. "When the
record was made" is read from the file system's own clock, not the process's: a probe (an
empty staging folder made and removed in the target) gives the time the file system stamps
now, and members stamped within RACY_TICK_NS of it are racy (the probe failing, within
RACY_WINDOW_NS of the process's clock, as the stat cache's listings are). At the next load
racy members are read and hashed and compared with the recorded digest; if they all match,
the record is made again (now), and members that have aged out are from then on checked by
stat alone. So a second load right after a first one hashes only the files written in its
last moments. Every failure of the cache only costs speed.

The stat cache keeps at most MAX_EXTRACTIONS records (statcache.py), the latest ones."""

from __future__ import annotations

import os
import stat
import struct
import tempfile
import time
from dataclasses import dataclass

from casstore.cas.store.statcache import RACY_WINDOW_NS, StatCache
from casstore.cas.tar.extract import STAGING_PREFIX, Written, bytes_digest, new_file_hasher
from casstore.cas.tar.header import CHUNK, DIRECTORY, SYMLINK

_FACT = struct.Struct("<cIQqqQQ16s")  # kind, st_mode, size, mtime_ns, ctime_ns, inode, device, digest
_NO_DIGEST = bytes(16)
RACY_TICK_NS = 20_000_000
"""Members stamped this close before the probe are racy: twice the coarse clock's tick that
Linux file systems stamp with (one jiffy, 10 ms at most; a coarse stamp may lag a
fine-grained one by that much)."""
RACY_WAIT_BYTES = 16 << 20
"""A record whose racy members hold this many bytes waits out the tick and is made again, so
that the next load need not read them back: reading 16 MiB costs more than the wait."""
_PARENT = b"P"  # a folder made on the way to a member, not a member: checked, not listed
Fact = tuple[bytes, int, int, int, int, int, int, bytes]


@dataclass
class _Record:
    racy_from_ns: int
    names: list[bytes]
    facts: list[Fact]


class ExtractCache:
    """The record of blob `blob_id` in folder `target` (keyed by the folder's real path)."""

    def __init__(self, statcache: StatCache, target: str, blob_id: str):
        self.statcache = statcache
        self.root = os.fsencode(os.path.abspath(target))
        self.key = os.path.realpath(target)
        self.blob_id = blob_id

    def still_there(self) -> list[str] | None:
        """The names the last full extraction published, if the target still holds exactly
        what it wrote (racy members checked by content); None if the blob must be extracted."""
        record = self._load()
        if record is None:
            return None
        horizon = record.racy_from_ns
        racy: list[int] = []
        for i, (name, fact) in enumerate(zip(record.names, record.facts)):
            if not self._stat_matches(name, fact):
                return None
            if fact[0] not in (DIRECTORY, _PARENT) and (fact[3] >= horizon or fact[4] >= horizon):
                racy.append(i)
        if not all(self._content_matches(record.names[i], record.facts[i]) for i in racy):
            return None
        if racy:
            self._save(self._racy_from(), record.names, record.facts)
        return [os.fsdecode(name) for name, fact in zip(record.names, record.facts) if fact[0] != _PARENT]

    def record(self, written: list[Written]) -> None:
        """Record what a full extraction just published (lstat after the renames)."""
        names, facts = [], []
        for name, kind, digest in _with_parents(written):
            try:
                st = os.lstat(os.path.join(self.root, name))
            except OSError:
                return
            names.append(name)
            facts.append((kind, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                          bytes.fromhex(digest) if digest else _NO_DIGEST))
        self._save(self._racy_from_after(facts), names, facts)

    def _racy_from_after(self, facts: list[Fact]) -> int:
        """`_racy_from`, once the tick is waited out if the racy members hold RACY_WAIT_BYTES
        or more (a few tries: the file system's clock is coarse)."""
        files = [(max(f[3], f[4]), f[2]) for f in facts if f[0] not in (DIRECTORY, _PARENT)]
        racy_from = self._racy_from()
        for _ in range(3):
            racy = [(stamp, size) for stamp, size in files if stamp >= racy_from]
            if sum(size for _, size in racy) < RACY_WAIT_BYTES:
                break
            wait_ns = max(stamp for stamp, _ in racy) - racy_from + 2_000_000
            time.sleep(min(wait_ns, 2 * RACY_TICK_NS) / 1e9)  # never the 1 s window of a failed probe
            racy_from = self._racy_from()
        return racy_from

    def _racy_from(self) -> int:
        """The stamp from which a member is racy: RACY_TICK_NS before the file system's
        clock now (a probe folder's mtime, made after every member was stat'ed), or
        RACY_WINDOW_NS before the process's clock if no probe can be made."""
        now = time.time_ns()
        try:
            stamped = file_system_now(os.fsdecode(self.root))
        except OSError:
            return now - RACY_WINDOW_NS
        return min(stamped, now) - RACY_TICK_NS

    def _stat_matches(self, name: bytes, fact: Fact) -> bool:
        try:
            st = os.lstat(os.path.join(self.root, name))
        except OSError:
            return False
        if fact[0] in (DIRECTORY, _PARENT):
            return stat.S_ISDIR(st.st_mode)
        return _facts(st) == fact[1:7]

    def _content_matches(self, name: bytes, fact: Fact) -> bool:
        """The member's bytes (a symlink: its target) hash to the recorded digest, and its
        stat did not move while they were read."""
        path = os.path.join(self.root, name)
        try:
            if fact[0] == SYMLINK:
                found = bytes_digest(os.readlink(path))
            else:
                found = _file_digest(path, fact)
        except OSError:
            return False
        return found == fact[7].hex() and self._stat_matches(name, fact)

    def _load(self) -> _Record | None:
        row = self.statcache.extraction(self.key, self.blob_id)
        if row is None:
            return None
        racy_from_ns, names, packed = row
        try:
            facts: list[Fact] = list(_FACT.iter_unpack(packed))
        except struct.error:
            return None
        split = names.split(b"\0") if names else []
        return _Record(racy_from_ns, split, facts) if len(split) == len(facts) else None

    def _save(self, racy_from_ns: int, names: list[bytes], facts: list[Fact]) -> None:
        try:
            packed = b"".join([_FACT.pack(*fact) for fact in facts])
        except struct.error:  # a number the format cannot hold: no record, no skip
            return
        self.statcache.put_extraction(self.key, self.blob_id, racy_from_ns, b"\0".join(names), packed)


def file_system_now(folder: str) -> int:
    """The time the file system of `folder` stamps now: the mtime of a probe folder made
    (and removed) there, named like a staging folder so that one a crash leaves is cleaned
    up by the next load."""
    probe = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-probe-", dir=folder)
    try:
        return os.lstat(probe).st_mtime_ns
    finally:
        os.rmdir(probe)


def _facts(st: os.stat_result) -> tuple[int, int, int, int, int, int]:
    return st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _file_digest(path: bytes, fact: Fact) -> str:
    """The digest of the file's bytes, read through a descriptor that is checked to be the
    recorded inode (OSError if it is not, or not a regular file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if _facts(os.fstat(fd)) != fact[1:7]:
            raise OSError(f"{path!r} changed")
        hasher = new_file_hasher()
        buffer = memoryview(bytearray(CHUNK))
        while n := os.readv(fd, [buffer]):
            hasher.update(buffer[:n])
        return hasher.hexdigest()
    finally:
        os.close(fd)


def _with_parents(written: list[Written]) -> list[tuple[bytes, bytes, str]]:
    """What was written, and every folder it is in (the ones made on the way too), once,
    each as (name, kind, digest)."""
    out: dict[bytes, tuple[bytes, bytes, str]] = {}
    for item in written:
        parts = os.fsencode(item.name).split(b"/")
        for k in range(1, len(parts)):
            folder = b"/".join(parts[:k])
            out.setdefault(folder, (folder, _PARENT, ""))
        name = os.fsencode(item.name)
        out[name] = (name, item.kind, item.digest)
    return list(out.values())
