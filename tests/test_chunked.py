"""Chunked blobs (P13, issue 13): a blob stored as a manifest of chunks has the id, the bytes
and the reads of a whole one, and stores only the chunks the datastore lacks."""

from __future__ import annotations

import io
import os

import pytest
import zstandard
from helpers import file_tree, make_folder

from casstore.cas.backends.layout import CHUNKS
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.chunks.manifest import MAGIC, iter_manifest
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.store.content_store import ContentStore
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes
from casstore.errors import CorruptBlob

TINY = ChunkPolicy(whole_below=16384, large_file=64 << 10, block=16 << 10, cdc_min=1024, cdc_avg=4096,
                   cdc_max=16384)
"""The default policy scaled down 64x, so that small test folders are cut into many chunks."""


def folder(root, big: int = 300_000, small: int = 40, seed: int = 1) -> str:
    rng = __import__("random").Random(seed)
    files = {"big.bin": rng.randbytes(big)}
    files.update({f"sub/s{i:03d}": rng.randbytes(3000 + i) for i in range(small)})
    make_folder(root, files)
    return str(root)


def store(path, fmt: str = "chunked", policy: ChunkPolicy = TINY) -> ContentStore:
    blobs = LocalBlobStore(str(path))
    blobs.ensure_format()
    blobs.set_format(fmt)
    return ContentStore(blobs, policy=policy)


def put(cs: ContentStore, src, arc_dir: str = "data", **kw):
    with cs.lease() as lease:
        return cs.put_dir(str(src), arc_dir, lease=lease, **kw)


def chunk_bytes_stored(cs: ContentStore) -> int:
    return sum(o.size for o in cs.blobs.list_objects(CHUNKS.prefix))


def tar_of(src, arc_dir: str = "data") -> bytes:
    return tar_bytes(scan(str(src), arc_dir, "**", None))


def cat(cs: ContentStore, facts) -> bytes:
    out = io.BytesIO()
    cs.copy_checked(facts.blob_id, facts.size, out)
    return out.getvalue()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_chunked_blob_has_the_id_of_the_same_blob_stored_whole(tmp_path, codec):
    src = folder(tmp_path / "src")
    whole = put(store(tmp_path / "whole", "whole"), src, codec=codec)
    chunked = put(store(tmp_path / "chunked"), src, codec=codec)
    assert chunked.codec == "chunked" and whole.codec == codec
    assert (chunked.blob_id, chunked.size) == (whole.blob_id, whole.size)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_a_chunked_blob_reads_back_as_the_exact_canonical_tar(tmp_path, codec):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src, codec=codec)
    assert cat(cs, facts) == tar_of(src)
    assert cs.check(facts.blob_id, facts.size) == facts.size


