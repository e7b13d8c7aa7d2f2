"""Sessions and experiments as MLtraq has them: create, persist, load, reload, delete, ls;
MLtraq's `experiments` table with DataPak fields; values that cannot be stored."""

from __future__ import annotations

import pickle
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import blob_files, db_url, make_folder, zlib_bomb

from casstore import (Archive, ArchiveStore, Bunch, Experiment, ExperimentAlreadyExists, ExperimentNotFound,
                      InvalidInput, Session, UnsupportedValue, create_session, options)
from casstore.mltraq import datapak
from casstore.mltraq.datapak import Opaque, safe_unpickle


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir




def fields_row(db: Path, name: str) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id_experiment, name, meta, fields, unsafe_pickle FROM experiments WHERE name = ?",
                            (name,)).fetchone()


# --------------------------------------------------------------------------- sessions and experiments


def test_create_session_defaults_to_option_database_url_in_memory():
    assert options().get("database.url") == "sqlite:///:memory:"
    s = create_session()
    assert isinstance(s, Session)
    assert s.ls()["name"].tolist() == []


def test_create_session_creates_experiments_table_in_sqlite_file(tmp_path):
    db = tmp_path / "p.db"
    create_session(db_url(db))
    with sqlite3.connect(db) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(experiments)")]
    assert cols == ["id_experiment", "name", "meta", "fields", "unsafe_pickle"]


def test_create_experiment_without_name_gets_a_short_default_name_and_uuid4_id():
    e = create_session().create_experiment()
    assert isinstance(e, Experiment)
    assert isinstance(e.id_experiment, uuid.UUID) and e.id_experiment.version == 4
    assert isinstance(e.name, str) and len(e.name) == 6


def test_create_experiment_keyword_fields_land_in_a_bunch():
    e = create_session().create_experiment("x", lr=0.1, tags=["a"])
    assert isinstance(e.fields, Bunch)
    assert e.fields.lr == 0.1 and e.fields["tags"] == ["a"]
    e.fields.extra = 3
    assert e.fields["extra"] == 3
    with pytest.raises(AttributeError):
        e.fields.missing  # noqa: B018


def test_two_experiments_get_distinct_ids_and_default_names():
    s = create_session()
    a, b = s.create_experiment(), s.create_experiment()
    assert a.id_experiment != b.id_experiment
    assert a.name != b.name


def test_persist_returns_the_experiment():
    e = create_session().create_experiment("x")
    assert e.persist() is e


def test_persist_without_archives_writes_no_datastore():
    create_session().create_experiment("x", lr=0.1).persist()
    assert not Path("mltraq.datastore").exists()


def test_load_by_name_returns_stored_fields():
    s = create_session()
    s.create_experiment("x", lr=0.1).persist()
    e = s.load_experiment("x")
    assert e.name == "x"
    assert e.fields == Bunch(lr=0.1)


def test_load_by_id_experiment_as_uuid_and_as_string():
    s = create_session()
    stored = s.create_experiment("x", lr=0.1).persist()
    assert s.load_experiment(id_experiment=stored.id_experiment).name == "x"
    assert s.load_experiment(id_experiment=str(stored.id_experiment)).name == "x"
    assert s.load_experiment(id_experiment=stored.id_experiment.hex).id_experiment == stored.id_experiment


def test_load_of_unknown_name_raises_experiment_not_found_a_lookup_error():
    s = create_session()
    with pytest.raises(ExperimentNotFound) as info:
        s.load_experiment("nope")
    assert isinstance(info.value, LookupError)
    assert "nope" in str(info.value)


def test_load_of_unknown_id_raises_experiment_not_found():
    with pytest.raises(ExperimentNotFound):
        create_session().load_experiment(id_experiment=uuid.uuid4())


def test_load_of_malformed_id_raises_invalid_input():
    with pytest.raises(InvalidInput):
        create_session().load_experiment(id_experiment="not-a-uuid")


