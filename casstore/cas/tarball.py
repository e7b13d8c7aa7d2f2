"""Canonical TAR archives (format `casstore-tar-1`, docs/tar-format.md): scan a folder,
write its canonical TAR stream.

Canonical means the same content always gives the same bytes: members sorted bytewise by
name, uid/gid 0, owner names `root`, mtime 0, permission bits as on disk, no folder entries.
Reading and safe extraction live in `extract.py`."""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from casstore.errors import InvalidInput, SourceChanged
from casstore.utils.fs import globs

FORMAT_NAME = "casstore-tar-1"
BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
MTIME = 0
OWNER = b"root"
GNU_MAGIC = b"ustar  \0"
LONGLINK = b"././@LongLink"
NAME_FIELD = 100

FILE, HARDLINK, SYMLINK, DIRECTORY = b"0", b"1", b"2", b"5"


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of a canonical archive, with the stat facts that fingerprint its source."""

    name: bytes
    kind: bytes
    mode: int
    size: int = 0
    linkname: bytes = b""
    path: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    dev: int = 0

    def fingerprint(self) -> tuple:
        """What must be unchanged for a cached digest to still hold (git's index rule)."""
        return (self.name, self.kind, self.mode, self.size, self.linkname,
                self.mtime_ns, self.ctime_ns, self.ino, self.dev)


class Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


def check_arc_dir(arc_dir: str) -> str:
    """Normalize `arc_dir`; refuse one that is absolute or climbs out with `..`."""
    if not isinstance(arc_dir, str) or arc_dir == "":
        raise InvalidInput(f"arc_dir must be a non-empty relative path, got {arc_dir!r}")
    norm = posixpath.normpath(arc_dir.replace(os.sep, "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or "\0" in norm:
        raise InvalidInput(f"arc_dir {arc_dir!r} must be relative and stay inside the archive (no leading '/' or '..')")
    return norm


def member_name(arc_dir: str, relpath: str) -> bytes:
    """MLtraq's member name, normpath(arc_dir/relpath), as raw bytes."""
    return os.fsencode(posixpath.normpath(f"{arc_dir}/{relpath}"))


def _link_stays_inside(relpath: str, target: str) -> bool:
    """A relative symlink target that, resolved from the link's folder, stays in the tree."""
    if not target or posixpath.isabs(target):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), target))
    return resolved != ".." and not resolved.startswith("../")


def scan(src_dir: str, arc_dir: str = ".", include: str | list[str] = "**",
         exclude: str | list[str] | None = None) -> list[Entry]:
    """The canonical member list of a folder, sorted bytewise by name.

    What is stored (docs/tar-format.md): regular files with content and permission bits;
    a symlink whose relative target stays inside `src_dir` as a symlink member; a symlink
    that is absolute or leads out of `src_dir` as the file it points to (so the experiment
    always loads and nothing outside is lost); a second name of a hardlinked file as a
    hardlink member to the first name in sorted order. Folders are followed, empty folders,
    dangling links, sockets and FIFOs skipped, as MLtraq does."""
    arc_dir = check_arc_dir(arc_dir)
    entries: list[Entry] = []
    for relpath in globs(src_dir, include=include, exclude=exclude):
        entry = _entry(src_dir, arc_dir, relpath)
        if entry is not None:
            entries.append(entry)
    entries.sort(key=lambda e: e.name)
    return _link_hardlinks(entries)


