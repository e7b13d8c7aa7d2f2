"""The load cache (casstore/cas/store/extract_cache.py): a load into a target that still holds
exactly what the last load of the same blob wrote there writes nothing and reads no blob;
any difference in a recorded fact, and the blob is extracted again."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import time
from pathlib import Path

import pytest
from helpers import blob_files, blob_path, make_folder, make_src, put

from casstore import ArchiveStore, LoadError, create_session
from casstore.cas.store import extract_cache
from casstore.cas.store.content_store import ContentStore
from casstore.errors import BlobNotFound, CorruptBlob
from casstore.opts import options
from casstore.stores import archivestore_root


@pytest.fixture
def stored(cs, tmp_path):
    """A folder stored in `cs` (a csv, a binary, a nested file, a symlink): its blob facts."""
    return put(cs, make_src(tmp_path / "src"))


@pytest.fixture
def target(tmp_path) -> Path:
    return tmp_path / "target"


@pytest.fixture
def by_stat_alone(monkeypatch):
    """No member is racy: what a test proves is then proven by stat alone."""
    monkeypatch.setattr(extract_cache.ExtractCache, "_racy_from", lambda self: 1 << 62)


def stats(root) -> dict:
    """Every path below `root` -> (inode, mtime_ns, ctime_ns, mode)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
                                                                       st.st_mode)
    return out


def drop_blob(ds, blob_id: str) -> None:
    os.remove(blob_path(ds, blob_id, "none"))


def records(cache_path: str) -> int:
    with sqlite3.connect(cache_path) as conn:
        return conn.execute("SELECT count(*) FROM extraction_records").fetchone()[0]


# ---------------------------------------------------------------------------------------
# an untouched target


def test_second_load_writes_nothing_and_does_not_read_the_blob(cs, ds, stored, target):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    before = stats(target)
    drop_blob(ds, stored.blob_id)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert stats(target) == before


def test_second_load_returns_what_the_first_published(cs, ds, stored, target):
    first = cs.extract(stored.blob_id, str(target), size=stored.size)
    drop_blob(ds, stored.blob_id)
    assert cs.extract(stored.blob_id, str(target), size=stored.size) == first


def test_a_changed_file_makes_the_load_read_the_blob_again(cs, ds, stored, target):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    (target / "data" / "a.csv").write_bytes(b"changed")
    drop_blob(ds, stored.blob_id)
    with pytest.raises(BlobNotFound):
        cs.extract(stored.blob_id, str(target), size=stored.size)


def test_files_the_blob_does_not_hold_are_left_alone(cs, ds, stored, target):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    (target / "data" / "mine.txt").write_bytes(b"not in the blob")
    drop_blob(ds, stored.blob_id)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert (target / "data" / "mine.txt").read_bytes() == b"not in the blob"


def test_reload_of_an_untouched_experiment_writes_nothing_and_reads_no_blob(workdir):
    make_folder("d", {"f.txt": b"one", "sub/g.bin": bytes(range(256))})
    session = create_session()
    stored = session.create_experiment("x", data=ArchiveStore("d")).persist()
    loaded = session.load_experiment("x")
    target = Path(archivestore_root()) / str(stored.id_experiment)
    before = stats(target)
    for path in blob_files():
        path.unlink()
    loaded.reload()
    assert stats(target) == before


def test_reload_after_a_change_reads_the_blob_and_fails_without_it(workdir):
    make_folder("d", {"f.txt": b"one"})
    session = create_session()
    stored = session.create_experiment("x", data=ArchiveStore("d")).persist()
    loaded = session.load_experiment("x")
    (Path(archivestore_root()) / str(stored.id_experiment) / "f.txt").write_bytes(b"two")
    for path in blob_files():
        path.unlink()
    with pytest.raises(LoadError):
        loaded.reload()


# ---------------------------------------------------------------------------------------
# each recorded fact changed alone forces a rewrite


def same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    path.write_bytes(b"X" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def touch(path: Path) -> None:
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 1_000_000_000))


def chmod(path: Path) -> None:
    path.chmod(0o600)


def copy_with_a_new_inode(path: Path) -> None:
    copy = path.with_name("copy")
    shutil.copy2(path, copy)
    os.replace(copy, path)