def test_persist_fail_on_existing_name_raises_experiment_already_exists_a_file_exists_error():
    s = create_session()
    s.create_experiment("x", v=1).persist()
    with pytest.raises(ExperimentAlreadyExists) as info:
        s.create_experiment("x", v=2).persist()
    assert isinstance(info.value, FileExistsError)
    assert s.load_experiment("x").fields.v == 1


def test_persist_twice_same_object_default_fail_raises():
    e = create_session().create_experiment("x")
    e.persist()
    with pytest.raises(ExperimentAlreadyExists):
        e.persist()


def test_persist_replace_with_new_object_overwrites_the_name():
    s = create_session()
    old = s.create_experiment("x", v=1).persist()
    new = s.create_experiment("x", v=2).persist(if_exists="replace")
    loaded = s.load_experiment("x")
    assert loaded.fields.v == 2 and loaded.id_experiment == new.id_experiment
    with pytest.raises(ExperimentNotFound):
        s.load_experiment(id_experiment=old.id_experiment)
    assert s.ls()["name"].tolist() == ["x"]


def test_persist_replace_same_object_updates_fields():
    s = create_session()
    e = s.create_experiment("x", v=1).persist()
    e.fields.v = 2
    e.persist(if_exists="replace")
    assert s.load_experiment("x").fields.v == 2


def test_persist_with_unknown_if_exists_raises_invalid_input_and_writes_nothing():
    s = create_session()
    with pytest.raises(InvalidInput):
        s.create_experiment("x").persist(if_exists="append")
    assert s.ls()["name"].tolist() == []


def test_reload_returns_a_fresh_copy_of_the_stored_experiment():
    s = create_session()
    e = s.create_experiment("x", v=1).persist()
    e.fields.v = 99  # not persisted
    again = e.reload()
    assert again is not e
    assert again.fields.v == 1 and again.id_experiment == e.id_experiment


def test_reload_extracts_the_archives_again():
    make_folder("d", {"a.txt": b"A"})
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="d")).persist()
    target = Path("mltraq.archivestore") / str(e.id_experiment) / "d" / "a.txt"
    assert not target.exists()
    again = e.reload()
    assert target.read_bytes() == b"A"
    assert again.fields.data.get_target() == f"mltraq.archivestore/{e.id_experiment}"


def test_delete_removes_the_experiment():
    s = create_session()
    e = s.create_experiment("x").persist()
    e.delete()
    with pytest.raises(ExperimentNotFound):
        s.load_experiment("x")
    assert s.ls()["name"].tolist() == []


def test_delete_removes_the_extraction_folder():
    make_folder("d", {"a.txt": b"A"})
    s = create_session()
    s.create_experiment("x", data=ArchiveStore("d")).persist()
    e = s.load_experiment("x")
    folder = Path("mltraq.archivestore") / str(e.id_experiment)
    assert folder.is_dir()
    e.delete()
    assert not folder.exists()


def test_deleted_name_can_be_persisted_again_with_fail():
    s = create_session()
    s.create_experiment("x", v=1).persist().delete()
    s.create_experiment("x", v=2).persist()
    assert s.load_experiment("x").fields.v == 2


def test_ls_lists_the_names_of_stored_experiments():
    s = create_session()
    for name in ["b", "a", "c"]:
        s.create_experiment(name).persist()
    table = s.ls()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["id_experiment", "name", "table_name"]
    assert sorted(table["name"]) == ["a", "b", "c"]


def test_ls_does_not_list_unpersisted_experiments():
    s = create_session()
    s.create_experiment("kept").persist()
    s.create_experiment("draft")
    assert s.ls()["name"].tolist() == ["kept"]


# --------------------------------------------------------------------------- stored layout and values


