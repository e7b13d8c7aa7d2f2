"""The header format of `casstore-tar-1` (docs/tar-format.md): block sizes, member kinds, the
five fields of a member, and the bytes of its header block(s).

Canonical means the same content always gives the same bytes: uid/gid 0, owner names
`root`, mtime 0, permission bits as on disk, GNU long-name records for names over 100
bytes, base-256 sizes for files of 8 GiB and more. The writer (`write.py`), the reader
(`read.py`) and the member rules (`rules.py`) all speak these terms."""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_NAME = "casstore-tar-1"
BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
"""The piece size in which member data is read and written (not part of the format)."""
MTIME = 0
OWNER = b"root"
GNU_MAGIC = b"ustar  \0"
LONGLINK = b"././@LongLink"
NAME_FIELD = 100
NAME_MAX = 255  # bytes of one path component (Linux)
PATH_MAX = 4096  # bytes of a path with its terminating NUL (Linux): also a symlink's target

FILE, HARDLINK, SYMLINK, DIRECTORY = b"0", b"1", b"2", b"5"
FILE_KINDS = frozenset({b"0", b"\0", b"7"})
"""The type flags a reader takes as a regular file: casstore writes "0"; old tars "\\0",
contiguous files "7"."""


@dataclass(frozen=True, slots=True)
class Member:
    """A member as its header describes it (names are raw bytes): what the reader yields,
    what the member rules judge. `size` is the data's length, 0 for links and folders."""

    name: bytes
    kind: bytes
    mode: int
    size: int
    linkname: bytes


def name_length_problem(name: bytes, under: bytes = b"", name_max: int = NAME_MAX) -> str | None:
    """Why a file system would refuse path `name` below folder `under` (a component over
    `name_max` bytes, or a whole path of PATH_MAX bytes or more), or None if it would not."""
    longest = max(name.split(b"/"), key=len)
    if len(longest) > name_max:
        return f"has a name component of {len(longest)} bytes: the file system takes at most {name_max}"
    full = len(under.rstrip(b"/") + b"/" + name) if under else len(name)
    if full >= PATH_MAX:
        return f"would be a path of {full} bytes: the file system takes at most {PATH_MAX - 1}"
    return None


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
    """The zeros that pad `size` bytes of data to a whole block."""
    return b"\0" * (-size % BLOCK)


def end_of_archive(count: int) -> bytes:
    """What follows the last member of an archive of `count` bytes so far: two zero blocks,
    then zeros to a whole record."""
    return bytes(2 * BLOCK + (-(count + 2 * BLOCK) % RECORD))