def delete(path: Path) -> None:
    path.unlink()


CHANGES = [same_size_same_mtime, touch, chmod, copy_with_a_new_inode, delete]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__ for c in CHANGES])
def test_a_file_changed_in_one_recorded_fact_is_rewritten(cs, stored, target, by_stat_alone, change):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    path = target / "data" / "a.csv"
    original = path.read_bytes()
    change(path)
    changed_inode = os.lstat(path).st_ino if path.exists() else None
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert path.read_bytes() == original
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.lstat(path).st_ino != changed_inode


def test_a_retargeted_symlink_is_restored(cs, stored, target, by_stat_alone):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    link = target / "data" / "sub" / "link"
    link.unlink()
    link.symlink_to("../somewhere")
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert os.readlink(link) == "../a.csv"


def test_a_folder_replaced_by_a_symlink_to_the_same_files_forces_a_load(cs, ds, stored, target, by_stat_alone):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    os.rename(target / "data" / "sub", target / "elsewhere")
    os.symlink("../elsewhere", target / "data" / "sub")
    drop_blob(ds, stored.blob_id)
    with pytest.raises(BlobNotFound):
        cs.extract(stored.blob_id, str(target), size=stored.size)


# ---------------------------------------------------------------------------------------
# racy timestamps


def same_tick_record(cache_path: str, path: Path, name: bytes) -> None:
    """Make the record hold `path`'s current stat (its recorded digest kept): what a change
    landing in the timestamp tick of the load's own write leaves behind."""
    st = os.lstat(path)
    with sqlite3.connect(cache_path) as conn:
        names, facts = conn.execute("SELECT names, facts FROM extraction_records").fetchone()
        rows = list(extract_cache._FACT.iter_unpack(facts))
        i = names.split(b"\0").index(name)
        rows[i] = (rows[i][0], st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                   rows[i][7])
        conn.execute("UPDATE extraction_records SET facts = ?", (b"".join(struct.pack("<cIQqqQQ16s", *r) for r in rows),))


def test_a_change_in_the_same_tick_as_the_load_is_caught_by_content(cs, stored, target, cache_path):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    path = target / "data" / "a.csv"
    original = path.read_bytes()
    same_size_same_mtime(path)
    same_tick_record(cache_path, path, b"data/a.csv")
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert path.read_bytes() == original


def test_racy_members_are_checked_by_content_once_then_by_stat(cs, stored, target, monkeypatch):
    monkeypatch.setattr(extract_cache, "RACY_TICK_NS", 50_000_000)
    hashed: list[bytes] = []
    real = extract_cache._file_digest
    monkeypatch.setattr(extract_cache, "_file_digest", lambda path, fact: hashed.append(path) or real(path, fact))
    cs.extract(stored.blob_id, str(target), size=stored.size)
    time.sleep(0.1)
    before = stats(target)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert len(hashed) == 3 and stats(target) == before
    hashed.clear()
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert hashed == []



def test_a_load_whose_last_files_are_large_waits_out_the_tick_so_the_next_load_reads_none(
        cs, tmp_path, target, monkeypatch):
    make_folder(tmp_path / "big", {"model.bin": os.urandom(extract_cache.RACY_WAIT_BYTES), "b.txt": b"b"})
    facts = put(cs, tmp_path / "big")
    hashed: list[bytes] = []
    real = extract_cache._file_digest
    monkeypatch.setattr(extract_cache, "_file_digest", lambda path, fact: hashed.append(path) or real(path, fact))
    cs.extract(facts.blob_id, str(target), size=facts.size)
    cs.extract(facts.blob_id, str(target), size=facts.size)
    assert hashed == []


# ---------------------------------------------------------------------------------------
# what is never trusted


def test_a_corrupt_blob_leaves_no_record_and_fails_again(cs, ds, stored, target, cache_path):
    path = blob_path(ds, stored.blob_id, "none")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(512 + 20)
        f.write(b"!")
    for _ in range(2):
        with pytest.raises(CorruptBlob):
            cs.extract(stored.blob_id, str(target), size=stored.size)
    assert records(cache_path) == 0


