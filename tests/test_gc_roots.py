"""gc's roots and verify's cross-check: the fields, not only the reference rows (issue 11, item 7).

A load reads the archive values of the fields; gc, stats and `ls` read `casstore_refs`. Another
tool (or damage) can make the two disagree: every test here tampers with the database as such
a tool would, through `sqlite3` with its foreign keys off, never through casstore."""

from __future__ import annotations

import json
import shutil
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from casstore import ArchiveStore, Session, create_session
from casstore.mltraq import migrate as migration
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cas.gc import collect
from casstore.cas.index.queries import Index
from casstore.cas.verify import verify
from casstore.errors import FieldsUnreadable, InvalidInput
from casstore.session import field_roots
from casstore.mltraq import datapak
from helpers import make_folder, run_cli

DB = "sqlite:///p.db"
MISSING = "xxh128:" + "0" * 32  # a well-formed id that no blob has


@dataclass
class Project:
    session: Session
    kept: str  # the blob experiment "a" names in its field `data`
    other: str  # the blob experiment "b" names
    id_a: str

    def sql(self, query: str, *args) -> None:
        with sqlite3.connect("p.db") as conn:
            conn.execute(query, args)

    def rows(self, query: str, *args) -> list[tuple]:
        with sqlite3.connect("p.db") as conn:
            return conn.execute(query, args).fetchall()

    def blob_exists(self, blob_id: str) -> bool:
        return self.session.content_store().blobs.find(blob_id) is not None

    def loads_a(self) -> bytes:
        loaded = self.session.load_experiment("a")
        return (Path(loaded.fields.data.get_target()) / "f.txt").read_bytes()


@pytest.fixture
def project(workdir) -> Project:
    session = create_session(DB)
    make_folder("a", {"f.txt": b"kept"})
    make_folder("b", {"f.txt": b"other"})
    a = session.create_experiment("a", data=ArchiveStore("a")).persist()
    b = session.create_experiment("b", data=ArchiveStore("b")).persist()
    return Project(session, a.fields.data.blob_id, b.fields.data.blob_id, a.id_experiment.hex)


def _row_deleted(p: Project) -> str | None:
    p.sql("DELETE FROM casstore_refs WHERE id_experiment = ?", p.id_a)
    return None


def _row_names_another_blob(p: Project) -> str | None:
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE id_experiment = ?", p.other, p.id_a)
    return p.other


def _row_names_a_missing_blob(p: Project) -> str | None:
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE id_experiment = ?", MISSING, p.id_a)
    return MISSING


def _facts_row_changed(p: Project) -> str | None:
    p.sql("UPDATE casstore_blobs SET blob_id = ? WHERE blob_id = ?", MISSING, p.kept)
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE blob_id = ?", MISSING, p.kept)
    return MISSING


# Each makes the reference row of a.data disagree with the fields; returns what the row names.
TAMPERING = {"row_deleted": _row_deleted, "row_names_another_blob": _row_names_another_blob,
             "row_names_a_missing_blob": _row_names_a_missing_blob, "facts_row_changed": _facts_row_changed}


def _verify(*extra: str, code: int) -> dict:
    return json.loads(run_cli("verify", "--db", DB, "--json", *extra, code=code).stdout)


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_deep_reports_fields_and_reference_rows_that_disagree(project, case):
    row_blob = TAMPERING[case](project)
    report = _verify("--deep", code=1)
    refs = [p for p in report["problems"] if p["kind"] == "refs"]
    assert [(p["blob"], p["experiment"].replace("-", ""), p["field"]) for p in refs] == [
        (project.kept, project.id_a, "data")]
    assert project.kept in refs[0]["detail"] and (row_blob is None or row_blob in refs[0]["detail"])


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_gc_keeps_the_blob_the_fields_name_whatever_the_reference_rows_say(project, case):
    TAMPERING[case](project)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.blob_exists(project.kept)
    assert project.loads_a() == b"kept"


def test_fields_naming_a_blob_that_is_not_there_are_reported_by_verify(project):
    _row_deleted(project)
    shutil.rmtree("mltraq.datastore/casstore/blobs")
    report = _verify(code=1)
    missing = [(p["blob"], p["field"]) for p in report["problems"] if p["kind"] == "missing"]
    assert (project.kept, "data") in missing


def test_a_non_integer_size_in_the_facts_table_is_one_line_damage(project):
    project.sql("UPDATE casstore_blobs SET size = 'big' WHERE blob_id = ?", project.kept)
    for extra in ((), ("--deep",)):
        report = _verify(*extra, code=1)
        assert [(p["kind"], p["blob"]) for p in report["problems"]] == [("facts", project.kept)]
        assert "'big'" in report["problems"][0]["detail"]


def test_an_unknown_codec_in_the_facts_table_is_damage(project):
    project.sql("UPDATE casstore_blobs SET codec = 'lz4' WHERE blob_id = ?", project.kept)
    report = _verify(code=1)
    assert [(p["kind"], p["blob"]) for p in report["problems"]] == [("facts", project.kept)]
    assert "'lz4'" in report["problems"][0]["detail"]


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
    assert _verify(code=0)["problems"] == []


