"""casstore as MLtraq's archive backend (`casstore.mltraq.enable()`), with real MLtraq 0.1.165:
scripts with `add_runs` + `execute`, ArchiveStore at experiment and run level, dedup across
experiments, MLtraq's delete and replace followed by `casstore gc --grace 0` and
`verify --deep`, and MLtraq killed during a persist."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

mltraq = pytest.importorskip("mltraq")

import casstore.mltraq as integration  # noqa: E402
from casstore.cas.live.refs import MAX_REF_BYTES, parse_named_ref  # noqa: E402
from fork_runner import COMMAND_MODULES, CommandServer  # noqa: E402
from helpers import run_cli  # noqa: E402
from make_legacy_fixture import tree_record  # noqa: E402
from mltraq.experiment import Experiment  # noqa: E402
from mltraq.storage.archivestore import ArchiveStore, ArchiveStoreIO  # noqa: E402
from mltraq.storage.serializers import datapak as mltraq_datapak  # noqa: E402

DB = "sqlite:///mltraq.db"
DATASTORE = "mltraq.datastore"
METHODS = ("create", "open", "extract", "getnames", "delete")


@pytest.fixture
def on(workdir):
    """The integration enabled in a fresh working folder, with a source folder `src/`."""
    from mltraq import options

    options().set("tqdm.disable", True)
    (workdir / "src" / "sub").mkdir(parents=True)
    (workdir / "src" / "a.txt").write_text("first")
    (workdir / "src" / "sub" / "b.bin").write_bytes(os.urandom(5000))
    with integration.enable():
        yield workdir
    assert not integration.is_enabled()


def step(run):
    run.fields.model = ArchiveStore("src", arc_dir=f"model{run.params.i}")
    run.fields.score = run.params.i * 0.5


def persist(name: str, arc_dir: str = "data", **kwargs):
    from mltraq import create_session

    e = create_session(DB).create_experiment(name)
    e.fields.data = ArchiveStore("src", arc_dir=arc_dir)
    e.add_runs(i=[1, 2])
    e.execute(step, n_jobs=1)
    return e.persist(**kwargs)


def load(name: str):
    from mltraq import create_session

    return create_session(DB).load_experiment(name)


def raw_fields(name: str) -> dict:
    import sqlite3

    from casstore.mltraq import datapak

    with sqlite3.connect("mltraq.db") as conn:
        data = conn.execute("SELECT fields FROM experiments WHERE name = ?", (name,)).fetchone()[0]
    return datapak.safe_unpickle(data)["value"]


def named_refs(root: Path) -> dict[str, str]:
    """Every named reference of the datastore: path -> blob id."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "casstore"]
        for name in files:
            path = Path(dirpath) / name
            ref = parse_named_ref(name, path.read_bytes()[:MAX_REF_BYTES + 1])
            if ref is not None:
                out[str(path.relative_to(root))] = ref.blob_id
    return out


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "casstore" / "blobs").rglob("*") if p.is_file())


def extracted(experiment) -> dict:
    return tree_record(os.path.join("mltraq.archivestore", str(experiment.id_experiment)))


def adopt() -> None:
    """What a user runs once on an integration project: casstore's tables in MLtraq's database."""
    run_cli("migrate", "--form", "mltraq", "--db", DB, "--datastore", DATASTORE)


def verify_clean() -> None:
    report = json.loads(run_cli("verify", "--deep", "--json", "--db", DB, "--datastore", DATASTORE).stdout)
    assert report["problems"] == []


def gc() -> dict:
    return json.loads(run_cli("gc", "--grace", "0", "--json", "--db", DB, "--datastore", DATASTORE).stdout)


# --------------------------------------------------------------------------- enable / disable


def test_enable_patches_and_disable_restores_mltraq_exactly(workdir):
    before = {name: ArchiveStoreIO.__dict__[name] for name in METHODS}
    decode = mltraq_datapak.decode_magic_key
    delete = Experiment.__dict__["delete"]
    integration.enable()
    try:
        assert all(ArchiveStoreIO.__dict__[name] is not before[name] for name in METHODS)
        assert mltraq_datapak.decode_magic_key is not decode
    finally:
        integration.disable()
    assert {name: ArchiveStoreIO.__dict__[name] for name in METHODS} == before
    assert mltraq_datapak.decode_magic_key is decode and Experiment.__dict__["delete"] is delete


def test_enable_twice_then_disable_once_restores_mltraq(workdir):
    before = ArchiveStoreIO.__dict__["create"]
    integration.enable()
    integration.enable()
    integration.disable()
    assert ArchiveStoreIO.__dict__["create"] is before and not integration.is_enabled()


def test_an_inner_with_block_leaves_the_outer_enable_on(workdir):
    with integration.enable():
        with integration.enable():
            pass
        assert integration.is_enabled()
    assert not integration.is_enabled()


# --------------------------------------------------------------------------- persist and load


