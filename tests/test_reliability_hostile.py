"""Hostile input: tampered blobs in the datastore, and odd source trees.

Hostile blobs, as if someone had write access to the datastore: a stored blob file is
replaced (chmod writable, overwrite) by a TAR with a member escaping the target, an absolute
path, a symlink pointing out, a device file, a huge GNU longname header, or by a zstd bomb.
Loading must raise LoadError naming experiment, field and blob, write nothing outside the
target, and leave nothing of the hostile archive inside it; the experiment's other field
still extracts. The same archives are also stored "forged": under their own correct digest
and referenced by an experiment (someone who can write the database too), so that the
member validation is what refuses them, not the digest check.

Planted files (issue 11): names that resemble a blob's, FIFOs and symlinks where casstore
reads, a user's file that looks like a temp file; verify and gc must neither hang, nor read
without bound, nor delete what is not provably theirs.

Odd trees: non-UTF-8 names, names over 100 bytes, empty files and folders, hard links,
links leading outside src_dir (stored as content), FIFOs and dangling links (skipped)."""

from __future__ import annotations

import io
import json
import os
import stat
import time
import uuid
from pathlib import Path

import pytest
import zstandard
from helpers import deadline, facts_outside, file_tree, make_folder, run_casstore, run_cli, write

import reliability_worker as rw
from casstore import ArchiveStore, ArchiveStoreIO, LoadError, options
from casstore.cas.backends.layout import blob_key
from casstore.cas.index.facts import BlobFacts
from casstore.cas.damage import read_damage, record_damage
from casstore.cas.digest import DEFAULT_ALGORITHM, digest_bytes, hasher_id, new_hasher, parse_id
from casstore.cas.live.refs import MAX_REF_BYTES
from casstore.cas.tar.header import DIRECTORY, FILE, HARDLINK, LONGLINK, RECORD, SYMLINK, _block, header, padding
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes
from casstore.cas.verify import verify
from casstore.errors import (CorruptBlob, CorruptReference, DatastoreError, InvalidInput, UnreadableObject,
                             UnsafeArchive)
from casstore.session import parse_experiment_id
from casstore.storage.archivestore import Archive
from casstore.session import field_roots

TOKEN = uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


# --------------------------------------------------------------------------- raw TAR building


def member(name: bytes, kind: bytes = FILE, data: bytes = b"", mode: int = 0o644, linkname: bytes = b"") -> bytes:
    size = len(data) if kind == FILE else 0
    return header(name, kind, mode, size, linkname) + data + padding(len(data))


def finish_tar(body: bytes) -> bytes:
    body += bytes(1024)
    return body + bytes(-len(body) % RECORD)


def huge_gnu_longname(size: int = 10 << 20) -> bytes:
    """A GNU 'L' record announcing (and carrying) a 10 MB member name."""
    return _block(LONGLINK, b"L", 0, size, b"", b"") + b"a" * size + padding(size)


def hostile_archives(outside: str) -> dict[str, bytes]:
    """name -> TAR bytes; each starts with a harmless member so that something is staged
    before the hostile member is met. `outside` is an absolute folder outside the target."""
    ok = member(b"data/ok.txt", data=b"harmless")
    esc = f"escape-{TOKEN}".encode()
    abs_path = os.fsencode(os.path.join(outside, f"abs-{TOKEN}"))
    return {
        "dotdot": ok + member(b"data/../../" + esc, data=b"pwned"),
        "dotdot-deep": ok + member(b"../../../../" + esc, data=b"pwned"),
        "absolute": ok + member(abs_path, data=b"pwned"),
        "symlink-out": ok + member(b"data/out", SYMLINK, linkname=b"../../../" + esc)
        + member(b"data/out/x", data=b"pwned"),
        "symlink-absolute": ok + member(b"data/out", SYMLINK, linkname=os.fsencode(outside))
        + member(b"data/out/" + esc, data=b"pwned"),
        "symlink-dot-then-climb": ok + member(b"data/d", SYMLINK, linkname=b".")
        + member(b"data/d/../../" + esc, data=b"pwned"),
        "hardlink-out": ok + member(b"data/h", HARDLINK, linkname=abs_path),
        "chardev": ok + member(b"data/null", b"3", mode=0o666),
        "blockdev": ok + member(b"data/sda", b"4", mode=0o660),
        "fifo": ok + member(b"data/fifo", b"6", mode=0o644),
        "directory-out": ok + member(b"../" + esc + b"/", DIRECTORY, mode=0o755),
        "huge-gnu-longname": ok + huge_gnu_longname() + member(b"x", data=b"pwned"),
        "longname-escape": ok + member(b"data/" + b"a" * 120 + b"/../../../../" + esc, data=b"pwned"),
        "symlink-out-through-symlink": ok + member(b"data/a/b", SYMLINK, linkname=b"..")
        + member(b"data/x", SYMLINK, linkname=b"a/b/../.."),
        "file-then-folder": ok + member(b"data/x", data=b"file") + member(b"data/x", DIRECTORY, mode=0o755),
        "symlink-then-folder": ok + member(b"data/x", SYMLINK, linkname=b"ok.txt")
        + member(b"data/x", DIRECTORY, mode=0o755),
        "name-component-300-bytes": ok + member(b"data/" + b"n" * 300, data=b"long"),
    }


def pax_size_of_5000_digits() -> bytes:
    """A PAX header whose size record has 5,000 digits (past Python's int-string limit)."""
    body = b" size=" + b"1" * 5000 + b"\n"
    body = b"%d" % (len(body) + 4) + body
    return member(b"data/ok.txt", data=b"harmless") + header(b"PaxHeader", b"x", 0o644, len(body)) + body \
        + padding(len(body)) + member(b"data/later.txt", data=b"later")