def test_reference_rows_of_an_experiment_deleted_by_another_tool_are_reclaimable(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    report = _verify(code=0)
    assert report["problems"] == []
    assert {"kind": "orphaned_ref", "blob": project.kept, "bytes": 0} in report["reclaimable"]


def test_gc_removes_the_reference_rows_of_an_experiment_that_no_longer_exists(project):
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.rows("SELECT count(*) FROM casstore_refs WHERE id_experiment = ?", project.id_a) == [(0,)]
    assert not project.blob_exists(project.kept) and project.blob_exists(project.other)
    assert _verify(code=0) == {"problems": [], "reclaimable": []}


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


def test_stats_and_ls_show_a_non_integer_size_as_unknown(project):
    project.sql("UPDATE casstore_blobs SET size = 'big' WHERE blob_id = ?", project.kept)
    stats = json.loads(run_cli("stats", "--db", DB, "--json").stdout)
    assert stats["unknown_size"] == 1
    listing = json.loads(run_cli("ls", "--db", DB, "--json").stdout)
    assert [(i["blob"], i["size"]) for i in listing if i["name"] == "a"] == [(project.kept, None)]


def test_gc_refuses_when_the_fields_of_an_experiment_do_not_decode(project):
    _row_deleted(project)
    project.sql("UPDATE experiments SET fields = x'00ff' WHERE id_experiment = ?", project.id_a)
    result = run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert "experiment 'a'" in result.stderr and result.stderr.count("\n") == 1
    assert project.blob_exists(project.kept)


def test_verify_reports_fields_that_do_not_decode_as_damage(project):
    project.sql("UPDATE experiments SET fields = x'00ff' WHERE id_experiment = ?", project.id_a)
    report = _verify(code=1)
    assert [p["kind"] for p in report["problems"]] == ["fields"]
    assert "experiment 'a'" in report["problems"][0]["detail"]


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


def _zlib_bomb(monkeypatch) -> bytes:
    """Fields of a few KB that inflate past the (lowered) DataPak limit."""
    monkeypatch.setattr(datapak, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    return b"C01" + zlib.compress(datapak.dumps(bytes(4 << 20)), 9)


def test_gc_refuses_when_another_registered_project_has_fields_that_inflate_past_the_limit(project, monkeypatch):
    other = create_session("sqlite:///q.db")
    make_folder("c", {"f.txt": b"of q"})
    c = other.create_experiment("c", data=ArchiveStore("c")).persist()
    with sqlite3.connect("q.db") as conn:
        conn.execute("DELETE FROM casstore_refs")
        conn.execute("UPDATE experiments SET fields = ?", (_zlib_bomb(monkeypatch),))
    result = run_cli("gc", "--db", DB, "--grace", "0", code=3)
    assert "experiment 'c'" in result.stderr and "decompresses to more than" in result.stderr
    assert result.stderr.count("\n") == 1
    assert project.blob_exists(c.fields.data.blob_id)


def test_verify_reports_fields_that_inflate_past_the_limit_as_damage(project, monkeypatch):
    project.sql("UPDATE experiments SET fields = ? WHERE id_experiment = ?", _zlib_bomb(monkeypatch), project.id_a)
    report = _verify(code=1)
    assert [p["kind"] for p in report["problems"]] == ["fields"]
    assert "decompresses to more than" in report["problems"][0]["detail"]


def test_a_load_of_fields_that_inflate_past_the_limit_fails_typed(project, monkeypatch):
    project.sql("UPDATE experiments SET fields = ? WHERE id_experiment = ?", _zlib_bomb(monkeypatch), project.id_a)
    with pytest.raises(InvalidInput, match="decompresses to more than"):
        project.session.load_experiment("a")


def test_session_gc_keeps_the_blob_the_fields_name(project):
    _row_deleted(project)
    project.session.gc(grace_s=0)
    assert project.loads_a() == b"kept"


def test_collect_needs_the_field_roots(project):
    with pytest.raises(TypeError):
        collect(project.session.index, project.session.content_store(), grace_s=0)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- run tables


@pytest.fixture
def migrated(tmp_path, workdir) -> Path:
    """The frozen MLtraq project (tests/fixtures/legacy), migrated: run `model` columns of
    experiment alpha hold casstore references, with run-level reference rows."""
    root = tmp_path / "legacy"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy", root, symlinks=True)
    migration.execute(migration.plan(f"sqlite:///{root / 'mltraq.db'}", str(root / "datastore")))
    return root


def _run_rows(root: Path) -> list[tuple]:
    with sqlite3.connect(root / "mltraq.db") as conn:
        return conn.execute("SELECT id_run, field, blob_id FROM casstore_refs WHERE id_run != ''").fetchall()


def test_verify_reports_a_run_table_archive_whose_reference_row_is_gone(migrated):
    rows = _run_rows(migrated)
    with sqlite3.connect(migrated / "mltraq.db") as conn:
        conn.execute("DELETE FROM casstore_refs WHERE id_run != ''")
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        report = verify(index, ContentStore(LocalBlobStore(str(migrated / "datastore"))), field_roots=field_roots)
    finally:
        index.dispose()
    found = sorted((p.kind, p.blob, p.field) for p in report.problems)
    assert found == sorted(("refs", blob, f"runs[{id_run}].{field}") for id_run, field, blob in rows)


def test_field_roots_name_the_run_table_archives_as_the_reference_rows_do(migrated):
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        roots = {(r.id_run, r.field, r.blob_id) for r in field_roots(index) if r.id_run}
    finally:
        index.dispose()
    assert roots == set(_run_rows(migrated)) and len(roots) == 2


def test_field_roots_refuse_a_run_table_cell_that_does_not_decode(migrated):
    with sqlite3.connect(migrated / "mltraq.db") as conn:
        conn.execute("UPDATE experiment_alpha SET model = x'00ff'")
    index = Index.open(f"sqlite:///{migrated / 'mltraq.db'}")
    try:
        with pytest.raises(FieldsUnreadable, match="column 'model'"):
            list(field_roots(index))
    finally:
        index.dispose()