def test_fields_keep_mltraq_encoding_and_name_a_reference_at_mltraq_path(on):
    e = persist("e1")
    value = raw_fields("e1")["data"]
    assert value["DATAPAK-0"] == "mltraq.ArchiveStore-0"
    rel = value["value"][len("file:///"):]
    assert rel.split("/")[0] == str(e.id_experiment)
    assert rel in named_refs(on / DATASTORE)


def test_run_fields_written_by_execute_are_references_too(on):
    e = persist("e1")
    refs = named_refs(on / DATASTORE)
    assert len(refs) == 3 and all(k.startswith(str(e.id_experiment)) for k in refs)  # data + 2 run models


def test_load_extracts_experiment_and_run_archives_as_mltraq_does(on):
    persist("with")
    with_casstore = extracted(load("with"))
    integration.disable()
    persist("without")
    without = extracted(load("without"))
    assert with_casstore == without and "model2/sub/b.bin" in with_casstore["tree"]


def test_legacy_tar_of_mltraq_without_casstore_still_loads_when_enabled(on):
    integration.disable()
    persist("legacy")
    expected = extracted(load("legacy"))
    integration.enable()
    assert extracted(load("legacy")) == expected


def test_two_experiments_attaching_one_folder_store_one_blob(on):
    persist("e1")
    persist("e2")
    refs = named_refs(on / DATASTORE)
    assert len(refs) == 6 and len(set(refs.values())) == 3  # data, model1, model2
    assert len(blob_files(on / DATASTORE)) == 3


def test_open_and_getnames_read_the_reference(on):
    persist("e1")
    io = ArchiveStoreIO(raw_fields("e1")["data"]["value"])
    with io.open() as tar:
        assert sorted(tar.getnames()) == ["data/a.txt", "data/sub/b.bin"]
    assert sorted(io.getnames("t")) == [os.path.join("t", "data", "a.txt"), os.path.join("t", "data", "sub", "b.bin")]


def test_enable_with_another_datastore_puts_blobs_and_references_there(on):
    with integration.enable(datastore="elsewhere"):
        e = persist("e1")
        assert len(named_refs(on / "elsewhere")) == 3 and not (on / DATASTORE / "casstore").exists()
        assert "data/a.txt" in extracted(load("e1"))["tree"]
        e.delete()
        assert named_refs(on / "elsewhere") == {}


# --------------------------------------------------------------------------- delete, replace, gc, verify


def test_mltraq_delete_then_gc_frees_blobs_no_other_experiment_names(on):
    persist("e1")
    persist("e2", arc_dir="other")
    adopt()
    load("e1").delete()
    assert gc()["deleted"] and len(blob_files(on / DATASTORE)) == 3  # e2's: other, model1, model2
    verify_clean()
    assert "other/a.txt" in extracted(load("e2"))["tree"]


def test_mltraq_delete_keeps_blobs_another_experiment_shares(on):
    persist("e1")
    persist("e2")
    adopt()
    load("e1").delete()
    assert gc()["deleted"] == [] and len(blob_files(on / DATASTORE)) == 3
    verify_clean()


def test_mltraq_replace_then_gc_frees_the_old_content(on):
    e = persist("e1")
    adopt()
    (on / "src" / "a.txt").write_text("second")
    e.persist(if_exists="replace")
    assert len(gc()["deleted"]) == 3  # the old data and the two old run models
    verify_clean()
    assert (Path(load("e1").fields.data.get_target()) / "data" / "a.txt").read_text() == "second"


def test_mltraq_replace_by_a_new_object_then_gc_frees_the_old_experiment(on):
    old = persist("e1")
    adopt()
    (on / "src" / "a.txt").write_text("second")
    new = persist("e1", if_exists="replace")
    assert new.id_experiment != old.id_experiment
    assert not [k for k in named_refs(on / DATASTORE) if k.startswith(str(old.id_experiment))]
    assert len(gc()["deleted"]) == 3
    verify_clean()


def test_a_legacy_tar_in_a_replaced_experiment_stays_as_mltraq_leaves_it(on):
    integration.disable()
    old = persist("e1")
    integration.enable()
    persist("e1", if_exists="replace")
    assert len(list((on / DATASTORE / str(old.id_experiment)).iterdir())) == 3


def test_mltraq_still_persists_and_loads_after_casstore_tables_are_added(on):
    persist("e1")
    adopt()
    persist("e2")
    assert "data/a.txt" in extracted(load("e2"))["tree"]


def half_written_persist() -> str:
    """What a persist killed before MLtraq committed its row leaves: a reference in the folder
    of an experiment id no row has."""
    import uuid

    from mltraq import options

    with options().ctx({"datastore.relative_path_prefix": str(uuid.uuid4())}):
        return ArchiveStoreIO.create("src").url[len("file:///"):]


def test_a_half_written_persist_is_kept_by_gc(on):
    persist("e1")
    adopt()
    half_written_persist()
    gc()
    verify_clean()
    assert len(blob_files(on / DATASTORE)) == 4