def zstd_bomb(inflated: int = 1 << 30) -> bytes:
    """A small .tar.zst whose TAR announces a 1 GiB member of zeros (~32 KB compressed)."""
    out = zstandard.ZstdCompressor(level=1)
    buf = io.BytesIO()
    zero = bytes(1 << 20)
    with out.stream_writer(buf, closefd=False) as w:
        w.write(header(b"data/bomb.bin", FILE, 0o644, inflated))
        for _ in range(inflated // len(zero)):
            w.write(zero)
        w.write(bytes(1024))
    return buf.getvalue()


# --------------------------------------------------------------------------- scenario


class Victim:
    """An experiment with two fields: `data` (the blob to tamper with) and `good`. `fmt` and
    `chunks` as rw.Project takes them (chunks: the cut sizes, replacing the format's)."""

    def __init__(self, tmp_path, fmt: str | None = None, chunks: dict | None = None):
        self.tmp_path = tmp_path
        self.project = rw.Project(tmp_path / "p", fmt=fmt)
        if chunks is not None:
            self.project.chunks = chunks
        self.outside = str(tmp_path / "outside")
        os.makedirs(self.outside)
        for name, files in (("src-data", {"d.txt": b"data field " * 100}), ("src-good", {"g.txt": b"good field"})):
            os.makedirs(tmp_path / name)
            for rel, content in files.items():
                (tmp_path / name / rel).write_bytes(content)
        self.session = self.project.session()
        self.store = self.project.store()

    def persist(self, data_field) -> object:
        e = self.session.create_experiment(f"victim-{uuid.uuid4().hex[:6]}", data=data_field,
                                           good=ArchiveStore(src_dir=str(self.tmp_path / "src-good"), arc_dir="good"))
        e.persist()
        return e

    def snapshot(self, exclude: str) -> dict:
        """Every path under tmp_path with its facts, except `exclude` (the target), the
        database files, the caches and the datastore's damage records (a load records the
        damage it finds, docs/datastore.md): what a load may not change."""
        out = {}
        for dirpath, dirs, files in os.walk(self.tmp_path):
            if os.path.abspath(dirpath) == os.path.abspath(exclude):
                dirs[:] = []
                continue
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                if os.path.abspath(path) == os.path.abspath(exclude) or name.startswith("project.db") \
                        or "statcache" in name or "/cache" in path or "/casstore/damaged" in path:
                    continue
                st = os.lstat(path)
                facts = (stat.S_IFMT(st.st_mode),) if stat.S_ISDIR(st.st_mode) else \
                    (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
                out[os.path.relpath(path, self.tmp_path)] = facts
        return out

    def assert_refused(self, e, blob_id: str) -> LoadError:
        target = self.project.target(e)
        os.makedirs(self.project.archivestore, exist_ok=True)  # the target's parent, made by any load
        before = self.snapshot(target)
        with pytest.raises(LoadError) as info:
            self.session.load_experiment(e.name)
        err = info.value
        # one failure: the tampered field, named with experiment and blob; the good field extracted
        assert [(f.experiment, f.field, f.blob) for f in err.failures] == [(str(e.id_experiment), "data", blob_id)]
        assert str(e.id_experiment) in str(err) and "'data'" in str(err) and blob_id in str(err)
        assert isinstance(err.failures[0].error, (UnsafeArchive, CorruptBlob)), err.failures[0].error
        # nothing written outside the target; nothing of the hostile archive inside it
        assert self.snapshot(target) == before
        assert rw.tree(target) == {b"good/g.txt": ("file", b"good field")}
        assert sorted(os.listdir(target)) == ["good"]
        for root in (self.tmp_path, self.outside, os.path.dirname(str(self.tmp_path))):
            assert not any(TOKEN in n for n in os.listdir(root))
        return err


def tamper(victim: Victim, blob_id: str, codec: str, data: bytes) -> None:
    """Replace the blob file of `blob_id` by `data`, stored as if it had `codec`."""
    for c in ("none", "zstd"):
        path = os.path.join(victim.store.blobs.root, *blob_key(blob_id, c).split("/"))
        if os.path.exists(path):
            os.chmod(path, 0o644)
            os.unlink(path)
    path = os.path.join(victim.store.blobs.root, *blob_key(blob_id, codec).split("/"))
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o444)


HOSTILE = sorted(hostile_archives("/x"))


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("case", HOSTILE)
def test_tampered_blob_is_refused_and_nothing_escapes(tmp_path, case, codec):
    victim = Victim(tmp_path)
    e = victim.persist(ArchiveStore(src_dir=str(tmp_path / "src-data"), arc_dir="data"))
    blob_id = e.fields.data.blob_id
    data = hostile_archives(victim.outside)[case]
    tamper(victim, blob_id, codec, finish_tar(data) if codec == "none" else zstandard.compress(finish_tar(data)))
    victim.assert_refused(e, blob_id)
    # verify names the damage
    report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
    assert [p.blob for p in report.problems] == [blob_id]


CUT_EVERY_BLOB = {**rw.TINY_CHUNKS, "whole_below": 0}
"""The chunked runs' cut sizes, with every blob chunked however small (the hostile archives are)."""


@pytest.mark.parametrize("fmt", rw.FORMATS)
@pytest.mark.parametrize("case", HOSTILE)
def test_forged_blob_under_its_own_digest_is_refused_by_member_validation(tmp_path, case, fmt):
    """The attacker also wrote the index: the blob's digest checks out, so only the member
    validation stands between the archive and the file system (chunked: read through its
    manifest, each chunk checking out too)."""
    victim = Victim(tmp_path, fmt, CUT_EVERY_BLOB if fmt == "chunked" else None)
    data = finish_tar(hostile_archives(victim.outside)[case])
    with victim.store.lease() as lease:
        info = victim.store.put_tar_bytes(data, lease=lease)
    forged = ArchiveStore.from_ref({"blob": info.blob_id, "arc_dir": "data", "size": info.size})
    e = victim.persist(forged)
    err = victim.assert_refused(e, info.blob_id)
    assert isinstance(err.failures[0].error, UnsafeArchive), err.failures[0].error
    assert info.codec == ("chunked" if fmt == "chunked" else "none")


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_pax_size_of_5000_digits_in_a_tampered_blob_is_a_load_error_and_the_other_field_extracts(tmp_path, codec):
    victim = Victim(tmp_path)
    e = victim.persist(ArchiveStore(src_dir=str(tmp_path / "src-data"), arc_dir="data"))
    blob_id = e.fields.data.blob_id
    data = finish_tar(pax_size_of_5000_digits())
    tamper(victim, blob_id, codec, data if codec == "none" else zstandard.compress(data))
    err = victim.assert_refused(e, blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob) and err.failures[0].error.reason == "digest"


def test_pax_size_of_5000_digits_in_a_forged_blob_is_a_load_error(tmp_path):
    victim = Victim(tmp_path)
    with victim.store.lease() as lease:
        info = victim.store.put_tar_bytes(finish_tar(pax_size_of_5000_digits()), lease=lease)
    e = victim.persist(ArchiveStore.from_ref({"blob": info.blob_id, "arc_dir": "data", "size": info.size}))
    err = victim.assert_refused(e, info.blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob) and "malformed PAX size" in str(err.failures[0].error)


def test_pax_size_of_5000_digits_in_an_inline_archive_is_corrupt_and_the_target_untouched(tmp_path):
    target = tmp_path / "target"
    with pytest.raises(CorruptBlob, match="malformed PAX size"):
        Archive.from_bytes(finish_tar(pax_size_of_5000_digits())).extract(str(target))
    assert os.listdir(target) == []


def test_zstd_bomb_in_place_of_a_blob_is_refused_without_inflating(tmp_path):
    victim = Victim(tmp_path)
    e = victim.persist(ArchiveStore(src_dir=str(tmp_path / "src-data"), arc_dir="data"))
    blob_id = e.fields.data.blob_id
    bomb = zstd_bomb()
    assert len(bomb) < 1 << 20
    tamper(victim, blob_id, "zstd", bomb)
    free_before = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    err = victim.assert_refused(e, blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob)
    assert "larger than its recorded" in str(err.failures[0].error) or "corrupt" in str(err.failures[0].error)
    free_after = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert free_before - free_after < 64 << 20


def plant_bomb(victim: Victim, inflated: int) -> tuple[str, int]:
    """A zstd bomb stored under its own digest (the inflated stream hashed once, streamed);
    its blob id and inflated size."""
    bomb = zstd_bomb(inflated)
    hasher, size = new_hasher(DEFAULT_ALGORITHM), 0
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bomb)) as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    blob_id = hasher_id(hasher, DEFAULT_ALGORITHM)
    path = os.path.join(victim.store.blobs.root, *blob_key(blob_id, "zstd").split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bomb)
    return blob_id, size


def test_forged_zstd_bomb_with_a_small_recorded_size_is_refused(tmp_path):
    """Even a bomb stored under its own digest is read only up to the recorded size."""
    victim = Victim(tmp_path)
    blob_id, _ = plant_bomb(victim, 256 << 20)
    forged = ArchiveStore.from_ref({"blob": blob_id, "arc_dir": "data", "size": 4096})
    e = victim.persist(forged)
    err = victim.assert_refused(e, blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob)


def test_blob_with_no_recorded_size_is_read_only_up_to_option_max_unsized_bytes(tmp_path):
    """A read for which no record gives a size (a blob the index has no facts for, e.g. by
    `casstore cat`, a run table's reference or migrate) stops at the cap, with CorruptBlob,
    and the target is as it was."""
    victim = Victim(tmp_path)
    blob_id, _ = plant_bomb(victim, 64 << 20)
    options().set("datastore.max_unsized_bytes", 1 << 20)
    target = deep_target(tmp_path)
    before = victim.snapshot("/nonexistent")
    with pytest.raises(CorruptBlob, match="no recorded size.*datastore.max_unsized_bytes") as raised:
        victim.project.store().extract(blob_id, target)
    assert raised.value.reason == "size"
    assert_nothing_written(victim, before)


