"""Read a TAR stream member by member, bounded: `TarStream` yields each member's header
fields (a `header.Member`) and copies a file's data on request, never holding more than one
piece of it.

Everything a hostile stream could use to make the reader misbehave is bounded or refused
here (CorruptBlob, UnsafeArchive): numbers are octal or GNU base-256 only, checksums must
match, GNU long names and PAX headers have a size limit, PAX records must parse whole.
It reads ustar, GNU and PAX headers, so the legacy MLtraq TARs too (casstore/mltraq/legacy.py).
Whether a member may be extracted is `rules.py`'s question."""

from __future__ import annotations

import os
import re
from typing import BinaryIO, Callable, Iterator

from casstore.cas.tar.header import BLOCK, CHUNK, FILE_KINDS, Member
from casstore.errors import CorruptBlob, UnsafeArchive

MAX_LONG_NAME = 64 * 1024
MAX_PAX_HEADER = 1 << 20
_SKIP_KINDS = {b"g"}
_OCTAL = re.compile(rb"[0-7]*")
_MAX_DIGITS = 20  # a decimal number in a PAX header: 20 digits reach 10**20 bytes
_DECIMAL = re.compile(rb"[0-9]{1,%d}" % _MAX_DIGITS)
_NO_BUFFER = memoryview(b"")  # what an empty member needs


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise CorruptBlob(f"archive truncated: expected {n} more bytes, got {len(data)}")
        data += more
    return data


def number_field(field: bytes) -> int:
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
    stored = number_field(block[148:156])
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

    def __init__(self, stream: BinaryIO) -> None:
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
            size = number_field(block[124:136])
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
            self._pending = member.size if member.kind in FILE_KINDS else 0
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
        return Member(name, kind, number_field(block[100:108]), size, linkname)

    def _read_meta(self, size: int, limit: int) -> bytes:
        if size > limit:
            raise UnsafeArchive(f"TAR metadata record of {size} bytes exceeds the {limit}-byte limit")
        data = _read_exact(self._stream, size)
        _read_exact(self._stream, -size % BLOCK)
        return data

    def copy_data(self, member: Member, fd: int, on_data: Callable[[memoryview], object] | None = None) -> None:
        """Write the data of the member just yielded to file descriptor `fd`, and hand each
        piece to `on_data` (a hasher's update: the file's digest without reading it again).

        Takes views of the stream's own buffer where it lends them (`read_view`: a chunked
        blob's chunks), else reads with `readinto` into one buffer of this stream (allocated
        on first use, at most CHUNK bytes) where the stream has it, instead of a new bytes
        object per read."""
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            self._copy_data_by_read(member, fd, on_data)
            return
        remaining = member.size
        read_view = getattr(self._stream, "read_view", None)
        buffer = self._chunk_buffer() if remaining else _NO_BUFFER
        while remaining:
            lent = read_view(min(remaining, CHUNK)) if read_view is not None else None
            n = readinto(buffer[:min(remaining, CHUNK)]) if lent is None else len(lent)
            if not n:
                raise CorruptBlob(f"archive truncated inside member {member.name!r}")
            view = buffer[:n] if lent is None else lent
            if on_data is not None:
                on_data(view)
            while view:
                view = view[os.write(fd, view):]
            remaining -= n
        _read_exact(self._stream, -member.size % BLOCK)
        self._pending = 0

    def _chunk_buffer(self) -> memoryview:
        """This stream's read buffer of CHUNK bytes, allocated on first use."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(CHUNK))
        return self._buffer

    def _copy_data_by_read(self, member: Member, fd: int, on_data: Callable[[memoryview], object] | None) -> None:
        remaining = member.size
        while remaining:
            chunk = self._stream.read(min(remaining, CHUNK))
            if not chunk:
                raise CorruptBlob(f"archive truncated inside member {member.name!r}")
            view = memoryview(chunk)
            if on_data is not None:
                on_data(view)
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
    """Every member of the stream, read to its end (so that a hashing reader sees it all)."""
    return list(TarStream(stream))