def test_row_is_in_mltraq_experiments_layout_with_datapak_fields(tmp_path):
    db = tmp_path / "p.db"
    e = create_session(db_url(db)).create_experiment("x", lr=0.1, opts=Bunch(depth=3)).persist()
    id_hex, name, meta, fields, unsafe_pickle = fields_row(db, "x")
    assert id_hex == e.id_experiment.hex and name == "x" and unsafe_pickle is None
    plain = safe_unpickle(fields)
    assert plain == {"DATAPAK-0": "mltraq.Bunch-0",
                     "value": {"lr": 0.1, "opts": {"DATAPAK-0": "mltraq.Bunch-0", "value": {"depth": 3}}}}
    assert pickle.loads(fields) == plain  # a plain pickle of plain containers
    assert isinstance(datapak.loads(meta), Bunch)


def test_archive_field_is_stored_as_a_tagged_reference_not_a_path(tmp_path):
    db = tmp_path / "p.db"
    make_folder("d", {"a.txt": b"A"})
    e = create_session(db_url(db)).create_experiment("x", data=ArchiveStore("d")).persist()
    value = safe_unpickle(fields_row(db, "x")[3])["value"]["data"]
    assert set(value) == {"DATAPAK-0", "value"}
    assert "ArchiveStore" in value["DATAPAK-0"]
    assert e.fields.data.blob_id in repr(value["value"])


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**70, 1.5, "text", b"\x00bytes",
    [1, "a", None], (1, (2, 3)), {"k": [1, 2]}, {1: "int key", (1, 2): "tuple key"}, {"a", "b"},
    Bunch(x=1, nested=Bunch(y=[1, 2])), uuid.UUID("1d795943-92b0-4f64-b55c-fcb39c1609d5"),
    [Bunch(a=uuid.UUID(int=5))],
], ids=lambda v: type(v).__name__)
def test_supported_field_value_round_trips_through_persist_and_load(value):
    s = create_session()
    s.create_experiment("x", v=value).persist()
    loaded = s.load_experiment("x").fields.v
    assert loaded == value and type(loaded) is type(value)


def test_bunch_field_loads_as_bunch_with_attribute_access():
    s = create_session()
    s.create_experiment("x", cfg=Bunch(lr=0.1)).persist()
    cfg = s.load_experiment("x").fields.cfg
    assert isinstance(cfg, Bunch) and cfg.lr == 0.1


class Custom:
    pass


@pytest.mark.parametrize("bad", [
    {Custom(), Custom()},
    Custom(),
    np.array([1, "a"], dtype=object),
    {"nested": [1, Custom()]},
    pd.DataFrame({"a": [1, "x"]}),
], ids=["set_of_objects", "custom_class", "object_array", "nested_custom", "mixed_dataframe"])
def test_unsupported_value_raises_at_persist_before_anything_is_written(bad):
    make_folder("d", {"a.txt": b"A"})
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d"), bad=bad)
    with pytest.raises(UnsupportedValue) as info:
        e.persist()
    assert isinstance(info.value, TypeError)
    assert s.ls()["name"].tolist() == []
    assert blob_files() == []


def test_unsupported_value_message_names_the_field():
    e = create_session().create_experiment("x", model=Bunch(weights=Custom()))
    with pytest.raises(UnsupportedValue, match=r"weights"):
        e.persist()


def test_unsupported_value_on_replace_keeps_the_stored_experiment():
    s = create_session()
    s.create_experiment("x", v=1).persist()
    with pytest.raises(UnsupportedValue):
        s.create_experiment("x", v=Custom()).persist(if_exists="replace")
    assert s.load_experiment("x").fields.v == 1


def test_archive_value_is_stored_inline_in_the_database_not_the_datastore(tmp_path):
    make_folder("src", {"simple_print.py": b"print('hi')\n"})
    archive = Archive.create("src")
    db = tmp_path / "p.db"
    create_session(db_url(db)).create_experiment("x", code=archive).persist()
    assert blob_files() == []
    plain = safe_unpickle(fields_row(db, "x")[3])["value"]["code"]
    assert plain == {"DATAPAK-0": "mltraq.Archive-0", "value": archive.to_bytes()}


