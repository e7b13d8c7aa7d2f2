"""gc (casstore/cas/gc.py, docs/gc.md): what it deletes and what it keeps. It keeps every blob
the fields of an experiment name, in this project or another registered one, whatever the
reference rows say (another tool, or damage, can make the two disagree: the tampering goes
through `sqlite3`, never through casstore); it removes the reference rows of experiments
that no longer exist; it refuses, deleting nothing, when it cannot read every root."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import DB, TAMPERING, make_folder, row_deleted, run_cli, run_rows, verify_json, zlib_bomb

from casstore import ArchiveStore, create_session
from casstore.cas.gc import collect
from casstore.cas.index.queries import Index
from casstore.errors import FieldsUnreadable
from casstore.session import field_roots


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_gc_keeps_the_blob_the_fields_name_whatever_the_reference_rows_say(project, case):
    TAMPERING[case](project)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.blob_exists(project.kept)
    assert project.loads_a() == b"kept"


def test_gc_removes_the_reference_rows_of_an_experiment_that_no_longer_exists(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.rows("SELECT count(*) FROM casstore_refs WHERE id_experiment = ?", project.id_a) == [(0,)]
    assert not project.blob_exists(project.kept) and project.blob_exists(project.other)
    assert verify_json(code=0) == {"problems": [], "reclaimable": []}


def test_gc_dry_run_lists_the_reference_rows_of_a_deleted_experiment_and_keeps_them(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    report = json.loads(run_cli("gc", "--db", DB, "--grace", "0", "--dry-run", "--json").stdout)
    assert report["deleted"] == [{"blob": project.kept, "bytes": 0}]
    assert project.rows("SELECT count(*) FROM casstore_refs WHERE id_experiment = ?", project.id_a) == [(1,)]
    assert project.blob_exists(project.kept)


def test_a_refused_gc_keeps_the_reference_rows_of_a_deleted_experiment(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    Path("mltraq.datastore/casstore/registry", "0" * 32 + ".json").write_bytes(b"")
    run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert project.rows("SELECT count(*) FROM casstore_refs WHERE id_experiment = ?", project.id_a) == [(1,)]
    assert project.blob_exists(project.kept)


def test_gc_refuses_when_the_fields_of_an_experiment_do_not_decode(project):
    row_deleted(project)
    project.sql("UPDATE experiments SET fields = x'00ff' WHERE id_experiment = ?", project.id_a)
    result = run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert "experiment 'a'" in result.stderr and result.stderr.count("\n") == 1
    assert project.blob_exists(project.kept)


def _other_project_named_only_in_its_fields(fields: bytes | None = None) -> str:
    """Another project `q.db` in the same datastore, whose one experiment `c` names its blob
    in its fields only (its reference rows deleted), its fields replaced by `fields` if given;
    the blob id."""
    other = create_session("sqlite:///q.db")
    make_folder("c", {"f.txt": b"of q"})
    c = other.create_experiment("c", data=ArchiveStore("c")).persist()
    with sqlite3.connect("q.db") as conn:
        conn.execute("DELETE FROM casstore_refs")
        if fields is not None:
            conn.execute("UPDATE experiments SET fields = ?", (fields,))
    return c.fields.data.blob_id


def test_gc_keeps_the_blob_another_registered_project_names_only_in_its_fields(project):
    blob_id = _other_project_named_only_in_its_fields()
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.blob_exists(blob_id)


def test_gc_refuses_when_another_registered_project_has_fields_that_do_not_decode(project):
    blob_id = _other_project_named_only_in_its_fields(b"\x00\xff")
    result = run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert "experiment 'c'" in result.stderr
    assert project.blob_exists(blob_id)


def test_gc_refuses_when_another_registered_project_has_fields_that_inflate_past_the_limit(project, monkeypatch):
    other = create_session("sqlite:///q.db")
    make_folder("c", {"f.txt": b"of q"})
    c = other.create_experiment("c", data=ArchiveStore("c")).persist()
    with sqlite3.connect("q.db") as conn:
        conn.execute("DELETE FROM casstore_refs")
        conn.execute("UPDATE experiments SET fields = ?", (zlib_bomb(monkeypatch),))
    result = run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert "experiment 'c'" in result.stderr and "decompresses to more than" in result.stderr
    assert result.stderr.count("\n") == 1
    assert project.blob_exists(c.fields.data.blob_id)


def test_session_gc_keeps_the_blob_the_fields_name(project):
    row_deleted(project)
    project.session.gc(grace_s=0)
    assert project.loads_a() == b"kept"


def test_collect_needs_the_field_roots(project):
    with pytest.raises(TypeError):
        collect(project.session.index, project.session.content_store(), grace_s=0)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- roots in run tables


def test_field_roots_name_the_run_table_archives_as_the_reference_rows_do(migrated):
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        roots = {(r.id_run, r.field, r.blob_id) for r in field_roots(index) if r.id_run}
    finally:
        index.dispose()
    assert roots == set(run_rows(migrated)) and len(roots) == 2


def test_field_roots_refuse_a_run_table_cell_that_does_not_decode(migrated):
    with sqlite3.connect(migrated / "mltraq.db") as conn:
        conn.execute("UPDATE experiment_alpha SET model = x'00ff'")
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        with pytest.raises(FieldsUnreadable, match="column 'model'"):
            list(field_roots(index))
    finally:
        index.dispose()
