"""Canonical archives (design P1, P2): `scan` + `write_tar` give the same TAR bytes for the
same content, whatever the order of creation, the mtimes or the process, and GNU tar and
Python's tarfile read them."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from helpers import write

from casstore.cas.backends.layout import blob_key
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cas.digest import digest_bytes
from casstore.cas.tar import header as tar_header
from casstore.cas.tar.extract import Extraction
from casstore.cas.tar.header import FILE, HARDLINK, SYMLINK, header
from casstore.cas.tar.read import list_members
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes, write_tar
from casstore.errors import InvalidInput

# ---------------------------------------------------------------------------------------
# helpers


def archive(src, arc_dir: str = ".", **kw) -> bytes:
    return tar_bytes(scan(str(src), arc_dir, **kw))


def digest_of(src, arc_dir: str = ".", **kw) -> str:
    return digest_bytes(archive(src, arc_dir, **kw))


def read_tar(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def by_name(data: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in read_tar(data)}


def tar_cli(*args, cwd=None) -> str:
    proc = subprocess.run(["tar", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---------------------------------------------------------------------------------------
# hypothesis: trees of files and symlinks

SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=5)
RELPATH = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o664])


def _folders(path: str) -> set[str]:
    parts = path.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def _consistent(paths) -> bool:
    """No path is also a folder of another path."""
    folders = set().union(*(_folders(p) for p in paths)) if paths else set()
    return not (set(paths) & folders)


@st.composite
def trees(draw, min_files: int = 1, max_links: int = 3):
    """(files: {relpath: (bytes, mode)}, links: {relpath: target relpath of a file})."""
    files = draw(st.dictionaries(RELPATH, st.tuples(st.binary(max_size=700), MODES),
                                 min_size=min_files, max_size=7))
    names = sorted(files)
    links = draw(st.dictionaries(RELPATH, st.sampled_from(names), max_size=max_links))
    assume(not (set(files) & set(links)))
    assume(_consistent(list(files) + list(links)))
    return files, links


def link_target(link: str, target: str) -> str:
    """The relative symlink text that leads from `link` to `target` (both tree-relative)."""
    return posixpath.relpath(target, posixpath.dirname(link) or ".")


def build(root: str, tree, order=None, mtime: int | list[int] = 1_000_000) -> str:
    """Create `tree` under `root`, items in `order`, with the given mtime(s)."""
    files, links = tree
    items = list(order) if order is not None else sorted(list(files) + list(links))
    os.makedirs(root, exist_ok=True)
    for i, name in enumerate(items):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t = mtime[i % len(mtime)] if isinstance(mtime, list) else mtime
        if name in files:
            data, mode = files[name]
            write(path, data, mode)
            os.utime(path, (t, t))
        else:
            os.symlink(link_target(name, links[name]), path)
            os.utime(path, (t, t), follow_symlinks=False)
    return root


def tree_digest(tree, **kw) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return digest_of(build(os.path.join(tmp, "src"), tree, **kw))


HSETTINGS = settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


@HSETTINGS
@given(data=st.data(), tree=trees())
def test_same_content_created_in_another_order_with_other_mtimes_gives_identical_bytes(data, tree):
    files, links = tree
    order = data.draw(st.permutations(sorted(list(files) + list(links))))
    mtimes = data.draw(st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=5))
    with tempfile.TemporaryDirectory() as tmp:
        a = build(os.path.join(tmp, "a"), tree)
        b = build(os.path.join(tmp, "b"), tree, order=order, mtime=mtimes)
        os.utime(b, (5, 5))
        assert archive(a) == archive(b)
        assert digest_of(a) == digest_of(b)


@HSETTINGS
@given(data=st.data(), tree=trees())
def test_changing_one_byte_of_a_file_changes_the_digest(data, tree):
    files, links = tree
    name = data.draw(st.sampled_from(sorted(files)))
    content, mode = files[name]
    if content:
        i = data.draw(st.integers(0, len(content) - 1))
        changed = content[:i] + bytes([content[i] ^ 0x01]) + content[i + 1:]
    else:
        changed = b"\0"
    other = ({**files, name: (changed, mode)}, links)
    assert tree_digest(tree) != tree_digest(other)


@HSETTINGS
@given(data=st.data(), tree=trees(max_links=0))
def test_changing_one_name_changes_the_digest(data, tree):
    files, links = tree
    name = data.draw(st.sampled_from(sorted(files)))
    suffix = data.draw(SEGMENT)
    new_name = name + suffix
    renamed = {k: v for k, v in files.items() if k != name}
    renamed[new_name] = files[name]
    assume(new_name not in files and _consistent(list(renamed)))
    assert tree_digest(tree) != tree_digest((renamed, links))


@HSETTINGS
@given(data=st.data(), tree=trees())
def test_changing_one_permission_bit_changes_the_digest(data, tree):
    files, links = tree
    name = data.draw(st.sampled_from(sorted(files)))
    bit = data.draw(st.sampled_from([0o400, 0o200, 0o100, 0o040, 0o020, 0o010, 0o004, 0o002, 0o001]))
    content, mode = files[name]
    other = ({**files, name: (content, mode ^ bit)}, links)
    assert tree_digest(tree) != tree_digest(other)


@HSETTINGS
@given(data=st.data(), tree=trees(min_files=2, max_links=3))
def test_changing_one_symlink_target_changes_the_digest(data, tree):
    files, links = tree
    assume(links)
    link = data.draw(st.sampled_from(sorted(links)))
    new_target = data.draw(st.sampled_from(sorted(set(files) - {links[link]})))
    other = (files, {**links, link: new_target})
    assert tree_digest(tree) != tree_digest(other)


def test_example_mode_0644_and_0600_give_different_digests(tmp_path):
    write(str(tmp_path / "a/f"), b"same", 0o644)
    write(str(tmp_path / "b/f"), b"same", 0o600)
    assert digest_of(tmp_path / "a") != digest_of(tmp_path / "b")


def test_another_pythonhashseed_gives_the_same_bytes(tmp_path):
    src = tmp_path / "src"
    for i in range(60):
        write(str(src / f"d{i % 7}" / f"file-{i}.txt"), f"content {i}".encode(), 0o644)
    script = ("import sys; from casstore.cas.tar.scan import scan; from casstore.cas.tar.write import tar_bytes; "
              "from casstore.cas.digest import digest_bytes; "
              "print(digest_bytes(tar_bytes(scan(sys.argv[1], 'data'))))")
    expected = digest_of(src, "data")
    for seed in ("0", "1", "4242"):
        proc = subprocess.run([sys.executable, "-c", script, str(src)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected


def test_a_copy_of_the_folder_gives_the_same_bytes(tmp_path):
    src = tmp_path / "src"
    write(str(src / "a.txt"), b"a", 0o600)
    write(str(src / "sub/b.txt"), b"b", 0o755)
    os.symlink("../a.txt", src / "sub/l")
    shutil.copytree(src, tmp_path / "copy", symlinks=True)
    assert archive(src) == archive(tmp_path / "copy")


# ---------------------------------------------------------------------------------------
# arc_dir and member names


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"), b"alpha", 0o644)
    write(str(root / "sub/b.txt"), b"beta", 0o600)
    return root


def test_arc_dir_is_part_of_the_content(src):
    assert digest_of(src, "data") != digest_of(src, "other")
    assert digest_of(src, "data") != digest_of(src, ".")


def test_equivalent_arc_dirs_give_the_same_bytes(src):
    assert archive(src, "data") == archive(src, "./data/") == archive(src, "data//x/..")


@pytest.mark.parametrize("arc_dir", ["/abs", "/", "..", "../up", "a/../../b", "./../x"])
def test_absolute_or_climbing_arc_dir_raises_invalid_input(src, arc_dir):
    with pytest.raises(InvalidInput):
        scan(str(src), arc_dir)


@pytest.mark.parametrize("arc_dir, expected", [
    (".", ["a.txt", "sub/b.txt"]),
    ("data", ["data/a.txt", "data/sub/b.txt"]),
    ("./data//nested/", ["data/nested/a.txt", "data/nested/sub/b.txt"]),
    ("x/../y", ["y/a.txt", "y/sub/b.txt"]),
])
def test_member_names_are_normpath_of_arc_dir_and_relpath(src, arc_dir, expected):
    assert [m.name for m in read_tar(archive(src, arc_dir))] == expected


def test_members_are_sorted_bytewise_by_name(tmp_path):
    root = tmp_path / "src"
    for name in ["b", "B", "a-b", "a/b", "a_b", "ab", "Z"]:
        write(str(root / name), name.encode())
    names = [m.name.encode() for m in read_tar(archive(root))]
    assert names == sorted(names)


def test_owner_is_root_uid_gid_0_and_mtime_0(src):
    os.utime(src / "a.txt", (123456789, 123456789))
    for m in read_tar(archive(src, "data")):
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "root", "root", 0), m.name


def test_permission_bits_are_kept(src):
    members = by_name(archive(src))
    assert members["a.txt"].mode == 0o644
    assert members["sub/b.txt"].mode == 0o600


def test_no_folder_entries_are_written(src):
    assert all(not m.isdir() for m in read_tar(archive(src)))


def test_archive_is_a_whole_number_of_10240_byte_records(src):
    assert len(archive(src)) % 10240 == 0


def test_file_content_round_trips_through_tarfile(src):
    with tarfile.open(fileobj=io.BytesIO(archive(src, "data"))) as tf:
        assert tf.extractfile("data/a.txt").read() == b"alpha"
        assert tf.extractfile("data/sub/b.txt").read() == b"beta"


# ---------------------------------------------------------------------------------------
# GNU tar reads them


@pytest.fixture
def rich_src(tmp_path):
    root = tmp_path / "rich"
    write(str(root / "a.txt"), b"alpha\n", 0o644)
    write(str(root / "secret"), b"s3cret\n", 0o600)
    write(str(root / "bin/run.sh"), b"#!/bin/sh\n", 0o755)
    long_name = "d" * 60 + "/" + "f" * 80 + ".txt"
    write(str(root / long_name), b"long\n", 0o644)
    os.link(root / "a.txt", root / "hard.txt")
    os.symlink("a.txt", root / "link")
    return root, long_name


def test_gnu_tar_lists_a_plain_archive(tmp_path, rich_src):
    root, long_name = rich_src
    path = tmp_path / "x.tar"
    path.write_bytes(archive(root, "data"))
    listing = tar_cli("-tvf", str(path))
    assert f"data/{long_name}" in listing
    assert "data/hard.txt link to data/a.txt" in listing
    assert "data/link -> a.txt" in listing
    assert "root/root" in listing
    assert sorted(tar_cli("-tf", str(path)).split()) == sorted(
        ["data/a.txt", "data/secret", "data/bin/run.sh", f"data/{long_name}", "data/hard.txt", "data/link"])


def _check_extracted(out, long_name):
    assert (out / "data/a.txt").read_bytes() == b"alpha\n"
    assert (out / "data/secret").stat().st_mode & 0o777 == 0o600
    assert (out / "data/bin/run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "data" / long_name).read_bytes() == b"long\n"
    assert os.path.samefile(out / "data/hard.txt", out / "data/a.txt")
    assert os.readlink(out / "data/link") == "a.txt"


def test_gnu_tar_extracts_a_plain_archive(tmp_path, rich_src):
    root, long_name = rich_src
    path = tmp_path / "x.tar"
    path.write_bytes(archive(root, "data"))
    out = tmp_path / "out"
    out.mkdir()
    tar_cli("-xf", str(path), "-C", str(out))
    _check_extracted(out, long_name)


def test_gnu_tar_extracts_a_zstd_blob_from_the_datastore(tmp_path, rich_src):
    root, long_name = rich_src
    store = LocalBlobStore(str(tmp_path / "ds"))
    cs = ContentStore(store)
    with cs.lease() as lease:
        info = cs.put_dir(str(root), "data", lease=lease, codec="zstd")
    assert info.codec == "zstd"
    blob_path = os.path.join(store.root, *blob_key(info.blob_id, "zstd").split("/"))
    assert info.blob_id == digest_of(root, "data")
    out = tmp_path / "out"
    out.mkdir()
    tar_cli("--zstd", "-xf", blob_path, "-C", str(out))
    _check_extracted(out, long_name)


# ---------------------------------------------------------------------------------------
# what scan stores


def test_names_over_100_bytes_are_kept_whole(tmp_path):
    root = tmp_path / "src"
    name = "n" * 150
    nested = "a" * 90 + "/" + "b" * 90
    write(str(root / name), b"1")
    write(str(root / nested), b"2")
    members = by_name(archive(root, "data"))
    assert members[f"data/{name}"].size == 1
    assert members[f"data/{nested}"].size == 1


def test_symlink_target_over_100_bytes_is_kept_whole(tmp_path):
    root = tmp_path / "src"
    target = "t" * 120
    write(str(root / target), b"x")
    os.symlink(target, root / "l")
    members = by_name(archive(root))
    assert members["l"].issym() and members["l"].linkname == target


def test_non_utf8_names_are_stored_as_raw_bytes(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"caf\xe9"), "wb") as f:
        f.write(b"latin-1")
    data = archive(root)
    assert [m.name for m in list_members(io.BytesIO(data))] == [b"caf\xe9"]
    assert data[:100].rstrip(b"\0") == b"caf\xe9"


def test_non_utf8_names_round_trip_through_extraction(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"caf\xe9"), "wb") as f:
        f.write(b"latin-1")
    target = tmp_path / "out"
    with Extraction(str(target)) as ex:
        ex.stage(io.BytesIO(archive(root)))
        ex.publish()
    with open(os.path.join(os.fsencode(target), b"caf\xe9"), "rb") as f:
        assert f.read() == b"latin-1"


def test_second_name_of_a_hardlinked_file_is_a_hardlink_member(tmp_path):
    root = tmp_path / "src"
    write(str(root / "b_first.txt"), b"shared", 0o640)
    os.link(root / "b_first.txt", root / "a_second.txt")
    entries = scan(str(root))
    assert [(e.name, e.kind) for e in entries] == [(b"a_second.txt", FILE), (b"b_first.txt", HARDLINK)]
    assert entries[1].linkname == b"a_second.txt"
    members = by_name(archive(root))
    assert members["a_second.txt"].isreg() and members["a_second.txt"].size == 6
    assert members["b_first.txt"].islnk() and members["b_first.txt"].linkname == "a_second.txt"


def test_symlink_inside_the_tree_is_kept_as_a_symlink(tmp_path):
    root = tmp_path / "src"
    write(str(root / "data/file.txt"), b"x")
    os.makedirs(root / "links")
    os.symlink("../data/file.txt", root / "links/l")
    members = by_name(archive(root))
    assert members["links/l"].issym()
    assert members["links/l"].linkname == "../data/file.txt"


def test_absolute_symlink_is_stored_as_the_file_content(tmp_path):
    outside = write(str(tmp_path / "outside.txt"), b"from outside", 0o640)
    root = tmp_path / "src"
    root.mkdir()
    os.symlink(outside, root / "abs")
    members = by_name(archive(root))
    assert members["abs"].isreg()
    assert members["abs"].mode == 0o640
    with tarfile.open(fileobj=io.BytesIO(archive(root))) as tf:
        assert tf.extractfile("abs").read() == b"from outside"


def test_absolute_symlink_to_a_file_inside_is_stored_as_file_content(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"), b"inside")
    os.symlink(str(root / "a.txt"), root / "abs")
    members = by_name(archive(root))
    assert members["abs"].isreg() and members["abs"].size == 6


def test_symlink_leading_out_of_src_dir_is_stored_as_the_file_content(tmp_path):
    write(str(tmp_path / "outside.txt"), b"outer")
    root = tmp_path / "src"
    os.makedirs(root / "sub")
    os.symlink("../../outside.txt", root / "sub/out")
    members = by_name(archive(root))
    assert members["sub/out"].isreg() and members["sub/out"].size == 5


def test_dangling_symlink_is_skipped(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"))
    os.symlink("missing.txt", root / "dangling")
    os.symlink("/nonexistent/abs", root / "dangling_abs")
    assert [m.name for m in read_tar(archive(root))] == ["a.txt"]


def test_empty_folders_are_skipped(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"))
    os.makedirs(root / "empty/deeper")
    assert [m.name for m in read_tar(archive(root))] == ["a.txt"]


def test_fifo_is_skipped(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"))
    os.mkfifo(root / "fifo")
    assert [m.name for m in read_tar(archive(root))] == ["a.txt"]


@pytest.mark.parametrize("include, expected", [
    ("**", ["a.txt"]),
    (["**", ".*", "**/.*", ".*/**"], [".git/config", ".hidden", "a.txt", "sub/.env"]),
], ids=["skipped_by_default", "included_when_patterns_name_them"])
def test_hidden_files_and_folders(tmp_path, include, expected):
    root = tmp_path / "src"
    write(str(root / "a.txt"))
    write(str(root / ".hidden"))
    write(str(root / ".git/config"))
    write(str(root / "sub/.env"))
    assert [m.name for m in read_tar(archive(root, include=include))] == expected


def test_exclude_patterns_leave_files_out(tmp_path):
    root = tmp_path / "src"
    write(str(root / "a.txt"))
    write(str(root / "b.log"))
    write(str(root / "sub/c.log"))
    assert [m.name for m in read_tar(archive(root, exclude="*.log"))] == ["a.txt"]


def test_scan_entries_carry_kind_mode_and_size(tmp_path):
    root = tmp_path / "src"
    write(str(root / "f"), b"12345", 0o751)
    os.symlink("f", root / "s")
    entries = {e.name: e for e in scan(str(root))}
    assert (entries[b"f"].kind, entries[b"f"].mode, entries[b"f"].size) == (FILE, 0o751, 5)
    assert (entries[b"s"].kind, entries[b"s"].linkname) == (SYMLINK, b"f")


# ---------------------------------------------------------------------------------------
# header fields


def test_header_of_a_file_over_8_gib_encodes_its_size_in_base_256():
    size = 9 * 2**30
    block = header(b"big.bin", FILE, 0o644, size)
    assert len(block) == 512
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert info.size == size
    assert info.name == "big.bin" and info.mode == 0o644 and info.isreg()


def test_header_of_a_file_just_under_8_gib_uses_octal():
    size = 8**11 - 1
    block = header(b"f", FILE, 0o600, size)
    assert block[124:136] == b"77777777777\0"
    assert tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size == size


def test_header_with_long_name_is_a_gnu_longlink_record_then_the_header():
    name = b"x" * 200
    blocks = header(name, FILE, 0o644, 3)
    assert len(blocks) % 512 == 0 and len(blocks) == 512 * 3
    assert blocks[:13] == b"././@LongLink" and blocks[156:157] == b"L"
    with tarfile.open(fileobj=io.BytesIO(blocks + b"abc" + b"\0" * (509 + 1024))) as tf:
        assert tf.getnames() == ["x" * 200]


def test_header_checksum_is_valid_for_tarfile():
    block = header(b"name", SYMLINK, 0o777, 0, b"target")
    info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert info.issym() and info.linkname == "target"


# ---------------------------------------------------------------------------------------
# the header template and the lean writer give the bytes of the straightforward code


def reference_header(name: bytes, kind: bytes, mode: int, size: int, linkname: bytes = b"") -> bytes:
    """`header` as it was before the template: every block by `header._block`."""
    prefix = b""
    if len(linkname) > 100:
        prefix += tar_header._long_record(b"K", linkname)
    if len(name) > 100:
        prefix += tar_header._long_record(b"L", name)
    return prefix + tar_header._block(name[:100], kind, mode, size, linkname[:100], tar_header.OWNER)


NAME_BYTES = st.binary(min_size=1, max_size=260).filter(lambda b: b"\0" not in b)
SIZES = st.one_of(st.integers(0, 5000), st.integers(0, 8**11 - 1), st.integers(8**11 - 3, 8**11 + 3),
                  st.integers(8**11, 2**80))


@settings(max_examples=500, deadline=None)
@given(name=NAME_BYTES, kind=st.sampled_from([FILE, HARDLINK, SYMLINK]), mode=st.integers(0, 0o7777),
       size=SIZES, linkname=st.one_of(st.just(b""), NAME_BYTES))
def test_header_is_the_reference_bytes_and_tarfile_parses_it(name, kind, mode, size, linkname):
    if kind == FILE:
        linkname = b""
    block = header(name, kind, mode, size, linkname)
    assert block == reference_header(name, kind, mode, size, linkname)
    assert len(block) % 512 == 0
    last = block[-512:]
    info = tarfile.TarInfo.frombuf(last, "utf-8", "surrogateescape")  # checks the checksum
    assert info.mode == mode and info.size == size and info.type == kind
    assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "root", "root", 0)
    assert os.fsencode(info.name) == name[:100]
    assert os.fsencode(info.linkname) == linkname[:100]
    if len(name) > 100 or len(linkname) > 100:  # GNU long records: tarfile reads the whole names
        data = b"" if kind != FILE or size > 4096 else bytes(size)
        stream = block + data + tar_header.padding(len(data)) + bytes(1024)
        if len(data) == size:
            with tarfile.open(fileobj=io.BytesIO(stream), format=tarfile.GNU_FORMAT,
                              encoding="utf-8", errors="surrogateescape") as tf:
                [got] = tf.getmembers()
            assert os.fsencode(got.name) == name and os.fsencode(got.linkname) == linkname


def test_header_with_unusual_values_falls_back_to_the_reference():
    for args in [(b"f", FILE, 8**7, 1), (b"f", FILE, 0o644, 8**11), (b"f", FILE, 0o644, 2**70),
                 (b"n" * 100, SYMLINK, 0o777, 0, b"t" * 100), (b"n" * 101, SYMLINK, 0o777, 0, b"t" * 101)]:
        assert header(*args) == reference_header(*args)


def reference_tar(entries) -> bytes:
    """The canonical TAR of `entries`, the straightforward way (whole files in memory)."""
    out = bytearray()
    for e in entries:
        out += reference_header(e.name, e.kind, e.mode, e.size, e.linkname)
        if e.kind == FILE:
            with open(e.path, "rb") as f:
                data = f.read()
            assert len(data) == e.size
            out += data + tar_header.padding(len(data))
    out += bytes(1024)
    out += bytes(-len(out) % 10240)
    return bytes(out)


CHUNK = tar_header.CHUNK
EDGE_SIZES = st.sampled_from([0, 1, 511, 512, 513, 1024, 10239, 10240, 10241, CHUNK - 1, CHUNK, CHUNK + 1,
                              2 * CHUNK, 2 * CHUNK + 100, 3000])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(EDGE_SIZES, min_size=1, max_size=6), tree=trees(), codec=st.sampled_from(["none", "zstd"]))
def test_write_tar_gives_the_reference_bytes_and_blob_ids(sizes, tree, codec):
    with tempfile.TemporaryDirectory() as tmp:
        root = build(os.path.join(tmp, "src"), tree)
        for i, size in enumerate(sizes):
            write(os.path.join(root, "sized", f"f{i}"), os.urandom(size), 0o640)
        os.link(os.path.join(root, "sized", "f0"), os.path.join(root, "sized", "h0"))
        entries = scan(root, "data")
        expected = reference_tar(entries)
        progress = []
        sink = io.BytesIO()
        assert write_tar(entries, [sink], progress.append) == len(expected)
        assert sink.getvalue() == expected
        assert sum(progress) == sum(e.size for e in entries if e.kind == FILE)
        store = ContentStore(LocalBlobStore(os.path.join(tmp, "ds")))
        with store.lease() as lease:
            info = store.put_dir(root, "data", lease=lease, codec=codec)
        assert info.blob_id == digest_bytes(expected) and info.size == len(expected)
        assert store.check(info.blob_id, info.size) == len(expected)


def test_write_tar_sends_few_large_writes_to_the_sinks(tmp_path):
    root = tmp_path / "src"
    for i in range(3000):
        write(str(root / f"d{i % 10}" / f"f{i}"), b"x" * (i % 700))
    writes = []

    class Sink:
        def write(self, data):
            writes.append(len(data))

    total = write_tar(scan(str(root)), [Sink()])
    assert sum(writes) == total
    assert len(writes) <= total // tar_header.CHUNK + 2


@pytest.mark.parametrize("size", [0, 10, 512, tar_header.CHUNK, tar_header.CHUNK + 1])
@pytest.mark.parametrize("change", ["grow", "shrink", "vanish", "touch"])
def test_file_changed_between_scan_and_write_raises_source_changed(tmp_path, size, change):
    from casstore.errors import SourceChanged

    path = write(str(tmp_path / "src/f"), b"a" * size)
    os.utime(path, (1000, 1000))
    entries = scan(str(tmp_path / "src"))
    if change == "grow":
        with open(path, "ab") as f:
            f.write(b"more")
    elif change == "shrink":
        os.truncate(path, max(size - 1, 0))
        if size == 0:
            os.utime(path, (2000, 2000))
    elif change == "vanish":
        os.unlink(path)
    else:
        os.utime(path, (2000, 2000))
    with pytest.raises(SourceChanged):
        write_tar(entries, [io.BytesIO()])