# --------------------------------------------------------------------------- rows written by MLtraq


NPY = b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }" + b" " * 43 + b"\n" \
      + (1).to_bytes(8, "little") + (2).to_bytes(8, "little") + (3).to_bytes(8, "little")


def insert_mltraq_row(db: Path, name: str, plain_fields: dict) -> uuid.UUID:
    id_experiment = uuid.uuid4()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO experiments (id_experiment, name, meta, fields, unsafe_pickle) VALUES (?, ?, ?, ?, ?)",
                     (id_experiment.hex, name, None, pickle.dumps(plain_fields, protocol=5), None))
    return id_experiment


def test_mltraq_row_with_unknown_tag_loads_as_opaque(tmp_path):
    db = tmp_path / "p.db"
    s = create_session(db_url(db))
    array = {"DATAPAK-0": "example.Unknown-0", "value": NPY}
    id_experiment = insert_mltraq_row(db, "legacy", {"DATAPAK-0": "mltraq.Bunch-0", "value": {"arr": array, "lr": 0.1}})
    e = s.load_experiment("legacy")
    assert e.id_experiment == id_experiment
    assert e.fields.lr == 0.1
    assert isinstance(e.fields.arr, Opaque)
    assert e.fields.arr.tag == "example.Unknown-0" and e.fields.arr.value == NPY


def test_mltraq_row_with_unknown_tag_persists_back_with_the_same_bytes(tmp_path):
    db = tmp_path / "p.db"
    s = create_session(db_url(db))
    array = {"DATAPAK-0": "example.Unknown-0", "value": NPY}
    insert_mltraq_row(db, "legacy", {"DATAPAK-0": "mltraq.Bunch-0", "value": {"arr": array, "lr": 0.1}})
    e = s.load_experiment("legacy")
    e.fields.lr = 0.2
    e.persist(if_exists="replace")
    plain = safe_unpickle(fields_row(db, "legacy")[3])
    assert plain["value"]["arr"] == array
    assert pickle.dumps(plain["value"]["arr"], protocol=5) == pickle.dumps(array, protocol=5)
    assert plain["value"]["lr"] == 0.2


def test_mltraq_row_with_compressed_fields_loads(tmp_path):
    import zlib

    db = tmp_path / "p.db"
    s = create_session(db_url(db))
    data = b"C01" + zlib.compress(pickle.dumps({"DATAPAK-0": "mltraq.Bunch-0", "value": {"lr": 0.5}}, protocol=5))
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO experiments (id_experiment, name, fields) VALUES (?, ?, ?)",
                     (uuid.uuid4().hex, "zipped", data))
    assert s.load_experiment("zipped").fields.lr == 0.5


def test_a_load_of_fields_that_inflate_past_the_limit_fails_typed(project, monkeypatch):
    project.sql("UPDATE experiments SET fields = ? WHERE id_experiment = ?", zlib_bomb(monkeypatch), project.id_a)
    with pytest.raises(InvalidInput, match="decompresses to more than"):
        project.session.load_experiment("a")


# --------------------------------------------------------------------------- files and folders


def test_sqlite_file_database_is_shared_by_two_sessions(tmp_path):
    db = tmp_path / "p.db"
    create_session(db_url(db)).create_experiment("x", v=1).persist()
    assert create_session(db_url(db)).load_experiment("x").fields.v == 1


def test_database_records_its_datastore_so_loading_from_another_cwd_finds_blobs(tmp_path, monkeypatch):
    db = tmp_path / "p.db"
    make_folder("d", {"a.txt": b"A", "sub/b.txt": b"B"})
    e = create_session(db_url(db)).create_experiment("x", data=ArchiveStore("d", arc_dir="data")).persist()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = create_session(db_url(db)).load_experiment("x")
    out = elsewhere / "mltraq.archivestore" / str(e.id_experiment) / "data"
    assert (out / "a.txt").read_bytes() == b"A" and (out / "sub" / "b.txt").read_bytes() == b"B"
    assert loaded.fields.data.get_target() == f"mltraq.archivestore/{e.id_experiment}"
    assert not (elsewhere / "mltraq.datastore").exists()