def test_the_record_of_another_target_does_not_apply(cs, ds, stored, tmp_path):
    cs.extract(stored.blob_id, str(tmp_path / "one"), size=stored.size)
    shutil.copytree(tmp_path / "one", tmp_path / "two", symlinks=True)
    drop_blob(ds, stored.blob_id)
    with pytest.raises(BlobNotFound):
        cs.extract(stored.blob_id, str(tmp_path / "two"), size=stored.size)


def test_the_record_of_another_blob_does_not_apply(cs, ds, stored, target, tmp_path):
    make_folder(tmp_path / "other", {"a.csv": (tmp_path / "src" / "a.csv").read_bytes()})
    other = put(cs, tmp_path / "other")
    cs.extract(stored.blob_id, str(target), size=stored.size)
    drop_blob(ds, other.blob_id)
    with pytest.raises(BlobNotFound):
        cs.extract(other.blob_id, str(target), size=other.size)


def test_a_partial_load_is_never_skipped_and_records_nothing(cs, ds, stored, target, cache_path):
    cs.extract(stored.blob_id, str(target), size=stored.size, members=["data/a.csv"])
    assert records(cache_path) == 0
    cs.extract(stored.blob_id, str(target), size=stored.size)
    drop_blob(ds, stored.blob_id)
    with pytest.raises(BlobNotFound):
        cs.extract(stored.blob_id, str(target), size=stored.size, members=["data/a.csv"])


def test_without_a_stat_cache_every_load_extracts(ds, stored, target):
    store = ContentStore(ds)
    store.extract(stored.blob_id, str(target), size=stored.size)
    drop_blob(ds, stored.blob_id)
    with pytest.raises(BlobNotFound):
        store.extract(stored.blob_id, str(target), size=stored.size)


def test_option_statcache_disable_makes_every_reload_extract(workdir):
    options().set("statcache.disable", True)
    make_folder("d", {"f.txt": b"one"})
    session = create_session()
    session.create_experiment("x", data=ArchiveStore("d")).persist()
    loaded = session.load_experiment("x")
    for path in blob_files():
        path.unlink()
    with pytest.raises(LoadError):
        loaded.reload()


def _hashed(monkeypatch) -> list[bytes]:
    hashed: list[bytes] = []
    real = extract_cache._file_digest
    monkeypatch.setattr(extract_cache, "_file_digest", lambda path, fact: hashed.append(path) or real(path, fact))
    return hashed


def test_members_stamped_a_tick_before_the_probe_are_trusted_at_the_very_next_load(cs, stored, target, monkeypatch):
    monkeypatch.setattr(extract_cache, "RACY_TICK_NS", 1_000_000)
    real = extract_cache.ExtractCache.record
    monkeypatch.setattr(extract_cache.ExtractCache, "record",
                        lambda self, written: (time.sleep(0.05), real(self, written))[1])
    hashed = _hashed(monkeypatch)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    before = stats(target)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert hashed == [] and stats(target) == before


def test_without_a_probe_members_of_the_last_second_are_racy(cs, stored, target, monkeypatch):
    def no_probe(*args, **kwargs):
        raise PermissionError("read-only target")

    monkeypatch.setattr(extract_cache, "file_system_now", no_probe)
    hashed = _hashed(monkeypatch)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert len(hashed) == 3


def test_the_probe_leaves_nothing_in_the_target(cs, stored, target):
    cs.extract(stored.blob_id, str(target), size=stored.size)
    assert not [p for p in os.listdir(target) if p.startswith(".casstore")]


def test_the_stat_cache_keeps_only_the_latest_load_records(cs, stored, tmp_path, cache_path, monkeypatch):
    from casstore.cas.store import statcache

    monkeypatch.setattr(statcache, "MAX_EXTRACTIONS", 3)
    for i in range(5):
        cs.extract(stored.blob_id, str(tmp_path / f"t{i}"), size=stored.size)
    with sqlite3.connect(cache_path) as conn:
        kept = sorted(os.path.basename(r[0]) for r in conn.execute("SELECT target FROM extraction_records"))
    assert kept == ["t2", "t3", "t4"]
