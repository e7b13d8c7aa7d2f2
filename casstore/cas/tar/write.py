"""Canonical TAR archives (format `casstore-tar-1`, docs/tar-format.md): scan a folder,
write its canonical TAR stream.

Canonical means the same content always gives the same bytes: members sorted bytewise by
name, uid/gid 0, owner names `root`, mtime 0, permission bits as on disk, no folder entries.
Reading and safe extraction live in `extract.py`."""

from __future__ import annotations

import fnmatch
import operator
import os
import posixpath
import re
import stat
import sys
from typing import Callable, Iterable, NamedTuple, Protocol

from casstore.errors import InvalidInput, SourceChanged
from casstore.utils.fs import as_patterns, check_src_dir, globs

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


class Entry(NamedTuple):
    """One member of a canonical archive, with the stat facts that fingerprint its source.

    A NamedTuple: `scan` builds one per file, and on tens of thousands of files a tuple is
    several times cheaper to build than a dataclass instance. `nlink` is the link count of
    the name as listed (`lstat`), which `_link_hardlinks` needs; it is not part of the
    fingerprint."""

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
    nlink: int = 1

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
    dangling links, sockets and FIFOs skipped, as MLtraq does.

    With the default `include="**"` the folder is listed by one `os.scandir` walk (`_walk`),
    which gives exactly what `glob("**")` + `os.path.isfile` + one `lstat` per file give
    (`_scan_with_globs`, used for every other `include`; tests/test_scan_fast_path.py checks
    that the two agree) at a fraction of the system calls."""
    arc_dir = check_arc_dir(arc_dir)
    if not _is_default_include(include):
        return _scan_with_globs(src_dir, arc_dir, include, exclude)
    src_dir = check_src_dir(src_dir)
    if not isinstance(src_dir, str):  # a bytes path: as before, through globs
        return _scan_with_globs(src_dir, arc_dir, include, exclude)
    excludes = [] if exclude is None else as_patterns(exclude, "exclude")
    entries = _walk(src_dir, "" if arc_dir == "." else arc_dir + "/",
                    [re.compile(fnmatch.translate(p)).match for p in excludes])
    entries.sort(key=_by_name)
    return _link_hardlinks(entries)


_by_name = operator.itemgetter(0)


def _is_default_include(include: object) -> bool:
    return include == "**" or (isinstance(include, (list, tuple)) and len(include) == 1 and include[0] == "**")


def _scan_with_globs(src_dir: str, arc_dir: str, include: str | list[str] = "**",
                     exclude: str | list[str] | None = None) -> list[Entry]:
    """`scan` through `utils.fs.globs` (MLtraq's matching rules, any patterns); `arc_dir`
    already checked."""
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
        nlink = st.st_nlink
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if _link_stays_inside(relpath.replace(os.sep, "/"), target):
                return Entry(name, SYMLINK, 0o777, 0, os.fsencode(target), path,
                             st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, nlink)
            st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Entry(name, FILE, stat.S_IMODE(st.st_mode) & 0o777, st.st_size, b"", path,
                 st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, nlink)


_S_IFMT = 0o170000
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # os.fsencode's
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR


def _walk(src_dir: str, prefix: str, excludes: list[Callable[[str], object]]) -> list[Entry]:
    """The entries of `glob("**", root_dir=src_dir, recursive=True)` that `os.path.isfile`
    keeps and no exclude matches, each from one `lstat` (plus a `stat` for a symlink),
    unsorted. `prefix` is "" or the normalized arc_dir followed by "/".

    Matches Python 3.11's glob exactly:
    - names starting with "." are neither listed nor entered;
    - a folder is entered when `os.scandir` of its path succeeds (a folder that cannot be
      listed contributes nothing, silently); a symlink to a folder is entered too, under the
      link's path. A cycle of links is followed, as glob follows it, until the path has too
      many links (ELOOP) or is too long (ENAMETOOLONG) for the kernel: the same path
      strings give the same kernel answers;
    - a name is a member only if `stat` says it is a regular file (symlinks to files
      included; dangling links, links to FIFOs or sockets, FIFOs, sockets and devices left
      out) and the exclude patterns (fnmatch on the whole relative path) do not match it.
    A stack instead of recursion: no Python recursion limit on deep trees."""
    out: list[Entry] = []
    append = out.append
    stack = [(src_dir, "")]
    while stack:
        top, rel = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            while True:
                try:
                    de = next(it, None)
                except OSError:
                    break  # glob keeps what was listed before a read error
                if de is None:
                    break
                name = de.name
                if name[0] == ".":
                    continue
                relname = rel + name
                try:
                    if de.is_symlink():
                        lst = de.stat(follow_symlinks=False)
                        try:
                            st = os.stat(de.path)
                        except OSError:
                            continue  # dangling, a loop, or not reachable: not a file
                        fmt = st.st_mode & _S_IFMT
                        if fmt == _S_IFDIR:
                            stack.append((de.path, relname + "/"))
                            continue
                        if fmt != _S_IFREG or (excludes and _excluded(relname, excludes)):
                            continue
                        target = os.readlink(de.path)
                        name_bytes = (prefix + relname).encode(_FS_ENCODING, _FS_ERRORS)
                        if _link_stays_inside(relname, target):
                            append(Entry(name_bytes, SYMLINK, 0o777, 0, os.fsencode(target), de.path,
                                         lst.st_mtime_ns, lst.st_ctime_ns, lst.st_ino, lst.st_dev, lst.st_nlink))
                        else:
                            append(Entry(name_bytes, FILE, st.st_mode & 0o777, st.st_size, b"", de.path,
                                         st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, lst.st_nlink))
                        continue
                    if de.is_dir(follow_symlinks=False):
                        stack.append((de.path, relname + "/"))
                        continue
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished meanwhile, or not reachable: glob's isfile is False too
                if st.st_mode & _S_IFMT == _S_IFREG and not (excludes and _excluded(relname, excludes)):
                    append(Entry((prefix + relname).encode(_FS_ENCODING, _FS_ERRORS), FILE, st.st_mode & 0o777,
                                 st.st_size, b"", de.path, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                                 st.st_nlink))
    return out


def _excluded(relpath: str, excludes: list[Callable[[str], object]]) -> bool:
    for match in excludes:
        if match(relpath) is not None:
            return True
    return False


def _link_hardlinks(entries: list[Entry]) -> list[Entry]:
    """Turn every later name of an inode into a hardlink member to its first name (in place).

    `nlink` is the link count of the name as listed (`lstat`): for a symlink stored as the
    file it leads to, the symlink's own count, usually 1, so that such a name stays a file
    member, as before when `_link_hardlinks` called `lstat` again itself."""
    first: dict[tuple[int, int], bytes] = {}
    out = entries
    for i, e in enumerate(entries):
        if e.nlink > 1 and e.kind == FILE and e.path:
            key = (e.dev, e.ino)
            if key in first:
                out[i] = e._replace(kind=HARDLINK, size=0, linkname=first[key])
            else:
                first[key] = e.name
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
        linkname = linkname[:NAME_FIELD]
    if len(name) > NAME_FIELD:
        prefix += _long_record(b"L", name)
        name = name[:NAME_FIELD]
    if 0 <= mode < _MAX_MODE and 0 <= size < _MAX_SIZE and len(kind) == 1:
        block = _member_block(name, kind, mode, size, linkname)
    else:  # base-256 size (8 GiB and more), or unusual values
        block = _block(name, kind, mode, size, linkname, OWNER)
    return prefix + block if prefix else block


def _template() -> tuple[bytes, int]:
    """A member header with every constant field set (uid, gid, mtime, magic, owner names)
    and the checksum field as 8 spaces, and the sum of its bytes."""
    t = bytearray(BLOCK)
    t[108:116] = _octal(0, 8)
    t[116:124] = _octal(0, 8)
    t[136:148] = _octal(MTIME, 12)
    t[148:156] = b"        "
    t[257:265] = GNU_MAGIC
    t[265:265 + len(OWNER)] = OWNER
    t[297:297 + len(OWNER)] = OWNER
    return bytes(t), sum(t)


_TEMPLATE, _TEMPLATE_SUM = _template()
_UID_GID = _TEMPLATE[108:124]
_MTIME_FIELD = _TEMPLATE[136:148]
_TAIL = _TEMPLATE[257:]
_MAX_MODE = 8 ** 7
_MAX_SIZE = 8 ** 11


def _member_block(name: bytes, kind: bytes, mode: int, size: int, linkname: bytes) -> bytes:
    """`_block(name, kind, mode, size, linkname, OWNER)` for octal-sized fields (name and
    linkname at most 100 bytes), built from the template: the checksum is the template's
    sum plus the sums of the fields set, instead of a sum over 512 bytes. The same bytes
    (tests/test_tarball.py compares the two)."""
    m = b"%07o\0" % mode
    s = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(name) + sum(m) + sum(s) + kind[0] + sum(linkname)
    return b"%s%s%s%s%s%06o\0 %s%s%s" % (name.ljust(NAME_FIELD, b"\0"), m, _UID_GID, s, _MTIME_FIELD, checksum,
                                         kind, linkname.ljust(NAME_FIELD, b"\0"), _TAIL)


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
    over tens of thousands of small members.

    `buf` is public so that `write_tar` can append headers, small files and padding to it
    directly (and flush once it holds CHUNK bytes) instead of paying a method call for each."""

    def __init__(self, sinks: Iterable[Sink]):
        self._sinks = list(sinks)
        self.buf = bytearray()
        self._flushed = 0

    @property
    def count(self) -> int:
        """Bytes written so far (flushed or not)."""
        return self._flushed + len(self.buf)

    def write(self, data: bytes | memoryview) -> None:
        if len(data) >= CHUNK:
            self.flush()
            self._emit(data)
            self._flushed += len(data)
            return
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self._emit(self.buf)
            self._flushed += len(self.buf)
            self.buf = bytearray()

    def _emit(self, data: bytes | memoryview) -> None:
        for sink in self._sinks:
            sink.write(data)


_ZEROS = bytes(BLOCK)


def write_tar(entries: list[Entry], sinks: Iterable[Sink], progress: Callable[[int], None] | None = None) -> int:
    """Stream the canonical TAR of `entries` into every sink; return the bytes written.

    A file that changes size or mtime while it is read raises SourceChanged: the stream
    written so far must then be discarded (callers write to a temp area)."""
    out = BufferedSink(sinks)
    view = memoryview(bytearray(CHUNK))
    for e in entries:
        out.buf += header(e.name, e.kind, e.mode, e.size, e.linkname)
        if e.kind == FILE:
            _copy_file(e, out, view, progress)
        if len(out.buf) >= CHUNK:
            out.flush()
    out.buf += bytes(2 * BLOCK)
    out.buf += bytes(-out.count % RECORD)
    out.flush()
    return out.count


def _copy_file(e: Entry, out: BufferedSink, view: memoryview, progress: Callable[[int], None] | None) -> None:
    """Append the data of file member `e` and its padding to `out`.

    A file of at most CHUNK bytes is read with one `os.read` of size + 1 bytes (one byte
    more shows at once that it grew); a larger one in CHUNK pieces through `view`."""
    size = e.size
    try:
        fd = os.open(e.path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise SourceChanged(f"{e.path} vanished while it was archived") from exc
    try:
        if 0 < size <= CHUNK:
            data = os.read(fd, size + 1)
            while len(data) < size:  # local file systems read short only at the end; others may
                more = os.read(fd, size + 1 - len(data))
                if not more:
                    raise SourceChanged(f"{e.path} shrank while it was archived")
                data += more
            if len(data) > size:
                raise SourceChanged(f"{e.path} grew while it was archived")
            out.buf += data
            if progress is not None:
                progress(size)
        elif size:
            remaining = size
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
    if after.st_size != size or after.st_mtime_ns != e.mtime_ns:
        raise SourceChanged(f"{e.path} changed while it was archived")
    out.buf += _ZEROS[:-size % BLOCK]


def tar_bytes(entries: list[Entry]) -> bytes:
    """The whole canonical TAR in memory (only for the inline `Archive` type)."""
    import io

    buf = io.BytesIO()
    write_tar(entries, [buf])
    return buf.getvalue()

