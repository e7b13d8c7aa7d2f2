"""Projects that move (casstore/cas/live/moves.py, docs/datastore.md): a project whose
database and datastore move together opens where it is with no command; a moved database
registers itself where it is now; gc skips only the registry entry of the very file that
moved, refuses for any other database it cannot open, naming the project, and `casstore
relocate` re-points a project whose datastore is elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
from helpers import db_url, file_tree, make_folder, run_cli

from casstore import create_session, options
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.live.moves import RELATIVE_KEY
from casstore.cas.live.registry import parse_entry, read_registry
from casstore.errors import DatastoreError
from casstore.storage.archivestore import ArchiveStore

FILES = {"weights.bin": b"w" * 5000, "sub/notes.txt": b"moved with its project\n"}


def _facts(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, value FROM casstore_meta").fetchall())


def _persist(db: Path, datastore: Path, name: str, files: dict[str, bytes] = FILES) -> str:
    """Persist experiment `name` with one archive into `datastore`; its blob id."""
    options().set("datastore.url", str(datastore))
    src = db.parent / f"src-{name}"
    make_folder(src, files)
    session = create_session(db_url(db))
    experiment = session.create_experiment(name, data=ArchiveStore(src_dir=str(src), arc_dir="d"))
    experiment.persist()
    session.index.dispose()
    shutil.rmtree(src)
    return experiment.fields.data.blob_id


def _load_files(db: Path, name: str) -> dict[str, bytes]:
    options().set("datastore.url", "file:///mltraq.datastore")  # the default: the database decides
    session = create_session(db_url(db))
    try:
        experiment = session.load_experiment(name)
        return file_tree(os.path.join(experiment.fields.data.get_target(), "d"))
    finally:
        session.index.dispose()


def _gc(db: Path, datastore: Path, code: int = 0) -> dict:
    result = run_cli("gc", "--grace", "0", "--db", db_url(db), "--datastore", str(datastore), "--json", code=code)
    return json.loads(result.stdout) if code == 0 else {"stderr": result.stderr}


@pytest.fixture
def folder_project(workdir) -> tuple[Path, str]:
    """A project folder: its database and its datastore side by side."""
    root = workdir / "project"
    root.mkdir()
    blob = _persist(root / "runs.db", root / "datastore", "e1")
    return root, blob


@pytest.fixture
def shared_store(workdir) -> tuple[Path, Path, Path, str]:
    """Project p (folder p/, its database only) and project q sharing datastore `store`,
    outside both: gc run from q must keep p's blob."""
    store = workdir / "store"
    (workdir / "p").mkdir()
    (workdir / "q").mkdir()
    blob = _persist(workdir / "p" / "runs.db", store, "pe")
    _persist(workdir / "q" / "runs.db", store, "qe", {"other.txt": b"q's own\n"})
    return store, workdir / "p" / "runs.db", workdir / "q" / "runs.db", blob


def test_database_beside_its_datastore_records_it_relative_to_itself(folder_project):
    root, _blob = folder_project
    assert _facts(root / "runs.db")[RELATIVE_KEY] == "datastore"


def test_datastore_outside_the_database_folder_is_recorded_absolute_only(shared_store):
    store, p, _q, _blob = shared_store
    facts = _facts(p)
    assert facts["datastore"] == str(store) and RELATIVE_KEY not in facts


def test_project_folder_renamed_loads_with_no_command(folder_project, workdir):
    root, _blob = folder_project
    os.rename(root, workdir / "renamed")
    assert _load_files(workdir / "renamed" / "runs.db", "e1") == FILES


def test_project_folder_copied_elsewhere_loads_from_its_own_copy(folder_project, workdir):
    root, _blob = folder_project
    shutil.copytree(root, workdir / "copy")
    shutil.rmtree(root)
    assert _load_files(workdir / "copy" / "runs.db", "e1") == FILES


def test_moved_project_records_its_new_absolute_datastore_at_its_next_write(folder_project, workdir):
    root, _blob = folder_project
    os.rename(root, workdir / "renamed")
    _persist(workdir / "renamed" / "runs.db", workdir / "renamed" / "datastore", "e2")
    assert _facts(workdir / "renamed" / "runs.db")["datastore"] == str(workdir / "renamed" / "datastore")


def test_moved_project_is_registered_where_it_is_once_it_is_opened(folder_project, workdir):
    root, _blob = folder_project
    os.rename(root, workdir / "renamed")
    _load_files(workdir / "renamed" / "runs.db", "e1")
    found, broken = read_registry(LocalBlobStore(str(workdir / "renamed" / "datastore")))
    assert [e.url for e in found] == [db_url(workdir / "renamed" / "runs.db")] and not broken


def test_gc_from_another_project_refuses_while_a_moved_database_is_not_registered(shared_store, workdir):
    store, p, q, blob = shared_store
    project = _facts(p)["project"]
    os.rename(p.parent, workdir / "p2")
    refused = _gc(q, store, code=3)["stderr"]
    assert project in refused and "casstore relocate" in refused
    assert LocalBlobStore(str(store)).find(blob) is not None


