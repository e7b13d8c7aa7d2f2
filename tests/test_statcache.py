"""The stat cache (casstore/cas/store/statcache.py, design P4): an unchanged folder maps to its
blob id without a byte read; any change of a member's stat facts, a freshly written folder,
or a blob gone since, makes the folder be read again."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from helpers import blob_path, make_src, put

import casstore.cas.tar.write as tarball


class CopyCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = tarball._copy_file

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(tarball, "_copy_file", counting)


@pytest.fixture(scope="module")
def aged(tmp_path_factory):
    """Folders whose files are an hour old (mtime) and whose ctimes are over a second old,
    so that a listing of them is outside the racy window and gets cached."""
    root = tmp_path_factory.mktemp("aged")
    old = time.time() - 3600
    folders = {}
    for name in ["hit", "touch", "chmod", "deleted", "lease"]:
        folder = make_src(root / name)
        for dirpath, _dirs, files in os.walk(folder):
            for f in files:
                os.utime(os.path.join(dirpath, f), (old, old), follow_symlinks=False)
        folders[name] = folder
    time.sleep(1.2)
    return folders


def test_unchanged_folder_is_not_read_again(cs, aged, monkeypatch):
    first = put(cs, aged["hit"])
    counter = CopyCounter(monkeypatch)
    second = put(cs, aged["hit"])
    assert counter.calls == 0
    assert second == dataclasses.replace(first, new=False)


def test_cache_hit_also_takes_a_lease_on_the_blob(cs, ds, aged, monkeypatch):
    first = put(cs, aged["lease"])
    counter = CopyCounter(monkeypatch)
    with cs.lease() as lease:
        cs.put_dir(aged["lease"], "data", lease=lease)
        assert counter.calls == 0
        with open(os.path.join(ds.root, *lease.key.split("/")), "rb") as f:
            assert first.blob_id in f.read().decode()


def test_touched_file_misses_the_cache_and_gives_the_same_id(cs, aged, monkeypatch):
    first = put(cs, aged["touch"])
    newer = time.time() - 1800
    os.utime(os.path.join(aged["touch"], "sub/b.bin"), (newer, newer))
    counter = CopyCounter(monkeypatch)
    second = put(cs, aged["touch"])
    assert counter.calls > 0
    assert second.blob_id == first.blob_id


def test_chmod_misses_the_cache_and_gives_another_id(cs, aged, monkeypatch):
    first = put(cs, aged["chmod"])
    os.chmod(os.path.join(aged["chmod"], "a.csv"), 0o600)
    counter = CopyCounter(monkeypatch)
    second = put(cs, aged["chmod"])
    assert counter.calls > 0
    assert second.blob_id != first.blob_id


def test_cache_hit_whose_blob_was_deleted_stores_the_blob_again(cs, ds, aged, monkeypatch):
    first = put(cs, aged["deleted"])
    os.unlink(blob_path(ds, first.blob_id, "none"))
    counter = CopyCounter(monkeypatch)
    second = put(cs, aged["deleted"])
    assert counter.calls > 0
    assert second.blob_id == first.blob_id and second.new
    assert os.path.exists(blob_path(ds, first.blob_id, "none"))


def test_freshly_written_folder_is_not_cached(cs, src, monkeypatch):
    put(cs, src)
    counter = CopyCounter(monkeypatch)
    put(cs, src)
    assert counter.calls > 0
