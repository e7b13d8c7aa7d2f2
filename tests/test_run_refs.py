"""Run-level archive references (as migration records them from MLtraq's run tables)."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import insert

from casstore import ArchiveStore, create_session
from casstore.cas.index.models import RefRow


def _folder(name: str, content: str) -> str:
    os.makedirs(name)
    with open(os.path.join(name, "f.txt"), "w") as f:
        f.write(content)
    return name


def _experiment_with_run_ref(session):
    """An experiment with one field archive, plus a run-level reference to another blob."""
    e = session.create_experiment("exp", data=ArchiveStore(_folder("d", "field"), arc_dir="field"))
    e.persist()
    run_blob = session.create_experiment("carrier", x=ArchiveStore(_folder("r", "run"), arc_dir="run"))
    run_blob.persist()
    blob_id = run_blob.fields.x.blob_id
    with session.index.engine.begin() as conn:
        conn.execute(insert(RefRow).values(id_experiment=e.id_experiment, id_run=uuid.uuid4().hex,
                                           field="dataset", blob_id=blob_id, arc_dir="run"))
    return e


def test_load_extracts_run_level_archives_into_the_experiment_folder(workdir):
    session = create_session("sqlite:///p.db")
    e = _experiment_with_run_ref(session)
    loaded = session.load_experiment("exp")
    folder = os.path.join("mltraq.archivestore", str(e.id_experiment))
    assert open(os.path.join(folder, "run", "f.txt")).read() == "run"
    assert open(os.path.join(folder, "field", "f.txt")).read() == "field"
    assert loaded.fields.data.get_target() == folder


def test_replacing_an_experiment_keeps_its_run_level_references(workdir):
    session = create_session("sqlite:///p.db")
    e = _experiment_with_run_ref(session)
    loaded = session.load_experiment("exp")
    loaded.fields.lr = 0.5
    loaded.persist(if_exists="replace")
    kinds = sorted((r.id_run != "", r.field) for r in session.index.refs_of(e.id_experiment))
    assert kinds == [(False, "data"), (True, "dataset")]


def test_replacing_by_name_with_a_new_experiment_drops_the_old_run_references(workdir):
    session = create_session("sqlite:///p.db")
    e = _experiment_with_run_ref(session)
    session.create_experiment("exp", lr=1).persist(if_exists="replace")
    assert session.index.refs_of(e.id_experiment) == []


def test_a_reference_is_labelled_by_its_field_or_runs_id_run_field(workdir):
    from casstore.cas.index.queries import Ref, field_label

    session = create_session("sqlite:///p.db")
    e = _experiment_with_run_ref(session)
    labels = sorted(r.label for r in session.index.refs_of(e.id_experiment))
    run = next(r for r in session.index.refs_of(e.id_experiment) if r.id_run)
    assert labels == sorted(["data", f"runs[{run.id_run}].dataset"])
    assert {r.label for r in session.index.iter_refs() if r.id_experiment == e.id_experiment} == set(labels)
    assert field_label("inputs.train") == Ref("inputs.train", "b", "a").label == "inputs.train"
