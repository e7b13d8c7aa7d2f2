"""verify (casstore/cas/verify.py): damage in `problems`, what gc could delete in `reclaimable`.
Here: the fields cross-checked with the reference rows (another tool, or damage, can make the
two disagree: the tampering goes through `sqlite3`, never through casstore), damaged facts
rows, fields that do not decode, and the run tables of a migrated project."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from helpers import TAMPERING, row_deleted, run_rows, verify_json, zlib_bomb

from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.index.queries import Index
from casstore.cas.store.content_store import ContentStore
from casstore.cas.verify import verify
from casstore.session import field_roots


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_deep_reports_fields_and_reference_rows_that_disagree(project, case):
    row_blob = TAMPERING[case](project)
    report = verify_json("--deep", code=1)
    refs = [p for p in report["problems"] if p["kind"] == "refs"]
    assert [(p["blob"], p["experiment"].replace("-", ""), p["field"]) for p in refs] == [
        (project.kept, project.id_a, "data")]
    assert project.kept in refs[0]["detail"] and (row_blob is None or row_blob in refs[0]["detail"])


def test_fields_naming_a_blob_that_is_not_there_are_reported_by_verify(project):
    row_deleted(project)
    shutil.rmtree("mltraq.datastore/casstore/blobs")
    report = verify_json(code=1)
    missing = [(p["blob"], p["field"]) for p in report["problems"] if p["kind"] == "missing"]
    assert (project.kept, "data") in missing


def test_a_non_integer_size_in_the_facts_table_is_one_line_damage(project):
    project.sql("UPDATE casstore_blobs SET size = 'big' WHERE blob_id = ?", project.kept)
    for extra in ((), ("--deep",)):
        report = verify_json(*extra, code=1)
        assert [(p["kind"], p["blob"]) for p in report["problems"]] == [("facts", project.kept)]
        assert "'big'" in report["problems"][0]["detail"]


def test_an_unknown_codec_in_the_facts_table_is_damage(project):
    project.sql("UPDATE casstore_blobs SET codec = 'lz4' WHERE blob_id = ?", project.kept)
    report = verify_json(code=1)
    assert [(p["kind"], p["blob"]) for p in report["problems"]] == [("facts", project.kept)]
    assert "'lz4'" in report["problems"][0]["detail"]


def test_reference_rows_of_an_experiment_deleted_by_another_tool_are_reclaimable(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    report = verify_json(code=0)
    assert report["problems"] == []
    assert {"kind": "orphaned_ref", "blob": project.kept, "bytes": 0} in report["reclaimable"]


def test_verify_reports_fields_that_do_not_decode_as_damage(project):
    project.sql("UPDATE experiments SET fields = x'00ff' WHERE id_experiment = ?", project.id_a)
    report = verify_json(code=1)
    assert [p["kind"] for p in report["problems"]] == ["fields"]
    assert "experiment 'a'" in report["problems"][0]["detail"]


def test_verify_reports_fields_that_inflate_past_the_limit_as_damage(project, monkeypatch):
    project.sql("UPDATE experiments SET fields = ? WHERE id_experiment = ?", zlib_bomb(monkeypatch), project.id_a)
    report = verify_json(code=1)
    assert [p["kind"] for p in report["problems"]] == ["fields"]
    assert "decompresses to more than" in report["problems"][0]["detail"]


def test_verify_reports_a_run_table_archive_whose_reference_row_is_gone(migrated):
    rows = run_rows(migrated)
    with sqlite3.connect(migrated / "mltraq.db") as conn:
        conn.execute("DELETE FROM casstore_refs WHERE id_run != ''")
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        report = verify(index, ContentStore(LocalBlobStore(str(migrated / "datastore"))), field_roots=field_roots)
    finally:
        index.dispose()
    found = sorted((p.kind, p.blob, p.field) for p in report.problems)
    assert found == sorted(("refs", blob, f"runs[{id_run}].{field}") for id_run, field, blob in rows)
