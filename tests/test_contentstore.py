"""The content store over a local datastore (design P3, P4, P7, P11): folders in, one
read-only blob per content, folders out only after the digest checked out, and the reader
that checks it. The stat cache is tested in test_statcache.py, leases in test_leases.py."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pytest
import zstandard
from helpers import blob_path, files_below, put, write

from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.digest import digest_bytes
from casstore.cas.store.content_store import ContentStore
from casstore.cas.store.statcache import StatCache
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes
from casstore.errors import BlobNotFound, CorruptBlob, SourceChanged, SourceNotFound

# ---------------------------------------------------------------------------------------
# helpers


def blob_files(ds: LocalBlobStore) -> list[str]:
    return files_below(os.path.join(ds.root, "casstore", "blobs"))


def tmp_files(ds: LocalBlobStore) -> list[str]:
    return files_below(os.path.join(ds.root, "casstore", "tmp"))


def snapshot(root) -> dict:
    out = {}
    for rel in files_below(root):
        with open(os.path.join(root, rel), "rb") as f:
            out[rel] = f.read()
    dirs = sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))
    return {"files": out, "dirs": dirs}


@pytest.fixture
def target(tmp_path):
    t = tmp_path / "target"
    t.mkdir()
    (t / "existing.txt").write_bytes(b"was here")
    return t


# ---------------------------------------------------------------------------------------
# content addressing and dedup


@pytest.mark.parametrize("with_cache", [True, False], ids=["statcache", "no-statcache"])
def test_same_folder_twice_gives_one_blob_file(ds, cache_path, src, with_cache):
    cs = ContentStore(ds, StatCache(cache_path) if with_cache else None)
    first = put(cs, src)
    second = put(cs, src)
    assert first.blob_id == second.blob_id
    assert (first.new, second.new) == (True, False)
    assert len(blob_files(ds)) == 1


def test_copied_folder_elsewhere_gives_the_same_id_and_one_blob(cs, ds, src, tmp_path):
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(src, copy, symlinks=True)
    assert put(cs, src).blob_id == put(cs, copy).blob_id
    assert len(blob_files(ds)) == 1


def test_blob_id_is_the_digest_of_the_canonical_tar(cs, src):
    info = put(cs, src)
    data = tar_bytes(scan(src, "data"))
    assert info.blob_id == digest_bytes(data)
    assert info.blob_id.startswith("xxh128:")
    assert info.size == len(data)


def test_plain_blob_holds_the_canonical_tar_bytes(cs, ds, src):
    info = put(cs, src)
    with open(blob_path(ds, info.blob_id, "none"), "rb") as f:
        assert f.read() == tar_bytes(scan(src, "data"))
    assert info.stored_size == info.size


def test_zstd_blob_decompresses_to_the_canonical_tar_bytes(cs, ds, src):
    info = put(cs, src, codec="zstd")
    with open(blob_path(ds, info.blob_id, "zstd"), "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    assert data == tar_bytes(scan(src, "data"))
    assert info.stored_size == os.path.getsize(blob_path(ds, info.blob_id, "zstd")) < info.size


def test_zstd_and_none_give_the_same_id(tmp_path, src):
    plain = put(ContentStore(LocalBlobStore(str(tmp_path / "ds1"))), src, codec="none")
    zstd = put(ContentStore(LocalBlobStore(str(tmp_path / "ds2"))), src, codec="zstd")
    assert plain.blob_id == zstd.blob_id
    assert (plain.codec, zstd.codec) == ("none", "zstd")


def test_content_stored_with_zstd_is_not_stored_again_without(ds, src):
    cs = ContentStore(ds)
    first = put(cs, src, codec="zstd")
    second = put(cs, src, codec="none")
    assert second.blob_id == first.blob_id and not second.new
    assert len(blob_files(ds)) == 1


def test_another_arc_dir_is_another_blob(cs, ds, src):
    assert put(cs, src, "data").blob_id != put(cs, src, "other").blob_id
    assert len(blob_files(ds)) == 2


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_blob_files_are_read_only(cs, ds, src, codec):
    info = put(cs, src, codec=codec)
    assert os.stat(blob_path(ds, info.blob_id, codec)).st_mode & 0o7777 == 0o444


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_temp_area_is_empty_after_put_dir(cs, ds, src, codec):
    put(cs, src, codec=codec)
    put(cs, src, codec=codec)
    assert tmp_files(ds) == []


def test_blob_lives_under_its_sharded_id(cs, ds, src):
    info = put(cs, src)
    hexdigest = info.blob_id.split(":", 1)[1]
    assert blob_files(ds) == [f"xxh128/{hexdigest[:2]}/{hexdigest[2:]}.tar"]


# ---------------------------------------------------------------------------------------
# a TAR stream the caller writes (put_tar_stream), hashed first


def tar_writer(data: bytes):
    def write(sinks, _progress):
        for sink in sinks:
            sink.write(data)
        return len(data)

    return write


def count_ingests(ds: LocalBlobStore, monkeypatch) -> list[int]:
    calls: list[int] = []
    begin = ds.begin_ingest

    def counting():
        calls.append(1)
        return begin()

    monkeypatch.setattr(ds, "begin_ingest", counting)
    return calls


def test_hash_first_finds_a_stored_blob_without_writing_a_copy(cs, ds, src, monkeypatch):
    data = tar_bytes(scan(src, "data"))
    with cs.lease() as lease:
        stored = cs.put_tar_bytes(data, lease=lease)
    ingests = count_ingests(ds, monkeypatch)
    with cs.lease() as lease:
        again = cs.put_tar_stream(tar_writer(data), lease=lease, hash_first=True)
    assert (again.blob_id, again.new, ingests) == (stored.blob_id, False, [])


def test_hash_first_stores_a_new_blob_and_replaces_a_damaged_copy(cs, ds, src):
    data = tar_bytes(scan(src, "data"))
    blob_id = digest_bytes(data)
    path = blob_path(ds, blob_id, "none")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(bytes(len(data)))  # the right size, a damaged first block
    with cs.lease() as lease:
        facts = cs.put_tar_stream(tar_writer(data), lease=lease, hash_first=True)
    with open(path, "rb") as f:
        assert (facts.blob_id, facts.new, f.read()) == (blob_id, True, data)
    assert [q.blob_id for q in ds.iter_quarantine()] == [blob_id]


def test_hash_first_raises_source_changed_when_the_second_pass_differs(cs, ds, src):
    ds.ensure_format()
    ds.set_format("whole")  # a chunked write reads its source once: there is no second pass to differ
    data = tar_bytes(scan(src, "data"))
    passes = iter([data, data[:-1] + b"x"])

    def write(sinks, _progress):
        chunk = next(passes)
        for sink in sinks:
            sink.write(chunk)
        return len(chunk)

    with pytest.raises(SourceChanged), cs.lease() as lease:
        cs.put_tar_stream(write, lease=lease, hash_first=True)
    assert (blob_files(ds), tmp_files(ds)) == ([], [])


# ---------------------------------------------------------------------------------------
# failed writes leave nothing


def test_missing_src_dir_raises_source_not_found_and_leaves_no_blob(cs, ds, tmp_path):
    with pytest.raises(SourceNotFound):
        put(cs, tmp_path / "missing")
    assert blob_files(ds) == [] and tmp_files(ds) == []


def _growing(src):
    """A big and a small file; the big one grows while it is archived."""
    write(str(src / "big.bin"), b"\1" * (3 * 2**20))
    write(str(src / "small.txt"), b"s")

    def grow(_n):
        with open(src / "big.bin", "ab") as f:
            f.write(b"more")

    return grow


def _vanishing(src):
    """A big and a small file; the small one (archived after) vanishes while the big one is."""
    write(str(src / "a_big.bin"), b"\1" * (2 * 2**20))
    write(str(src / "b_small.txt"), b"s")

    def vanish(_n):
        if (src / "b_small.txt").exists():
            os.unlink(src / "b_small.txt")

    return vanish


@pytest.mark.parametrize("change", [_growing, _vanishing], ids=["file-growing", "file-vanishing"])
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_file_changing_while_archived_raises_source_changed_and_leaves_no_blob(ds, tmp_path, codec, change):
    src = tmp_path / "src"
    progress = change(src)
    cs = ContentStore(ds)
    with pytest.raises(SourceChanged):
        put(cs, src, codec=codec, progress=progress)
    assert blob_files(ds) == [] and tmp_files(ds) == []


def test_file_rewritten_with_same_size_while_archived_raises_source_changed(ds, tmp_path):
    src = tmp_path / "src"
    write(str(src / "big.bin"), b"\1" * (3 * 2**20))
    os.utime(src / "big.bin", (1000, 1000))

    def rewrite(_n):
        with open(src / "big.bin", "r+b") as f:
            f.write(b"\2")

    with pytest.raises(SourceChanged):
        put(ContentStore(ds), src, progress=rewrite)
    assert blob_files(ds) == [] and tmp_files(ds) == []


# ---------------------------------------------------------------------------------------
# dedup across processes

_PUT_SCRIPT = """
import sys
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
cs = ContentStore(LocalBlobStore(sys.argv[1]))
with cs.lease() as lease:
    print(cs.put_dir(sys.argv[2], "data", lease=lease).blob_id)
