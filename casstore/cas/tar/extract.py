"""Extract a TAR stream safely, staged: members are written into a hidden folder inside the
target, the caller checks the blob's digest, and only then are they renamed into place.
A corrupt or hostile blob therefore leaves the target as it was.
With `digests`, each file's XXH3-128 is computed from its bytes as they are written (no
second read) and `Extraction.written` lists what `publish` put into the target, for the
load cache (casstore/cas/store/extract_cache.py).

Each member passes `rules.MemberRules` while it is staged (read with `read.TarStream`);
`Extraction.publish` checks what only the target can tell before the first rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

from casstore.cas.tar.header import DIRECTORY, FILE, FILE_KINDS, HARDLINK, SYMLINK, Member
from casstore.cas.tar.read import TarStream
from casstore.cas.tar.rules import NAME_MAX, MemberRules, check_name_length, safe_name
from casstore.errors import TargetConflict

STAGING_PREFIX = ".casstore-extract-"
new_file_hasher = xxhash.xxh3_128  # the digest of a written file's bytes (or a symlink's target)


def bytes_digest(data: bytes) -> str:
    """The file digest (new_file_hasher) of a symlink's target."""
    return xxhash.xxh3_128_hexdigest(data)


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
    digest: str = ""


@dataclass(frozen=True)
class Written:
    """One member `publish` put into the target: target-relative name, kind (FILE for
    files and hard links, SYMLINK, DIRECTORY) and, for files and symlinks, the hex digest
    (new_file_hasher) of its bytes or link target."""

    name: str
    kind: bytes
    digest: str


class Extraction:
    """Stage an archive into a hidden folder inside `target`, then publish it by renames.

    Every member passes MemberRules while it is staged; publish checks what only the target
    can tell (its files, folders and symlinks, the length of the full paths) for every member
    before the first rename, so that a refused archive leaves the target as it was.
    Use as a context manager: the staging folder is always removed on exit."""

    def __init__(self, target: str, members: list[str] | None = None, *, digests: bool = False):
        self.target = os.path.abspath(target)
        self.selected = None if members is None else {safe_name(os.fsencode(m)) for m in members}
        self.digests = digests
        self.written: list[Written] = []
        self._staging = ""
        self._items: list[_Staged] = []
        self._files: dict[str, _Staged] = {}
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
            if member.kind in FILE_KINDS:
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
        hasher = new_file_hasher() if self.digests else None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            reader.copy_data(member, fd, None if hasher is None else hasher.update)
            os.fchmod(fd, member.mode & 0o777)
        finally:
            os.close(fd)
        item = _Staged(name, FILE, path, digest="" if hasher is None else hasher.hexdigest())
        self._files[name] = item
        self._items.append(item)

    def _stage_symlink(self, name: str, target: str) -> None:
        path = self._stage_path()
        os.symlink(target, path)
        digest = bytes_digest(os.fsencode(target)) if self.digests else ""
        self._items.append(_Staged(name, SYMLINK, path, target, digest))

    def _stage_hardlink(self, name: str, link: str) -> None:
        path = self._stage_path()
        source = self._files[link]
        os.link(source.staged, path)
        item = _Staged(name, HARDLINK, path, link, source.digest)
        self._files[name] = item
        self._items.append(item)

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
            if self.digests:
                self.written.append(Written(item.name, FILE if item.kind == HARDLINK else item.kind, item.digest))
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
