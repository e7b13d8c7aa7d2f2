"""Hostile chunked blobs (issue 13, item 4): a manifest or a chunk planted by someone who can
write the datastore. Whatever it names (ids or codecs leading out, sizes past any bound, more
bytes than the blob, a line without end, the chunks of a hostile archive) and whatever lies in
place of a chunk (a zstd bomb, a FIFO, a symlink to /dev/zero or to a user's file): the load
is refused naming experiment, field and blob, nothing is written outside the target, nothing
is read without bound or hangs, verify names the blob, and gc deletes no chunk a manifest
names (none at all while a manifest does not read), nor anything outside the datastore."""

from __future__ import annotations

import io
import os
import random
import resource

import pytest
import zstandard
from helpers import deadline
from test_reliability_hostile import TOKEN, Victim, finish_tar, forge, member

import reliability_worker as rw
from casstore import ArchiveStore
from casstore.cas.backends.layout import CHUNKS, blob_key
from casstore.cas.chunks.manifest import MAGIC, ChunkRef, chunk_line, end_line, iter_manifest
from casstore.cas.digest import digest_bytes
from casstore.cas.gc import collect
from casstore.cas.verify import verify
from casstore.errors import CorruptBlob
from casstore.session import field_roots

OTHER_ID = "xxh128:" + "ab" * 16


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


def chunked_victim(tmp_path) -> tuple[Victim, object, object]:
    """A Victim on a chunked datastore whose `data` field is chunked, and a second experiment
    `keeper` whose chunks no hostile manifest names: (victim, the victim's experiment, keeper)."""
    victim = Victim(tmp_path, "chunked")
    rng = random.Random(3)
    (tmp_path / "src-data" / "big.bin").write_bytes(rng.randbytes(8 * rw.TINY_CHUNKS["block"]))
    (tmp_path / "src-keep").mkdir()
    (tmp_path / "src-keep" / "keep.bin").write_bytes(rng.randbytes(100_000))
    e = victim.persist(ArchiveStore(src_dir=str(tmp_path / "src-data"), arc_dir="data"))
    keeper = victim.session.create_experiment("keeper", data=ArchiveStore(src_dir=str(tmp_path / "src-keep")))
    keeper.persist()
    victim.project.assert_format_used()
    return victim, e, keeper


def manifest_path(victim: Victim, blob_id: str) -> str:
    return os.path.join(victim.store.blobs.root, *blob_key(blob_id, "chunked").split("/"))


def refs_of(victim: Victim, blob_id: str) -> list[ChunkRef]:
    with open(manifest_path(victim, blob_id), "rb") as f:
        return list(iter_manifest(f, blob_id))


def chunk_path(victim: Victim, ref: ChunkRef) -> str:
    return os.path.join(victim.store.blobs.root, *CHUNKS.blob_key(ref.chunk_id, ref.codec).split("/"))


def replace_file(path: str, data: bytes) -> None:
    os.chmod(path, 0o644)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(data)


def stored_chunks(victim: Victim) -> set[str]:
    return {c.blob_id for c in victim.store.blobs.view(CHUNKS).iter_blobs()}


def assert_gc_keeps_named_chunks(victim: Victim, keeper, readable: bool) -> None:
    """gc at grace 0 keeps every stored chunk a readable manifest names, and every chunk at
    all while one does not read; `keeper` still loads after it."""
    before = stored_chunks(victim)
    collect(victim.session.index, victim.store, field_roots=field_roots, grace_s=0)
    after = stored_chunks(victim)
    assert rw.named_chunks(victim.store) & before <= after if readable else after == before
    loaded = victim.session.load_experiment("keeper")
    assert rw.tree(victim.project.target(loaded)) == rw.tree(victim.tmp_path / "src-keep")


def hostile_chunks_manifest(victim: Victim, blob_id: str, _refs: list[ChunkRef]) -> bytes:
    """The chunks of a hostile archive (a member leading out), each stored under its own
    digest, listed by a manifest under the victim's id."""
    tar = finish_tar(member(b"data/ok.txt", data=b"fine " * 4000)
                     + member(b"../../../../" + TOKEN.encode() + b"-escaped", data=b"out"))
    forged = forge(victim, tar)  # cut into chunks like any write (whole_below is 16 KiB: it is bigger)
    with open(manifest_path(victim, forged.blob_id), "rb") as f:
        body = b"".join(chunk_line(r) for r in iter_manifest(f, forged.blob_id))
    count = body.count(b"\n")
    return MAGIC + body + end_line(blob_id, len(tar), count)


def _lines(refs: list[ChunkRef]) -> bytes:
    return b"".join(chunk_line(r) for r in refs)