def test_migrate_dry_run_lists_the_references_of_a_half_written_persist(on):
    persist("e1")
    rel = half_written_persist()
    report = json.loads(run_cli("migrate", "--form", "mltraq", "--dry-run", "--json", "--db", DB,
                                "--datastore", DATASTORE).stdout)
    assert [(o["path"], o["kind"]) for o in report["orphans"]] == [(rel, "reference")]


def test_removing_the_listed_reference_lets_gc_free_its_blob(on):
    persist("e1")
    adopt()
    (on / DATASTORE / half_written_persist()).unlink()
    assert len(gc()["deleted"]) == 1
    verify_clean()


# --------------------------------------------------------------------------- kill -9 during persist

WORKER = textwrap.dedent("""
    import itertools, os, sys
    import casstore.mltraq
    from mltraq import create_session, options
    from mltraq.storage.archivestore import ArchiveStore
    options().set("tqdm.disable", True)
    casstore.mltraq.enable()
    s = create_session("sqlite:///mltraq.db")
    def step(run):
        run.fields.model = ArchiveStore("src", arc_dir="m" + str(run.params.i))
    for n in itertools.count():
        e = s.create_experiment("e" + str(n % 3))
        e.fields.data = ArchiveStore("src", arc_dir="data")
        e.add_runs(i=[1, 2, 3])
        e.execute(step, n_jobs=1)
        e.persist(if_exists="replace")
        print(n, flush=True)
""")


WORKER_MODULES = ("casstore.mltraq", "mltraq", "mltraq.storage.archivestore", "pandas", *COMMAND_MODULES)


def kill_campaign(root: Path, kills: int, seed: int) -> None:
    """WORKER killed `kills` times in a persist: each time a new process, forked from a server
    that imported MLtraq and casstore once (tests/fork_runner.py)."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with CommandServer(str(root.parent / "worker-server"), modules=WORKER_MODULES, env=env) as server, \
            open(os.devnull, "r+b") as devnull:
        for _ in range(kills):
            out, into = os.pipe()
            child = server.start(server.script_request(WORKER, str(root), env), [devnull.fileno(), into, devnull.fileno()])
            os.close(into)
            with os.fdopen(out) as stdout:
                stdout.readline()  # one persist done: the next persist is under way
                time.sleep(rng.uniform(0, 0.3))
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
    adopt()
    verify_clean()
    blobs = {p.name.split(".")[0] for p in blob_files(root / DATASTORE)}
    assert all(b.split(":")[1][2:] in blobs for b in named_refs(root / DATASTORE).values())  # none names nothing
    gc()
    verify_clean()


def test_kill_during_persist_leaves_no_damage(on):
    kill_campaign(on, kills=3, seed=1)


@pytest.mark.slow
def test_kill_campaign_during_persist_leaves_no_damage(on):
    kill_campaign(on, kills=20, seed=2)


# --------------------------------------------------------------------------- casstore's commands on it


def cli_json(*args: str) -> dict:
    return json.loads(run_cli(*args, "--json", "--db", DB, "--datastore", DATASTORE).stdout)


def test_ls_counts_the_archives_in_each_experiments_folder(on):
    persist("e1")
    persist("e2")
    adopt()
    rows = {r["name"]: r for r in cli_json("ls")["experiments"]}
    assert {name: r["archives"] for name, r in rows.items()} == {"e1": 3, "e2": 3}  # data + 2 run models
    assert all(r["logical_bytes"] > 5000 for r in rows.values())
    assert all(r["exclusive_bytes"] == 0 for r in rows.values())  # e1 and e2 share every blob


def test_stats_counts_them_as_references_not_standalone_archives(on):
    persist("e1")
    persist("e2")
    adopt()
    stats = cli_json("stats")
    assert stats["references"] == 6 and stats["blobs"] == 3 and stats["standalone_archives"] == 0
    assert stats["dedup_ratio"] > 1.5


def test_du_gives_what_deleting_an_experiment_would_free(on):
    persist("e1")
    persist("e2", arc_dir="other")
    adopt()
    rows = {r["name"]: r for r in cli_json("du")["experiments"]}
    assert rows["e1"]["exclusive_bytes"] > 0 and rows["e1"]["shared_bytes"] > 0  # data alone; the run models shared


def test_rm_deletes_the_experiments_references_as_mltraq_delete_does(on):
    e1 = persist("e1")
    persist("e2", arc_dir="other")
    adopt()
    run_cli("rm", "e1", "--yes", "--db", DB, "--datastore", DATASTORE)
    assert not any(k.startswith(str(e1.id_experiment)) for k in named_refs(on / DATASTORE))
    assert gc()["deleted"] and len(blob_files(on / DATASTORE)) == 3  # e2's: other, model1, model2
    verify_clean()
    assert "other/a.txt" in extracted(load("e2"))["tree"]