def _entry(src_dir: str, arc_dir: str, relpath: str) -> Entry | None:
    path = os.path.join(src_dir, relpath)
    name = member_name(arc_dir, relpath)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if _link_stays_inside(relpath.replace(os.sep, "/"), target):
                return Entry(name, SYMLINK, 0o777, 0, os.fsencode(target), path,
                             st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
            st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Entry(name, FILE, stat.S_IMODE(st.st_mode) & 0o777, st.st_size, b"", path,
                 st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _link_hardlinks(entries: list[Entry]) -> list[Entry]:
    """Turn every later name of an inode into a hardlink member to its first name."""
    first: dict[tuple[int, int], bytes] = {}
    out = []
    for e in entries:
        if e.kind == FILE and e.path and os.lstat(e.path).st_nlink > 1:
            key = (e.dev, e.ino)
            if key in first:
                e = Entry(e.name, HARDLINK, e.mode, 0, first[key], e.path,
                          e.mtime_ns, e.ctime_ns, e.ino, e.dev)
            else:
                first[key] = e.name
        out.append(e)
    return out


def _octal(value: int, width: int) -> bytes:
    """A numeric header field; GNU base-256 when octal does not fit (files over 8 GiB)."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return b"\x80" + value.to_bytes(width - 1, "big")


def header(name: bytes, kind: bytes, mode: int, size: int, linkname: bytes = b"") -> bytes:
    """The header block(s) of one member, with GNU long-name records where needed."""
    prefix = b""
    if len(linkname) > NAME_FIELD:
        prefix += _long_record(b"K", linkname)
    if len(name) > NAME_FIELD:
        prefix += _long_record(b"L", name)
    return prefix + _block(name[:NAME_FIELD], kind, mode, size, linkname[:NAME_FIELD], OWNER)


def _long_record(kind: bytes, value: bytes) -> bytes:
    data = value + b"\0"
    return _block(LONGLINK, kind, 0, len(data), b"", b"") + data + padding(len(data))


def _block(name: bytes, kind: bytes, mode: int, size: int, linkname: bytes, owner: bytes) -> bytes:
    buf = bytearray(BLOCK)
    buf[0:len(name)] = name
    buf[100:108] = _octal(mode, 8)
    buf[108:116] = _octal(0, 8)
    buf[116:124] = _octal(0, 8)
    buf[124:136] = _octal(size, 12)
    buf[136:148] = _octal(MTIME, 12)
    buf[148:156] = b"        "
    buf[156:157] = kind
    buf[157:157 + len(linkname)] = linkname
    buf[257:265] = GNU_MAGIC
    buf[265:265 + len(owner)] = owner
    buf[297:297 + len(owner)] = owner
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class BufferedSink:
    """Batches small writes into ~1 MiB chunks: per-call costs of hashers and files add up
    over tens of thousands of small members."""

    def __init__(self, sinks: Iterable[Sink]):
        self._sinks = list(sinks)
        self._buf = bytearray()
        self.count = 0

    def write(self, data: bytes | memoryview) -> None:
        self.count += len(data)
        if len(data) >= CHUNK:
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = bytearray()

    def _emit(self, data: bytes | memoryview) -> None:
        for sink in self._sinks:
            sink.write(data)


def write_tar(entries: list[Entry], sinks: Iterable[Sink], progress: Callable[[int], None] | None = None) -> int:
    """Stream the canonical TAR of `entries` into every sink; return the bytes written.

    A file that changes size or mtime while it is read raises SourceChanged: the stream
    written so far must then be discarded (callers write to a temp area)."""
    out = BufferedSink(sinks)
    buf = bytearray(CHUNK)
    for e in entries:
        out.write(header(e.name, e.kind, e.mode, e.size, e.linkname))
        if e.kind == FILE:
            _copy_file(e, out, buf, progress)
    out.write(b"\0" * (2 * BLOCK))
    out.write(b"\0" * (-out.count % RECORD))
    out.flush()
    return out.count


def _copy_file(e: Entry, out: BufferedSink, buf: bytearray, progress: Callable[[int], None] | None) -> None:
    view = memoryview(buf)
    try:
        fd = os.open(e.path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SourceChanged(f"{e.path} vanished while it was archived") from exc
    try:
        remaining = e.size
        while remaining:
            n = os.readv(fd, [view[:min(remaining, CHUNK)]])
            if n == 0:
                raise SourceChanged(f"{e.path} shrank while it was archived")
            out.write(view[:n])
            remaining -= n
            if progress is not None:
                progress(n)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if after.st_size != e.size or after.st_mtime_ns != e.mtime_ns:
        raise SourceChanged(f"{e.path} changed while it was archived")
    out.write(padding(e.size))


def tar_bytes(entries: list[Entry]) -> bytes:
    """The whole canonical TAR in memory (only for the inline `Archive` type)."""
    import io

    buf = io.BytesIO()
    write_tar(entries, [buf])
    return buf.getvalue()

