"""Read TAR streams and extract them safely.

Every member is validated here, by casstore, before anything is written to the target:
tarfile's `data` filter had bypasses until Python 3.11.13 (CVE-2025-4517 and siblings).
Extraction is staged: members are written into a hidden folder inside the target, the
caller checks the blob's digest, and only then are they renamed into place. A corrupt or
hostile blob therefore leaves the target as it was."""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from casstore.cas.tar.write import BLOCK, CHUNK, DIRECTORY, FILE, HARDLINK, SYMLINK
from casstore.errors import CorruptBlob, TargetConflict, UnsafeArchive

MAX_LONG_NAME = 64 * 1024
MAX_PAX_HEADER = 1 << 20
_FILE_KINDS = {b"0", b"\0", b"7"}
_SKIP_KINDS = {b"g"}
_OCTAL = re.compile(rb"[0-7]*")
_MAX_DIGITS = 20  # a decimal number in a PAX header: 20 digits reach 10**20 bytes
_DECIMAL = re.compile(rb"[0-9]{1,%d}" % _MAX_DIGITS)
NAME_MAX = 255  # bytes of one path component (Linux)
PATH_MAX = 4096  # bytes of a path with its terminating NUL (Linux): also a symlink's target


@dataclass(frozen=True, slots=True)
class Member:
    """A member as read from a TAR header (names are raw bytes)."""

    name: bytes
    kind: bytes
    mode: int
    size: int
    linkname: bytes


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise CorruptBlob(f"archive truncated: expected {n} more bytes, got {len(data)}")
        data += more
    return data


def _number(field: bytes) -> int:
    """A numeric header field: octal digits (NUL or space padded) or GNU base-256."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise CorruptBlob("negative number in a TAR header")
    text = field.replace(b"\0", b" ").strip()
    if not _OCTAL.fullmatch(text):
        raise CorruptBlob(f"bad number field in a TAR header: {field!r}")
    return int(text, 8) if text else 0


def _nts(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _check_checksum(block: bytes) -> None:
    """The stored checksum must be the unsigned or the signed byte sum (old tars wrote the
    signed one). The signed sum, a Python loop, is computed only when the unsigned one does
    not match: canonical headers are ASCII, where the two are equal."""
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if stored == unsigned:
        return
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    if stored != signed:
        raise CorruptBlob("TAR header checksum mismatch")


def _skip(stream: BinaryIO, size: int) -> None:
    remaining = size + (-size % BLOCK)
    while remaining:
        chunk = stream.read(min(remaining, CHUNK))
        if not chunk:
            raise CorruptBlob("archive truncated inside a member")
        remaining -= len(chunk)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a PAX header, each `<length> <key>=<value>\\n`, parsed whole: the length
    is plain decimal digits (a bounded count of them) and ends exactly at the newline."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + _MAX_DIGITS + 1)
        digits = data[pos:space] if space > pos else b""
        if not _DECIMAL.fullmatch(digits):
            raise CorruptBlob("malformed PAX header: a record does not start with its length")
        end = pos + int(digits)
        key, equals, value = data[space + 1:end - 1].partition(b"=")
        if end > len(data) or end <= space + 1 or data[end - 1:end] != b"\n" or not equals or not key:
            raise CorruptBlob("malformed PAX header: a record's length does not end at its newline")
        records[key] = value
        pos = end
    return records


def _pax_size(value: bytes) -> int:
    if not _DECIMAL.fullmatch(value):
        raise CorruptBlob(f"malformed PAX size {value[:40]!r}")
    return int(value)


class TarStream:
    """Iterates the members of a TAR stream; `copy_data` must follow a FILE member,
    otherwise its data is skipped."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._pending = 0
        self._buffer: memoryview | None = None

    def __iter__(self) -> Iterator[Member]:
        long_name = long_link = None
        pax: dict[bytes, bytes] = {}
        while True:
            self._skip_pending()
            block = _read_exact(self._stream, BLOCK)
            if block == bytes(BLOCK):
                self._drain()
                return
            _check_checksum(block)
            kind = block[156:157]
            size = _number(block[124:136])
            if kind in (b"L", b"K"):
                value = _nts(self._read_meta(size, MAX_LONG_NAME))
                long_name, long_link = (value, long_link) if kind == b"L" else (long_name, value)
                continue
            if kind == b"x":
                pax = _pax_records(self._read_meta(size, MAX_PAX_HEADER))
                continue
            if kind in _SKIP_KINDS:
                _skip(self._stream, size)
                continue
            member = self._member(block, kind, size, long_name, long_link, pax)
            long_name = long_link = None
            pax = {}
            self._pending = member.size if member.kind in _FILE_KINDS else 0
            yield member

    def _member(self, block: bytes, kind: bytes, size: int, long_name: bytes | None,
                long_link: bytes | None, pax: dict[bytes, bytes]) -> Member:
        name = _nts(block[0:100])
        if block[257:263] == b"ustar\0" and block[345]:
            name = _nts(block[345:500]) + b"/" + name
        name = pax.get(b"path", long_name if long_name is not None else name)
        linkname = pax.get(b"linkpath", long_link if long_link is not None else _nts(block[157:257]))
        if b"size" in pax:
            size = _pax_size(pax[b"size"])
        return Member(name, kind, _number(block[100:108]), size, linkname)

    def _read_meta(self, size: int, limit: int) -> bytes:
        if size > limit:
            raise UnsafeArchive(f"TAR metadata record of {size} bytes exceeds the {limit}-byte limit")
        data = _read_exact(self._stream, size)
        _read_exact(self._stream, -size % BLOCK)
        return data

    def copy_data(self, member: Member, fd: int) -> None:
        """Write the data of the member just yielded to file descriptor `fd`.

        Reads with `readinto` into one buffer of this stream (allocated on first use, at
        most CHUNK bytes) where the stream has it, instead of a new bytes object per read."""
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            self._copy_data_by_read(member, fd)
            return
        remaining = member.size
        buffer = self._buffer
        if buffer is None and remaining:
            buffer = self._buffer = memoryview(bytearray(CHUNK))
        while remaining:
            n = readinto(buffer[:min(remaining, CHUNK)])
            if not n:
                raise CorruptBlob(f"archive truncated inside member {member.name!r}")
            view = buffer[:n]
            while view:
                view = view[os.write(fd, view):]
            remaining -= n
        _read_exact(self._stream, -member.size % BLOCK)
        self._pending = 0

    def _copy_data_by_read(self, member: Member, fd: int) -> None:
        remaining = member.size
        while remaining:
            chunk = self._stream.read(min(remaining, CHUNK))
            if not chunk:
                raise CorruptBlob(f"archive truncated inside member {member.name!r}")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            remaining -= len(chunk)
        _read_exact(self._stream, -member.size % BLOCK)
        self._pending = 0

    def _skip_pending(self) -> None:
        if self._pending:
            _skip(self._stream, self._pending)
            self._pending = 0

    def _drain(self) -> None:
        """Read to the end so that a hashing reader sees every byte (record padding too)."""
        while self._stream.read(CHUNK):
            pass


