"""Bad input is caught where it is made, with InvalidInput, before anything is written: an
`arc_dir` no file system takes, a folder with a member that could not be extracted at load,
archive fields whose dotted paths collide; and `delete_experiment` by name or id."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from helpers import blob_files, db_url, make_folder

from casstore import ArchiveStore, ArchiveStoreIO, ExperimentNotFound, InvalidInput, Session
from casstore.cas.tar.header import NAME_MAX, PATH_MAX, name_length_problem
from casstore.cas.tar.scan import Entry, check_extractable

DB = Path("bad.sqlite")


@pytest.fixture(autouse=True)
def _work(workdir):
    make_folder("src", {"f": b"data"})
    return workdir


def session() -> Session:
    return Session(db_url(DB))


def stored_rows() -> list[tuple]:
    """The experiment and reference rows of the project database."""
    with sqlite3.connect(DB) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = list(conn.execute("SELECT name FROM experiments")) if "experiments" in tables else []
        refs = list(conn.execute("SELECT field FROM casstore_refs")) if "casstore_refs" in tables else []
    return rows + refs


def arc_dir_for_path_of(total: int) -> str:
    """An arc_dir (components of at most 200 bytes) that makes the extraction path of member
    `<arc_dir>/f` of a new experiment, at load into the default archivestore, `total` bytes."""
    prefix = len(os.fsencode(os.path.abspath("mltraq.archivestore"))) + 1 + 36 + 1
    length = total - prefix - len("/f")
    parts = []
    while length > 0:
        part = min(200, length) if length - min(200, length) != 1 else 199
        parts.append("d" * part)
        length -= part + 1
    return "/".join(parts)


# --------------------------------------------------------------------------- arc_dir


def test_an_arc_dir_with_a_component_over_name_max_is_refused_when_the_archivestore_is_made():
    with pytest.raises(InvalidInput, match="component of 300 bytes"):
        ArchiveStore("src", arc_dir="data/" + "x" * 300)


def test_an_arc_dir_component_of_name_max_bytes_is_accepted():
    assert ArchiveStore("src", arc_dir="x" * NAME_MAX).params.arc_dir == "x" * NAME_MAX


def test_an_arc_dir_component_counts_bytes_not_characters():
    with pytest.raises(InvalidInput, match="component of 256 bytes"):
        ArchiveStore("src", arc_dir="é" * 128)


def test_archivestoreio_create_refuses_an_arc_dir_with_a_component_over_name_max_and_writes_nothing():
    with pytest.raises(InvalidInput, match="component of 256 bytes"):
        ArchiveStoreIO.create("src", arc_dir="x" * 256)
    assert not Path("mltraq.datastore").exists()


# --------------------------------------------------------------------------- members that could not be extracted


def test_a_member_whose_extraction_path_reaches_path_max_is_refused_at_persist():
    arc_dir = arc_dir_for_path_of(PATH_MAX)
    experiment = session().create_experiment("long", data=ArchiveStore("src", arc_dir=arc_dir))
    with pytest.raises(InvalidInput, match=f"path of {PATH_MAX} bytes"):
        experiment.persist()


def test_a_member_refused_at_persist_leaves_no_rows_and_no_blobs():
    experiment = session().create_experiment("long", data=ArchiveStore("src", arc_dir=arc_dir_for_path_of(PATH_MAX)))
    with pytest.raises(InvalidInput):
        experiment.persist()
    assert stored_rows() == []
    assert blob_files() == []


def test_a_refused_member_of_a_later_field_leaves_the_blob_of_an_earlier_one_unwritten():
    experiment = session().create_experiment("two", ok=ArchiveStore("src", arc_dir="data"),
                                             long=ArchiveStore("src", arc_dir=arc_dir_for_path_of(PATH_MAX + 10)))
    with pytest.raises(InvalidInput):
        experiment.persist()
    assert stored_rows() == []
    assert blob_files() == []


def test_a_member_whose_extraction_path_is_one_byte_under_path_max_persists_and_loads():
    arc_dir = arc_dir_for_path_of(PATH_MAX - 1)
    s = session()
    s.create_experiment("longest", data=ArchiveStore("src", arc_dir=arc_dir)).persist()
    loaded = s.load_experiment("longest")
    path = os.path.join(os.path.abspath("mltraq.archivestore"), str(loaded.id_experiment), arc_dir, "f")
    assert len(os.fsencode(path)) == PATH_MAX - 1
    with open(path, "rb") as f:
        assert f.read() == b"data"


def test_a_member_name_component_over_name_max_is_not_extractable():
    entry = Entry(b"data/" + b"x" * 256 + b"/f", b"0", 0o644, 4, path="src/f")
    with pytest.raises(InvalidInput, match="component of 256 bytes"):
        check_extractable([entry], "/target")


_LENGTHS = st.sampled_from([1, NAME_MAX - 1, NAME_MAX, NAME_MAX + 1, 1000, PATH_MAX - 300, PATH_MAX - 1, PATH_MAX])


@given(names=st.lists(st.lists(_LENGTHS, min_size=1, max_size=3), min_size=1, max_size=4),
       under=st.sampled_from(["", "/", "/t", "/t/", "/" + "u" * 200 + "/" + "v" * 200, "/" + "w/" * 1900]))
def test_check_extractable_refuses_exactly_the_listings_with_a_name_the_file_system_would_refuse(names, under):
    entries = [Entry(b"/".join(b"x" * n for n in parts), b"0", 0o644, 0, path="src/f") for parts in names]
    expected = any(name_length_problem(e.name, os.fsencode(under)) is not None for e in entries)
    try:
        check_extractable(entries, under)
    except InvalidInput:
        assert expected
    else:
        assert not expected


def test_archivestoreio_create_refuses_a_member_its_target_would_make_too_long_and_writes_nothing():
    with pytest.raises(InvalidInput, match="could never be extracted"):
        ArchiveStoreIO.create("src", arc_dir=arc_dir_for_path_of(PATH_MAX + 100))
    assert not Path("mltraq.datastore").exists()


# --------------------------------------------------------------------------- fields that collide once flattened


def test_archive_fields_whose_dotted_paths_collide_are_refused_at_persist():
    experiment = session().create_experiment("clash", **{"a.b": ArchiveStore("src", arc_dir="one")},
                                             a={"b": ArchiveStore("src", arc_dir="two")})
    with pytest.raises(InvalidInput, match="'a.b'"):
        experiment.persist()


def test_colliding_archive_fields_leave_no_rows_and_no_blobs():
    experiment = session().create_experiment("clash", **{"a.b": ArchiveStore("src", arc_dir="one")},
                                             a={"b": ArchiveStore("src", arc_dir="two")})
    with pytest.raises(InvalidInput):
        experiment.persist()
    assert stored_rows() == []
    assert blob_files() == []


def test_an_archive_in_a_list_collides_with_a_field_named_by_its_index():
    experiment = session().create_experiment("clash", runs=[ArchiveStore("src")],
                                             **{"runs.0": ArchiveStore("src", arc_dir="other")})
    with pytest.raises(InvalidInput, match="'runs.0'"):
        experiment.persist()


def test_a_dotted_field_name_that_collides_with_no_other_archive_persists():
    s = session()
    s.create_experiment("dotted", **{"a.b": ArchiveStore("src")}, a={"c": ArchiveStore("src", arc_dir="c")}).persist()
    assert sorted(f for f, _ in s.read_experiment("dotted").fields.items()) == ["a", "a.b"]


# --------------------------------------------------------------------------- delete_experiment


def persisted(s: Session, name: str = "gone") -> uuid.UUID:
    return s.create_experiment(name, data=ArchiveStore("src")).persist().id_experiment


def test_delete_experiment_takes_a_name():
    s = session()
    persisted(s)
    s.delete_experiment("gone")
    with pytest.raises(ExperimentNotFound):
        s.read_experiment("gone")


def test_delete_experiment_takes_an_id():
    s = session()
    id_experiment = persisted(s)
    s.delete_experiment(id_experiment)
    assert stored_rows() == []


def test_delete_experiment_takes_the_text_of_an_id():
    s = session()
    id_experiment = persisted(s)
    s.delete_experiment(str(id_experiment))
    assert stored_rows() == []


def test_delete_experiment_takes_an_experiment():
    s = session()
    persisted(s)
    s.delete_experiment(s.read_experiment("gone"))
    assert stored_rows() == []


def test_delete_experiment_removes_the_extraction_folder_of_a_name():
    s = session()
    id_experiment = s.load_experiment(name=None, id_experiment=persisted(s)).id_experiment
    assert Path("mltraq.archivestore", str(id_experiment), "f").exists()
    s.delete_experiment("gone")
    assert not Path("mltraq.archivestore", str(id_experiment)).exists()


def test_delete_experiment_of_an_unknown_name_raises_experiment_not_found():
    s = session()
    persisted(s, "kept")
    with pytest.raises(ExperimentNotFound, match="nothing"):
        s.delete_experiment("nothing")
    assert stored_rows() != []


def test_delete_experiment_of_an_unknown_id_raises_experiment_not_found():
    s = session()
    persisted(s, "kept")
    with pytest.raises(ExperimentNotFound):
        s.delete_experiment(uuid.uuid4())