"""


def test_two_processes_persisting_the_same_folder_store_one_blob(ds, tmp_path):
    src = tmp_path / "src"
    for i in range(40):
        write(str(src / f"f{i:02d}.bin"), os.urandom(100_000))
    procs = [subprocess.Popen([sys.executable, "-c", _PUT_SCRIPT, ds.root, str(src)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    ids = {out.strip() for out, _ in outs}
    assert ids == {digest_bytes(tar_bytes(scan(str(src), "data")))}
    assert len(blob_files(ds)) == 1
    assert tmp_files(ds) == []


# ---------------------------------------------------------------------------------------
# extraction


def test_extract_brings_the_folder_back(cs, src, target):
    info = put(cs, src)
    names = cs.extract(info.blob_id, str(target), size=info.size)
    assert names == ["data/a.csv", "data/sub/b.bin", "data/sub/deeper/c.txt", "data/sub/link"]
    for rel in ["a.csv", "sub/b.bin", "sub/deeper/c.txt"]:
        with open(os.path.join(src, rel), "rb") as f:
            assert (target / "data" / rel).read_bytes() == f.read()
    assert (target / "data/sub/b.bin").stat().st_mode & 0o777 == 0o600
    assert os.readlink(target / "data/sub/link") == "../a.csv"
    assert (target / "existing.txt").read_bytes() == b"was here"


def test_extract_of_a_zstd_blob_brings_the_folder_back(cs, src, target):
    info = put(cs, src, codec="zstd")
    cs.extract(info.blob_id, str(target), size=info.size)
    assert (target / "data/sub/deeper/c.txt").read_bytes() == b"c\n"


def test_extract_with_members_extracts_only_those(cs, src, target):
    info = put(cs, src)
    assert cs.extract(info.blob_id, str(target), members=["data/sub/b.bin"]) == ["data/sub/b.bin"]
    assert files_below(target) == ["data/sub/b.bin", "existing.txt"]


def test_members_lists_the_archive(cs, src):
    info = put(cs, src)
    assert [m.name for m in cs.members(info.blob_id)] == [
        b"data/a.csv", b"data/sub/b.bin", b"data/sub/deeper/c.txt", b"data/sub/link"]


def test_check_returns_the_size_of_a_sound_blob(cs, src):
    info = put(cs, src, codec="zstd")
    assert cs.check(info.blob_id, info.size) == info.size


def test_extract_of_a_missing_blob_raises_blob_not_found(cs, target):
    before = snapshot(target)
    with pytest.raises(BlobNotFound):
        cs.extract("xxh128:" + "0" * 32, str(target))
    assert snapshot(target) == before


def flip_byte(path, offset):
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_extract_of_a_blob_with_a_flipped_data_byte_raises_corrupt_blob_and_writes_nothing(cs, ds, src, target):
    info = put(cs, src)
    flip_byte(blob_path(ds, info.blob_id, "none"), 512 + 20)  # inside data/a.csv's content
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(info.blob_id, str(target), size=info.size)
    assert snapshot(target) == before


def test_extract_of_a_blob_with_a_flipped_header_byte_raises_corrupt_blob_and_writes_nothing(cs, ds, src, target):
    info = put(cs, src)
    flip_byte(blob_path(ds, info.blob_id, "none"), 3)
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(info.blob_id, str(target), size=info.size)
    assert snapshot(target) == before


def test_check_of_a_blob_with_a_flipped_byte_raises_corrupt_blob(cs, ds, src):
    info = put(cs, src)
    flip_byte(blob_path(ds, info.blob_id, "none"), 512 + 20)
    with pytest.raises(CorruptBlob):
        cs.check(info.blob_id, info.size)


def test_truncated_zstd_blob_raises_corrupt_blob_and_writes_nothing(cs, ds, src, target):
    info = put(cs, src, codec="zstd")
    path = blob_path(ds, info.blob_id, "zstd")
    os.chmod(path, 0o644)
    os.truncate(path, os.path.getsize(path) // 2)
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(info.blob_id, str(target), size=info.size)
    assert snapshot(target) == before


def test_zstd_blob_with_garbage_raises_corrupt_blob(cs, ds, src, target):
    info = put(cs, src, codec="zstd")
    path = blob_path(ds, info.blob_id, "zstd")
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 64)
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(info.blob_id, str(target), size=info.size)
    assert snapshot(target) == before


@pytest.mark.parametrize("delta", [-512, -1, +1, +10240])
def test_recorded_size_that_disagrees_raises_corrupt_blob(cs, src, target, delta):
    info = put(cs, src, codec="zstd")
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(info.blob_id, str(target), size=info.size + delta)
    assert snapshot(target) == before


def test_zstd_blob_inflating_past_its_recorded_size_is_refused(ds, src, target):
    """A zip bomb whose id is right: only the recorded size stops it."""
    tar = tar_bytes(scan(src, "data"))
    inflated = tar + bytes(32 * 2**20)
    blob_id = digest_bytes(inflated)
    path = blob_path(ds, blob_id, "zstd")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(inflated))
    assert os.path.getsize(path) < 100_000
    cs = ContentStore(ds)
    before = snapshot(target)
    with pytest.raises(CorruptBlob):
        cs.extract(blob_id, str(target), size=len(tar))
    assert snapshot(target) == before


# ---------------------------------------------------------------------------------------
# VerifyingReader.readinto


def _reader_for(ds, data: bytes, codec: str):
    from casstore.cas.store.reader import VerifyingReader

    blob_id = digest_bytes(data)
    raw = io.BytesIO(zstandard.ZstdCompressor().compress(data) if codec == "zstd" else data)
    if codec == "zstd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw)
    return blob_id, raw, VerifyingReader


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_readinto_hashes_exactly_what_it_reads(ds, codec):
    data = os.urandom(3 * 2**20 + 123)
    blob_id, raw, VerifyingReader = _reader_for(ds, data, codec)
    reader = VerifyingReader(raw, blob_id, len(data))
    buf = bytearray(100_000)
    got = bytearray()
    while True:
        n = reader.readinto(memoryview(buf)[:77_777])
        if not n:
            break
        got += buf[:n]
    assert bytes(got) == data and reader.count == len(data)
    reader.verify()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_readinto_mixed_with_read_still_verifies_and_a_wrong_id_fails(ds, codec):
    data = os.urandom(500_000)
    blob_id, raw, VerifyingReader = _reader_for(ds, data, codec)
    reader = VerifyingReader(raw, blob_id, len(data))
    buf = bytearray(1000)
    assert reader.readinto(buf) == 1000 and bytes(buf) == data[:1000]
    assert reader.read(10) == data[1000:1010]
    reader.verify()
    _, raw, _ = _reader_for(ds, data, codec)
    wrong = VerifyingReader(raw, digest_bytes(b"other"), len(data))
    wrong.readinto(bytearray(4096))
    with pytest.raises(CorruptBlob):
        wrong.verify()


def test_readinto_stops_a_zstd_bomb_at_the_recorded_size(ds):
    from casstore.cas.store.reader import VerifyingReader

    inflated = bytes(64 * 2**20)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zstandard.ZstdCompressor().compress(inflated)))
    reader = VerifyingReader(raw, digest_bytes(inflated), 10_000)
    buf = bytearray(2**20)
    with pytest.raises(CorruptBlob):
        for _ in range(64):
            reader.readinto(buf)
    assert reader.count <= 10_000 + len(buf)


def test_readinto_over_a_stream_without_readinto(ds):
    from casstore.cas.store.reader import VerifyingReader

    class ReadOnly:
        def __init__(self, data):
            self._f = io.BytesIO(data)

        def read(self, n=-1):
            return self._f.read(n)

    data = os.urandom(10_000)
    reader = VerifyingReader(ReadOnly(data), digest_bytes(data), len(data))
    buf = bytearray(4096)
    got = b""
    while n := reader.readinto(buf):
        got += bytes(buf[:n])
    assert got == data
    reader.verify()
