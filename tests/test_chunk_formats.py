"""The formats of chunked blobs, as properties: the cutter (casstore/cas/chunks/cutter.py) and
the manifest (casstore/cas/chunks/manifest.py)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casstore.cas.buffers import BufferPool
from casstore.cas.chunks.cutter import TarCutter
from casstore.cas.chunks.manifest import MAGIC, ChunkRef, chunk_line, end_line, iter_manifest
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.digest import digest_bytes
from casstore.cas.tar.header import header, padding
from casstore.errors import CorruptBlob, InvalidInput

POLICY = ChunkPolicy(whole_below=0, large_file=4096, block=1024, cdc_min=64, cdc_avg=256, cdc_max=1024)


def cut(data: bytes, pieces: list[int], policy: ChunkPolicy = POLICY) -> list[bytes]:
    out: list[bytes] = []
    cutter = TarCutter(policy, lambda chunk: out.append(bytes(chunk)))  # a pooled block is an mmap
    at = 0
    for size in pieces:
        cutter.write(data[at:at + size])
        at += size
    cutter.write(data[at:])
    cutter.finish()
    return out


def tar_like(files: list[bytes]) -> bytes:
    """A TAR of `files` as casstore writes one (headers, data, padding, end blocks)."""
    out = b""
    for i, data in enumerate(files):
        out += header(f"f{i:04d}".encode(), b"0", 0o644, len(data)) + data + padding(len(data))
    return out + bytes(1024)


files_st = st.lists(st.binary(min_size=0, max_size=6000), max_size=8)
pieces_st = st.lists(st.integers(min_value=1, max_value=3000), max_size=10)


@settings(max_examples=150, deadline=None)
@given(files=files_st, pieces=pieces_st)
def test_the_chunks_concatenated_are_the_stream(files, pieces):
    data = tar_like(files)
    assert b"".join(cut(data, pieces)) == data


@settings(max_examples=150, deadline=None)
@given(files=files_st, pieces=pieces_st)
def test_the_cuts_do_not_depend_on_how_the_writer_split_its_writes(files, pieces):
    data = tar_like(files)
    assert cut(data, pieces) == cut(data, [])


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=20000), pieces=pieces_st)
def test_bytes_that_are_no_tar_are_cut_too_and_lose_nothing(data, pieces):
    assert b"".join(cut(data, pieces)) == data


@settings(max_examples=100, deadline=None)
@given(size=st.integers(min_value=4096, max_value=9000), name_len=st.integers(1, 300))
def test_a_large_file_is_cut_in_blocks_from_its_first_byte_whatever_its_name(size, name_len):
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    stream = header(b"n" * name_len, b"0", 0o644, size) + data + padding(size) + bytes(1024)
    blocks = [data[i:i + POLICY.block] for i in range(0, size, POLICY.block)]
    chunks = cut(stream, [])
    assert all(block in chunks for block in blocks)



def member_starts(files: list[bytes]) -> set[int]:
    """The offsets in tar_like(files) where a header starts, and its end."""
    starts, at = set(), 0
    for data in files:
        starts.add(at)
        at += 512 + len(data) + len(padding(len(data)))
    return starts | {at, at + 512, at + 1024}


@settings(max_examples=150, deadline=None)
@given(files=st.lists(st.binary(max_size=300), max_size=40), pieces=pieces_st)
def test_small_files_are_cut_only_where_a_member_starts(files, pieces):
    data = tar_like(files)
    ends, at = set(), 0
    for chunk in cut(data, pieces):
        at += len(chunk)
        ends.add(at)
    assert ends <= member_starts(files)


@settings(max_examples=150, deadline=None)
@given(files=files_st, pieces=pieces_st)
def test_no_chunk_is_larger_than_the_largest_size_of_the_policy(files, pieces):
    assert max(map(len, cut(tar_like(files), pieces)), default=0) <= max(POLICY.cdc_max, POLICY.block)


def test_a_small_file_added_changes_at_most_the_chunks_around_it():
    def tar(files: dict[str, bytes]) -> bytes:
        return b"".join(header(name.encode(), b"0", 0o644, len(data)) + data + padding(len(data))
                        for name, data in sorted(files.items())) + bytes(1024)

    files = {f"f{i:04d}": bytes([i % 251]) * (40 + i * 7 % 200) for i in range(400)}
    before = cut(tar(files), [])
    after = cut(tar({**files, "f0200-new": b"a new file"}), [])
    assert len(before) > 20 and len(set(after) - set(before)) <= 2


def test_a_policy_outside_fastcdcs_bounds_is_refused():
    with pytest.raises(InvalidInput):
        ChunkPolicy(cdc_min=32)
    with pytest.raises(InvalidInput):
        ChunkPolicy(cdc_max=32 << 20)


refs_st = st.lists(st.tuples(st.binary(min_size=1, max_size=64), st.sampled_from(["none", "zstd"])), max_size=20)


def manifest_of(chunks: list[tuple[bytes, str]]) -> tuple[bytes, str, list[ChunkRef]]:
    refs = [ChunkRef(digest_bytes(data), len(data), codec) for data, codec in chunks]
    blob_id = digest_bytes(b"".join(data for data, _ in chunks))
    size = sum(r.size for r in refs)
    return MAGIC + b"".join(chunk_line(r) for r in refs) + end_line(blob_id, size, len(refs)), blob_id, refs


@settings(max_examples=150, deadline=None)
@given(chunks=refs_st)
def test_a_manifest_reads_back_as_the_chunks_it_was_written_with(chunks):
    text, blob_id, refs = manifest_of(chunks)
    assert list(iter_manifest(io.BytesIO(text), blob_id, sum(r.size for r in refs))) == refs


@settings(max_examples=300, deadline=None)
@given(chunks=refs_st, at=st.integers(min_value=0), byte=st.integers(0, 255))
def test_a_manifest_with_any_byte_changed_reads_as_exactly_what_it_says_or_is_refused(chunks, at, byte):
    text, blob_id, refs = manifest_of(chunks)
    damaged = bytearray(text)
    damaged[at % len(damaged)] = byte
    try:
        read = list(iter_manifest(io.BytesIO(bytes(damaged)), blob_id, sum(r.size for r in refs)))
    except CorruptBlob as exc:
        assert exc.reason == "unreadable"
    else:
        assert sum(r.size for r in read) == sum(r.size for r in refs)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_any_bytes_are_a_manifest_or_refused_as_corrupt(data):
    try:
        list(iter_manifest(io.BytesIO(MAGIC + data), "xxh128:" + "0" * 32))
    except CorruptBlob as exc:
        assert exc.reason == "unreadable"


def test_a_manifest_whose_chunks_add_up_to_more_than_the_blob_is_refused_before_its_end():
    text, blob_id, refs = manifest_of([(b"a" * 10, "none"), (b"b" * 10, "none")])
    reader = iter_manifest(io.BytesIO(text), blob_id, 15)
    assert next(reader) == refs[0]
    with pytest.raises(CorruptBlob, match="add up to more"):
        next(reader)


def test_a_buffer_pool_reuses_a_buffer_given_back_and_ignores_other_chunks():
    pool = BufferPool(4096)
    block = pool.take()
    pool.give_back(block)
    pool.give_back(b"x" * 4096)
    pool.give_back(bytearray(4096))
    assert pool.take() is block
    assert pool.take() is not block