@pytest.mark.parametrize("value", ["big", -1, True, 1.5])
def test_option_max_unsized_bytes_must_be_a_number_of_bytes(tmp_path, value):
    victim = Victim(tmp_path)
    options().set("datastore.max_unsized_bytes", value)
    with pytest.raises(InvalidInput, match="max_unsized_bytes"):
        victim.project.store()


def test_target_folder_replaced_by_a_symlink_pointing_out_is_not_written_through(tmp_path):
    """Hostile target rather than hostile blob: `<target>/data` is a symlink to a folder
    outside. The load refuses the field instead of writing through it."""
    victim = Victim(tmp_path)
    e = victim.persist(ArchiveStore(src_dir=str(tmp_path / "src-data"), arc_dir="data"))
    target = victim.project.target(e)
    os.makedirs(target)
    os.symlink(victim.outside, os.path.join(target, "data"))
    with pytest.raises(LoadError) as info:
        victim.session.load_experiment(e.name)
    assert [f.field for f in info.value.failures] == ["data"]
    assert os.listdir(victim.outside) == []


# --------------------------------------------------------------------------- named references (ArchiveStoreIO)


def write_named_ref(victim: Victim, blob_id: object, key: str | None = None, **fields: object) -> str:
    """Write a named reference, as any project (anyone who can write the datastore) can: at
    `key`, by default a new `undefined/<uuid hex>`. Returns its URL."""
    key = key or f"undefined/{uuid.uuid4().hex}"
    path = os.path.join(victim.project.datastore, *key.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": "casstore-ref-1", "blob": blob_id, "arc_dir": "data", **fields}, f)
    return f"file:///{key}"


def forge(victim: Victim, tar: bytes) -> BlobFacts:
    """Store TAR bytes under their own digest (the blob checks out)."""
    with victim.store.lease() as lease:
        return victim.store.put_tar_bytes(tar, lease=lease)


def deep_target(tmp_path) -> str:
    """An empty target five levels below tmp_path: the climbs of the hostile archives (four
    `..` at most) stay inside tmp_path, where the snapshot sees them."""
    target = os.path.join(tmp_path, "t1", "t2", "t3", "t4", "target")
    os.makedirs(target)
    return target


def assert_nothing_written(victim: Victim, before: dict) -> None:
    """The whole test folder (the target included) is as it was; no hostile name anywhere."""
    assert victim.snapshot("/nonexistent") == before
    for root in (victim.tmp_path, victim.outside, os.path.dirname(str(victim.tmp_path))):
        assert not any(TOKEN in n for n in os.listdir(root))


READS = {
    "extract": lambda archive, target: archive.extract(target),
    "getnames": lambda archive, target: archive.getnames(target),
    "open": lambda archive, target: archive.open().close(),
}


def assert_every_read_refused(victim: Victim, archives: list, target: str, error: type, match: str) -> None:
    """Every read (READS) of every archive in `archives` raises `error`, and nothing in or
    outside the target is written."""
    before = victim.snapshot("/nonexistent")
    for archive in archives:
        for read in READS.values():
            with pytest.raises(error, match=match):
                read(archive, target)
    assert_nothing_written(victim, before)


def test_named_reference_rewritten_by_another_project_is_refused_by_the_pinned_archive(tmp_path):
    """Anyone who can write the datastore can point `undefined/<uuid>` at other content. The
    object `create` returned, and one built with its blob id, refuse it; nothing is read."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    theirs = forge(victim, finish_tar(member(b"data/d.txt", data=b"attacker's content")))
    write_named_ref(victim, theirs.blob_id, key=archive.url[len("file:///"):], size=theirs.size)
    assert_every_read_refused(victim, [archive, ArchiveStoreIO(archive.url, blob_id=archive.blob_id)],
                              deep_target(tmp_path), CorruptReference, "pinned")


def test_named_reference_url_leading_out_of_the_datastore_is_refused_unread(tmp_path):
    """`file:///../x` named a file beside the datastore: whoever could write there chose what
    `ArchiveStoreIO(url)` extracted. A key with a `..` part is no key of the datastore."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    with open(os.path.join(victim.project.datastore, *archive.url[len("file:///"):].split("/"))) as f:
        size = json.load(f)["size"]
    url = write_named_ref(victim, archive.blob_id, key="../planted-ref", size=size)
    assert_every_read_refused(victim, [ArchiveStoreIO(url)], deep_target(tmp_path), InvalidInput, "lead out")


@pytest.mark.parametrize("size", ["missing", None, "big", -1, True, 1.5, "4096"])
def test_named_reference_without_a_valid_size_is_refused_before_its_blob_is_read(tmp_path, size):
    """A 64 MiB bomb (a few KB of zstd) behind a reference whose size is absent or not a
    non-negative integer: nothing would bound the read, so nothing is read."""
    victim = Victim(tmp_path)
    blob_id, _ = plant_bomb(victim, 64 << 20)
    url = write_named_ref(victim, blob_id, **({} if size == "missing" else {"size": size}))
    assert_every_read_refused(victim, [ArchiveStoreIO(url)], deep_target(tmp_path), CorruptReference, "no valid size")


@pytest.mark.parametrize("blob", [None, 5, "xxh128:zz", "md5:" + "0" * 32])
def test_named_reference_without_a_valid_blob_id_is_refused(tmp_path, blob):
    victim = Victim(tmp_path)
    url = write_named_ref(victim, blob, size=10240)
    for name, read in READS.items():
        with pytest.raises(CorruptReference, match="no valid blob id"):
            read(ArchiveStoreIO(url), str(tmp_path / "t"))


@pytest.mark.parametrize("delta", [-1, 1, 1 << 20])
@pytest.mark.parametrize("read", sorted(READS))
def test_named_reference_whose_size_disagrees_with_its_blob_is_refused(tmp_path, delta, read):
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    info = victim.store.blobs.find(archive.blob_id)
    size = victim.store.check(archive.blob_id)
    write_named_ref(victim, archive.blob_id, key=archive.url[len("file:///"):], size=size + delta)
    target = deep_target(tmp_path)
    before = victim.snapshot("/nonexistent")
    with pytest.raises(CorruptBlob) as raised:
        READS[read](archive, target)
    assert raised.value.reason == "size" and info is not None
    assert_nothing_written(victim, before)


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("read", sorted(READS))
def test_named_reference_to_a_blob_whose_digest_fails_is_refused(tmp_path, codec, read):
    """The blob the reference names was replaced on disk (a hostile TAR of the same size as
    the reference records): extract, getnames and open all refuse it before any member is
    used; open() never hands tarfile the bytes."""
    victim = Victim(tmp_path)
    options().set("archivestore.codec", codec)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    size = victim.store.check(archive.blob_id)
    hostile = finish_tar(hostile_archives(victim.outside)["dotdot"])
    hostile += bytes(size - len(hostile))
    tamper(victim, archive.blob_id, codec, hostile if codec == "none" else zstandard.compress(hostile))
    target = deep_target(tmp_path)
    before = victim.snapshot("/nonexistent")
    with pytest.raises(CorruptBlob) as raised:
        READS[read](ArchiveStoreIO(archive.url), target)
    assert raised.value.reason == "digest"
    assert_nothing_written(victim, before)


def forged_io(victim: Victim, case: str) -> ArchiveStoreIO:
    """An ArchiveStoreIO whose reference (size right) names a hostile archive stored under
    its own digest: only member validation stands between it and the file system."""
    info = forge(victim, finish_tar(hostile_archives(victim.outside)[case]))
    return ArchiveStoreIO(write_named_ref(victim, info.blob_id, size=info.size))


OPEN_EXTRACTS = {
    "extractall": lambda tar, target: tar.extractall(target),
    "extract-last-member": lambda tar, target: tar.extract(tar.getmembers()[-1], target),
}


@pytest.mark.parametrize("how", sorted(OPEN_EXTRACTS))
@pytest.mark.parametrize("case", HOSTILE)
def test_open_extraction_of_a_hostile_archive_refuses_and_writes_nothing_outside_the_target(tmp_path, case, how):
    """The CVE-2025-4517 family on Python 3.11.7, whose tarfile filters it bypasses: the
    TarFile of open() extracts through casstore's validation, so nothing is written, outside
    the target or in it (the whole test folder is compared)."""
    victim = Victim(tmp_path)
    archive = forged_io(victim, case)
    target = deep_target(tmp_path)
    before = victim.snapshot("/nonexistent")
    with pytest.raises(UnsafeArchive):
        with archive.open() as tar:
            OPEN_EXTRACTS[how](tar, target)
    assert_nothing_written(victim, before)


@pytest.mark.parametrize("size", ["missing", "big"])
def test_verify_reports_a_named_reference_without_a_valid_size(tmp_path, size):
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    write_named_ref(victim, archive.blob_id, key=archive.url[len("file:///"):],
                    **({} if size == "missing" else {"size": size}))
    report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
    assert [p.blob for p in report.problems] == [archive.blob_id]


def ref_path(victim: Victim, url: str) -> str:
    """The file of the named reference at `url` (`file:///<key>`)."""
    return os.path.join(victim.project.datastore, *url[len("file:///"):].split("/"))


def respelled(data: bytes, spelling: str) -> bytes:
    """The same JSON reference, spelled another way json.loads reads as well."""
    return {"newline": b"\n" + data, "spaces": b"  \t" + data + b"\n", "utf-8 BOM": b"\xef\xbb\xbf" + data,
            "utf-16": data.decode().encode("utf-16")}[spelling]


@pytest.mark.parametrize("spelling", ["newline", "spaces", "utf-8 BOM", "utf-16"])
def test_gc_keeps_the_blob_of_a_named_reference_spelled_with_leading_whitespace_or_a_bom(tmp_path, spelling):
    """Was: gc took for a reference only a file starting with `{`, the reader anything
    json.loads reads: gc deleted the blob of a reference that extracted fine. One parser
    (refs.parse_named_ref) now decides for both."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    path = ref_path(victim, archive.url)
    data = open(path, "rb").read()
    write(path, respelled(data, spelling))
    ArchiveStoreIO(archive.url).extract(str(tmp_path / "before"))
    assert victim.session.gc(grace_s=0).deleted == []
    ArchiveStoreIO(archive.url).extract(str(tmp_path / "after"))
    assert rw.tree(str(tmp_path / "after")) == {b"data/d.txt": ("file", b"data field " * 100)}


@pytest.mark.parametrize("where, url", [("casstore/refs/{uuid}", "casstore/refs/{uuid}"),
                                        ("casstore/refs/{uuid}", "./casstore/refs/{uuid}"),
                                        ("casstore/refs/{uuid}", "/casstore/refs/{uuid}"),
                                        ("undefined/{uuid}.{uuid}.tmp", "undefined/{uuid}.{uuid}.tmp")])
def test_a_reference_where_gc_never_looks_for_one_is_refused_by_the_reader(tmp_path, where, url):
    """gc counts no reference inside casstore/ (however the URL spells the path) or in a
    torn temp file of one: a reader that took it would read a blob gc may delete any time."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    hexes = uuid.uuid4().hex
    key = where.format(uuid=hexes)
    write(os.path.join(victim.project.datastore, *key.split("/")), open(ref_path(victim, archive.url), "rb").read())
    for name, read in READS.items():
        with pytest.raises(InvalidInput, match="not a casstore archive reference"):
            read(ArchiveStoreIO(f"file:///{url.format(uuid=hexes)}"), str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "t")


def test_a_named_reference_reached_through_a_symlinked_folder_is_refused(tmp_path):
    """Listings never enter a symlinked folder, so gc never counts a reference behind one:
    the reader refuses it rather than read a blob gc deletes."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    folder = os.path.join(victim.project.datastore, "undefined")
    os.rename(folder, tmp_path / "refs-elsewhere")
    os.symlink(tmp_path / "refs-elsewhere", folder)
    for pinned in (archive, ArchiveStoreIO(archive.url)):
        for name, read in READS.items():
            with pytest.raises(UnreadableObject, match="symlinked folder"):
                read(pinned, str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "t")


def test_a_small_file_of_deeply_nested_json_neither_stops_gc_nor_reads_as_a_reference(tmp_path):
    """Was: the scan's json.loads raised RecursionError and gc and verify stopped with it."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    url = f"file:///undefined/{uuid.uuid4().hex}"
    write(ref_path(victim, url), b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}")
    assert victim.session.gc(grace_s=0).deleted == []
    assert verify(victim.session.index, victim.store, field_roots=field_roots).problems == []
    with pytest.raises(InvalidInput, match="not a casstore archive reference"):
        ArchiveStoreIO(url).extract(str(tmp_path / "t"))
    ArchiveStoreIO(archive.url).extract(str(tmp_path / "t"))


@pytest.mark.parametrize("facts", [{"codec": "gzip", "stored_size": 10240}, {"codec": "none", "stored_size": "big"},
                                   {"codec": "none", "stored_size": -1}, {"codec": "none"}, {"stored_size": 10240}])
def test_named_reference_whose_codec_or_stored_size_is_not_valid_is_refused(tmp_path, facts):
    """The stored copy a reference records is optional (references written before issue 11
    have none), but one that is there and is not a codec and a byte count is refused."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    url = write_named_ref(victim, archive.blob_id, size=victim.store.check(archive.blob_id), **facts)
    for name, read in READS.items():
        with pytest.raises(CorruptReference, match="no valid stored copy"):
            read(ArchiveStoreIO(url), str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "t")
    assert victim.session.gc(grace_s=0).deleted == []


def test_verify_reports_a_named_reference_whose_stored_copy_is_not_valid(tmp_path):
    """What ArchiveStoreIO refuses, verify reports (kind `reference`), naming the reference."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    url = write_named_ref(victim, archive.blob_id, size=victim.store.check(archive.blob_id), codec="gzip",
                          stored_size=10240)
    report = verify(victim.session.index, victim.store, field_roots=field_roots)
    assert [(p.kind, p.blob) for p in report.problems] == [("reference", archive.blob_id)]
    assert url[len("file:///"):] in report.problems[0].detail