def list_members(stream: BinaryIO) -> list[Member]:
    return list(TarStream(stream))


def safe_name(raw: bytes, what: str = "member") -> str:
    """A member name as a relative path that stays inside the target, or UnsafeArchive."""
    name = os.fsdecode(raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or "\0" in name or name.startswith("/") or ".." in parts:
        raise UnsafeArchive(f"{what} name {name!r} is empty, absolute or climbs out of the target")
    return "/".join(parts)


def check_symlink(name: str, raw_target: bytes) -> str:
    target = os.fsdecode(raw_target)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if (not target or "\0" in target or posixpath.isabs(target)
            or resolved == ".." or resolved.startswith("../")):
        raise UnsafeArchive(f"symlink {name!r} -> {target!r} points outside the target")
    if len(raw_target) >= PATH_MAX:
        raise UnsafeArchive(f"symlink {name!r} has a target of {len(raw_target)} bytes: the file system takes "
                            f"at most {PATH_MAX - 1}")
    return target


def check_name_length(name: str, name_max: int = NAME_MAX, under: str = "") -> None:
    """UnsafeArchive if the file system would refuse member `name` (below folder `under`):
    a component over `name_max` bytes, or a whole path of PATH_MAX bytes or more."""
    raw = os.fsencode(name)
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > name_max:
        raise UnsafeArchive(f"member {_short(name)!r} has a name component of {len(longest)} bytes: the file "
                            f"system takes at most {name_max}")
    full = len(os.fsencode(os.path.join(under, name))) if under else len(raw)
    if full >= PATH_MAX:
        where = f" in {under!r}" if under else ""
        raise UnsafeArchive(f"member {_short(name)!r} would be a path of {full} bytes{where}: the file system "
                            f"takes at most {PATH_MAX - 1}")


def _short(name: str) -> str:
    return name if len(name) <= 80 else name[:80] + "..."


class MemberRules:
    """What every member must satisfy to be extracted, checked member by member in archive
    order, then for the symlinks once all are known: the one implementation of the rules,
    used by Extraction and by migration (legacy.py), so that a migrated archive always
    extracts. Raises UnsafeArchive, before anything is written to a target.

    Refused: names that are empty, absolute, climb out, hold NUL or that the file system
    would refuse (NAME_MAX, PATH_MAX); members written through a symlink member; a path
    that is both a folder and a file or symlink (a folder member, or the parent of another
    member); symlinks pointing out, lexically or through other links; hardlinks to anything
    but an earlier file member; member types other than file, hardlink, symlink, folder."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}  # symlink member -> its target, as they will land
        self._files: set[str] = set()  # names a hardlink may point to
        self._leaves: set[str] = set()  # files and symlinks
        self._dirs: set[str] = set()  # folder members and the parents of every member

    def check(self, member: Member) -> tuple[str, str]:
        """The member's safe name, and its link (symlink target or hardlink's file), or "".

        State is updated only for a member that passes: the rules track what will land."""
        name = safe_name(member.name)
        check_name_length(name)
        if member.kind not in _FILE_KINDS and member.kind not in (SYMLINK, HARDLINK, DIRECTORY):
            raise UnsafeArchive(f"member {name!r} has type {member.kind!r}: only files, links and folders are "
                                "extracted")
        self._refuse_through_symlink(name)
        self._refuse_file_folder_clash(name, member.kind == DIRECTORY)
        link = ""
        if member.kind == SYMLINK:
            link = check_symlink(name, member.linkname)
        elif member.kind == HARDLINK:
            link = safe_name(member.linkname, "hardlink target")
            if link not in self._files:
                raise UnsafeArchive(f"hardlink {name!r} -> {link!r} does not name a file of the archive")
        self._record(name, member.kind, link)
        return name, link

    def check_links(self, disk_link: Callable[[str], str | None] = lambda rel: None) -> None:
        """Refuse a symlink that leads out of the target (or loops) through the archive's other
        links and, when `disk_link` reads them, those already in the target."""
        for name, target in self.links.items():
            if _escapes(name, target, self.links, disk_link):
                raise UnsafeArchive(f"symlink {name!r} -> {target!r} leads out of the target through other links")

    def _refuse_through_symlink(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.links:
                raise UnsafeArchive(f"member {name!r} would be written through symlink {'/'.join(parts[:i])!r}")

    def _refuse_file_folder_clash(self, name: str, is_dir: bool) -> None:
        """A member below a file member, or a file where a folder is (or the other way
        round), cannot both land."""
        parts = name.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        clash = next((p for p in parents if p in self._leaves), None)
        if clash is None and name in (self._leaves if is_dir else self._dirs):
            clash = name
        if clash is not None:
            raise UnsafeArchive(f"member {name!r} clashes with {clash!r}: one is a file or symlink, the other a folder")

    def _record(self, name: str, kind: bytes, link: str) -> None:
        parts = name.split("/")
        self._dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if kind == DIRECTORY:
            self._dirs.add(name)
            return
        self._leaves.add(name)
        if kind == SYMLINK:
            self.links[name] = link
            self._files.discard(name)
        else:
            self.links.pop(name, None)
            self._files.add(name)


def _escapes(name: str, target: str, links: dict[str, str], disk_link: Callable[[str], str | None]) -> bool:
    """Whether `name -> target`, resolved through `links` and `disk_link`, leaves the target
    (or loops)."""
    parts = name.split("/")[:-1] + target.split("/")
    stack: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
            continue
        stack.append(part)
        link = links.get("/".join(stack)) or disk_link("/".join(stack))
        if link is not None:
            hops += 1
            if hops > 40 or link.startswith("/"):
                return True
            stack.pop()
            parts = link.split("/") + parts
    return False


STAGING_PREFIX = ".casstore-extract-"


def _remove_abandoned_staging(target: str) -> None:
    """Remove staging folders that killed extractions left in `target` (their process is
    gone). Folders of live processes, this one's included, are left alone."""
    for name in os.listdir(target):
        if not name.startswith(STAGING_PREFIX):
            continue
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(os.path.join(target, name), ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Staged:
    name: str
    kind: bytes
    staged: str = ""
    link: str = ""


class Extraction:
    """Stage an archive into a hidden folder inside `target`, then publish it by renames.

    Every member passes MemberRules while it is staged; publish checks what only the target
    can tell (its files, folders and symlinks, the length of the full paths) for every member
    before the first rename, so that a refused archive leaves the target as it was.
    Use as a context manager: the staging folder is always removed on exit."""

    def __init__(self, target: str, members: list[str] | None = None):
        self.target = os.path.abspath(target)
        self.selected = None if members is None else {safe_name(os.fsencode(m)) for m in members}
        self._staging = ""
        self._items: list[_Staged] = []
        self._files: dict[str, str] = {}
        self._rules = MemberRules()

    def __enter__(self) -> Extraction:
        os.makedirs(self.target, exist_ok=True)
        _remove_abandoned_staging(self.target)
        self._staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.target)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)

    def stage(self, stream: BinaryIO) -> None:
        """Validate every member and write it into the staging folder."""
        reader = TarStream(stream)
        for member in reader:
            name, link = self._rules.check(member)
            if member.kind in _FILE_KINDS:
                self._stage_file(reader, member, name)
            elif member.kind == SYMLINK:
                self._stage_symlink(name, link)
            elif member.kind == HARDLINK:
                self._stage_hardlink(name, link)
            else:
                self._items.append(_Staged(name, DIRECTORY))

    def _stage_path(self) -> str:
        return os.path.join(self._staging, str(len(self._items)))

    def _stage_file(self, reader: TarStream, member: Member, name: str) -> None:
        path = self._stage_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            reader.copy_data(member, fd)
            os.fchmod(fd, member.mode & 0o777)
        finally:
            os.close(fd)
        self._files[name] = path
        self._items.append(_Staged(name, FILE, path))

    def _stage_symlink(self, name: str, target: str) -> None:
        path = self._stage_path()
        os.symlink(target, path)
        self._items.append(_Staged(name, SYMLINK, path, target))

    def _stage_hardlink(self, name: str, link: str) -> None:
        path = self._stage_path()
        os.link(self._files[link], path)
        self._files[name] = path
        self._items.append(_Staged(name, HARDLINK, path, link))

    def publish(self) -> list[str]:
        """Move the staged members into the target; return their paths, target-relative.

        Symlinks are checked again first, now that every member is known: a link can only
        be judged with the other links of the archive (and of the target) it goes through."""
        self._rules.check_links(self._disk_link)
        chosen = [i for i in self._items if self.selected is None or i.name in self.selected]
        self._check_target(chosen)
        done: list[str] = []
        checked: set[str] = set()
        for item in chosen:
            self._make_parents(item.name, checked)
            if item.kind == DIRECTORY:
                self._make_dir(item.name, checked)
            else:
                self._replace(item.staged, os.path.join(self.target, item.name))
            done.append(item.name)
        return done

    def _disk_link(self, rel: str) -> str | None:
        path = os.path.join(self.target, rel)
        return os.readlink(path) if os.path.islink(path) else None

    def _check_target(self, items: list[_Staged]) -> None:
        """Refuse, before anything moves, members that the target's files or folders block,
        and paths the target's file system would refuse."""
        limit = os.pathconf(self.target, "PC_NAME_MAX")
        name_max = limit if 0 < limit < NAME_MAX else NAME_MAX
        for item in items:
            check_name_length(item.name, name_max, self.target)
        parents = {"/".join(i.name.split("/")[:k]) for i in items for k in range(1, i.name.count("/") + 1)}
        folders = parents | {i.name for i in items if i.kind == DIRECTORY}
        for rel in sorted(folders):
            path = os.path.join(self.target, rel)
            if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
                raise TargetConflict(f"cannot extract into {path!r}: it is a file or a symlink")
        for item in items:
            path = os.path.join(self.target, item.name)
            if item.kind != DIRECTORY and os.path.isdir(path) and not os.path.islink(path):
                raise TargetConflict(f"cannot extract {path!r}: a folder is in the way")

    def _replace(self, src: str, final: str) -> None:
        try:
            os.replace(src, final)
        except IsADirectoryError as exc:
            raise TargetConflict(f"cannot extract {final!r}: a folder is in the way") from exc

    def _make_parents(self, name: str, checked: set[str]) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self._make_dir("/".join(parts[:i]), checked)

    def _make_dir(self, rel: str, checked: set[str]) -> None:
        """Create one folder of the target, refusing to go through a symlink or a file."""
        if rel in checked:
            return
        path = os.path.join(self.target, rel)
        try:
            os.mkdir(path)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise TargetConflict(f"cannot extract into {path!r}: it is a file or a symlink") from None
        checked.add(rel)