def test_a_chunked_blob_extracts_the_folder(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    cs.extract(facts.blob_id, str(tmp_path / "out"), size=facts.size)
    assert file_tree(tmp_path / "out" / "data") == file_tree(src)


def test_a_blob_under_the_line_is_stored_whole_in_a_chunked_datastore(tmp_path):
    make_folder(tmp_path / "src", {"a.txt": b"small"})
    cs = store(tmp_path / "ds")
    facts = put(cs, tmp_path / "src")
    assert facts.codec == "none"
    assert list(cs.blobs.list_objects(CHUNKS.prefix)) == []


def test_storing_an_unchanged_folder_again_adds_no_chunk(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    first = put(cs, src)
    before = sorted(o.key for o in cs.blobs.list_objects(""))
    again = put(cs, src)
    assert again.blob_id == first.blob_id and not again.new
    assert sorted(o.key for o in cs.blobs.list_objects("")) == before


def test_a_change_in_place_in_a_large_file_stores_only_the_blocks_it_touches(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    put(cs, src)
    before = chunk_bytes_stored(cs)
    big = tmp_path / "src" / "big.bin"
    data = bytearray(big.read_bytes())
    data[150_000:151_000] = os.urandom(1000)
    big.write_bytes(bytes(data))
    changed = put(cs, src)
    assert chunk_bytes_stored(cs) - before <= 2 * TINY.block
    assert cat(cs, changed) == tar_of(src)


def test_a_small_file_added_changes_only_the_chunks_around_it(tmp_path):
    src = folder(tmp_path / "src", big=0, small=400)
    cs = store(tmp_path / "ds")
    put(cs, src)
    before = chunk_bytes_stored(cs)
    (tmp_path / "src" / "sub" / "s200a").write_bytes(os.urandom(2000))
    put(cs, src)
    assert chunk_bytes_stored(cs) - before <= 2 * TINY.cdc_max


def test_the_same_folder_under_another_arc_dir_reuses_its_large_files_chunks(tmp_path):
    src = folder(tmp_path / "src", big=1_000_000, small=5)
    cs = store(tmp_path / "ds")
    first = put(cs, src)
    before = chunk_bytes_stored(cs)
    put(cs, src, arc_dir="elsewhere/deeper")
    assert chunk_bytes_stored(cs) - before <= 0.01 * first.size + 2 * TINY.cdc_max


def test_zstd_chunks_concatenated_are_the_blob_as_a_tar_zst(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src, codec="zstd")
    chunks = chunk_store(cs.blobs)
    with cs.blobs.open_copy(facts.blob_id, "chunked")[0] as f:
        refs = list(iter_manifest(f, facts.blob_id, facts.size))
    assert {r.codec for r in refs} == {"zstd"}
    frames = b"".join(chunks.open_copy(r.chunk_id, "zstd")[0].read() for r in refs)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frames), read_across_frames=True)
    assert reader.read() == tar_of(src)


def _manifest_refs(cs: ContentStore, facts):
    with cs.blobs.open_copy(facts.blob_id, "chunked")[0] as f:
        return list(iter_manifest(f, facts.blob_id, facts.size))


def test_a_missing_chunk_fails_the_read_and_leaves_the_target_as_it_was(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    ref = _manifest_refs(cs, facts)[3]
    chunk_store(cs.blobs).delete_blob(ref.chunk_id, ref.codec)
    with pytest.raises(CorruptBlob, match=f"chunk {ref.chunk_id} is missing") as caught:
        cs.extract(facts.blob_id, str(tmp_path / "out"), size=facts.size)
    assert caught.value.reason == "chunk"
    assert not (tmp_path / "out" / "data").exists()


def _flip_a_byte_of_a_chunk(cs: ContentStore, facts, root):
    """Damage the third chunk of a blob in place, keeping its size; its ref."""
    ref = _manifest_refs(cs, facts)[2]
    path = root / CHUNKS.blob_key(ref.chunk_id, ref.codec)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return ref


def test_a_chunk_whose_bytes_changed_fails_the_read(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    ref = _flip_a_byte_of_a_chunk(cs, facts, tmp_path / "ds")
    with pytest.raises(CorruptBlob, match=f"chunk {ref.chunk_id} is corrupt"):
        cat(cs, facts)


def test_a_manifest_that_names_another_blob_is_corrupt(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    with cs.blobs.open_copy(facts.blob_id, "chunked")[0] as f:
        lines = f.read().split(b"\n")
    lines[-2] = lines[-2].replace(facts.blob_id.split(":")[1][:4].encode(), b"0000", 1)
    with pytest.raises(CorruptBlob, match="end line does not name it"):
        list(iter_manifest(io.BytesIO(b"\n".join(lines)), facts.blob_id))


def test_a_manifest_starts_with_its_magic_line(tmp_path):
    with pytest.raises(CorruptBlob, match="does not start as a casstore manifest"):
        list(iter_manifest(io.BytesIO(b"casstore-manifest 2\n"), "xxh128:" + "0" * 32))
    assert MAGIC == b"casstore-manifest 1\n"


def test_a_block_repeated_in_a_file_is_stored_once_and_named_each_time(tmp_path):
    block = os.urandom(TINY.block)
    make_folder(tmp_path / "src", {"zeros.bin": block * 6 + b"tail"})
    cs = store(tmp_path / "ds")
    facts = put(cs, tmp_path / "src")
    refs = _manifest_refs(cs, facts)
    assert [r.size for r in refs].count(TINY.block) == 6 and len({r.chunk_id for r in refs if r.size == TINY.block}) == 1
    assert cat(cs, facts) == tar_of(tmp_path / "src")


def test_persisting_the_folder_again_repairs_a_chunk_a_read_found_damaged(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    _flip_a_byte_of_a_chunk(cs, facts, tmp_path / "ds")
    with pytest.raises(CorruptBlob, match="is corrupt"):
        cat(cs, facts)
    put(cs, src)
    assert cat(cs, facts) == tar_of(src)
    assert list((tmp_path / "ds" / "casstore" / "chunk-quarantine").iterdir())
    assert not list(cs.blobs.list_objects("casstore/damaged-chunks"))


def test_a_chunk_that_reads_correctly_is_kept_whatever_its_damage_record_says(tmp_path):
    src = folder(tmp_path / "src")
    cs = store(tmp_path / "ds")
    facts = put(cs, src)
    ref = _manifest_refs(cs, facts)[2]
    chunks = chunk_store(cs.blobs)
    inode = (tmp_path / "ds" / CHUNKS.blob_key(ref.chunk_id, ref.codec)).stat().st_ino
    from casstore.cas.damage import record_damage
    record_damage(chunks, chunks.find(ref.chunk_id), "digest", "a false record")
    put(cs, src)
    assert (tmp_path / "ds" / CHUNKS.blob_key(ref.chunk_id, ref.codec)).stat().st_ino == inode
    assert not list(cs.blobs.list_objects("casstore/damaged-chunks"))


def test_a_large_file_over_many_batches_stores_each_block_with_its_own_bytes(tmp_path):
    """The blocks of a large file come from a pool that the writer refills once a batch is
    stored: a block refilled too early would store another block's bytes under its id."""
    src = tmp_path / "src"
    make_folder(src, {"big.bin": os.urandom(48 << 20), "small.txt": b"x"})
    cs = store(tmp_path / "ds", policy=ChunkPolicy())
    facts = put(cs, src)
    assert cat(cs, facts) == tar_of(src)  # every chunk read is checked against its id