MANIFESTS = {
    "chunk-id-leading-out": lambda v, b, refs: MAGIC + b"chunk xxh128:../../../../" + TOKEN.encode() + b" 100 none\n"
    + end_line(b, 100, 1),
    "chunk-codec-leading-out": lambda v, b, refs: MAGIC + f"chunk {refs[0].chunk_id} {refs[0].size} ../x\n".encode()
    + end_line(b, refs[0].size, 1),
    "chunk-of-a-terabyte": lambda v, b, refs: MAGIC + chunk_line(ChunkRef(refs[0].chunk_id, 1 << 40, refs[0].codec))
    + end_line(b, 1 << 40, 1),
    "chunks-past-the-blob": lambda v, b, refs: MAGIC + _lines(refs * 3)
    + end_line(b, 3 * sum(r.size for r in refs), 3 * len(refs)),
    "line-without-end": lambda v, b, refs: MAGIC + b"chunk " + b"f" * (8 << 20),
    "end-naming-another-blob": lambda v, b, refs: MAGIC + _lines(refs)
    + end_line(OTHER_ID, sum(r.size for r in refs), len(refs)),
    "chunks-of-a-hostile-archive": hostile_chunks_manifest,
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_hostile_manifest_is_refused_and_gc_keeps_every_named_chunk(tmp_path, case):
    victim, e, keeper = chunked_victim(tmp_path)
    blob_id = e.fields.data.blob_id
    replace_file(manifest_path(victim, blob_id), MANIFESTS[case](victim, blob_id, refs_of(victim, blob_id)))
    victim.assert_refused(e, blob_id)
    report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
    assert [p.blob for p in report.problems] == [blob_id]
    assert_gc_keeps_named_chunks(victim, keeper, readable=case == "chunks-of-a-hostile-archive")


def bomb_frame(inflated: int, declare_size: bool) -> bytes:
    """One zstd frame of `inflated` zero bytes, recording its size or not (streamed)."""
    compressor = zstandard.ZstdCompressor(level=19, write_content_size=declare_size)
    buf = io.BytesIO()
    with compressor.stream_writer(buf, closefd=False, size=inflated if declare_size else -1) as w:
        zero = bytes(1 << 20)
        for _ in range(inflated >> 20):
            w.write(zero)
    return buf.getvalue()


@pytest.mark.parametrize("declared", ["size-declared", "size-unknown"])
def test_zstd_bomb_in_place_of_a_chunk_is_refused_without_inflating(tmp_path, declared):
    """A 16 KiB chunk replaced by a zstd frame (small enough for a 16 KiB chunk's bound) that
    inflates to 128 MiB: refused, with neither the disk nor the memory paying for it."""
    from casstore import options

    options().set("archivestore.codec", "zstd")
    victim, e, keeper = chunked_victim(tmp_path)
    blob_id = e.fields.data.blob_id
    ref = next(r for r in refs_of(victim, blob_id) if r.size == rw.TINY_CHUNKS["block"] and r.codec == "zstd")
    bomb = bomb_frame(128 << 20, declared == "size-declared")
    assert len(bomb) < ref.size
    replace_file(chunk_path(victim, ref), bomb)
    free_before = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = victim.assert_refused(e, blob_id)
    assert isinstance(err.failures[0].error, CorruptBlob) and ref.chunk_id in str(err.failures[0].error)
    report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
    assert [(p.blob, p.kind) for p in report.problems] == [(blob_id, "chunk")]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 << 10  # KiB: 64 MiB
    free_after = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert free_before - free_after < 64 << 20
    assert_gc_keeps_named_chunks(victim, keeper, readable=True)


def plant_in_place(victim: Victim, path: str, what: str) -> str | None:
    """Put `what` where the chunk file `path` is; the user's file a symlink points at, if any."""
    os.chmod(path, 0o644)
    os.unlink(path)
    if what == "fifo":
        os.mkfifo(path)
        return None
    if what == "symlink-to-dev-zero":
        os.symlink("/dev/zero", path)
        return None
    users = os.path.join(victim.outside, "users-file")
    with open(users, "wb") as f:
        f.write(b"a user's file " * 2000)
    os.symlink(users, path)
    return users


@pytest.mark.parametrize("what", ["fifo", "symlink-to-dev-zero", "symlink-to-a-users-file"])
def test_a_special_file_in_place_of_a_named_chunk_hangs_nothing_and_is_damage(tmp_path, what):
    victim, e, keeper = chunked_victim(tmp_path)
    blob_id = e.fields.data.blob_id
    ref = refs_of(victim, blob_id)[1]
    users = plant_in_place(victim, chunk_path(victim, ref), what)
    with deadline(60):
        victim.assert_refused(e, blob_id)
        report = verify(victim.session.index, victim.store, field_roots=field_roots, deep=True)
        assert blob_id in {p.blob for p in report.problems}, report.problems
        assert_gc_keeps_named_chunks(victim, keeper, readable=True)
    if users is not None:
        assert open(users, "rb").read() == b"a user's file " * 2000


@pytest.mark.parametrize("what", ["fifo", "symlink-to-a-users-file"])
def test_gc_deletes_nothing_outside_through_a_special_file_named_like_an_unreferenced_chunk(tmp_path, what):
    victim, _e, keeper = chunked_victim(tmp_path)
    data = b"an orphan chunk"
    path = os.path.join(victim.store.blobs.root, *CHUNKS.blob_key(digest_bytes(data), "none").split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    users = plant_in_place(victim, path, what)
    os.utime(path, (0, 0), follow_symlinks=False)  # past any grace
    with deadline(60):
        verify(victim.session.index, victim.store, field_roots=field_roots)
        assert_gc_keeps_named_chunks(victim, keeper, readable=True)
    if users is not None:
        assert open(users, "rb").read() == b"a user's file " * 2000
