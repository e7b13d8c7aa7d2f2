"""gc, verify and stats over chunked blobs (P8, P9, P13): a chunk goes only when no manifest
names it, damage to a chunk is damage to every blob that uses it, and a chunk is counted
once however many blobs share it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from helpers import make_folder, run_cli, verify_json

from casstore import ArchiveStore, create_session
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.chunks.manifest import iter_manifest
from casstore.cas.gc import collect
from casstore.cas.stats import project_stats
from casstore.cas.store.chunk_io import chunk_store
from casstore.errors import LoadError
from casstore.opts import options
from casstore.session import field_roots

TINY = {"whole_below": 16384, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
        "cdc_max": 16384}
DB = "sqlite:///p.db"


@pytest.fixture
def session(workdir):
    options().set("datastore.chunks", TINY)
    s = create_session(DB)
    yield s
    s.index.dispose()


def folder(path: Path, seed: int, big: int = 200_000) -> str:
    rng = random.Random(seed)
    files = {"big.bin": rng.randbytes(big), **{f"s/{i}": rng.randbytes(2000) for i in range(20)}}
    make_folder(path, files)
    return str(path)


def persist(s, name: str, src: str):
    e = s.create_experiment(name, data=ArchiveStore(src_dir=src, arc_dir="data"))
    e.persist(if_exists="replace")
    return s.index.refs_of(e.id_experiment)[0].blob_id


def chunks_of(s, blob_id: str) -> list:
    blobs = s.content_store().blobs
    with blobs.open_copy(blob_id, "chunked")[0] as f:
        return list(iter_manifest(f, blob_id))


def stored_chunk_ids(s) -> set[str]:
    return {c.blob_id for c in chunk_store(s.content_store().blobs).iter_blobs()}


def test_gc_deletes_the_chunks_only_a_deleted_blob_used_and_keeps_the_shared_ones(session, workdir):
    src = folder(workdir / "src", 1)
    first = persist(session, "a", src)
    with open(Path(src) / "extra.bin", "wb") as f:
        f.write(os.urandom(50_000))
    second = persist(session, "b", src)
    shared = {r.chunk_id for r in chunks_of(session, first)} & {r.chunk_id for r in chunks_of(session, second)}
    only_first = {r.chunk_id for r in chunks_of(session, first)} - shared
    assert shared and only_first
    session.delete_experiment(session.load_experiment("a"))
    collect(session.index, session.content_store(), field_roots=field_roots, grace_s=0)
    stored = stored_chunk_ids(session)
    assert shared <= stored and not only_first & stored
    assert session.content_store().blobs.find(first) is None


def test_gc_never_deletes_a_chunk_a_write_has_leased(session, workdir):
    src = folder(workdir / "src", 2)
    blob = persist(session, "a", src)
    chunk_ids = [r.chunk_id for r in chunks_of(session, blob)]
    session.delete_experiment(session.load_experiment("a"))
    store = session.content_store()
    with store.lease() as lease:
        lease.add_many(chunk_ids)
        collect(session.index, store, field_roots=field_roots, grace_s=0)
        assert set(chunk_ids) <= stored_chunk_ids(session)
    collect(session.index, store, field_roots=field_roots, grace_s=0)
    assert not set(chunk_ids) & stored_chunk_ids(session)


def test_gc_deletes_no_chunk_while_a_manifest_does_not_read(session, workdir):
    keep = persist(session, "a", folder(workdir / "a", 3))
    drop = persist(session, "b", folder(workdir / "b", 4))
    orphan_chunks = {r.chunk_id for r in chunks_of(session, drop)}
    session.delete_experiment(session.load_experiment("b"))
    store = session.content_store()
    manifest = Path(store.blobs.root) / store.blobs.ns.blob_key(keep, "chunked")
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes()[:-20])
    report = collect(session.index, store, field_roots=field_roots, grace_s=0)
    assert orphan_chunks <= stored_chunk_ids(session)
    assert any(keep in why for why in report.kept)


def test_gc_dry_run_counts_the_chunks_of_the_blobs_it_would_delete(session, workdir):
    blob = persist(session, "a", folder(workdir / "a", 5))
    session.delete_experiment(session.load_experiment("a"))
    report = collect(session.index, session.content_store(), field_roots=field_roots, grace_s=0, dry_run=True)
    would = {d.blob for d in report.deleted if d.kind == "unreferenced_chunk"}
    assert would == {r.chunk_id for r in chunks_of(session, blob)}
    assert would <= stored_chunk_ids(session)


def test_verify_reports_a_missing_chunk_as_damage_to_every_blob_that_uses_it(session, workdir):
    src = folder(workdir / "src", 6)
    first = persist(session, "a", src)
    (Path(src) / "s" / "new").write_bytes(os.urandom(3000))
    second = persist(session, "b", src)
    shared = sorted({r.chunk_id for r in chunks_of(session, first)} & {r.chunk_id for r in chunks_of(session, second)})
    ref = next(r for r in chunks_of(session, first) if r.chunk_id == shared[0])
    chunk_store(session.content_store().blobs).delete_blob(ref.chunk_id, ref.codec)
    report = verify_json(code=1)
    damaged = {(p["blob"], p["kind"]) for p in report["problems"]}
    assert damaged == {(first, "chunk"), (second, "chunk")}


def test_verify_deep_reports_a_chunk_whose_bytes_changed(session, workdir):
    blob = persist(session, "a", folder(workdir / "a", 7))
    ref = chunks_of(session, blob)[1]
    path = Path(session.content_store().blobs.root) / CHUNKS.blob_key(ref.chunk_id, ref.codec)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify_json(code=0)["problems"] == []
    problems = verify_json("--deep", code=1)["problems"]
    assert [(p["blob"], p["kind"]) for p in problems] == [(blob, "chunk")]
    assert ref.chunk_id in problems[0]["detail"]


def test_verify_lists_chunks_as_reclaimable_once_no_manifest_names_them(session, workdir):
    blob = persist(session, "a", folder(workdir / "a", 8))
    chunk_ids = {r.chunk_id for r in chunks_of(session, blob)}
    session.delete_experiment(session.load_experiment("a"))
    reclaimable = verify_json(code=0)["reclaimable"]
    assert [(r["kind"], r["blob"]) for r in reclaimable] == [("unreferenced", blob)]
    session.content_store().blobs.delete_blob(blob, "chunked")
    reclaimable = verify_json(code=0)["reclaimable"]
    assert {r["blob"] for r in reclaimable if r["kind"] == "unreferenced_chunk"} == chunk_ids


def test_verify_reports_a_file_under_chunks_that_is_no_chunk(session, workdir):
    persist(session, "a", folder(workdir / "a", 9))
    planted = Path(session.content_store().blobs.root) / CHUNKS.prefix / "xxh128" / "zz" / "notachunk"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"x")
    kinds = [p["kind"] for p in verify_json(code=1)["problems"]]
    assert kinds == ["foreign"]


def test_stats_counts_a_chunk_shared_by_two_blobs_once(session, workdir):
    src = folder(workdir / "src", 10)
    first = persist(session, "a", src)
    (Path(src) / "s" / "0").write_bytes(os.urandom(2000))
    second = persist(session, "b", src)
    stats = project_stats(session.index, session.content_store())
    blobs = session.content_store().blobs
    chunks = chunk_store(blobs)
    distinct = {r.chunk_id for b in (first, second) for r in chunks_of(session, b)}
    chunk_bytes = sum(chunks.find(c).stored_size for c in distinct)
    manifests = sum(blobs.find(b).stored_size for b in (first, second))
    assert (stats.chunked_blobs, stats.chunks) == (2, len(distinct))
    assert stats.stored_bytes == chunk_bytes + manifests
    assert stats.dedup_ratio > 1.5


def _flip_a_chunk(session, blob: str):
    ref = chunks_of(session, blob)[1]
    path = Path(session.content_store().blobs.root) / CHUNKS.blob_key(ref.chunk_id, ref.codec)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    return ref


def test_verify_without_deep_reports_a_chunk_a_load_found_damaged(session, workdir):
    blob = persist(session, "a", folder(workdir / "a", 11))
    ref = _flip_a_chunk(session, blob)
    with pytest.raises(LoadError):
        session.load_experiment("a")
    problems = verify_json(code=1)["problems"]
    assert [(p["blob"], p["kind"]) for p in problems] == [(blob, "chunk")]
    assert ref.chunk_id in problems[0]["detail"] and "persisting the folder again repairs" in problems[0]["detail"]


def test_verify_deep_drops_a_chunk_damage_record_its_re_read_refutes(session, workdir):
    from casstore.cas.damage import read_damage, record_damage

    blob = persist(session, "a", folder(workdir / "a", 13))
    ref = chunks_of(session, blob)[1]
    chunks = chunk_store(session.content_store().blobs)
    record_damage(chunks, chunks.find(ref.chunk_id), "digest", "a false record")
    assert [p["kind"] for p in verify_json(code=1)["problems"]] == ["chunk"]
    assert verify_json("--deep", code=0)["problems"] == []
    assert read_damage(chunks, ref.chunk_id) is None
    assert verify_json(code=0)["problems"] == []


def test_gc_drops_the_quarantined_chunk_and_the_record_once_a_persist_repaired_it(session, workdir):
    src = folder(workdir / "a", 12)
    blob = persist(session, "a", src)
    _flip_a_chunk(session, blob)
    with pytest.raises(LoadError):
        session.load_experiment("a")
    persist(session, "a", src)  # the stat cache sees the record, the write re-checks the chunk and repairs it
    blobs = session.content_store().blobs
    assert list(blobs.list_objects("casstore/chunk-quarantine")) and verify_json("--deep", code=0)["problems"] == []
    report = collect(session.index, session.content_store(), field_roots=field_roots, grace_s=0)
    assert "quarantined" in {d.kind for d in report.deleted}
    assert not list(blobs.list_objects("casstore/chunk-quarantine"))
    assert session.load_experiment("a") is not None