def plant_tar_beside(victim: Victim, blob_id: str, size_delta: int = 0) -> str:
    """Beside the intact `.tar.zst` of `blob_id`, a planted `.tar`: the canonical TAR with
    one byte changed after the first block (right first block, wrong bytes), `size_delta`
    bytes longer. Its path."""
    f, copy = victim.store.blobs.open_copy(blob_id, "zstd")
    with f:
        tar = zstandard.ZstdDecompressor().stream_reader(f).read()
    bad = tar[:1024] + b"X" + tar[1025:] + bytes(max(size_delta, 0))
    path = os.path.join(victim.store.blobs.root, *blob_key(blob_id, "none").split("/"))
    write(path, bad[:len(bad) + min(size_delta, 0)])
    return path


@pytest.mark.parametrize("read", sorted(READS))
@pytest.mark.parametrize("pinned", [False, True])
def test_a_planted_tar_beside_the_intact_tar_zst_of_a_named_reference_does_not_break_reads(tmp_path, read, pinned):
    """Was: readers preferred the `.tar`, the reference recorded no copy, every read failed
    the digest. The reference records the stored copy (codec, stored size) its writer made,
    and readers read the copy that matches it."""
    victim = Victim(tmp_path)
    options().set("archivestore.codec", "zstd")
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    plant_tar_beside(victim, archive.blob_id)
    READS[read](archive if pinned else ArchiveStoreIO(archive.url), str(tmp_path / "t"))
    if read == "extract":
        assert rw.tree(str(tmp_path / "t")) == {b"data/d.txt": ("file", b"data field " * 100)}


