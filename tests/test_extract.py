"""Safe extraction (design P7): every hostile archive is refused with a typed error before
anything is written; nothing lands outside the target, nothing new in it, and the staging
folder is gone afterwards. Honest archives land in place, overwriting only their own files."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.cas.tar.extract import Extraction
from casstore.cas.tar.read import TarStream, list_members
from casstore.cas.tar.rules import check_symlink, safe_name
from casstore.errors import CorruptBlob, TargetConflict, UnsafeArchive

# ---------------------------------------------------------------------------------------
# helpers


def member(name: str, kind=tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, linkname: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def file_(name, data=b"data", mode=0o644):
    return member(name, tarfile.REGTYPE, data, mode)


def symlink(name, target):
    return member(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name, target):
    return member(name, tarfile.LNKTYPE, linkname=target)


def tar_of(*members, fmt=tarfile.GNU_FORMAT) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def raw_block(name: bytes, kind: bytes, size: int, mode: int = 0o644, linkname: bytes = b"") -> bytes:
    """One GNU header block, built by hand with a valid checksum."""
    buf = bytearray(512)
    buf[0:len(name)] = name
    buf[100:108] = b"%07o\0" % mode
    buf[108:116] = b"0000000\0"
    buf[116:124] = b"0000000\0"
    buf[124:136] = b"%011o\0" % size
    buf[136:148] = b"%011o\0" % 0
    buf[148:156] = b" " * 8
    buf[156:157] = kind
    buf[157:157 + len(linkname)] = linkname
    buf[257:265] = b"ustar  \0"
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def snapshot(root) -> dict:
    """Everything below `root`: relative path -> ('f', bytes, mode) | ('l', target) | ('d',)."""
    root = os.fsencode(root)
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("l", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("d", st.st_mode & 0o777)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("f", f.read(), st.st_mode & 0o777)
    return out


@pytest.fixture
def area(tmp_path):
    """tmp_path/area holds `target` (with one file already there) and a file beside it."""
    root = tmp_path / "area"
    target = root / "target"
    target.mkdir(parents=True)
    (target / "existing.txt").write_bytes(b"was here")
    (root / "outside.txt").write_bytes(b"outside")
    return root


def extract(target, stream, members=None) -> list[str]:
    with Extraction(str(target), members) as ex:
        ex.stage(stream)
        return ex.publish()


def assert_refused(area, stream, error):
    """`error` is raised and nothing changed anywhere below `area` (target included)."""
    before = snapshot(area)
    with pytest.raises(error):
        extract(area / "target", stream)
    assert snapshot(area) == before


# ---------------------------------------------------------------------------------------
# hostile member names


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "./../evil.txt", "..", "a/b/../../../evil.txt"])
def test_member_name_climbing_out_is_refused(area, name):
    assert_refused(area, tar_of(file_(name)), UnsafeArchive)


def test_absolute_member_name_is_refused(area):
    absolute = str(area / "abs_evil.txt")
    stream = tar_of(file_(absolute))
    assert list_members(tar_of(file_(absolute)))[0].name.startswith(b"/")
    assert_refused(area, stream, UnsafeArchive)


def test_member_name_climbing_out_after_good_members_is_refused(area):
    assert_refused(area, tar_of(file_("ok.txt"), file_("sub/ok.txt"), file_("../evil.txt")), UnsafeArchive)


def test_gnu_long_name_climbing_out_is_refused(area):
    name = "../" + "x" * 150
    assert_refused(area, tar_of(file_(name), fmt=tarfile.GNU_FORMAT), UnsafeArchive)


def test_pax_path_climbing_out_is_refused(area):
    name = "../" + "y" * 150
    assert_refused(area, tar_of(file_(name), fmt=tarfile.PAX_FORMAT), UnsafeArchive)


def test_empty_member_name_is_refused(area):
    stream = io.BytesIO(raw_block(b"", b"0", 0) + bytes(1024))
    assert_refused(area, stream, UnsafeArchive)


# ---------------------------------------------------------------------------------------
# hostile links


@pytest.mark.parametrize("target", ["../../etc", "..", "../outside.txt", "sub/../../..", "a/b/../../../x"])
def test_symlink_pointing_out_is_refused(area, target):
    assert_refused(area, tar_of(symlink("l", target)), UnsafeArchive)


def test_nested_symlink_pointing_out_is_refused(area):
    assert_refused(area, tar_of(symlink("a/b/l", "../../../outside.txt")), UnsafeArchive)


@pytest.mark.parametrize("target", ["/etc", "/etc/passwd", "/"])
def test_absolute_symlink_is_refused(area, target):
    assert_refused(area, tar_of(symlink("l", target)), UnsafeArchive)


def test_symlink_to_dot_is_extracted(area):
    extract(area / "target", tar_of(symlink("l", "."), file_("f.txt", b"f")))
    assert os.readlink(area / "target/l") == "."


def test_member_written_through_a_symlink_member_is_refused(area):
    stream = tar_of(file_("sub/real.txt"), symlink("l", "sub"), file_("l/x", b"through"))
    assert_refused(area, stream, UnsafeArchive)


def test_member_written_through_a_symlink_to_dot_is_refused(area):
    assert_refused(area, tar_of(symlink("l", "."), file_("l/x", b"through")), UnsafeArchive)


@pytest.mark.parametrize("links", [
    # 'l -> .' stays inside, and 'l/..' looks like '.' once normalized as text; but on
    # disk 'esc' resolves through 'l' (the target itself) to the target's parent.
    [("l", "."), ("esc", "l/..")],
    # a/b/c -> ../.. is the target itself; d -> a/b/c/.. is its parent.
    [("a/b/c", "../.."), ("d", "a/b/c/..")],
], ids=["through_another_symlink_member", "through_a_nested_symlink_member"])
def test_symlink_pointing_out_through_a_symlink_member_is_refused(area, links):
    stream = tar_of(*(symlink(name, target) for name, target in links))
    before = snapshot(area)
    with pytest.raises(UnsafeArchive):
        extract(area / "target", stream)
    assert snapshot(area) == before


def test_symlink_pointing_out_through_a_symlink_already_in_the_target_is_refused(area):
    os.symlink(".", area / "target/here")
    assert_refused(area, tar_of(symlink("esc", "here/..")), UnsafeArchive)


def test_hardlink_to_a_name_not_in_the_archive_is_refused(area):
    assert_refused(area, tar_of(file_("a.txt"), hardlink("h", "existing.txt")), UnsafeArchive)


def test_hardlink_to_a_path_outside_is_refused(area):
    assert_refused(area, tar_of(hardlink("h", "../outside.txt")), UnsafeArchive)


def test_hardlink_to_an_absolute_path_is_refused(area):
    assert_refused(area, tar_of(hardlink("h", str(area / "outside.txt"))), UnsafeArchive)


def test_hardlink_to_a_symlink_member_is_refused(area):
    assert_refused(area, tar_of(file_("a.txt"), symlink("s", "a.txt"), hardlink("h", "s")), UnsafeArchive)


def test_hardlink_to_a_later_member_is_refused(area):
    assert_refused(area, tar_of(hardlink("h", "a.txt"), file_("a.txt")), UnsafeArchive)


def test_file_member_and_a_member_below_it_are_refused_before_anything_is_written(area):
    # 'd' is a file, so 'd/x' cannot be extracted: that must be found while validating,
    # not half-way through publishing (a.txt and d would already be in the target).
    stream = tar_of(file_("a.txt"), file_("d", b"file"), file_("d/x", b"below"))
    before = snapshot(area)
    with pytest.raises((UnsafeArchive, TargetConflict)):
        extract(area / "target", stream)
    assert snapshot(area) == before


# ---------------------------------------------------------------------------------------
# forbidden member types


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE],
                         ids=["char-device", "block-device", "fifo"])
def test_device_and_fifo_members_are_refused(area, kind):
    info, data = member("dev", kind)
    info.devmajor, info.devminor = 1, 3
    assert_refused(area, tar_of(file_("a.txt"), (info, data)), UnsafeArchive)


def test_unknown_member_type_is_refused(area):
    stream = io.BytesIO(raw_block(b"weird", b"Z", 0) + bytes(1024))
    assert_refused(area, stream, UnsafeArchive)


# ---------------------------------------------------------------------------------------
# oversized metadata


def test_gnu_longname_record_of_10_mb_is_refused_before_it_is_read(area):
    size = 10 * 2**20
    stream = io.BytesIO(raw_block(b"././@LongLink", b"L", size) + b"n" * size + bytes(512))
    before = snapshot(area)
    with pytest.raises(UnsafeArchive):
        extract(area / "target", stream)
    assert stream.tell() == 512
    assert snapshot(area) == before


@pytest.mark.parametrize("name, kind, filler", [(b"././@LongLink", b"K", b"n"), (b"PaxHeader", b"x", b"p")],
                         ids=["gnu-longlink", "pax-header"])
def test_metadata_record_of_10_mb_is_refused_before_it_is_read(area, name, kind, filler):
    size = 10 * 2**20
    stream = io.BytesIO(raw_block(name, kind, size) + filler * size + bytes(512))
    with pytest.raises(UnsafeArchive):
        extract(area / "target", stream)
    assert stream.tell() == 512


# ---------------------------------------------------------------------------------------
# damaged archives


def good_archive() -> bytes:
    return tar_of(file_("a.txt", b"A" * 2000), file_("b.txt", b"B" * 10)).getvalue()


def test_corrupt_header_checksum_raises_corrupt_blob(area):
    data = bytearray(good_archive())
    data[0] ^= 0x01  # first byte of the first member's name
    assert_refused(area, io.BytesIO(bytes(data)), CorruptBlob)


def test_corrupt_checksum_of_a_later_member_raises_corrupt_blob(area):
    data = bytearray(good_archive())
    second = 512 + 2048  # header of b.txt
    assert data[second:second + 5] == b"b.txt"
    data[second + 100] ^= 0x02  # its mode field
    assert_refused(area, io.BytesIO(bytes(data)), CorruptBlob)


def test_bad_number_field_raises_corrupt_blob(area):
    block = bytearray(raw_block(b"a.txt", b"0", 0))
    block[100:108] = b"zz99zz9\0"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    assert_refused(area, io.BytesIO(bytes(block) + bytes(1024)), CorruptBlob)


@pytest.mark.parametrize("cut", [0, 300, 512, 512 + 1000, 512 + 2048, 512 + 2048 + 512 + 5],
                         ids=["empty", "inside-header", "after-header", "inside-data", "between-members", "inside-last-data"])
def test_truncated_archive_raises_corrupt_blob(area, cut):
    assert_refused(area, io.BytesIO(good_archive()[:cut]), CorruptBlob)


def test_archive_without_end_of_archive_blocks_raises_corrupt_blob(area):
    data = good_archive()
    end = 512 + 2048 + 512 + 512  # both members, no zero blocks
    assert data[end:end + 1024] == bytes(1024)
    assert_refused(area, io.BytesIO(data[:end]), CorruptBlob)


def pax_archive(**records) -> io.BytesIO:
    info, data = file_("a.txt", b"1")
    info.pax_headers = records
    return tar_of((info, data), fmt=tarfile.PAX_FORMAT)


def test_pax_size_that_is_not_a_number_raises_corrupt_blob(area):
    assert_refused(area, pax_archive(size="abc"), CorruptBlob)


def test_negative_pax_size_raises_corrupt_blob(area):
    assert_refused(area, pax_archive(size="-5"), CorruptBlob)


def test_malformed_pax_record_raises_corrupt_blob(area):
    body = b"zz path=x\n"
    stream = io.BytesIO(raw_block(b"PaxHeader", b"x", len(body)) + body + bytes(512 - len(body))
                        + raw_block(b"a.txt", b"0", 0) + bytes(1024))
    assert_refused(area, stream, CorruptBlob)


# ---------------------------------------------------------------------------------------
# the target that is already there


def test_existing_symlink_folder_in_the_target_is_not_written_through(area):
    (area / "elsewhere").mkdir()
    os.symlink(area / "elsewhere", area / "target/sub")
    before = snapshot(area)
    with pytest.raises(TargetConflict):
        extract(area / "target", tar_of(file_("sub/x.txt", b"through")))
    assert snapshot(area / "elsewhere") == {}
    assert snapshot(area) == before


def test_existing_symlink_at_a_member_path_is_replaced_not_followed(area):
    os.symlink(area / "outside.txt", area / "target/f.txt")
    extract(area / "target", tar_of(file_("f.txt", b"new")))
    assert not os.path.islink(area / "target/f.txt")
    assert (area / "target/f.txt").read_bytes() == b"new"
    assert (area / "outside.txt").read_bytes() == b"outside"


def test_existing_file_in_the_target_is_overwritten_and_others_left_alone(area):
    target = area / "target"
    (target / "other.txt").write_bytes(b"other")
    (target / "sub").mkdir()
    (target / "sub/keep.txt").write_bytes(b"keep")
    extract(target, tar_of(file_("existing.txt", b"replaced"), file_("sub/new.txt", b"new")))
    assert (target / "existing.txt").read_bytes() == b"replaced"
    assert (target / "other.txt").read_bytes() == b"other"
    assert (target / "sub/keep.txt").read_bytes() == b"keep"
    assert (target / "sub/new.txt").read_bytes() == b"new"


def test_staging_folder_is_gone_after_a_successful_extraction(area):
    target = area / "target"
    extract(target, tar_of(file_("a.txt"), file_("d/b.txt")))
    assert sorted(os.listdir(target)) == ["a.txt", "d", "existing.txt"]


def test_publish_returns_the_extracted_member_names(area):
    names = extract(area / "target", tar_of(file_("a.txt"), file_("d/b.txt"), symlink("l", "a.txt")))
    assert names == ["a.txt", "d/b.txt", "l"]


# ---------------------------------------------------------------------------------------
# what comes back


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755, 0o400, 0o700])
def test_permission_bits_come_back_as_stored(area, mode):
    extract(area / "target", tar_of(file_("f", b"x", mode)))
    assert os.stat(area / "target/f").st_mode & 0o7777 == mode


def test_setuid_and_sticky_bits_are_not_restored(area):
    extract(area / "target", tar_of(file_("f", b"x", 0o6755)))
    assert os.stat(area / "target/f").st_mode & 0o7777 == 0o755


def test_file_contents_come_back(area):
    big = os.urandom(3 * 2**20 + 17)
    extract(area / "target", tar_of(file_("big.bin", big), file_("empty", b"")))
    assert (area / "target/big.bin").read_bytes() == big
    assert (area / "target/empty").read_bytes() == b""


def test_hardlink_member_comes_back_as_a_hardlink(area):
    extract(area / "target", tar_of(file_("a.txt", b"shared"), hardlink("b.txt", "a.txt")))
    assert os.path.samefile(area / "target/a.txt", area / "target/b.txt")
    assert (area / "target/b.txt").read_bytes() == b"shared"


def test_symlink_member_inside_comes_back_as_a_symlink(area):
    extract(area / "target", tar_of(file_("d/a.txt", b"x"), symlink("e/l", "../d/a.txt")))
    assert os.readlink(area / "target/e/l") == "../d/a.txt"
    assert (area / "target/e/l").read_bytes() == b"x"


def test_members_argument_extracts_only_those(area):
    target = area / "target"
    stream = tar_of(file_("a.txt", b"a"), file_("d/b.txt", b"b"), file_("d/c.txt", b"c"))
    names = extract(target, stream, members=["d/b.txt"])
    assert names == ["d/b.txt"]
    assert sorted(os.listdir(target)) == ["d", "existing.txt"]
    assert os.listdir(target / "d") == ["b.txt"]


def test_members_argument_with_a_hardlink_whose_source_is_not_selected(area):
    target = area / "target"
    names = extract(target, tar_of(file_("a.txt", b"shared"), hardlink("b.txt", "a.txt")), members=["b.txt"])
    assert names == ["b.txt"]
    assert (target / "b.txt").read_bytes() == b"shared"
    assert not (target / "a.txt").exists()


def test_members_argument_climbing_out_is_refused(area):
    with pytest.raises(UnsafeArchive):
        Extraction(str(area / "target"), members=["../outside.txt"])


def test_archive_with_pax_and_gnu_headers_is_read(area):
    for i, fmt in enumerate([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]):
        target = area / f"t{i}"
        name = "p" * 90 + "/" + "q" * 90
        extract(target, tar_of(file_(name, b"long"), fmt=fmt))
        assert (target / name).read_bytes() == b"long"


# ---------------------------------------------------------------------------------------
# the validators themselves


@pytest.mark.parametrize("raw, expected", [(b"a/b", "a/b"), (b"./a//b/", "a/b"), (b"a/./b", "a/b")])
def test_safe_name_normalizes_harmless_names(raw, expected):
    assert safe_name(raw) == expected


@pytest.mark.parametrize("raw", [b"", b".", b"/", b"/a", b"..", b"../a", b"a/../../b", b"a\0b"])
def test_safe_name_refuses_escaping_names(raw):
    with pytest.raises(UnsafeArchive):
        safe_name(raw)


@pytest.mark.parametrize("name, target", [("l", "/x"), ("l", ".."), ("a/l", "../.."), ("l", ""), ("l", "a\0b")])
def test_check_symlink_refuses_targets_out(name, target):
    with pytest.raises(UnsafeArchive):
        check_symlink(name, target.encode())


def test_tarstream_lists_members_with_raw_names():
    stream = io.BytesIO(raw_block(b"caf\xe9", b"0", 3) + b"abc" + bytes(509) + bytes(1024))
    members = list(TarStream(stream))
    assert [(m.name, m.size) for m in members] == [(b"caf\xe9", 3)]


# ---------------------------------------------------------------------------------------
# header checksums: the unsigned sum is checked first, the signed one still accepted


def _with_checksum(block: bytes, value: int) -> bytes:
    out = bytearray(block)
    out[148:156] = b"%06o\0 " % value
    return bytes(out)


def test_header_with_high_bytes_and_a_signed_checksum_is_accepted():
    from casstore.cas.tar.read import _check_checksum

    block = bytearray(raw_block("caf\xe9-\xff.txt".encode("latin-1"), b"0", 0))
    block[148:156] = b" " * 8
    unsigned = sum(block)
    signed = unsigned - 2 * sum(b for b in block if b > 127)
    assert signed != unsigned
    for value in (unsigned, signed):
        _check_checksum(_with_checksum(bytes(block), value))
    for value in (unsigned + 1, signed - 1, 0):
        with pytest.raises(CorruptBlob):
            _check_checksum(_with_checksum(bytes(block), value))


# ---------------------------------------------------------------------------------------
# copy_data: readinto into one buffer, or read() where the stream has no readinto


class ReadOnly:
    """A stream with read() only."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(n)


