"""Large files' blocks written around the page cache (casstore/cas/backends/local_ingest.py,
`direct_write`): the bytes on disk are the block's whatever its size, the unaligned tail
and a file system that refuses O_DIRECT included; other chunks go through the page cache."""

from __future__ import annotations

import errno
import mmap
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.cas.backends import local_ingest
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.backends.local_ingest import DIRECT_ALIGN, DIRECT_MIN, direct_write
from casstore.cas.digest import digest_bytes

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")


def pooled(data: bytes) -> mmap.mmap:
    """`data` in a page-aligned buffer, as the writer's block pool holds a block."""
    block = mmap.mmap(-1, len(data))
    block[:] = data
    return block


def _empty(tmp_path, name="f"):
    path = tmp_path / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return path, fd


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.integers(0, 3 * DIRECT_ALIGN), seed=st.binary(min_size=1, max_size=64))
def test_the_file_holds_exactly_the_chunk_whatever_its_size(tmp_path, extra, seed):
    data = (seed * (DIRECT_MIN // len(seed) + 1))[:DIRECT_MIN] + os.urandom(extra)
    path, fd = _empty(tmp_path, f"f{len(data)}-{seed.hex()[:8]}")
    try:
        assert direct_write(str(path), fd, pooled(data))
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_chunk_under_the_direct_minimum_is_left_to_the_page_cache(tmp_path):
    path, fd = _empty(tmp_path)
    try:
        assert not direct_write(str(path), fd, pooled(b"x" * (DIRECT_MIN - 1)))
    finally:
        os.close(fd)
    assert path.read_bytes() == b""


def test_a_file_system_refusing_o_direct_gets_the_chunk_through_the_page_cache(tmp_path, monkeypatch):
    real_write = os.write

    def refuse(fd, data):
        if fcntl_direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    def fcntl_direct(fd):
        import fcntl

        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)

    monkeypatch.setattr(local_ingest.os, "write", refuse)
    monkeypatch.setattr(local_ingest, "_direct_refused", set())
    store = LocalBlobStore(str(tmp_path / "ds"))
    os.makedirs(store.root)
    data = os.urandom(DIRECT_MIN + 100)
    ingest = store.begin_ingest()
    ingest.write_whole(pooled(data))
    chunk_id = digest_bytes(data)
    stat, _new = ingest.commit(chunk_id, "none")
    assert open(os.path.join(store.root, stat.key), "rb").read() == data
    assert local_ingest._direct_refused  # the device is not tried again


def test_a_write_after_a_whole_write_appends(tmp_path):
    store = LocalBlobStore(str(tmp_path / "ds"))
    os.makedirs(store.root)
    data, more = os.urandom(DIRECT_MIN), b"and more"
    ingest = store.begin_ingest()
    ingest.write_whole(pooled(data))
    ingest.write(more)
    stat, _new = ingest.commit(digest_bytes(data + more), "none")
    assert open(os.path.join(store.root, stat.key), "rb").read() == data + more


def test_a_chunk_that_is_no_pooled_block_goes_through_the_page_cache(tmp_path, monkeypatch):
    direct: list[int] = []
    real = local_ingest.direct_write
    monkeypatch.setattr(local_ingest, "direct_write",
                        lambda path, fd, data: direct.append(len(data)) or real(path, fd, data))
    store = LocalBlobStore(str(tmp_path / "ds"))
    os.makedirs(store.root)
    small_files, block = os.urandom(DIRECT_MIN * 4), pooled(os.urandom(DIRECT_MIN * 8))
    for data in (small_files, block):
        ingest = store.begin_ingest()
        ingest.write_whole(data)
        stat, _new = ingest.commit(digest_bytes(memoryview(data)), "none")
        assert open(os.path.join(store.root, stat.key), "rb").read() == bytes(data)
    assert direct == [len(block)]
