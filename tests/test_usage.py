"""casstore.cas.usage: per experiment, the stored bytes its archives take, shared and
exclusive (what deleting it would free), chunks counted once."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from casstore import create_session, options
from casstore.cas.usage import project_usage
from casstore.storage.archivestore import ArchiveStore

MIB = 1 << 20


@pytest.fixture
def session(workdir: Path):
    with options().ctx({"datastore.url": "file:///" + str(workdir / "store")}):
        found = create_session("sqlite:///runs.db")
        yield found
        found.index.dispose()


def folder(path: Path, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return str(path)


def persist(session, name: str, **folders: str) -> None:
    session.create_experiment(name, **{f: ArchiveStore(src_dir=d, arc_dir=f) for f, d in folders.items()}).persist()


def usage_by_name(session):
    return {u.name: u for u in project_usage(session.index, session.content_store()).experiments}


def test_a_blob_two_experiments_share_is_exclusive_to_neither(session, workdir):
    data = folder(workdir / "data", {"a.bin": os.urandom(20_000)})
    persist(session, "a", data=data)
    persist(session, "b", data=data)
    found = usage_by_name(session)
    assert found["a"].exclusive_bytes == found["b"].exclusive_bytes == 0
    assert found["a"].shared_bytes == found["a"].stored_bytes > 20_000


def test_a_blob_only_one_experiment_uses_is_exclusive_to_it(session, workdir):
    persist(session, "a", data=folder(workdir / "data", {"a.bin": os.urandom(20_000)}))
    found = usage_by_name(session)["a"]
    assert found.exclusive_bytes == found.stored_bytes > 20_000 and found.shared_bytes == 0


def test_the_project_counts_each_shared_blob_once(session, workdir):
    data = folder(workdir / "data", {"a.bin": os.urandom(20_000)})
    persist(session, "a", data=data)
    persist(session, "b", data=data)
    usage = project_usage(session.index, session.content_store())
    assert usage.stored_bytes == usage.experiments[0].stored_bytes


def test_chunks_two_near_identical_archives_share_are_counted_once_and_shared(session, workdir):
    base = random.Random(1).randbytes(8 * MIB)
    persist(session, "a", data=folder(workdir / "a", {"big.bin": base}))
    persist(session, "b", data=folder(workdir / "b", {"big.bin": base[:7 * MIB] + os.urandom(MIB)}))
    found = usage_by_name(session)
    assert session.content_store().blobs.find(session.index.refs_of(
        session.read_experiment("a").id_experiment)[0].blob_id).codec == "chunked"
    assert found["a"].shared_bytes > 4 * MIB  # the first 7 MiB are the same chunks
    assert found["b"].exclusive_bytes < 4 * MIB  # its own last MiB (and a chunk or two before it), its manifest
    assert found["a"].stored_bytes == found["a"].shared_bytes + found["a"].exclusive_bytes
    usage = project_usage(session.index, session.content_store())
    assert usage.stored_bytes < found["a"].stored_bytes + found["b"].stored_bytes


def test_a_missing_blob_is_counted_and_takes_no_bytes(session, workdir):
    persist(session, "a", data=folder(workdir / "data", {"a.bin": os.urandom(20_000)}))
    blob_id = session.index.refs_of(session.read_experiment("a").id_experiment)[0].blob_id
    store = session.content_store()
    store.blobs.delete_blob(blob_id, store.blobs.find(blob_id).codec)
    found = usage_by_name(session)["a"]
    assert (found.missing_blobs, found.stored_bytes, found.archives) == (1, 0, 1)


def test_an_experiment_without_archives_takes_nothing(session):
    session.create_experiment("plain", lr=0.1).persist()
    found = usage_by_name(session)["plain"]
    assert (found.archives, found.stored_bytes, found.exclusive_bytes) == (0, 0, 0)


def test_first_stored_is_when_an_experiments_first_blob_was_stored(session, workdir):
    import time

    from casstore.cas.usage import first_stored

    before = time.time()
    persist(session, "a", data=folder(workdir / "data", {"a.bin": os.urandom(2000)}))
    session.create_experiment("plain", lr=0.1).persist()
    found = first_stored(session.index)
    assert list(found) == [session.read_experiment("a").id_experiment]
    assert before <= found[session.read_experiment("a").id_experiment] <= time.time()