def test_a_database_recording_an_empty_datastore_is_refused_and_nothing_is_recorded(tmp_path):
    import sqlite3

    from casstore.errors import DatastoreError

    db = tmp_path / "p.db"
    make_folder("d", {"a.txt": b"A"})
    create_session(db_url(db)).create_experiment("x", data=ArchiveStore("d", arc_dir="data")).persist()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE casstore_meta SET value = '' WHERE key = 'datastore'")
    session = create_session(db_url(db))
    for attempt in (lambda: session.load_experiment("x"),
                    lambda: session.create_experiment("y", data=ArchiveStore("d", arc_dir="data")).persist()):
        with pytest.raises(DatastoreError, match="records an empty datastore"):
            attempt()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM casstore_meta WHERE key = 'datastore'").fetchall() == [("",)]
        assert conn.execute("SELECT name FROM experiments").fetchall() == [("x",)]


def test_project_datastore_is_the_given_one_else_the_recorded_one_else_the_option(tmp_path):
    from casstore import stores

    session = create_session(db_url(tmp_path / "p.db"))
    option = stores.datastore_url()
    assert stores.project_datastore(session.index) == (option, "option")
    assert stores.project_datastore(session.index, "") == (option, "given")
    make_folder("d", {"a.txt": b"A"})
    session.create_experiment("x", data=ArchiveStore("d", arc_dir="data")).persist()
    assert stores.project_datastore(session.index) == (option, "recorded")
    assert stores.project_datastore(session.index, str(tmp_path / "other")) == (str(tmp_path / "other"), "given")


def test_a_database_without_casstore_tables_is_refused_as_not_a_project_and_left_as_it_was(tmp_path):
    from casstore.cas.index.engine import make_engine
    from casstore.cas.index.schema import require_casstore_tables

    db = tmp_path / "plain.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE experiments (id_experiment TEXT)")
    before = db.read_bytes()
    engine = make_engine(db_url(db), read_only=True)
    with pytest.raises(InvalidInput, match=r"holds no casstore tables \(not a casstore project\?\)$"):
        require_casstore_tables(engine)
    engine.dispose()
    assert db.read_bytes() == before
    create_session(db_url(tmp_path / "p.db")).index.dispose()
    engine = make_engine(db_url(tmp_path / "p.db"), read_only=True)
    require_casstore_tables(engine)
    engine.dispose()


def test_upgrading_a_schema_newer_than_this_casstore_knows_is_refused_and_changes_nothing(tmp_path):
    from casstore.cas.index.engine import make_engine
    from casstore.cas.index.schema import upgrade
    from casstore.errors import SchemaOutdated

    db = tmp_path / "p.db"
    create_session(db_url(db)).index.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE casstore_alembic_version SET version_num = '9999'")
    conn.close()
    engine = make_engine(db_url(db))
    with pytest.raises(SchemaOutdated, match=r"schema 9999, newer than this casstore knows .*: upgrade casstore$"):
        upgrade(engine)
    engine.dispose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM casstore_alembic_version").fetchall() == [("9999",)]
    conn.close()


def test_find_experiment_takes_a_name_else_an_id_and_names_the_database_when_neither(tmp_path):
    from casstore.session import find_experiment

    session = create_session(db_url(tmp_path / "p.db"))
    e = session.create_experiment("x", v=1).persist()
    assert find_experiment(session.index, "x").id_experiment == e.id_experiment
    assert find_experiment(session.index, str(e.id_experiment)).name == "x"
    assert find_experiment(session.index, e.id_experiment.hex).name == "x"
    for missing in ("y", "0" * 32):
        with pytest.raises(ExperimentNotFound, match=rf"^no experiment named '{missing}' or with that id in sqlite:///"):
            find_experiment(session.index, missing)
