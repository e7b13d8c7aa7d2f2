"""What a member must satisfy to be extracted: the one validator, `MemberRules`.

Every member is validated here, by casstore, before anything is written to a target:
tarfile's `data` filter had bypasses until Python 3.11.13 (CVE-2025-4517 and siblings).
The extraction (`extract.py`) and the migration of legacy TARs (casstore/mltraq/legacy.py)
both apply these rules, so that a migrated archive always extracts."""

from __future__ import annotations

import os
import posixpath
from typing import Callable

from casstore.cas.tar.header import (DIRECTORY, FILE_KINDS, HARDLINK, NAME_MAX, PATH_MAX, SYMLINK, Member,
                                     name_length_problem)
from casstore.errors import UnsafeArchive

__all__ = ["NAME_MAX", "PATH_MAX", "MemberRules", "check_name_length", "check_symlink", "safe_name"]


def safe_name(raw: bytes, what: str = "member") -> str:
    """A member name as a relative path that stays inside the target, or UnsafeArchive."""
    name = os.fsdecode(raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or "\0" in name or name.startswith("/") or ".." in parts:
        raise UnsafeArchive(f"{what} name {name!r} is empty, absolute or climbs out of the target")
    return "/".join(parts)


def check_symlink(name: str, raw_target: bytes) -> str:
    """The target of symlink member `name`, if it stays inside the target lexically and the
    file system takes it; else UnsafeArchive. (Through other links: `MemberRules.check_links`.)"""
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
    problem = name_length_problem(os.fsencode(name), os.fsencode(under), name_max)
    if problem is not None:
        where = f" in {under!r}" if under and "path of" in problem else ""
        raise UnsafeArchive(f"member {_short(name)!r}{where} {problem}")


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
        if member.kind not in FILE_KINDS and member.kind not in (SYMLINK, HARDLINK, DIRECTORY):
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