def test_verify_reports_a_planted_tar_of_another_size_beside_the_tar_zst_of_a_named_reference(tmp_path):
    """Was: verify took the facts of a blob only a reference names from the copy readers
    prefer (the planted one) and reported nothing; it now takes the reference's own."""
    victim = Victim(tmp_path)
    options().set("archivestore.codec", "zstd")
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    plant_tar_beside(victim, archive.blob_id, size_delta=512)
    report = verify(victim.session.index, victim.store, field_roots=field_roots)
    assert [(p.kind, p.blob) for p in report.problems] == [("copy", archive.blob_id)]


def test_a_named_reference_whose_recorded_copy_a_repair_replaced_still_reads_and_verifies(tmp_path):
    """A repair by a writer with another codec leaves the intact `.tar` where the reference
    recorded a `.tar.zst`: its facts are stale, the blob is not damaged."""
    victim = Victim(tmp_path)
    options().set("archivestore.codec", "zstd")
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    f, _copy = victim.store.blobs.open_copy(archive.blob_id, "zstd")
    with f:
        tar = zstandard.ZstdDecompressor().stream_reader(f).read()
    tamper(victim, archive.blob_id, "none", tar)
    for deep in (False, True):
        assert verify(victim.session.index, victim.store, field_roots=field_roots, deep=deep).problems == []
    ArchiveStoreIO(archive.url).extract(str(tmp_path / "t"))
    assert rw.tree(str(tmp_path / "t")) == {b"data/d.txt": ("file", b"data field " * 100)}


def test_verify_deep_blames_the_planted_tar_not_the_intact_blob_of_a_named_reference(tmp_path):
    """Was: `--deep` re-hashed the planted copy as the blob and reported the blob damaged."""
    victim = Victim(tmp_path)
    options().set("archivestore.codec", "zstd")
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    plant_tar_beside(victim, archive.blob_id)
    report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
    assert [(p.kind, p.blob) for p in report.problems] == [("copy", archive.blob_id)]
    assert "second copy (.tar)" in report.problems[0].detail


# --------------------------------------------------------------------------- odd trees


