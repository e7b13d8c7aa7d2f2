"""The SQL index (casstore/cas/index/, design P5, P6): experiments, the reference rows of their
fields, and the facts of the blobs they name. Here: its queries on an SQLite file, and the
facts rows that another tool damaged (through `sqlite3`, never through casstore), which read
as unknown and block no load or persist. test_postgres.py runs the index on PostgreSQL too."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
from helpers import DB, run_cli, verify_json

from casstore import ArchiveStore
from casstore.cas.index.engine import write_transaction
from casstore.cas.index.facts import BlobFacts
from casstore.cas.index.queries import ExperimentRecord, Index, Ref
from casstore.errors import DamagedIndex

A, B = "xxh128:" + "a" * 32, "xxh128:" + "b" * 32
FACTS = [BlobFacts(A, 1, 1, "none"), BlobFacts(B, 2, 2, "none")]  # a reference row needs its blob's facts


@pytest.fixture
def index(tmp_path):
    """A new index in an SQLite file; the file is `index.path`."""
    path = tmp_path / "index.db"
    opened = Index.open(f"sqlite:///{path}")
    opened.path = path
    yield opened
    opened.dispose()


def _save(index: Index, name: str, refs: list[Ref], blobs: list[BlobFacts], if_exists: str = "fail") -> uuid.UUID:
    record = ExperimentRecord(uuid.uuid4(), name, b"fields")
    index.save_experiment(record, refs, blobs, if_exists)
    return record.id_experiment


def _sql(index: Index, query: str, *args) -> None:
    with sqlite3.connect(index.path) as conn:
        conn.execute(query, args)


# --------------------------------------------------------------------------- queries


def test_put_blob_facts_writes_the_copy_it_is_given_over_an_existing_row(index):
    _save(index, "e1", [Ref("data", A, "d")], [BlobFacts(A, 100, 100, "none")])
    with write_transaction(index.engine) as conn:
        index.put_blob_facts(conn, [BlobFacts(A, 100, 40, "zstd"), BlobFacts(B, 7, 7, "none")])
    assert index.blob_facts(A) == BlobFacts(A, 100, 40, "zstd")
    assert index.blob_facts(B) == BlobFacts(B, 7, 7, "none")


def test_put_refs_replaces_the_row_of_the_same_run_and_field_only(index):
    id_experiment = _save(index, "e", [Ref("data", A, "d"), Ref("other", A, "o")], FACTS)
    with write_transaction(index.engine) as conn:
        index.put_refs(conn, id_experiment, [Ref("data", B, "d")])
    assert sorted((r.field, r.blob_id) for r in index.refs_of(id_experiment)) == [("data", B), ("other", A)]


def test_a_replace_keeps_the_run_level_references_of_the_same_experiment(index):
    record = ExperimentRecord(uuid.uuid4(), "e", b"fields")
    index.save_experiment(record, [Ref("data", A, "d"), Ref("model", B, "m", id_run="r1")], FACTS, "fail")
    index.save_experiment(ExperimentRecord(record.id_experiment, "e", b"new"), [], [], "replace")
    assert [(r.id_run, r.field) for r in index.refs_of(record.id_experiment)] == [("r1", "model")]


def test_delete_orphaned_refs_deletes_only_the_rows_of_experiments_that_are_gone(index):
    kept = _save(index, "kept", [Ref("data", A, "d")], FACTS)
    gone = _save(index, "gone", [Ref("data", B, "d")], [])
    _sql(index, "DELETE FROM experiments WHERE id_experiment = ?", gone.hex)
    assert [(r.id_experiment, r.blob_id) for r in index.delete_orphaned_refs()] == [(gone, B)]
    assert index.orphaned_refs() == [] and index.referenced_blob_ids() == {A}
    assert [r.blob_id for r in index.refs_of(kept)] == [A]


def test_delete_orphaned_refs_with_none_writes_nothing_so_works_read_only(index):
    _save(index, "e", [Ref("data", A, "d")], FACTS)
    read_only = Index.open(f"sqlite:///{index.path}", read_only=True)
    try:
        assert read_only.read_only and read_only.delete_orphaned_refs() == []
    finally:
        read_only.dispose()


def test_iter_run_cells_yields_the_non_null_cells_of_the_columns_that_exist(index):
    _sql(index, "CREATE TABLE runs (id_run TEXT, model BLOB, other BLOB)")
    _sql(index, "INSERT INTO runs VALUES ('r1', x'01', NULL), ('r2', NULL, x'02'), (NULL, x'03', NULL)")
    assert list(index.iter_run_cells("runs", ["model", "missing"])) == [("r1", "model", b"\x01")]
    assert list(index.iter_run_cells("no_such_table", ["model"])) == []


def test_a_damaged_facts_row_raises_damaged_index_but_is_only_a_missing_hint(index):
    _save(index, "e", [Ref("data", A, "d")], [BlobFacts(A, 100, 100, "none")])
    _sql(index, "UPDATE casstore_blobs SET size = 'big'")
    with pytest.raises(DamagedIndex, match="'big'"):
        index.blob_facts(A)
    assert index.facts_hint(A) is None


def test_iter_blob_facts_puts_a_damaged_row_aside_when_asked_and_raises_otherwise(index):
    _save(index, "e", [Ref("data", A, "d"), Ref("x", B, "x")], FACTS)
    _sql(index, "UPDATE casstore_blobs SET codec = 'lz4' WHERE blob_id = ?", B)
    damaged: dict[str, str] = {}
    assert list(index.iter_blob_facts(damaged)) == [BlobFacts(A, 1, 1, "none")]
    assert list(damaged) == [B] and "'lz4'" in damaged[B]
    with pytest.raises(DamagedIndex):
        list(index.iter_blob_facts())


def test_a_listing_shows_a_damaged_facts_row_as_unknown(index):
    _save(index, "e", [Ref("data", A, "d")], [BlobFacts(A, 1, 1, "none")])
    _sql(index, "UPDATE casstore_blobs SET stored_size = -1")
    assert [(r.blob_id, r.size, r.stored_size, r.codec) for r in index.iter_refs()] == [(A, None, None, None)]


# --------------------------------------------------------------------------- facts rows damaged by another tool


@pytest.mark.parametrize("column", ["size", "stored_size"])
def test_cat_reads_a_blob_whose_facts_row_is_damaged(project, column):
    project.sql(f"UPDATE casstore_blobs SET {column} = 'big' WHERE blob_id = ?", project.kept)
    result = run_cli("cat", project.kept, "--db", DB)
    assert result.stdout.startswith("f.txt") and "kept" in result.stdout


@pytest.mark.parametrize("column", ["size", "stored_size"])
def test_a_load_reads_the_blob_whose_facts_row_is_damaged(project, column):
    project.sql(f"UPDATE casstore_blobs SET {column} = 'big' WHERE blob_id = ?", project.kept)
    assert project.loads_a() == b"kept"


@pytest.mark.parametrize("column", ["size", "stored_size"])
def test_a_persist_of_the_same_content_rewrites_a_damaged_facts_row(project, column):
    project.sql(f"UPDATE casstore_blobs SET {column} = 'big' WHERE blob_id = ?", project.kept)
    project.session.create_experiment("a2", data=ArchiveStore("a")).persist()
    assert verify_json(code=0)["problems"] == []


def test_a_persist_keeping_a_blob_known_by_no_size_and_a_damaged_row_records_its_true_size(project):
    project.sql("UPDATE casstore_blobs SET size = 'big' WHERE blob_id = ?", project.kept)
    kept = ArchiveStore.from_ref({"blob": project.kept, "arc_dir": "data"})  # a value written without a size
    project.session.create_experiment("a3", data=kept).persist()
    size = project.session.content_store().check(project.kept)
    assert project.rows("SELECT size FROM casstore_blobs WHERE blob_id = ?", project.kept) == [(size,)]
    assert verify_json(code=0)["problems"] == []


def test_stats_and_ls_show_a_non_integer_size_as_unknown(project):
    project.sql("UPDATE casstore_blobs SET size = 'big' WHERE blob_id = ?", project.kept)
    stats = json.loads(run_cli("stats", "--db", DB, "--json").stdout)
    assert stats["unknown_size"] == 1
    listing = json.loads(run_cli("ls", "--refs", "--db", DB, "--json").stdout)["refs"]
    assert [(i["blob"], i["size"]) for i in listing if i["name"] == "a"] == [(project.kept, None)]
