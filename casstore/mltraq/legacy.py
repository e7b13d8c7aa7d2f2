"""Legacy MLtraq TARs -> canonical `casstore-tar-1` streams, without holding them in memory.

MLtraq 0.1.165 writes one uncompressed GNU TAR per ArchiveStore and persist
(docs/migration.md): members in the order of a Python set (so it changes with
PYTHONHASHSEED), the files' mtimes, permission bits as on disk, hardlinks pointing at
whichever name the set gave first. Two passes over the file, with a sort between them, turn
it into the canonical stream of the same content:

1. `read_members` reads the headers only (names, kinds, modes, link targets, where each
   file's data starts) and checks the members in their canonical order with the
   extractor's own rules (tar.rules.MemberRules): what is checked is what will be extracted;
2. `canonical_members` sorts them bytewise by name, makes the first name of each hardlink
   group in that order the file and points the others at it, and normalizes the modes;
3. `write_canonical` streams the headers (tar.header.header: mode & 0o777, mtime 0, root
   owner) and the data (seeking to each offset) into the sinks, ended as tar.write.write_tar
   ends its archives (tar.write.finish).

The blob id therefore depends only on the content: the same folder archived by MLtraq in
two processes gives one blob.

What is refused (`LegacyArchiveError`): anything casstore's extractor would refuse, checked
by the extractor's code (tar.rules.MemberRules, and tar.read.TarStream for the headers), so
that a migrated experiment always loads. A symlink that is absolute or climbs out of the
archive is the one such member MLtraq itself writes; MLtraq's own load refused it too
(tarfile's `data` filter), so that experiment never loaded. Rewriting the member (dropping
it, or storing the file it pointed to, which is not in the TAR) would change the content,
so the reference is left unmigrated, its TAR kept, and reported instead. Migration also
refuses what it cannot canonicalize: member types other than file, hardlink and symlink
(MLtraq writes no folder members), duplicate names, a hardlink to no file of the archive."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Union

from casstore.cas.tar.header import BLOCK, CHUNK, FILE, FILE_KINDS, HARDLINK, SYMLINK, Member, header, padding
from casstore.cas.tar.read import TarStream
from casstore.cas.tar.rules import MemberRules, safe_name
from casstore.cas.tar.write import BufferedSink, Sink, finish
from casstore.errors import CasStoreError, CorruptBlob, UnsafeArchive

SYMLINK_MODE = 0o777
LegacyFile = Union[io.BufferedReader, io.BytesIO]
"""A legacy TAR open for pass 2: seekable, with `readinto` (a file opened "rb", or bytes)."""


class LegacyArchiveError(CasStoreError, ValueError):
    """A legacy TAR that cannot be migrated as it is (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class LegacyMember(Member):
    """A member of a legacy TAR, and `offset`, where a file's data starts in the file.

    A Member (the tar room's record, judged by the same MemberRules) plus the one fact the
    second pass needs that a stream reader cannot give: the canonical order differs from
    the file's, so each file's data is read by seeking to its offset."""

    offset: int = 0


def read_members(f: BinaryIO) -> list[LegacyMember]:
    """Pass 1: the members of the legacy TAR open in `f` (seekable), checked.

    Names are normalized as the extractor does (MLtraq's are already normpath'ed, so this
    changes nothing on its TARs). Raises LegacyArchiveError."""
    end = f.seek(0, os.SEEK_END)
    f.seek(0)
    members: list[LegacyMember] = []
    try:
        for m in _HeaderStream(f):
            offset = f.tell()
            if m.kind in FILE_KINDS and offset + m.size > end:
                raise LegacyArchiveError(f"TAR truncated inside member {os.fsdecode(m.name)!r}")
            members.append(_member(m, offset))
    except (CorruptBlob, UnsafeArchive) as exc:
        raise LegacyArchiveError(f"not a readable TAR: {exc}") from exc
    _check(members)
    return members


class _HeaderStream(TarStream):
    """TarStream that seeks over file data instead of reading it: pass 1 reads headers only."""

    def _skip_pending(self) -> None:
        if self._pending:
            self._stream.seek(self._pending + (-self._pending % BLOCK), os.SEEK_CUR)
            self._pending = 0

    def _drain(self) -> None:
        pass


def _member(m: Member, offset: int) -> LegacyMember:
    try:
        name = os.fsencode(safe_name(m.name))
    except UnsafeArchive as exc:
        raise LegacyArchiveError(str(exc)) from exc
    if m.kind in FILE_KINDS:
        return LegacyMember(name, FILE, m.mode & 0o777, m.size, b"", offset)
    if m.kind == HARDLINK:
        try:
            target = os.fsencode(safe_name(m.linkname, "hardlink target"))
        except UnsafeArchive as exc:
            raise LegacyArchiveError(str(exc)) from exc
        return LegacyMember(name, HARDLINK, m.mode & 0o777, 0, target)
    if m.kind == SYMLINK:
        return LegacyMember(name, SYMLINK, SYMLINK_MODE, 0, m.linkname)
    raise LegacyArchiveError(f"member {os.fsdecode(m.name)!r} has type {m.kind!r}: only files, hardlinks and "
                             "symlinks can be migrated")


def _check(members: list[LegacyMember]) -> None:
    """What canonicalization needs (unique names, hardlinks to files of the archive), then
    the extractor's rules on the canonical members, in the order the blob will hold them."""
    kinds: dict[bytes, bytes] = {}
    for m in members:
        if m.name in kinds:
            raise LegacyArchiveError(f"member {os.fsdecode(m.name)!r} appears twice")
        kinds[m.name] = m.kind
    for m in members:
        if m.kind == HARDLINK and kinds.get(m.linkname) not in (FILE, HARDLINK):
            raise LegacyArchiveError(f"hardlink {os.fsdecode(m.name)!r} -> {os.fsdecode(m.linkname)!r} does not "
                                     "name a file of the archive")
    rules = MemberRules()
    try:
        for m in canonical_members(members):
            rules.check(m)
        rules.check_links()
    except UnsafeArchive as exc:
        raise LegacyArchiveError(f"{exc}: casstore's extractor would refuse it, so this reference is left "
                                 "as it was") from exc


def canonical_members(members: Iterable[LegacyMember]) -> list[LegacyMember]:
    """Sorted bytewise by name; in each hardlink group the first name is the file.

    A group is a file and every hardlink that resolves to it (through chains, if any). Its
    members all take the file's mode (they are one inode)."""
    by_name = {m.name: m for m in members}
    root: dict[bytes, bytes] = {}

    def resolve(name: bytes) -> bytes:
        seen = set()
        while by_name[name].kind == HARDLINK:
            if name in seen:
                raise LegacyArchiveError(f"hardlink loop at {os.fsdecode(name)!r}")
            seen.add(name)
            name = by_name[name].linkname
        return name

    groups: dict[bytes, list[bytes]] = {}
    for name, m in by_name.items():
        if m.kind in (FILE, HARDLINK):
            root[name] = resolve(name)
            groups.setdefault(root[name], []).append(name)
    first = {r: min(names) for r, names in groups.items()}
    out = []
    for name in sorted(by_name):
        m = by_name[name]
        if m.kind == SYMLINK:
            out.append(m)
            continue
        data = by_name[root[name]]
        head = first[root[name]]
        if name == head:
            out.append(LegacyMember(name, FILE, data.mode, data.size, b"", data.offset))
        else:
            out.append(LegacyMember(name, HARDLINK, data.mode, 0, head))
    return out


def write_canonical(f: LegacyFile, members: list[LegacyMember], sinks: Iterable[Sink]) -> int:
    """Pass 2: stream the canonical TAR of `members` (from `canonical_members`), reading
    file data from `f` at each member's offset; returns the bytes written."""
    out = BufferedSink(sinks)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for m in members:
        out.write(header(m.name, m.kind, m.mode, m.size, m.linkname))
        if m.kind != FILE:
            continue
        f.seek(m.offset)
        remaining = m.size
        while remaining:
            n = f.readinto(view[:min(remaining, CHUNK)])
            if not n:
                raise LegacyArchiveError(f"TAR truncated inside member {os.fsdecode(m.name)!r}")
            out.write(view[:n])
            remaining -= n
        out.write(padding(m.size))
    return finish(out)


def canonicalize(f: LegacyFile, sinks: Iterable[Sink]) -> int:
    """Both passes: the canonical TAR of the legacy TAR in `f`, into `sinks`."""
    return write_canonical(f, canonical_members(read_members(f)), sinks)


__all__ = ["LegacyArchiveError", "LegacyMember", "canonical_members", "canonicalize", "read_members",
           "write_canonical"]