class Trickle(io.RawIOBase):
    """A stream whose readinto gives at most 1000 bytes a call."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        with memoryview(b) as view:
            return self._f.readinto(view[:1000])


@pytest.mark.parametrize("wrap", [io.BytesIO, ReadOnly, Trickle], ids=["readinto", "read-only", "trickle"])
def test_staged_files_are_the_same_whatever_the_stream_offers(tmp_path, wrap):
    big = os.urandom(3 * 2**20 + 7)
    members = [file_("a.bin", big, 0o640), file_("e", b""), file_("s.txt", b"small"), file_("z", big[:513])]
    data = tar_of(*members).getvalue()
    target = tmp_path / "t"
    with Extraction(str(target)) as ex:
        ex.stage(wrap(data))
        ex.publish()
    assert (target / "a.bin").read_bytes() == big
    assert (target / "e").read_bytes() == b""
    assert (target / "s.txt").read_bytes() == b"small"
    assert (target / "z").read_bytes() == big[:513]
    assert (target / "a.bin").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("wrap", [io.BytesIO, ReadOnly, Trickle], ids=["readinto", "read-only", "trickle"])
def test_truncated_member_data_is_corrupt_whatever_the_stream_offers(tmp_path, wrap):
    data = tar_of(file_("a.bin", b"x" * 5000)).getvalue()[:512 + 3000]
    with Extraction(str(tmp_path / "t")) as ex, pytest.raises(CorruptBlob):
        ex.stage(wrap(data))


# ---------------------------------------------------------------------------------------
# malformed headers: every one is CorruptBlob or UnsafeArchive, never another exception


def raw_pax(body: bytes) -> bytes:
    """A PAX extended header carrying `body` as it is (records not checked)."""
    return raw_block(b"PaxHeader", b"x", len(body)) + body + bytes(-len(body) % 512)


def pax_record(key: bytes, value: bytes) -> bytes:
    rest = b" " + key + b"=" + value + b"\n"
    n = len(rest) + len(str(len(rest)))
    n += len(str(n)) - len(str(len(rest)))
    return b"%d%s" % (n, rest)


def test_pax_size_of_5000_digits_raises_corrupt_blob(area):
    stream = io.BytesIO(raw_pax(pax_record(b"size", b"1" * 5000)) + raw_block(b"a.txt", b"0", 0) + bytes(1024))
    assert_refused(area, stream, CorruptBlob)


@pytest.mark.parametrize("body", [b"9" * 5000 + b" path=x\n", b"99 path=x\n", b"3 path=x\n",
                                  b"10 path=xy!", b"+9 path=\n", b"9 pathx\n\n", b" 9 path=\n", b"10 =x\n\n\n"],
                         ids=["length-of-5000-digits", "length-past-the-end", "length-short-of-the-key",
                              "no-newline", "signed-length", "no-equals-sign", "leading-space", "empty-key"])
def test_malformed_pax_record_length_raises_corrupt_blob(area, body):
    stream = io.BytesIO(raw_pax(body) + raw_block(b"a.txt", b"0", 0) + bytes(1024))
    assert_refused(area, stream, CorruptBlob)


@pytest.mark.parametrize("field", [b"-0000000001\0", b"0000000_001\0", b"+0000000001\0", b"\x81" + bytes(11)],
                         ids=["minus-sign", "underscore", "plus-sign", "base-256-with-a-stray-high-byte"])
@pytest.mark.parametrize("kind", [b"0", b"L", b"x"], ids=["file", "gnu-longname", "pax"])
def test_size_field_that_is_not_plain_octal_or_base_256_raises_corrupt_blob(area, field, kind):
    block = bytearray(raw_block(b"a.txt", kind, 0))
    block[124:136] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    stream = io.BytesIO(bytes(block) + b"x" * 512 + raw_block(b"b.txt", b"0", 0) + bytes(1024))
    assert_refused(area, stream, CorruptBlob)


def test_pax_path_that_is_not_utf8_is_extracted_under_its_raw_bytes(area):
    name = b"caf\xe9-" + b"n" * 120
    stream = io.BytesIO(raw_pax(pax_record(b"path", name)) + raw_block(b"ignored", b"0", 2) + b"ok"
                        + bytes(510) + bytes(1024))
    extract(area / "target", stream)
    assert (area / "target" / os.fsdecode(name)).read_bytes() == b"ok"


def _sample_archive() -> bytes:
    """Files, a folder, links, a PAX header with path and size records, a GNU longname."""
    sized, data = file_("s.txt", b"S" * 30)
    sized.pax_headers = {"size": "30"}
    pax = tar_of(file_("a.txt", b"A" * 700), file_("d/" + "n" * 120 + "/b.txt", b"B" * 30, 0o755),
                 symlink("d/l", "../a.txt"), hardlink("h.txt", "a.txt"), member("e", tarfile.DIRTYPE, mode=0o755),
                 (sized, data), fmt=tarfile.PAX_FORMAT)
    with tarfile.open(fileobj=pax) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + last.size + (-last.size % 512)
    return pax.getvalue()[:end] + tar_of(file_("z" * 150, b"Z")).getvalue()


SAMPLE = _sample_archive()
SAMPLE_HEADERS = [i for i in range(0, len(SAMPLE), 512) if SAMPLE[i:i + 512] != bytes(512)
                  and SAMPLE[i + 257:i + 262] == b"ustar"]
TAR_BYTES = st.one_of(st.integers(0, 255), st.sampled_from(b"-+_ 0789\0\x80\xff\n=x"))


def _fix_checksums(archive: bytearray) -> None:
    """Give every header block its right checksum again, so that mutations reach the parser."""
    for i in SAMPLE_HEADERS:
        if i + 512 <= len(archive):
            archive[i + 148:i + 156] = b" " * 8
            archive[i + 148:i + 156] = b"%06o\0 " % sum(archive[i:i + 512])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_byte_mutation_extracts_or_raises_a_typed_error_with_the_target_untouched(tmp_path, data):
    archive = bytearray(SAMPLE)
    for _ in range(data.draw(st.integers(1, 4), "mutations")):
        pos = data.draw(st.integers(0, len(archive) - 1), "position")
        archive[pos] = data.draw(TAR_BYTES, "byte")
    if data.draw(st.booleans(), "fix checksums"):
        _fix_checksums(archive)
    if data.draw(st.booleans(), "truncate"):
        archive = archive[:data.draw(st.integers(0, len(archive)), "cut")]
    root = tmp_path / f"m{len(os.listdir(tmp_path))}"
    target = root / "target"
    target.mkdir(parents=True)
    (target / "existing.txt").write_bytes(b"was here")
    (root / "outside.txt").write_bytes(b"outside")
    before = snapshot(root)
    try:
        names = extract(target, io.BytesIO(bytes(archive)))
    except (CorruptBlob, UnsafeArchive):
        assert snapshot(root) == before
        return
    after = snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith(b"target")} == \
        {k: v for k, v in before.items() if not k.startswith(b"target")}
    landed = {os.fsencode(n) for n in names} | {b"existing.txt"}
    for rel in (os.path.relpath(k, b"target") for k in after if k.startswith(b"target/")):
        assert rel in landed or any(n.startswith(rel + b"/") for n in landed), rel


PAX_VALUES = st.one_of(st.binary(max_size=300), st.text("0123456789", min_size=1, max_size=6000).map(str.encode),
                       st.sampled_from([b"../x", b"/x", b"abcdefgh/" * 460, b"n" * 300, b"a\0b", b"-1", b"."]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.tuples(st.sampled_from([b"size", b"path", b"linkpath", b"mtime", b"uid"]), PAX_VALUES),
                        min_size=1, max_size=3),
       kind=st.sampled_from([b"0", b"2", b"5"]))
def test_any_pax_record_extracts_or_raises_a_typed_error_with_the_target_untouched(tmp_path, records, kind):
    body = b"".join(pax_record(k, v) for k, v in records)
    data = b"mm" + bytes(510) if kind == b"0" else b""
    stream = raw_block(b"ok.txt", b"0", 2) + b"ok" + bytes(510) + raw_pax(body) \
        + raw_block(b"m", kind, 2 if data else 0, linkname=b"ok.txt") + data
    root = tmp_path / f"p{len(os.listdir(tmp_path))}"
    (root / "target").mkdir(parents=True)
    before = snapshot(root)
    try:
        names = extract(root / "target", io.BytesIO(stream + bytes(1024)))
    except (CorruptBlob, UnsafeArchive):
        assert snapshot(root) == before
        return
    assert names[0] == "ok.txt" and len(names) == 2


# ---------------------------------------------------------------------------------------
# publishing is all or nothing: every conflict is found before the first rename


@pytest.mark.parametrize("first", [file_("data/x", b"file"), symlink("data/x", "ok.txt")], ids=["file", "symlink"])
def test_a_member_then_a_folder_member_of_the_same_name_is_refused_before_anything_is_written(area, first):
    folder = member("data/x", tarfile.DIRTYPE, mode=0o755)
    assert_refused(area, tar_of(file_("data/ok.txt", b"ok"), first, folder), UnsafeArchive)


def test_a_name_component_of_300_bytes_is_refused_before_anything_is_written(area):
    stream = tar_of(file_("data/ok.txt", b"ok"), file_("data/" + "n" * 300, b"long"), fmt=tarfile.PAX_FORMAT)
    assert_refused(area, stream, UnsafeArchive)


def test_a_path_longer_than_path_max_is_refused_before_anything_is_written(area):
    deep = "/".join(["d" * 200] * 21) + "/f"
    assert len(deep) > 4096
    stream = tar_of(file_("data/ok.txt", b"ok"), file_(deep, b"deep"), fmt=tarfile.PAX_FORMAT)
    assert_refused(area, stream, UnsafeArchive)


def test_a_path_that_only_the_target_makes_too_long_is_refused_before_anything_is_written(area):
    prefix = len(os.fsencode(area / "target")) + 1
    deep = "/".join(["d" * 200] * 20)
    deep += "/" + "f" * (4090 - prefix - len(deep))
    assert len(deep) < 4096 < prefix + len(deep) + 10
    deep += "x" * 10
    stream = tar_of(file_("data/ok.txt", b"ok"), file_(deep, b"deep"), fmt=tarfile.PAX_FORMAT)
    assert_refused(area, stream, UnsafeArchive)


def test_a_symlink_target_longer_than_the_file_system_takes_is_refused(area):
    stream = tar_of(file_("data/ok.txt", b"ok"), symlink("data/l", "a/" * 2100), fmt=tarfile.PAX_FORMAT)
    assert_refused(area, stream, UnsafeArchive)


def test_a_folder_member_where_the_target_has_a_file_is_refused_before_anything_is_written(area):
    stream = tar_of(file_("data/ok.txt", b"ok"), member("existing.txt", tarfile.DIRTYPE, mode=0o755))
    assert_refused(area, stream, TargetConflict)


def test_a_folder_member_where_the_target_has_a_symlink_is_refused_before_anything_is_written(area):
    os.symlink("existing.txt", area / "target/data")
    stream = tar_of(file_("a.txt", b"a"), member("data", tarfile.DIRTYPE, mode=0o755))
    assert_refused(area, stream, TargetConflict)