def test_gc_from_another_project_keeps_the_blobs_of_a_renamed_database(shared_store, workdir):
    store, p, q, blob = shared_store
    os.rename(p.parent, workdir / "p2")
    run_cli("stats", "--db", db_url(workdir / "p2" / "runs.db"))  # any command registers it
    report = _gc(q, store)
    assert LocalBlobStore(str(store)).find(blob) is not None and report["deleted"] == []


def test_renamed_database_drops_the_registry_entry_it_left(shared_store, workdir):
    store, p, _q, _blob = shared_store
    os.rename(p.parent, workdir / "p2")
    run_cli("stats", "--db", db_url(workdir / "p2" / "runs.db"))
    urls = [e.url for e in read_registry(LocalBlobStore(str(store)))[0]]
    assert db_url(p) not in urls and db_url(workdir / "p2" / "runs.db") in urls


def test_gc_refuses_for_a_copied_database_whose_original_is_gone(shared_store, workdir):
    """A copy is another file: gc cannot tell it from a copy made before the original moved."""
    store, p, q, blob = shared_store
    (workdir / "restored").mkdir()
    shutil.copy2(p, workdir / "restored" / "runs.db")
    os.unlink(p)
    run_cli("stats", "--db", db_url(workdir / "restored" / "runs.db"))
    refused = _gc(q, store, code=3)["stderr"]
    assert db_url(p) in refused and LocalBlobStore(str(store)).find(blob) is not None


def test_relocate_on_a_restored_database_lets_gc_go_on_and_keep_its_blobs(shared_store, workdir):
    store, p, q, blob = shared_store
    (workdir / "restored").mkdir()
    shutil.copy2(p, workdir / "restored" / "runs.db")
    os.unlink(p)
    out = json.loads(run_cli("relocate", "--db", db_url(workdir / "restored" / "runs.db"), "--json").stdout)
    assert len(out["dropped"]) == 1
    _gc(q, store)
    assert LocalBlobStore(str(store)).find(blob) is not None


def test_load_of_a_project_whose_datastore_moved_names_relocate(shared_store, workdir):
    store, p, _q, _blob = shared_store
    os.rename(store, workdir / "store2")
    with pytest.raises(DatastoreError, match="casstore relocate"):
        _load_files(p, "pe")


def test_relocate_repoints_a_project_at_its_moved_datastore(shared_store, workdir):
    store, p, _q, _blob = shared_store
    os.rename(store, workdir / "store2")
    run_cli("relocate", "--db", db_url(p), "--datastore", str(workdir / "store2"))
    assert _load_files(p, "pe") == FILES


def test_relocate_refuses_a_datastore_without_the_projects_blobs(shared_store, workdir):
    store, p, _q, _blob = shared_store
    other = workdir / "other-store"
    _persist(workdir / "other.db", other, "x", {"x.txt": b"unrelated\n"})
    before = _facts(p)
    result = run_cli("relocate", "--db", db_url(p), "--datastore", str(other), code=3)
    assert "lacks blobs" in result.stderr and _facts(p) == before


def test_option_naming_the_new_place_of_a_moved_datastore_suggests_relocate(shared_store, workdir):
    store, p, _q, _blob = shared_store
    os.rename(store, workdir / "store2")
    options().set("datastore.url", str(workdir / "store2"))
    session = create_session(db_url(p))
    with pytest.raises(DatastoreError, match="casstore relocate"):
        session.load_experiment("pe")
    session.index.dispose()


def test_registry_entry_records_the_file_it_was_written_for(shared_store):
    store, p, _q, _blob = shared_store
    entry = next(e for e in read_registry(LocalBlobStore(str(store)))[0] if e.url == db_url(p))
    st = os.stat(p)
    assert entry.file == (st.st_dev, st.st_ino)


@pytest.mark.parametrize("file", [[1], [1, -2], ["1", 2], [True, 2], 7])
def test_registry_entry_with_a_malformed_file_is_unreadable(file):
    body = {"format": "casstore-registry-2", "project": str(uuid.uuid4()), "url": "sqlite:////x/runs.db",
            "registered": 1.0, "file": file}
    assert parse_entry("k", json.dumps(body).encode()).__class__.__name__ == "BrokenEntry"


def test_gc_skips_an_entry_left_by_a_renamed_database_that_it_could_not_drop(shared_store, workdir):
    """The move's own registration drops the old entry; if it could not (a read-only
    datastore, say), gc still recognises the entry of the renamed file."""
    store, p, q, blob = shared_store
    registry = store / "casstore" / "registry"
    saved = {f.name: f.read_bytes() for f in registry.iterdir()}
    os.rename(p.parent, workdir / "p2")
    run_cli("stats", "--db", db_url(workdir / "p2" / "runs.db"))
    for name, data in saved.items():
        (registry / name).write_bytes(data)
    assert db_url(p) in [e.url for e in read_registry(LocalBlobStore(str(store)))[0]]
    _gc(q, store)
    assert LocalBlobStore(str(store)).find(blob) is not None
