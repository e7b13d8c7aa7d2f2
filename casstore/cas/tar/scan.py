"""Scan a folder into the canonical member list of its archive (docs/tar-format.md).

`scan` lists what an archive of `src_dir` holds, sorted bytewise by name: one `Entry` per
member, with the stat facts that fingerprint its source (the stat cache's key). Which files
are chosen is `match.py`'s job; writing them is `write.py`'s."""

from __future__ import annotations

import operator
import os
import posixpath
import stat
import sys
from typing import NamedTuple

from casstore.cas.tar.header import FILE, HARDLINK, NAME_MAX, PATH_MAX, SYMLINK, name_length_problem
from casstore.cas.tar.match import (Matcher, Patterns, check_src_dir, exclude_matchers, excluded, globs,
                                    is_default_include)
from casstore.errors import InvalidInput


class Entry(NamedTuple):
    """One member of a canonical archive, with the stat facts that fingerprint its source.

    Not a `header.Member`: an Entry also says where the member comes from (`path`) and what
    its source looked like when scanned (the stat facts), and it is a NamedTuple because
    `scan` builds one per file, and on tens of thousands of files a tuple is several times
    cheaper to build than a dataclass instance. Its first five fields are a Member's. `nlink` is the link count of
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

    def fingerprint(self) -> tuple[bytes, bytes, int, int, bytes, int, int, int, int]:
        """What must be unchanged for a cached digest to still hold (git's index rule)."""
        return (self.name, self.kind, self.mode, self.size, self.linkname,
                self.mtime_ns, self.ctime_ns, self.ino, self.dev)


def check_arc_dir(arc_dir: str) -> str:
    """Normalize `arc_dir`; refuse one that is absolute, climbs out with `..`, or has a
    component that no file system takes (over NAME_MAX bytes): every load would fail."""
    if not isinstance(arc_dir, str) or arc_dir == "":
        raise InvalidInput(f"arc_dir must be a non-empty relative path, got {arc_dir!r}")
    norm = posixpath.normpath(arc_dir.replace(os.sep, "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or "\0" in norm:
        raise InvalidInput(f"arc_dir {arc_dir!r} must be relative and stay inside the archive (no leading '/' or '..')")
    longest = max(os.fsencode(norm).split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise InvalidInput(f"arc_dir {_short(arc_dir)!r} has a component of {len(longest)} bytes: file systems take "
                           f"at most {NAME_MAX} (NAME_MAX), so it could never be extracted")
    return norm


def check_extractable(entries: list[Entry], under: str) -> None:
    """InvalidInput unless every member of `entries` can be extracted below folder `under`:
    no name component over NAME_MAX bytes, no path of PATH_MAX bytes or more (header.py).
    A name of at most `safe` bytes passes both checks, so only longer ones are looked into
    (the checks of every name cost a third of a repeat persist of 20,000 files' scan)."""
    prefix = os.fsencode(under)
    safe = min(NAME_MAX, PATH_MAX - 1 - (len(prefix.rstrip(b"/")) + 1 if prefix else 0))
    for entry in entries:
        if len(entry.name) <= safe:
            continue
        problem = name_length_problem(entry.name, prefix)
        if problem is not None:
            raise InvalidInput(f"{_short(os.fsdecode(entry.name))!r} (from {_short(entry.path)!r}) {problem}, so it "
                               f"could never be extracted into {_short(under)!r}")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:80] + "..."


def member_name(arc_dir: str, relpath: str) -> bytes:
    """MLtraq's member name, normpath(arc_dir/relpath), as raw bytes."""
    return os.fsencode(posixpath.normpath(f"{arc_dir}/{relpath}"))


def _link_stays_inside(relpath: str, target: str) -> bool:
    """A relative symlink target that, resolved from the link's folder, stays in the tree."""
    if not target or posixpath.isabs(target):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), target))
    return resolved != ".." and not resolved.startswith("../")


def scan(src_dir: str, arc_dir: str = ".", include: Patterns = "**",
         exclude: Patterns | None = None) -> list[Entry]:
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
    if not is_default_include(include):
        return _scan_with_globs(src_dir, arc_dir, include, exclude)
    src_dir = check_src_dir(src_dir)
    if not isinstance(src_dir, str):  # a bytes path: as before, through globs
        return _scan_with_globs(src_dir, arc_dir, include, exclude)
    entries = _walk(src_dir, "" if arc_dir == "." else arc_dir + "/", exclude_matchers(exclude))
    entries.sort(key=_by_name)
    return _link_hardlinks(entries)


_by_name = operator.itemgetter(0)


def _scan_with_globs(src_dir: str, arc_dir: str, include: Patterns = "**",
                     exclude: Patterns | None = None) -> list[Entry]:
    """`scan` through `match.globs` (MLtraq's matching rules, any patterns); `arc_dir`
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


def _walk(src_dir: str, prefix: str, excludes: list[Matcher]) -> list[Entry]:
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
                        if fmt != _S_IFREG or (excludes and excluded(relname, excludes)):
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
                if st.st_mode & _S_IFMT == _S_IFREG and not (excludes and excluded(relname, excludes)):
                    append(Entry((prefix + relname).encode(_FS_ENCODING, _FS_ERRORS), FILE, st.st_mode & 0o777,
                                 st.st_size, b"", de.path, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                                 st.st_nlink))
    return out


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
