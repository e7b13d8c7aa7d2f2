"""Chunked blobs on S3 (P13, issue 13 item 4): a folder stored as a manifest of chunks on an
S3-protocol server reads back byte for byte, gc follows manifests to chunks, and verify
reports a chunk that is gone. The create-only publish of chunks is in the backend contract
(test_blobstore_backends.py), which runs on S3 too. Few tests: each costs a bucket."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from helpers import file_tree, make_folder

from casstore import ArchiveStore, create_session, options
from casstore.cas.backends.factory import open_blobstore
from casstore.cas.chunks.manifest import iter_manifest
from casstore.cas.chunks.policy import ChunkPolicy
from casstore.cas.gc import collect
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.store.content_store import ContentStore
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes
from casstore.cas.verify import verify
from casstore.session import field_roots

TINY = {"whole_below": 16384, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
        "cdc_max": 16384}


def folder(path: Path, seed: int) -> str:
    rng = random.Random(seed)
    make_folder(path, {"big.bin": rng.randbytes(150_000), **{f"s/{i}": rng.randbytes(2500) for i in range(10)}})
    return str(path)


@pytest.fixture
def session(workdir, s3_bucket, s3_options, monkeypatch):
    import casstore.cas.gc

    monkeypatch.setattr(casstore.cas.gc, "MIN_LEFTOVER_AGE_S", 0)  # S3 objects cannot be backdated
    options().set("datastore.url", f"s3://{s3_bucket}/team/ds")
    options().set("datastore.storage_options", s3_options)
    options().set("datastore.chunks", TINY)
    s = create_session(f"sqlite:///{workdir / 'p.db'}")
    yield s
    s.index.dispose()


def persist(s, name: str, src: str) -> str:
    e = s.create_experiment(name, data=ArchiveStore(src_dir=src, arc_dir="data"))
    e.persist()
    return e.fields.data.blob_id


def chunk_ids(cs: ContentStore, blob_id: str) -> set[str]:
    """The chunks the manifest of `blob_id` names."""
    with cs.blobs.open_copy(blob_id, "chunked")[0] as f:
        return {ref.chunk_id for ref in iter_manifest(f, blob_id)}


def stored_chunks(s) -> set[str]:
    return {c.blob_id for c in chunk_store(s.content_store().blobs).iter_blobs()}


def test_a_folder_stored_chunked_on_s3_reads_back_as_its_canonical_tar(tmp_path, s3_bucket, s3_options):
    blobs = open_blobstore(f"s3://{s3_bucket}/team/ds", s3_options)
    assert blobs.ensure_format() == "chunked"
    cs = ContentStore(blobs, policy=ChunkPolicy(**TINY))
    src = folder(tmp_path / "src", 1)
    with cs.lease() as lease:
        facts = cs.put_dir(src, "data", lease=lease)
    assert facts.codec == "chunked" and len(chunk_ids(cs, facts.blob_id)) > 5
    out = io.BytesIO()
    cs.copy_checked(facts.blob_id, facts.size, out)
    assert out.getvalue() == tar_bytes(scan(src, "data", "**", None))
    cs.extract(facts.blob_id, str(tmp_path / "out"), size=facts.size)
    assert file_tree(tmp_path / "out" / "data") == file_tree(src)


def test_an_experiment_stored_chunked_on_s3_loads_and_stores_again(session, workdir):
    src = folder(workdir / "src", 4)
    blob = persist(session, "a", src)
    assert session.content_store().blobs.find(blob).codec == "chunked"
    again = persist(session, "b", src)  # the writer checks the manifest it finds under the id
    assert again == blob
    loaded = session.load_experiment("a")
    assert file_tree(Path(loaded.fields.data.get_target()) / "data") == file_tree(src)


def test_gc_at_grace_0_on_s3_deletes_the_orphan_chunks_and_keeps_the_named_ones(session, workdir):
    src = folder(workdir / "src", 2)
    first = persist(session, "a", src)
    (Path(src) / "extra.bin").write_bytes(os.urandom(40_000))
    second = persist(session, "b", src)
    cs = session.content_store()
    shared = chunk_ids(cs, first) & chunk_ids(cs, second)
    only_first = chunk_ids(cs, first) - shared
    assert shared and only_first
    session.delete_experiment(session.load_experiment("a"))
    collect(session.index, session.content_store(), field_roots=field_roots, grace_s=0)
    stored = stored_chunks(session)
    assert chunk_ids(cs, second) <= stored and not only_first & stored
    assert list(chunk_store(session.content_store().blobs).iter_trash()) == []
    loaded = session.load_experiment("b")
    assert file_tree(Path(loaded.fields.data.get_target()) / "data") == file_tree(src)


def test_verify_on_s3_reports_a_deleted_chunk_as_damage_to_its_blob(session, workdir):
    blob = persist(session, "a", folder(workdir / "src", 3))
    store = session.content_store()
    assert verify(session.index, store, field_roots=field_roots, deep=True).problems == []
    gone = sorted(chunk_ids(session.content_store(), blob))[0]
    chunks = chunk_store(store.blobs)
    chunks.delete_blob(gone, chunks.find(gone).codec)
    problems = verify(session.index, store, field_roots=field_roots).problems
    assert [(p.kind, p.blob) for p in problems] == [("chunk", blob)]
    assert gone in problems[0].detail
