"""Hostile input: tampered blobs in the datastore, and odd source trees.

Hostile blobs, as if someone had write access to the datastore: a stored blob file is
replaced (chmod writable, overwrite) by a TAR with a member escaping the target, an absolute
path, a symlink pointing out, a device file, a huge GNU longname header, or by a zstd bomb.
Loading must raise LoadError naming experiment, field and blob, write nothing outside the
target, and leave nothing of the hostile archive inside it; the experiment's other field
still extracts. The same archives are also stored "forged": under their own correct digest
and referenced by an experiment (someone who can write the database too), so that the
member validation is what refuses them, not the digest check.

Odd trees: non-UTF-8 names, names over 100 bytes, empty files and folders, hard links,
links leading outside src_dir (stored as content), FIFOs and dangling links (skipped)."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import pytest
import zstandard
from helpers import file_tree, make_folder, write

import reliability_worker as rw
from casstore import ArchiveStore, LoadError, options
from casstore.cas.blobs import blob_key
from casstore.cas.damage import read_damage, record_damage
from casstore.cas.digest import digest_bytes
from casstore.cas.tarball import (DIRECTORY, FILE, HARDLINK, LONGLINK, RECORD, SYMLINK, _block, header, padding, scan,
                                  tar_bytes)
from casstore.cas.verify import verify
from casstore.errors import CorruptBlob, UnsafeArchive

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
    }


def zstd_bomb(inflated: int = 1 << 30) -> bytes:
    """A small .tar.zst whose TAR announces a 1 GiB member of zeros (~32 KB compressed)."""
    out = zstandard.ZstdCompressor(level=1)
    import io

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
    """An experiment with two fields: `data` (the blob to tamper with) and `good`."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.project = rw.Project(tmp_path / "p")
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
    report = verify(victim.session.index, victim.store, deep=True)
    assert [p.blob for p in report.problems] == [blob_id]


@pytest.mark.parametrize("case", HOSTILE)
def test_forged_blob_under_its_own_digest_is_refused_by_member_validation(tmp_path, case):
    """The attacker also wrote the index: the blob's digest checks out, so only the member
    validation stands between the archive and the file system."""
    victim = Victim(tmp_path)
    data = finish_tar(hostile_archives(victim.outside)[case])
    with victim.store.lease() as lease:
        info = victim.store.put_tar_bytes(data, lease=lease)
    forged = ArchiveStore.from_ref({"blob": info.blob_id, "arc_dir": "data", "size": info.size})
    e = victim.persist(forged)
    err = victim.assert_refused(e, info.blob_id)
    assert isinstance(err.failures[0].error, UnsafeArchive), err.failures[0].error


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


def test_forged_zstd_bomb_with_a_small_recorded_size_is_refused(tmp_path):
    """Even a bomb stored under its own digest is read only up to the recorded size."""
    victim = Victim(tmp_path)
    bomb = zstd_bomb(256 << 20)
    from casstore.cas.digest import digest_bytes

    # its real id: hash the inflated stream once
    blob_id = digest_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(bomb))
    path = os.path.join(victim.store.blobs.root, *blob_key(blob_id, "zstd").split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bomb)
    forged = ArchiveStore.from_ref({"blob": blob_id, "arc_dir": "data", "size": 4096})
    e = victim.persist(forged)
    err = victim.assert_refused(e, blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob)


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
    report = verify(s.index, project.store(), deep=True)
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
    assert verify(s.index, project.store(), deep=True).problems == []


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
    report = verify(s.index, project.store(), deep=True)
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
        assert [p.blob for p in verify(s.index, project.store(), deep=True).problems] == [blob_id]
    assert read_damage(project.store().blobs, blob_id) is not None
    assert [p.kind for p in verify(s.index, project.store()).problems] == ["damaged"]  # known, even without --deep
    again = persist_folder(s, aged_src)
    assert again.fields.data.blob_id == blob_id
    assert_loads(project, s, e, aged_src)
    assert_loads(project, s, again, aged_src)
    assert quarantined(project) == [(blob_id, rotten)]
    assert read_damage(project.store().blobs, blob_id) is None
    assert verify(s.index, project.store(), deep=True).problems == []


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
    problems = verify(s.index, project.store(), deep=True).problems
    assert [(p.kind, p.blob) for p in problems] == [("copy", blob_id)]
    assert "second copy (.tar)" in problems[0].detail


def test_verify_without_deep_reports_a_planted_tar_of_the_wrong_size_beside_an_intact_tar_zst(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "zstd")
    blob_id = persist_folder(s, aged_src).fields.data.blob_id
    plant(stored_path(project, blob_id, "none"), b"garbage")
    assert [(p.kind, p.blob) for p in verify(s.index, project.store()).problems] == [("copy", blob_id)]


def test_the_next_persist_moves_a_planted_tar_beside_an_intact_tar_zst_aside(tmp_path, aged_src):
    project, s, e, blob_id = planted_tar_beside_zstd(tmp_path, aged_src)
    persist_folder(s, aged_src)
    assert not os.path.exists(stored_path(project, blob_id, "none"))
    assert [b for b, _data in quarantined(project)] == [blob_id]
    assert verify(s.index, project.store(), deep=True).problems == []
    assert_loads(project, s, e, aged_src)


def test_verify_deep_drops_a_damage_record_its_reread_refutes(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "none")
    blob_id = persist_folder(s, aged_src).fields.data.blob_id
    blobs = project.store().blobs
    record_damage(blobs, blobs.find(blob_id), "size", "a reference with a wrong size")
    assert [p.kind for p in verify(s.index, project.store()).problems] == ["damaged"]
    assert verify(s.index, project.store(), deep=True).problems == []
    assert read_damage(blobs, blob_id) is None
    assert verify(s.index, project.store()).problems == []


def test_a_symlink_planted_as_a_tar_beside_an_intact_tar_zst_is_skipped_by_loads_and_moved_aside(tmp_path, aged_src):
    project, s = cached_project(tmp_path, "zstd")
    e = persist_folder(s, aged_src)
    blob_id = e.fields.data.blob_id
    os.symlink("/dev/zero", stored_path(project, blob_id, "none"))
    assert_loads(project, s, e, aged_src)
    assert [(p.kind, p.blob) for p in verify(s.index, project.store()).problems] == [("copy", blob_id)]
    persist_folder(s, aged_src)
    assert not os.path.lexists(stored_path(project, blob_id, "none"))
    assert verify(s.index, project.store(), deep=True).problems == []