def odd_tree(root: str, outside: str) -> dict[bytes, tuple[str, bytes]]:
    """Build the odd tree; return what a load must give back (bytes paths, relative)."""
    r = os.fsencode(root)
    os.makedirs(root)
    os.makedirs(outside, exist_ok=True)
    expected: dict[bytes, tuple[str, bytes]] = {}

    def put(rel: bytes, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(r, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        expected[rel] = ("file", data)

    put(b"caf\xe9.txt", b"latin-1 name")  # not UTF-8
    put(b"\xff\xfe-dir/inner \x80.bin", bytes(range(256)))
    put(b"n" * 150 + b".txt", b"long name")
    put(b"x" * 255, b"longest component")
    long_path = b"d" * 80 + b"/" + b"e" * 80 + b"/f.txt"
    put(long_path, b"deep")
    put(b"empty.txt", b"")
    put(b"private.key", b"secret", 0o600)
    put(b"run.sh", b"#!/bin/sh\n", 0o755)
    os.makedirs(os.path.join(r, b"empty-dir"))
    os.makedirs(os.path.join(r, b"only-empty/sub/subsub"))
    # hard links: three names of one file
    put(b"h1.bin", b"hardlinked" * 1000)
    os.makedirs(os.path.join(r, b"sub-h"))
    os.link(os.path.join(r, b"h1.bin"), os.path.join(r, b"sub-h/h2.bin"))
    os.link(os.path.join(r, b"h1.bin"), os.path.join(r, b"h3.bin"))
    expected[b"sub-h/h2.bin"] = expected[b"h3.bin"] = expected[b"h1.bin"]
    # symlinks inside (kept as links), one with a target over 100 bytes
    os.symlink(b"caf\xe9.txt", os.path.join(r, b"link-inside"))
    expected[b"link-inside"] = ("link", b"caf\xe9.txt")
    os.symlink(long_path, os.path.join(r, b"link-long-target"))
    expected[b"link-long-target"] = ("link", long_path)
    # links leading outside src_dir: stored as the content they point to
    with open(os.path.join(outside, "secret.txt"), "wb") as f:
        f.write(b"outside content")
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(root, "link-abs-out"))
    os.symlink(os.path.relpath(os.path.join(outside, "secret.txt"), root), os.path.join(root, "link-rel-out"))
    expected[b"link-abs-out"] = expected[b"link-rel-out"] = ("file", b"outside content")
    # skipped: a dangling link and a FIFO
    os.symlink("does-not-exist", os.path.join(root, "dangling"))
    os.mkfifo(os.path.join(root, "pipe"))
    return expected


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_odd_tree_archives_and_loads_exactly(tmp_path, codec):
    project = rw.Project(tmp_path / "p")
    src = str(tmp_path / "src")
    expected = odd_tree(src, str(tmp_path / "outside"))
    s = project.session()
    options().set("archivestore.codec", codec)
    e = s.create_experiment("odd", data=ArchiveStore(src_dir=src))
    e.persist()
    loaded = s.load_experiment("odd")
    target = os.fsencode(project.target(loaded))
    assert rw.tree(target) == expected
    # permission bits kept; the three hard links are one file again
    assert stat.S_IMODE(os.stat(os.path.join(target, b"private.key")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(target, b"run.sh")).st_mode) == 0o755
    assert os.path.samefile(os.path.join(target, b"h1.bin"), os.path.join(target, b"sub-h/h2.bin"))
    assert os.path.samefile(os.path.join(target, b"h1.bin"), os.path.join(target, b"h3.bin"))
    # empty folders are not archived (MLtraq's rule); the link leading out is a file
    assert not os.path.exists(os.path.join(target, b"empty-dir"))
    assert not os.path.islink(os.path.join(target, b"link-abs-out"))
    report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == []
    # same tree, same blob: persisting again stores nothing new
    files = project.blob_files()
    e2 = s.create_experiment("odd-again", data=ArchiveStore(src_dir=src))
    e2.persist()
    assert e2.fields.data.blob_id == e.fields.data.blob_id and project.blob_files() == files


def test_empty_folder_archives_and_loads(tmp_path):
    project = rw.Project(tmp_path / "p")
    os.makedirs(tmp_path / "src" / "nothing" / "here")
    s = project.session()
    e = s.create_experiment("empty", data=ArchiveStore(src_dir=str(tmp_path / "src")))
    e.persist()
    loaded = s.load_experiment("empty")
    assert rw.tree(project.target(loaded)) == {}
    assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []


# --------------------------------------------------------------------------- planted files
# Issue 11, items 1 and 5: names and special files someone planted in the datastore.


def planted_project(tmp_path):
    """A project with one persisted experiment `kept` (field `data`); (project, experiment)."""
    project = rw.Project(tmp_path / "planted")
    src = tmp_path / "src"
    write(src / "a.txt", b"referenced " * 100)
    s = project.session()
    e = s.create_experiment("kept", data=ArchiveStore(src_dir=str(src), arc_dir="d"))
    e.persist()
    s.index.dispose()
    return project, e


def backdate(path: str, seconds: float = 7200) -> None:
    """Make `path` (not what a symlink points at) `seconds` old: past gc's default grace."""
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def on(project, *args: str) -> list[str]:
    return [*args, "--db", project.url, "--datastore", project.datastore]


def assert_kept_loads(project, e) -> None:
    s = project.session()
    loaded = s.load_experiment("kept")
    assert rw.tree(project.target(loaded)) == {b"d/a.txt": ("file", b"referenced " * 100)}
    s.index.dispose()


def test_a_planted_name_with_a_newline_never_makes_gc_delete_the_blob_it_resembles(tmp_path):
    project, e = planted_project(tmp_path)
    real = project.blob_path(e.fields.data.blob_id)
    planted = real[:-len(".tar")] + "\n.tar"
    write(planted, b"planted")
    backdate(real)
    backdate(planted)
    run_cli(*on(project, "gc"))
    assert os.path.exists(real) and os.path.exists(planted)
    assert_kept_loads(project, e)


def test_verify_reports_a_file_in_the_blobs_folder_that_is_not_a_blob(tmp_path):
    project, e = planted_project(tmp_path)
    planted = project.blob_path(e.fields.data.blob_id)[:-len(".tar")] + "\n.tar"
    write(planted, b"planted")
    report = json.loads(run_cli(*on(project, "verify", "--json"), code=1).stdout)
    assert [p["kind"] for p in report["problems"]] == ["foreign"]
    assert repr(os.path.relpath(planted, project.datastore)) in report["problems"][0]["detail"]
    assert report["reclaimable"] == []


def test_cat_of_an_id_with_a_trailing_newline_is_not_an_id(tmp_path):
    """Was: the id parsed, the intact blob was read, and its digest (of the id without the
    newline) was called wrong: `corrupt`, exit 1."""
    project, e = planted_project(tmp_path)
    result = run_cli(*on(project, "cat", e.fields.data.blob_id + "\n"), code=3)
    assert "not a blob id" in result.stderr and "corrupt" not in result.stderr
    assert run_cli(*on(project, "cat", e.fields.data.blob_id)).stdout_bytes.startswith(b"d/")


@pytest.mark.parametrize("text", ["xxh128:" + "0" * 32 + "\n", "\nxxh128:" + "0" * 32, "sha256:" + "0" * 64 + "\n"])
def test_a_blob_id_is_matched_whole(text):
    with pytest.raises(InvalidInput):
        parse_id(text)


@pytest.mark.parametrize("text", [" " + "1" * 31, "+" + "1" * 31, "1" * 16 + "_" + "1" * 15, "{" + "1" * 32 + "}",
                                  "urn:uuid:" + "1" * 32, "1" * 32 + "\n"])
def test_an_experiment_id_is_matched_whole(text):
    """`uuid.UUID` takes these (through `int`, ' 111…' is the id '0111…'); an id is 32 hex
    digits, dashed or not."""
    with pytest.raises(InvalidInput):
        parse_experiment_id(text)
    assert parse_experiment_id("1" * 32) == parse_experiment_id("11111111-1111-1111-1111-111111111111")


FIFO_PLACES = {
    "beside-the-references": "undefined/notes.fifo",
    "named-like-a-reference": "undefined/" + "f" * 32,
    "top-level": "pipe",
    "leases": "casstore/leases/" + "f" * 32 + ".json",
    "registry": "casstore/registry/" + "f" * 32 + ".json",
    "ingest-temp": "casstore/tmp/" + "f" * 32 + ".partial",
    "blobs": "casstore/blobs/xxh128/ff/" + "f" * 30 + ".tar",
    "trash": "casstore/trash/xxh128-ff-" + "f" * 30 + ".tar",
}


@pytest.mark.parametrize("place", sorted(FIFO_PLACES))
def test_a_fifo_in_the_datastore_hangs_neither_verify_nor_gc(tmp_path, place):
    """Was: verify and gc opened every small file (named-reference scan, leases, registry,
    leftovers) and blocked for ever on a FIFO without a writer. Only regular files are read,
    and gc deletes none of what it did not read as its own."""
    project, e = planted_project(tmp_path)
    fifo = os.path.join(project.datastore, *FIFO_PLACES[place].split("/"))
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    backdate(fifo)
    with deadline(30):
        if place == "registry":  # an entry that is not a regular file: gc and verify refuse, naming it
            for command in (("verify",), ("gc", "--grace", "0")):
                assert "f" * 32 + " " in run_cli(*on(project, *command), code=3).stderr
        else:
            foreign = place == "blobs"  # under a blob's name: not a blob, reported for someone to look at
            report = json.loads(run_cli(*on(project, "verify", "--json"), code=1 if foreign else 0).stdout)
            assert [p["kind"] for p in report["problems"]] == (["foreign"] if foreign else [])
            run_cli(*on(project, "gc", "--grace", "0"))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert_kept_loads(project, e)


def test_a_fifo_in_place_of_the_format_file_is_refused_at_once(tmp_path):
    project, _e = planted_project(tmp_path)
    fmt = os.path.join(project.datastore, "casstore", "FORMAT")
    os.unlink(fmt)
    os.mkfifo(fmt)
    with deadline(30):
        result = run_cli(*on(project, "verify"), code=3)
    assert "not a regular file" in result.stderr and result.stderr.count("\n") == 1


def test_a_symlink_to_dev_zero_named_like_a_reference_is_never_read(tmp_path):
    """Was: the named-reference scan followed it and read /dev/zero until MemoryError. The
    commands run in a child capped at 1 GiB of address space, so the old read fails fast."""
    project, e = planted_project(tmp_path)
    link = os.path.join(project.datastore, "undefined", uuid.uuid4().hex)
    os.makedirs(os.path.dirname(link))
    os.symlink("/dev/zero", link)
    for command in (("verify",), ("gc", "--grace", "0")):
        result = run_casstore(*on(project, *command), memory_bytes=1 << 30)
        assert result.returncode == 0, result.stderr
    assert os.path.islink(link)
    assert_kept_loads(project, e)


def _reference_to(project, e, key: str, padding: int = 0) -> str:
    """Write a named reference to `e`'s blob at datastore key `key` (optionally padded with
    spaces); its ArchiveStoreIO URL."""
    body = {"format": "casstore-ref-1", "blob": e.fields.data.blob_id, "size": e.fields.data.size, "arc_dir": "d"}
    write(os.path.join(project.datastore, *key.split("/")), json.dumps(body).encode() + b" " * padding)
    return f"file:///{key}"


def test_a_named_reference_that_is_a_symlink_is_refused_not_followed(tmp_path):
    project, e = planted_project(tmp_path)
    outside = _reference_to(project, e, "../outside-ref")[len("file:///"):]
    key = f"undefined/{uuid.uuid4().hex}"
    os.makedirs(os.path.join(project.datastore, "undefined"))
    os.symlink(os.path.join(project.datastore, outside), os.path.join(project.datastore, key))
    project.configure()
    with pytest.raises(UnreadableObject):
        ArchiveStoreIO(f"file:///{key}").extract(str(tmp_path / "target"))
    assert not os.path.exists(tmp_path / "target")


def test_a_named_reference_over_its_bound_is_refused_unread(tmp_path):
    project, e = planted_project(tmp_path)
    url = _reference_to(project, e, f"undefined/{uuid.uuid4().hex}", padding=MAX_REF_BYTES)
    project.configure()
    with pytest.raises(UnreadableObject):
        ArchiveStoreIO(url).extract(str(tmp_path / "target"))
    assert not os.path.exists(tmp_path / "target")


def test_gc_never_deletes_a_users_file_outside_casstore_named_like_a_temp_file(tmp_path):
    """Was: any `*.<32 hex>.tmp` in the datastore was a torn small object of casstore's."""
    project, _e = planted_project(tmp_path)
    notes = write(os.path.join(project.datastore, "my-notes", f"results.{uuid.uuid4().hex}.tmp"), b"mine")
    backdate(notes)
    assert json.loads(run_cli(*on(project, "verify", "--json")).stdout)["reclaimable"] == []
    run_cli(*on(project, "gc", "--grace", "0"))
    assert open(notes, "rb").read() == b"mine"


def test_gc_deletes_the_torn_temp_file_of_a_named_reference(tmp_path):
    """What put_object leaves when killed between write and rename of `<prefix>/<uuid hex>`."""
    project, _e = planted_project(tmp_path)
    torn = write(os.path.join(project.datastore, "undefined", f"{uuid.uuid4().hex}.{uuid.uuid4().hex}.tmp"), b"{")
    backdate(torn)
    run_cli(*on(project, "gc"))
    assert not os.path.exists(torn)


def test_a_registry_entry_over_its_bound_stops_gc_unread(tmp_path):
    """A registry entry is a database gc must read; one too large to be casstore's is not
    read (no unbounded read) and gc deletes nothing, as for a database it cannot open."""
    project, e = planted_project(tmp_path)
    s = project.session()
    s.delete_experiment(s.read_experiment("kept"))
    s.index.dispose()
    entry = write(os.path.join(project.datastore, "casstore", "registry", "e" * 32 + ".json"), b" " * (1 << 20))
    result = run_cli(*on(project, "gc", "--grace", "0"), code=3)
    assert os.path.basename(entry).removesuffix(".json") in result.stderr and result.stderr.count("\n") == 1
    assert os.path.exists(project.blob_path(e.fields.data.blob_id))


def users_folder(tmp_path) -> str:
    """A user's folder outside the datastore, holding files named as gc deletes them in each
    of its folders (a trash key, a lease, an ingest temp file, a quarantined copy, a damage
    record), all two days old, and the user's own files."""
    hexes = uuid.uuid4().hex
    folder = str(tmp_path / "users-folder")
    for rel in ("thesis.tex", "sub/notes.txt", "sub/old.json", f"xxh128-ab-{hexes[2:]}.tar", f"{hexes}.json",
                f"{hexes}.partial", f"xxh128-{hexes}.tar.1000000000.{hexes}", f"xxh128/{hexes}.json"):
        path = write(os.path.join(folder, *rel.split("/")), b"the user's " + rel.encode())
        backdate(path, 2 * 86400)
    return folder


GC_FOLDERS = ["trash", "leases", "tmp", "quarantine", "damaged", "registry"]


@pytest.mark.parametrize("folder", GC_FOLDERS)
def test_gc_deletes_nothing_through_a_gc_folder_replaced_by_a_symlink_to_a_users_folder(tmp_path, folder):
    """Was: os.walk followed `casstore/trash` (or leases, ...) made a symlink, and gc deleted
    the user's files there as trash, expired leases, quarantined copies. A listing through a
    symlinked folder lists nothing; a symlinked registry makes gc refuse (it may hide projects)."""
    project, e = planted_project(tmp_path)
    target = users_folder(tmp_path)
    place = os.path.join(project.datastore, "casstore", folder)
    if os.path.isdir(place):
        os.rename(place, str(tmp_path / f"{folder}-was"))
    os.symlink(target, place)
    before = facts_outside(tmp_path, project.root)
    run_cli(*on(project, "gc", "--grace", "0"), code=3 if folder == "registry" else 0)
    assert facts_outside(tmp_path, project.root) == before
    assert os.path.islink(place)
    if folder != "registry":
        assert_kept_loads(project, e)


def test_gc_moves_no_blob_into_a_trash_folder_that_is_a_symlink(tmp_path):
    """Was: gc renamed the unreferenced blob into the user's folder, then deleted it there
    (a user's file of that name would have been replaced). It refuses, moving nothing."""
    project, e = planted_project(tmp_path)
    s = project.session()
    s.delete_experiment(s.read_experiment("kept"))
    s.index.dispose()
    target = users_folder(tmp_path)
    os.symlink(target, os.path.join(project.datastore, "casstore", "trash"))
    before = facts_outside(tmp_path, project.root)
    result = run_cli(*on(project, "gc", "--grace", "0"), code=3)
    assert "symlink" in result.stderr and result.stderr.count("\n") == 1
    assert facts_outside(tmp_path, project.root) == before
    assert os.path.exists(project.blob_path(e.fields.data.blob_id))


def test_a_persist_writes_no_lease_through_a_leases_folder_that_is_a_symlink(tmp_path):
    """gc lists nothing through a symlinked folder, so a lease written through one would
    protect nothing: the writer refuses (typed) and writes nothing outside the datastore."""
    project, _e = planted_project(tmp_path)
    target = users_folder(tmp_path)
    leases = os.path.join(project.datastore, "casstore", "leases")
    if os.path.isdir(leases):
        os.rmdir(leases)
    os.symlink(target, leases)
    write(tmp_path / "src2" / "b.txt", b"new content " * 100)
    before = facts_outside(tmp_path, project.root)
    s = project.session()
    e = s.create_experiment("new", data=ArchiveStore(src_dir=str(tmp_path / "src2"), arc_dir="d"))
    with pytest.raises(DatastoreError, match="'casstore/leases' is a symlink"):
        e.persist()
    s.index.dispose()
    assert facts_outside(tmp_path, project.root) == before


def test_gc_leaves_a_file_in_the_trash_that_is_not_a_trash_key(tmp_path):
    """Was: the recovery of an interrupted gc deleted every trash object it could not parse."""
    project, _e = planted_project(tmp_path)
    mine = write(os.path.join(project.datastore, "casstore", "trash", "thesis.tex"), b"mine")
    backdate(mine, 2 * 86400)
    run_cli(*on(project, "gc", "--grace", "0"))
    assert open(mine, "rb").read() == b"mine"


@pytest.mark.parametrize("name", ["notes.json", "sub/" + "a" * 32 + ".json", "A" * 32 + ".json", "a" * 31 + ".json"])
def test_gc_deletes_no_file_in_the_leases_folder_that_is_not_named_as_a_lease(tmp_path, name):
    """Was: every unreadable `*.json` at any depth below casstore/leases was an expired lease."""
    project, _e = planted_project(tmp_path)
    mine = write(os.path.join(project.datastore, "casstore", "leases", *name.split("/")), b"mine")
    backdate(mine, 2 * 86400)
    run_cli(*on(project, "gc", "--grace", "0"))
    assert open(mine, "rb").read() == b"mine"


# --------------------------------------------------------------------------- damage under an id (issue 11, item 6)
#
# Dedup must not trust whatever file holds a blob's name: garbage planted under a predictable
# id, bit rot in a stored blob, a planted `.tar` beside an intact `.tar.zst`. A writer that
# holds the bytes moves a copy it shows damaged into the quarantine and publishes its own; a
# read that finds damage records it, so that the next writer knows.


@pytest.fixture(scope="module")
def aged_src(tmp_path_factory):
    """A folder whose listing the stat cache keeps (files an hour old, ctimes over a second
    old): a second persist of it is a stat-cache hit, which reads no file."""
    root = tmp_path_factory.mktemp("aged") / "src"
    make_folder(root, {"d.txt": b"data field " * 100, "sub/e.bin": bytes(range(256)) * 40})
    old = time.time() - 3600
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    time.sleep(1.2)
    return str(root)


def cached_project(tmp_path, codec: str):
    project = rw.Project(tmp_path / "p", statcache=True)
    s = project.session()
    options().set("archivestore.codec", codec)
    return project, s


def persist_folder(s, src: str, name: str | None = None):
    e = s.create_experiment(name or f"e-{uuid.uuid4().hex[:6]}", data=ArchiveStore(src_dir=src, arc_dir="data"))
    e.persist()
    return e


def stored_path(project, blob_id: str, codec: str) -> str:
    return os.path.join(project.datastore, *blob_key(blob_id, codec).split("/"))


def plant(path: str, data: bytes) -> None:
    """Put `data` under a blob's name, as someone with write access to the datastore would."""
    if os.path.exists(path):
        os.chmod(path, 0o644)
        os.unlink(path)
    write(path, data, 0o444)


def flip_a_byte(path: str) -> bytes:
    """Bit rot: one byte in the middle of a stored blob changes, the size stays."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x55
        f.seek(0)
        f.write(data)
    os.chmod(path, 0o444)
    return bytes(data)


def assert_loads(project, s, e, src: str) -> None:
    loaded = s.load_experiment(e.name)
    assert file_tree(os.path.join(project.target(loaded), "data")) == file_tree(src)


def quarantined(project) -> list[tuple[str, bytes]]:
    return [(q.blob_id, (Path(project.datastore) / q.key).read_bytes())
            for q in project.store().blobs.iter_quarantine()]


def garbage(kind: str, tar: bytes) -> bytes:
    return {"short": b"garbage " * 100,
            "same-size": bytes(len(tar)),                      # size right, first block wrong
            "not-zstd": b"garbage " * 100,
            "other-frame": zstandard.compress(bytes(len(tar)))}[kind]  # a zstd frame of the right size


@pytest.mark.parametrize("codec, kind", [("none", "short"), ("none", "same-size"),
                                         ("zstd", "not-zstd"), ("zstd", "other-frame")])
def test_garbage_planted_under_a_predictable_id_is_replaced_by_the_next_persist(tmp_path, aged_src, codec, kind):
    project, s = cached_project(tmp_path, codec)
    tar = tar_bytes(scan(aged_src, "data"))
    blob_id = digest_bytes(tar)
    bad = garbage(kind, tar)
    plant(stored_path(project, blob_id, codec), bad)
    e = persist_folder(s, aged_src)
    assert e.fields.data.blob_id == blob_id
    assert_loads(project, s, e, aged_src)
    assert quarantined(project) == [(blob_id, bad)]
    report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == []
    assert [r.kind for r in report.reclaimable] == ["quarantined"]


@pytest.mark.parametrize("seen_by", ["load", "verify --deep"])
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_bit_rot_seen_by_a_read_is_repaired_by_the_next_persist_of_the_folder(tmp_path, aged_src, codec, seen_by):
    """The second persist is a stat-cache hit: the damage recorded by the read makes it
    archive the folder again, move the rotten copy aside and publish the good bytes."""
    project, s = cached_project(tmp_path, codec)
    e = persist_folder(s, aged_src)
    blob_id = e.fields.data.blob_id
    rotten = flip_a_byte(stored_path(project, blob_id, codec))
    if seen_by == "load":
        with pytest.raises(LoadError) as info:
            s.load_experiment(e.name)
        assert isinstance(info.value.failures[0].error, CorruptBlob)
    else:
        assert [p.blob for p in verify(s.index, project.store(), field_roots=field_roots, deep=True).problems] == [blob_id]
    assert read_damage(project.store().blobs, blob_id) is not None
    assert [p.kind for p in verify(s.index, project.store(), field_roots=field_roots).problems] == ["damaged"]  # known, even without --deep
    again = persist_folder(s, aged_src)
    assert again.fields.data.blob_id == blob_id
    assert_loads(project, s, e, aged_src)
    assert_loads(project, s, again, aged_src)
    assert quarantined(project) == [(blob_id, rotten)]
    assert read_damage(project.store().blobs, blob_id) is None
    assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []


def test_a_damage_record_for_an_intact_blob_replaces_nothing(tmp_path, aged_src):
    """A record is only a reason to read: anyone who can write the datastore can write one,
    and a copy that reads correctly stays where it is (same file), the record goes."""
    project, s = cached_project(tmp_path, "none")
    e = persist_folder(s, aged_src)
    blob_id = e.fields.data.blob_id
    path = stored_path(project, blob_id, "none")
    inode = os.stat(path).st_ino
    blobs = project.store().blobs
    record_damage(blobs, blobs.find(blob_id), "digest", "a false report")
    persist_folder(s, aged_src)
    assert os.stat(path).st_ino == inode
    assert quarantined(project) == []
    assert read_damage(blobs, blob_id) is None


def planted_tar_beside_zstd(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "zstd")
    e = persist_folder(s, aged_src)
    blob_id = e.fields.data.blob_id
    tar = tar_bytes(scan(aged_src, "data"))
    plant(stored_path(project, blob_id, "none"), tar[:512] + bytes(len(tar) - 512))  # right size and header
    return project, s, e, blob_id


def test_a_planted_tar_beside_an_intact_tar_zst_does_not_break_loads(tmp_path, aged_src):
    project, s, e, _blob_id = planted_tar_beside_zstd(tmp_path, aged_src)
    assert_loads(project, s, e, aged_src)


def test_verify_reports_a_planted_tar_beside_an_intact_tar_zst_as_damage(tmp_path, aged_src):
    project, s, _e, blob_id = planted_tar_beside_zstd(tmp_path, aged_src)
    problems = verify(s.index, project.store(), field_roots=field_roots, deep=True).problems
    assert [(p.kind, p.blob) for p in problems] == [("copy", blob_id)]
    assert "second copy (.tar)" in problems[0].detail


def test_verify_without_deep_reports_a_planted_tar_of_the_wrong_size_beside_an_intact_tar_zst(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "zstd")
    blob_id = persist_folder(s, aged_src).fields.data.blob_id
    plant(stored_path(project, blob_id, "none"), b"garbage")
    assert [(p.kind, p.blob) for p in verify(s.index, project.store(), field_roots=field_roots).problems] == [("copy", blob_id)]


def test_the_next_persist_moves_a_planted_tar_beside_an_intact_tar_zst_aside(tmp_path, aged_src):
    project, s, e, blob_id = planted_tar_beside_zstd(tmp_path, aged_src)
    persist_folder(s, aged_src)
    assert not os.path.exists(stored_path(project, blob_id, "none"))
    assert [b for b, _data in quarantined(project)] == [blob_id]
    assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []
    assert_loads(project, s, e, aged_src)


def test_verify_deep_drops_a_damage_record_its_reread_refutes(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "none")
    blob_id = persist_folder(s, aged_src).fields.data.blob_id
    blobs = project.store().blobs
    record_damage(blobs, blobs.find(blob_id), "size", "a reference with a wrong size")
    assert [p.kind for p in verify(s.index, project.store(), field_roots=field_roots).problems] == ["damaged"]
    assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []
    assert read_damage(blobs, blob_id) is None
    assert verify(s.index, project.store(), field_roots=field_roots).problems == []


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_read_expecting_another_size_records_no_damage_for_an_intact_blob(tmp_path, delta):
    """A reader's expected size (a named reference anyone can write, another project's stale
    facts) proves nothing about the bytes: only what the bytes themselves show is recorded,
    else every project's verify would report the intact blob as damaged."""
    victim = Victim(tmp_path)
    archive = ArchiveStoreIO.create(src_dir=str(tmp_path / "src-data"), arc_dir="data")
    url = write_named_ref(victim, archive.blob_id, size=victim.store.check(archive.blob_id) + delta)
    with pytest.raises(CorruptBlob) as raised:
        ArchiveStoreIO(url).extract(str(tmp_path / "t"))
    assert raised.value.reason == "size"
    assert read_damage(victim.store.blobs, archive.blob_id) is None


def test_a_symlink_planted_as_a_tar_beside_an_intact_tar_zst_is_skipped_by_loads_and_moved_aside(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "zstd")
    e = persist_folder(s, aged_src)
    blob_id = e.fields.data.blob_id
    planted = stored_path(project, blob_id, "none")
    os.symlink("/dev/zero", planted)
    assert_loads(project, s, e, aged_src)
    problems = verify(s.index, project.store(), field_roots=field_roots).problems
    assert [p.kind for p in problems] == ["foreign"] and os.path.basename(planted) in problems[0].detail
    persist_folder(s, aged_src)
    assert not os.path.lexists(stored_path(project, blob_id, "none"))
    assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []
