"""`casstore migrate`: MLtraq 0.1.165 projects into the content store (issue #4, design P10).

The main input is the frozen project in tests/fixtures/legacy/, written by real MLtraq
(tests/make_legacy_fixture.py), with manifest.json recording what MLtraq extracted when it
loaded each experiment. Every test works on a copy in tmp_path. One test regenerates a
project with live MLtraq when CASSTORE_MLTRAQ_PYTHON names a Python that has it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import MLTRAQ_PYTHON, NO_MLTRAQ, deadline
from make_legacy_fixture import tree_record

from casstore import create_session, options
from casstore.mltraq import legacy
from casstore.mltraq import migrate as migration
from casstore.mltraq.migrate import executor, rewrite
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cas.digest import DigestSink, digest_bytes
from casstore.cas.gc import collect
from casstore.cas.index.engine import write_transaction
from casstore.cas.index.facts import BlobFacts
from casstore.cas.index.queries import Index
from casstore.cas.tar.scan import scan
from casstore.cas.tar.write import tar_bytes
from casstore.cas.verify import verify
from casstore.cli.migrate import migrate as migrate_command
from casstore.errors import InvalidInput
from casstore.session import field_roots
from casstore.mltraq import datapak
from casstore.storage.archivestore import ArchiveStore, ArchiveStoreIO

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
LEGACY = "mltraq.ArchiveStore-0"
CASSTORE = "casstore.ArchiveStore-0"
SAME_FOLDER = [("alpha", "data"), ("beta", "data"), ("gamma", "data")]  # one folder, three processes


@dataclass
class Project:
    root: Path
    manifest: dict

    @property
    def db(self) -> Path:
        return self.root / "mltraq.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def datastore(self) -> Path:
        return self.root / "datastore"  # MLtraq's mltraq.datastore/, renamed by the generator

    def plan(self) -> migration.MigrationPlan:
        return migration.plan(self.url, str(self.datastore))

    def migrate(self, **kwargs) -> migration.MigrationReport:
        return migration.execute(self.plan(), **kwargs)

    def sql(self, query: str, *args) -> list[tuple]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(query, args).fetchall()

    def fields(self, name: str) -> bytes:
        return self.sql("SELECT fields FROM experiments WHERE name = ?", name)[0][0]

    def id_of(self, name: str) -> str:
        return self.manifest["experiments"][name]["id"]

    def legacy_path(self, name: str, field: str) -> Path:
        """The legacy TAR an experiment field references (before migration)."""
        value = datapak.safe_unpickle(self.fields(name))["value"][field]
        assert value["DATAPAK-0"] == LEGACY
        return self.datastore / value["value"][len("file:///"):]

    def value(self, name: str, field: str) -> dict:
        return datapak.safe_unpickle(self.fields(name))["value"][field]


@pytest.fixture
def project(tmp_path, workdir) -> Project:
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root, symlinks=True)
    return Project(root, json.loads((root / "manifest.json").read_text()))


def tree(root: Path) -> dict:
    """What an extraction left, recorded as make_legacy_fixture records MLtraq's extraction."""
    return tree_record(str(root))


def files_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def snapshot(p: Project) -> tuple:
    """Every byte of the project: the database file (and any WAL) and the datastore."""
    db = {n: hashlib.sha256((p.root / n).read_bytes()).hexdigest()
          for n in os.listdir(p.root) if n.startswith("mltraq.db")}
    return db, files_digest(p.datastore)


def blob_files(p: Project) -> list[Path]:
    return sorted(x for x in (p.datastore / "casstore" / "blobs").rglob("*") if x.is_file())


def run_cells(p: Project, name: str) -> list[tuple]:
    return p.sql(f'SELECT * FROM "experiment_{name}" ORDER BY id_run')


def set_order(data: bytes) -> list[list[str]]:
    """The str items of every set in a pickle, in the order they are pickled."""
    raw = zlib.decompress(data[3:]) if data.startswith(b"C01") else data
    sets, current = [], None
    for op, arg, _pos in pickletools.genops(raw):
        if op.name == "EMPTY_SET":
            current = []
            sets.append(current)
        elif op.name == "ADDITEMS":
            current = None
        elif current is not None and op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            current.append(arg)
    return sets


# --------------------------------------------------------------------------- the plan


def test_plan_finds_archive_references_in_fields_and_run_tables(project):
    runs = [r[0] for r in project.sql("SELECT id_run FROM experiment_alpha ORDER BY id_run")]
    found = sorted((r.experiment, r.label) for r in project.plan().refs)
    assert found == sorted([("alpha", "data"), ("alpha", "other"), ("alpha", "nested.inputs"),
                            *[("alpha", f"runs[{r}].model") for r in runs],
                            ("beta", "data"), ("beta", "hidden"), ("gamma", "data"),
                            ("unsafe", "bad"), ("unsafe", "ok")])


def test_plan_writes_nothing(project):
    before = snapshot(project)
    project.plan()
    assert snapshot(project) == before


# --------------------------------------------------------------------------- what a migration does


def test_identical_content_with_different_legacy_bytes_is_stored_once(project):
    legacy_bytes = {project.legacy_path(n, f).read_bytes() for n, f in SAME_FOLDER}
    assert len(legacy_bytes) == 3  # three processes: three member orders (and other mtimes)
    project.migrate()
    blobs = {project.value(n, f)["value"]["blob"] for n, f in SAME_FOLDER}
    assert len(blobs) == 1
    (blob,) = blobs
    algo, hexdigest = blob.split(":")
    assert [b for b in blob_files(project) if b.name.startswith(hexdigest[2:])] != []
    assert len(blob_files(project)) == 7  # 9 references into 6 contents, and the standalone archive


def test_migrated_fields_hold_casstore_references_and_index_rows(project):
    project.migrate()
    value = project.value("alpha", "data")
    assert value["DATAPAK-0"] == CASSTORE
    assert sorted(value["value"]) == ["arc_dir", "blob", "size"]
    assert value["value"]["arc_dir"] == "."
    refs = project.sql("SELECT r.id_run, r.field, r.blob_id, r.arc_dir, b.size FROM casstore_refs r "
                       "JOIN casstore_blobs b USING (blob_id) JOIN experiments e USING (id_experiment) "
                       "WHERE e.name = 'alpha' ORDER BY r.id_run, r.field")
    runs = [r[0] for r in project.sql("SELECT id_run FROM experiment_alpha ORDER BY id_run")]
    assert [(r[0], r[1]) for r in refs] == [("", "data"), ("", "nested.inputs"), ("", "other"),
                                            (runs[0], "model"), (runs[1], "model")]
    assert refs[0][2:] == (value["value"]["blob"], ".", value["value"]["size"])


def test_run_table_cells_hold_casstore_references(project):
    project.migrate()
    models = [datapak.safe_unpickle(r[0]) for r in project.sql("SELECT model FROM experiment_alpha")]
    assert [m["DATAPAK-0"] for m in models] == [CASSTORE, CASSTORE]
    assert models[0]["value"]["blob"] == models[1]["value"]["blob"]  # the same folder, twice


def test_cells_without_archives_keep_their_bytes(project):
    def untouched():
        rows = project.sql("SELECT id_experiment, name, meta, unsafe_pickle FROM experiments ORDER BY name")
        cols = project.sql("SELECT id_experiment, id_run, i, score, vec, extra FROM experiment_alpha ORDER BY id_run")
        return rows, cols

    before = untouched()
    project.migrate()
    assert untouched() == before


def test_other_values_in_rewritten_fields_keep_their_bytes(project):
    before = {n: project.fields(n) for n in ("alpha", "beta", "unsafe")}
    archives = {"alpha": {"data", "other", "nested"}, "beta": {"data", "hidden"}, "unsafe": {"ok"}}
    project.migrate()
    for name, old in before.items():
        new = project.fields(name)
        old_value, new_value = (datapak.safe_unpickle(x)["value"] for x in (old, new))
        assert list(new_value) == list(old_value)
        # numpy, pandas, DataStore, Archive, uuid, plain values: same types, same raw bytes.
        assert {k for k in old_value if not rewrite.same(new_value[k], old_value[k])} == archives[name]
        # Sets of str are pickled in the writing process's hash order: kept in that order.
        assert set_order(new) == set_order(old)
    old_nested = datapak.safe_unpickle(before["alpha"])["value"]["nested"]["value"]
    new_nested = project.value("alpha", "nested")["value"]
    assert list(new_nested) == ["inputs", "note"] and new_nested["note"] == old_nested["note"]
    assert new_nested["inputs"]["DATAPAK-0"] == CASSTORE


def test_a_field_left_unmigrated_keeps_its_legacy_value(project):
    old = project.value("unsafe", "bad")
    report = project.migrate()
    assert project.value("unsafe", "bad") == old
    assert project.value("unsafe", "ok")["DATAPAK-0"] == CASSTORE
    assert [(f.experiment, f.field) for f in report.failures] == [("unsafe", "bad")]


def test_absolute_symlink_reference_is_reported_and_its_tar_kept(project):
    path = project.legacy_path("unsafe", "bad")
    data = path.read_bytes()
    report = project.migrate()
    (failure,) = report.failures
    assert "symlink 'abs'" in failure.reason and "points outside" in failure.reason
    assert report.exit_code == 1
    assert path.read_bytes() == data


def legacy_tar(*members: tuple[str, bytes, str], fmt: int = tarfile.GNU_FORMAT, pax: dict | None = None) -> bytes:
    """A legacy TAR built with tarfile, as MLtraq's are: (name, type, file data or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, arg in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(arg)
                info.pax_headers = pax or {}
                tar.addfile(info, io.BytesIO(arg.encode()))
            else:
                info.linkname = arg
                tar.addfile(info)
    return buf.getvalue()


def assert_kept_and_reported(project, name: str, field: str, data: bytes, reason: str):
    """Plant `data` as the legacy TAR of `name`.`field`, migrate: that reference is reported
    and left as it was, with its TAR; the experiment's other fields migrate."""
    path = project.legacy_path(name, field)
    path.write_bytes(data)
    old = project.value(name, field)
    report = project.migrate()
    reasons = {(f.experiment, f.field): f.reason for f in report.failures}
    assert set(reasons) == {("unsafe", "bad"), (name, field)}
    assert reason in reasons[(name, field)], reasons[(name, field)]
    assert report.exit_code == 1
    assert path.read_bytes() == data
    assert project.value(name, field) == old
    assert project.value(name, "hidden")["DATAPAK-0"] == CASSTORE


def test_a_symlink_leading_out_through_another_symlink_is_reported_and_its_tar_kept(project):
    # each link is lexically inside; on disk data/x resolves through data/a/b to the target's parent
    hostile = legacy_tar(("data/ok.txt", tarfile.REGTYPE, "ok"), ("data/a/b", tarfile.SYMTYPE, ".."),
                         ("data/x", tarfile.SYMTYPE, "a/b/../.."))
    assert_kept_and_reported(project, "beta", "data", hostile, "leads out of the target through other links")


def test_a_name_the_file_system_refuses_is_reported_and_its_tar_kept(project):
    hostile = legacy_tar(("data/ok.txt", tarfile.REGTYPE, "ok"), ("data/" + "n" * 300, tarfile.REGTYPE, "long"))
    assert_kept_and_reported(project, "beta", "data", hostile, "name component of 300 bytes")


def test_a_pax_size_of_5000_digits_is_reported_and_its_tar_kept(project):
    hostile = legacy_tar(("data/ok.txt", tarfile.REGTYPE, "ok"), fmt=tarfile.PAX_FORMAT, pax={"size": "1" * 5000})
    assert b"1" * 5000 in hostile
    assert_kept_and_reported(project, "beta", "data", hostile, "malformed PAX size")


def test_migrated_experiments_record_datastore_and_registry(project):
    project.migrate()
    assert project.sql("SELECT value FROM casstore_meta WHERE key = 'datastore'") == [(str(project.datastore),)]
    registry = list((project.datastore / "casstore" / "registry").glob("*.json"))
    assert [json.loads(r.read_text())["url"] for r in registry] == [f"sqlite:///{project.db}"]


def test_legacy_tars_are_deleted_after_migration(project):
    legacy_paths = [project.legacy_path(n, f) for n, f in SAME_FOLDER]
    report = project.migrate()
    assert not any(p.exists() for p in legacy_paths)
    assert report.deleted_files == 9 and report.references_migrated == 9
    assert project.sql("SELECT key FROM casstore_meta WHERE key LIKE 'migrate.%'") == []


def test_datastore_values_and_their_files_stay(project):
    datastore_files = [rel for rel, f in project.manifest["datastore"].items()
                       if not f["tar"] and rel != "stray.txt"]
    assert len(datastore_files) == 3  # alpha.store and the two runs' extra
    before = {rel: (project.datastore / rel).read_bytes() for rel in datastore_files}
    report = project.migrate()
    assert {rel: (project.datastore / rel).read_bytes() for rel in datastore_files} == before
    assert not set(datastore_files) & {o.path for o in report.orphans}


def test_orphans_are_reported_and_never_deleted(project):
    expected = {rel for rel, f in project.manifest["datastore"].items()
                if rel == "stray.txt"
                or (f["tar"] and not rel.startswith("undefined/")
                    and not any(rel.startswith(e["id"]) for e in project.manifest["experiments"].values()))}
    assert len(expected) == 2  # a stray file, gamma's replaced folder
    before = {rel: (project.datastore / rel).read_bytes() for rel in expected}
    report = project.migrate()
    assert {o.path for o in report.orphans} == expected
    assert {rel: (project.datastore / rel).read_bytes() for rel in expected} == before


def standalone_paths(project) -> list[str]:
    found = [rel for rel in project.manifest["datastore"] if rel.startswith("undefined/")]
    assert len(found) == 1  # the generator's one ArchiveStoreIO.create
    return found


def legacy_tree(path: Path, out: Path) -> dict:
    """What MLtraq's own extraction of a legacy TAR gives (tarfile, filter="data")."""
    with tarfile.open(path) as tar:
        tar.extractall(out, filter="data")
    return tree_record(str(out))


def test_a_standalone_archivestoreio_tar_is_read_through_its_url_after_migration(project, tmp_path):
    (rel,) = standalone_paths(project)
    expected = legacy_tree(project.datastore / rel, tmp_path / "by-tarfile")
    report = project.migrate()
    assert [(a.path, a.legacy_bytes) for a in report.standalone] == [(rel, project.manifest["datastore"][rel]["size"])]
    options().set("datastore.url", f"file:///{project.datastore}")
    io = ArchiveStoreIO(url=f"file:///{rel}")
    assert io.blob_id == report.standalone[0].blob
    io.extract(str(tmp_path / "by-casstore"))
    assert tree_record(str(tmp_path / "by-casstore")) == expected


def test_a_standalone_tar_is_replaced_by_a_named_reference_that_gc_keeps(project):
    (rel,) = standalone_paths(project)
    report = project.migrate()
    body = json.loads((project.datastore / rel).read_bytes())
    assert body == {"format": "casstore-ref-1", "blob": report.standalone[0].blob, "size": body["size"],
                    "codec": body["codec"], "stored_size": body["stored_size"], "arc_dir": None}
    index = Index.open(project.url)
    try:
        store = ContentStore(LocalBlobStore(str(project.datastore)))
        collect(index, store, field_roots=field_roots, grace_s=0)
        assert store.blobs.find(body["blob"]) is not None
    finally:
        index.dispose()


def test_a_run_stopped_before_the_reference_is_written_leaves_the_tar_for_the_next(project, monkeypatch):
    (rel,) = standalone_paths(project)
    before = (project.datastore / rel).read_bytes()

    real_put = LocalBlobStore.put_object

    def stopped(self, key, data, durable=True):
        if key == rel:
            raise Stop(f"killed before writing {key}")
        real_put(self, key, data, durable)

    monkeypatch.setattr(LocalBlobStore, "put_object", stopped)
    with pytest.raises(Stop):
        migration.execute(project.plan())
    monkeypatch.undo()
    assert (project.datastore / rel).read_bytes() == before
    report = project.migrate()
    assert [a.path for a in report.standalone] == [rel]
    assert json.loads((project.datastore / rel).read_bytes())["blob"] == report.standalone[0].blob


def test_a_standalone_tar_reference_records_the_stored_copy_of_its_blob(project):
    """As ArchiveStoreIO.create's: readers prefer the copy that matches it (a planted second
    copy of the other codec does not break them)."""
    (rel,) = standalone_paths(project)
    project.migrate()
    body = json.loads((project.datastore / rel).read_bytes())
    copy = LocalBlobStore(str(project.datastore)).find(body["blob"])
    assert (body["codec"], body["stored_size"]) == (copy.codec, copy.stored_size)


def test_keep_legacy_leaves_standalone_tars_as_they_are(project):
    (rel,) = standalone_paths(project)
    before = (project.datastore / rel).read_bytes()
    report = project.migrate(keep_legacy=True)
    assert report.standalone == [] and rel in {o.path for o in report.orphans}
    assert (project.datastore / rel).read_bytes() == before


def test_a_standalone_tar_that_cannot_be_read_is_kept_and_reported(project):
    (rel,) = standalone_paths(project)
    path = project.datastore / rel
    data = bytearray(path.read_bytes())
    data[600:700] = b"\xff" * 100  # the first member's data region: its header stays a TAR header
    data[1024:1536] = b"\x01" * 512  # the second header is garbage
    path.write_bytes(bytes(data))
    report = project.migrate()
    assert report.standalone == [] and rel in {o.path for o in report.orphans}
    assert path.read_bytes() == bytes(data)
    assert any(rel in w for w in report.warnings)


def test_report_counts_before_and_after(project):
    migrated = {r.relpath for r in project.plan().refs if r.label != "bad"}
    report = project.migrate()
    tars = project.manifest["datastore"]
    assert report.experiments == 4 and report.experiments_migrated == 4
    assert (report.references_found, report.references_migrated) == (10, 9)
    assert report.legacy_files == len(migrated) == 9
    assert report.legacy_bytes == report.deleted_bytes == sum(tars[rel]["size"] for rel in migrated)
    standalone_blob = report.standalone[0].blob.split(":")[1]
    referenced = [b for b in blob_files(project) if not b.name.startswith(standalone_blob[2:])]
    assert report.blobs == report.blobs_new == len(referenced) == 6
    assert report.new_bytes == sum(b.stat().st_size for b in referenced)
    assert report.bytes_saved == report.legacy_bytes - report.new_bytes > 0


# --------------------------------------------------------------------------- loading afterwards


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
def test_load_extracts_what_mltraq_extracted(project, name):
    project.migrate()
    create_session(project.url).load_experiment(name)
    expected = project.manifest["experiments"][name]
    got = tree(Path("mltraq.archivestore") / expected["id"])
    assert got == {"tree": expected["tree"], "hardlinks": expected["hardlinks"]}


def test_load_extracts_run_level_archives_into_the_experiment_folder(project):
    project.migrate()
    create_session(project.url).load_experiment("alpha")
    folder = Path("mltraq.archivestore") / project.id_of("alpha")
    expected = {k for k in project.manifest["experiments"]["alpha"]["tree"] if k.split("/")[0] == "model"}
    assert expected and expected <= set(tree(folder)["tree"])


def test_loaded_modes_follow_the_legacy_tar(project):
    project.migrate()
    create_session(project.url).load_experiment("beta")
    folder = Path("mltraq.archivestore") / project.id_of("beta")
    assert stat.S_IMODE(os.stat(folder / "data" / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(folder / "data" / "secret.txt").st_mode) == 0o600


def test_unsafe_experiment_loads_its_migrated_field(project):
    project.migrate()
    e = create_session(project.url).load_experiment("unsafe")
    assert isinstance(e.fields.ok, ArchiveStore)
    folder = Path("mltraq.archivestore") / project.id_of("unsafe")
    assert sorted(tree(folder)["tree"]) == ["ok", "ok/config.json"]


def test_values_casstore_does_not_decode_persist_back_unchanged(project):
    project.migrate()
    s = create_session(project.url)
    before = datapak.safe_unpickle(project.fields("alpha"))
    s.load_experiment("alpha").persist(if_exists="replace")
    assert rewrite.same(datapak.safe_unpickle(project.fields("alpha")), before)


def test_replacing_a_migrated_experiment_keeps_its_run_table_and_references(project):
    project.migrate()
    cells = run_cells(project, "alpha")
    s = create_session(project.url)
    e = s.load_experiment("alpha")
    e.fields.note = "replaced"
    e.persist(if_exists="replace")
    assert run_cells(project, "alpha") == cells
    assert len([r for r in s.index.refs_of(e.id_experiment) if r.id_run]) == 2


def test_verify_deep_passes_after_migration(project):
    project.migrate()
    index = Index.open(project.url)
    try:
        report = verify(index, ContentStore(LocalBlobStore(str(project.datastore))), field_roots=field_roots, deep=True)
    finally:
        index.dispose()
    assert report.problems == [] and report.blobs_checked == 7  # 6 referenced by experiments, 1 by name


# --------------------------------------------------------------------------- dry run, re-run, interruption


def test_dry_run_changes_nothing(project):
    before = snapshot(project)
    project.migrate(dry_run=True)
    assert snapshot(project) == before
    assert not (project.datastore / "casstore").exists()


def test_dry_run_reports_what_a_real_run_does(project):
    dry = project.migrate(dry_run=True).to_dict()
    real = project.migrate().to_dict()
    for key in ("dry_run",):
        dry.pop(key), real.pop(key)
    assert dry == real


def test_rerun_is_a_noop(project):
    project.migrate()
    before = snapshot(project)
    report = project.migrate()
    assert snapshot(project) == before
    assert (report.references_migrated, report.references_already) == (0, 9)
    assert report.exit_code == 1  # unsafe.bad is still reported


class Stop(Exception):
    pass


def stop_at(stage: str, experiment: str):
    def progress(event: migration.MigrationEvent) -> None:
        if (event.stage, event.experiment) == (stage, experiment):
            raise Stop(f"killed at {stage} {experiment}")

    return progress


def test_interrupted_before_commit_leaves_the_experiment_as_it_was(project):
    beta = project.fields("beta")
    with pytest.raises(Stop):
        project.migrate(progress=stop_at("stored", "beta"))
    assert project.fields("beta") == beta
    assert project.value("alpha", "data")["DATAPAK-0"] == CASSTORE
    assert project.legacy_path("beta", "data").exists()


def test_interrupted_before_commit_rerun_completes(project):
    with pytest.raises(Stop):
        project.migrate(progress=stop_at("stored", "beta"))
    report = project.migrate()
    assert (report.references_migrated, report.references_already) == (4, 5)  # alpha's 5 were done
    assert [r.label for r in project.plan().refs] == ["bad"]
    create_session(project.url).load_experiment("beta")
    expected = project.manifest["experiments"]["beta"]
    assert tree(Path("mltraq.archivestore") / expected["id"]) == {k: expected[k] for k in ("tree", "hardlinks")}


def test_legacy_tars_stay_when_the_commit_fails(project, monkeypatch):
    alpha = [project.legacy_path("alpha", f) for f in ("data", "other")]

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(executor._Run, "_commit", fail)
    with pytest.raises(RuntimeError):
        project.migrate()
    assert all(p.exists() for p in alpha)
    assert project.value("alpha", "data")["DATAPAK-0"] == LEGACY


def test_interrupted_after_commit_rerun_deletes_the_legacy_files(project):
    beta_tars = [project.legacy_path("beta", f) for f in ("data", "hidden")]
    with pytest.raises(Stop):
        project.migrate(progress=stop_at("committed", "beta"))
    assert project.value("beta", "data")["DATAPAK-0"] == CASSTORE
    assert all(p.exists() for p in beta_tars)  # committed, not yet cleaned
    assert len(project.sql("SELECT key FROM casstore_meta WHERE key LIKE 'migrate.legacy.%'")) == 2
    report = project.migrate()
    assert not any(p.exists() for p in beta_tars)
    assert project.sql("SELECT key FROM casstore_meta WHERE key LIKE 'migrate.legacy.%'") == []
    assert {o.path for o in report.orphans}.isdisjoint(str(p.relative_to(project.datastore)) for p in beta_tars)


def test_legacy_files_recorded_as_migrated_are_not_orphans(project):
    with pytest.raises(Stop):
        project.migrate(progress=stop_at("committed", "beta"))
    paths = {json.loads(v)["path"] for (v,) in project.sql("SELECT value FROM casstore_meta "
                                                          "WHERE key LIKE 'migrate.legacy.%'")}
    assert paths and paths.isdisjoint(o.path for o in project.plan().orphans)


def test_keep_legacy_keeps_every_legacy_tar(project):
    before = files_digest(project.datastore)
    report = project.migrate(keep_legacy=True)
    after = files_digest(project.datastore)
    assert {k: v for k, v in after.items() if k in before} == before
    assert (report.deleted_files, report.kept_files) == (0, 9)


def test_a_later_run_without_keep_legacy_deletes_them(project):
    project.migrate(keep_legacy=True)
    tar = project.datastore / project.manifest["experiments"]["beta"]["id"]
    assert any(tar.iterdir())
    report = project.migrate()
    assert report.deleted_files == 9
    assert not tar.exists()


def test_a_legacy_tar_two_references_share_is_deleted_after_the_last_one(project):
    shared = project.legacy_path("beta", "data")
    own = project.legacy_path("gamma", "data")
    old_url, new_url = (f"file:///{p.relative_to(project.datastore)}".encode() for p in (own, shared))
    with sqlite3.connect(project.db) as conn:  # gamma.data now names beta's TAR (same length)
        conn.execute("UPDATE experiments SET fields = ? WHERE name = 'gamma'",
                     (project.fields("gamma").replace(old_url, new_url),))
    with pytest.raises(Stop):
        project.migrate(progress=stop_at("cleaned", "beta"))
    assert shared.exists()  # gamma, not migrated yet, still needs it
    project.migrate()
    assert not shared.exists()
    assert project.value("gamma", "data")["value"] == project.value("beta", "data")["value"]


def test_missing_legacy_tar_is_reported_and_the_rest_done(project):
    missing = project.legacy_path("gamma", "data")
    missing.unlink()
    gamma = project.fields("gamma")
    report = project.migrate()
    assert report.exit_code == 1
    reasons = {(f.experiment, f.field): f.reason for f in report.failures}
    assert "missing" in reasons[("gamma", "data")]
    assert project.fields("gamma") == gamma
    assert report.references_migrated == 8
    assert project.value("beta", "data")["DATAPAK-0"] == CASSTORE


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_a_legacy_tar_replaced_by_a_fifo_or_symlink_is_reported_unread(project, planted):
    """Whoever can write the datastore can put a FIFO (which would block an open for ever) or
    a symlink (to anything on the machine) where a legacy TAR was: migrate reads neither."""
    path = project.legacy_path("gamma", "data")
    path.unlink()
    if planted == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(project.legacy_path("beta", "data"), path)
    gamma = project.fields("gamma")
    with deadline(30):
        report = project.migrate()
    assert report.exit_code == 1
    reasons = {(f.experiment, f.field): f.reason for f in report.failures}
    assert "not a regular file" in reasons[("gamma", "data")]
    assert project.fields("gamma") == gamma and os.path.lexists(path)


def test_a_damaged_copy_under_the_id_is_quarantined_and_migrate_publishes_the_good_bytes(project):
    path = project.legacy_path("beta", "data")
    digest = DigestSink()
    with open(path, "rb") as f:
        legacy.canonicalize(f, [digest])
    blob_id = digest.blob_id()
    algo, hexdigest = blob_id.split(":")
    corrupt = project.datastore / "casstore" / "blobs" / algo / hexdigest[:2] / f"{hexdigest[2:]}.tar"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\0" * 10240)  # already "there" under that id, but damaged
    (project.datastore / "casstore" / "FORMAT").write_bytes(b"casstore-datastore 1\n")
    report = project.migrate()
    assert {(f.experiment, f.field) for f in report.failures} == {("unsafe", "bad")}  # the fixture's hostile TAR
    assert not path.exists()
    assert digest_bytes(corrupt.read_bytes()) == blob_id
    quarantine = project.datastore / "casstore" / "quarantine"
    assert [p.read_bytes() for p in quarantine.rglob("*") if p.is_file()] == [b"\0" * 10240]
    assert project.value("beta", "data")["DATAPAK-0"] == CASSTORE


def test_migrate_rewrites_the_facts_row_of_a_copy_it_replaced(project):
    path = project.legacy_path("beta", "data")
    digest = DigestSink()
    with open(path, "rb") as f:
        size = legacy.canonicalize(f, [digest])
    blob_id = digest.blob_id()
    algo, hexdigest = blob_id.split(":")
    corrupt = project.datastore / "casstore" / "blobs" / algo / hexdigest[:2] / f"{hexdigest[2:]}.tar"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\0" * size)  # a damaged .tar under the id, which a row describes
    (project.datastore / "casstore" / "FORMAT").write_bytes(b"casstore-datastore 1\n")
    index = Index.open(project.url)
    with write_transaction(index.engine) as conn:
        index.put_blob_facts(conn, [BlobFacts(blob_id, size, size, "none")])
    index.engine.dispose()
    project.migrate(codec="zstd")
    published = corrupt.with_name(corrupt.name + ".zst")
    assert project.sql("SELECT codec, stored_size FROM casstore_blobs WHERE blob_id = ?", blob_id) == [
        ("zstd", published.stat().st_size)]


def test_a_value_changed_since_the_plan_is_left_for_the_next_run(project):
    plan = project.plan()
    changed = project.fields("beta") + b""
    plain = datapak.safe_unpickle(changed)
    plain["value"]["version"] = 3
    with sqlite3.connect(project.db) as conn:
        conn.execute("UPDATE experiments SET fields = ? WHERE name = 'beta'", (pickle.dumps(plain, protocol=5),))
    report = migration.execute(plan)
    assert {(f.experiment, f.field) for f in report.failures} >= {("beta", "data"), ("beta", "hidden")}
    assert all("changed" in f.reason for f in report.failures if f.experiment == "beta")
    assert project.value("beta", "data")["DATAPAK-0"] == LEGACY
    assert project.legacy_path("beta", "data").exists()
    project.migrate()
    assert project.value("beta", "data")["DATAPAK-0"] == CASSTORE


# --------------------------------------------------------------------------- the command


def test_command_json_report_and_exit_code_1(project):
    result = CliRunner().invoke(migrate_command, ["--db", project.url, "--datastore", str(project.datastore),
                                                  "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["references_migrated"] == 9 and report["exit_code"] == 1
    assert [f["field"] for f in report["failures"]] == ["bad"]


def test_command_exit_0_when_everything_migrates(project):
    with sqlite3.connect(project.db) as conn:
        conn.execute("DELETE FROM experiments WHERE name = 'unsafe'")
    result = CliRunner().invoke(migrate_command, ["--db", project.url, "--datastore", str(project.datastore)])
    assert result.exit_code == 0, result.output
    assert "8 of 8 archive reference(s) migrated" in result.stdout


def test_command_dry_run_text(project):
    before = snapshot(project)
    result = CliRunner().invoke(migrate_command, ["--db", project.url, "--datastore", str(project.datastore),
                                                  "--dry-run"])
    assert result.exit_code == 1
    assert "dry run: 9 of 10 archive reference(s) would be migrated" in result.stdout
    assert "stray.txt" in result.stdout
    assert snapshot(project) == before


def test_command_missing_database_is_one_line_exit_3(project):
    result = CliRunner().invoke(migrate_command, ["--db", f"sqlite:///{project.root}/nope.db",
                                                  "--datastore", str(project.datastore)])
    assert result.exit_code == 3
    assert result.stderr.startswith("casstore: error: database ") and result.stderr.count("\n") == 1
    assert not (project.root / "nope.db").exists()


def test_command_missing_datastore_is_exit_3(project):
    result = CliRunner().invoke(migrate_command, ["--db", project.url, "--datastore", str(project.root / "nope")])
    assert result.exit_code == 3 and "does not exist" in result.stderr


def test_command_refuses_a_database_using_another_datastore(project, tmp_path):
    index = Index.open(project.url)
    index.set_fact("datastore", str(tmp_path / "elsewhere"))
    index.dispose()
    result = CliRunner().invoke(migrate_command, ["--db", project.url, "--datastore", str(project.datastore)])
    assert result.exit_code == 3 and "already uses datastore" in result.stderr


# --------------------------------------------------------------------------- legacy TARs (unit)


def _folder(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "b.txt").write_bytes(b"b" * 700)
    (src / "sub" / "c.txt").write_bytes(b"c")
    (src / "x.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "x.sh", 0o755)
    os.link(src / "b.txt", src / "a_link.txt")
    os.symlink("b.txt", src / "latest")
    deep = src / ("d" * 80) / ("e" * 80)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_bytes(b"f")
    os.symlink(os.path.relpath(deep / "f.txt", src / "sub"), src / "sub" / "long")
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"latin")
    return src


def _mltraq_tar(src: Path, names: list[str], arc_dir: str = ".", mtime: int | None = None) -> bytes:
    """A TAR as MLtraq writes it (tarfile, GNU, root owner), members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(src / name), arcname=os.path.normpath(f"{arc_dir}/{name}"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if mtime is not None:
                info.mtime = mtime
            with open(src / name, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _canonical(data: bytes) -> bytes:
    out = io.BytesIO()
    legacy.canonicalize(io.BytesIO(data), [out])
    return out.getvalue()


def _names(src: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)


def test_canonical_bytes_do_not_depend_on_member_order_or_mtimes(tmp_path):
    src = _folder(tmp_path)
    names = _names(src)
    one = _mltraq_tar(src, names)
    two = _mltraq_tar(src, list(reversed(names)), mtime=1)
    assert one != two
    assert _canonical(one) == _canonical(two)


def test_canonical_bytes_are_what_casstore_writes_for_the_folder(tmp_path):
    src = _folder(tmp_path)
    legacy_tar = _mltraq_tar(src, list(reversed(_names(src))), arc_dir="data")
    assert _canonical(legacy_tar) == tar_bytes(scan(str(src), "data"))


def test_hardlinks_are_repointed_to_the_first_name_in_sorted_order(tmp_path):
    src = _folder(tmp_path)
    legacy_tar = _mltraq_tar(src, ["b.txt", "a_link.txt"])  # MLtraq saw b.txt first
    with tarfile.open(fileobj=io.BytesIO(legacy_tar)) as tar:
        assert [(m.name, m.type, m.linkname) for m in tar] == [("b.txt", b"0", ""), ("a_link.txt", b"1", "b.txt")]
    with tarfile.open(fileobj=io.BytesIO(_canonical(legacy_tar))) as tar:
        members = [(m.name, m.type, m.linkname, m.size) for m in tar]
    assert members == [("a_link.txt", b"0", "", 700), ("b.txt", b"1", "a_link.txt", 0)]


def test_long_and_non_utf8_names_and_link_targets_are_kept(tmp_path):
    src = _folder(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(_canonical(_mltraq_tar(src, _names(src))))) as tar:
        members = {m.name: m for m in tar}
    assert os.fsdecode(b"caf\xe9") in members
    assert f"{'d' * 80}/{'e' * 80}/f.txt" in members
    assert members["sub/long"].linkname == f"../{'d' * 80}/{'e' * 80}/f.txt"


@pytest.mark.parametrize("target", ["/etc/hostname", "../../outside"])
def test_symlinks_leaving_the_archive_are_refused(tmp_path, target):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("sub/link")
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    with pytest.raises(legacy.LegacyArchiveError, match="points outside"):
        _canonical(buf.getvalue())


def test_symlinks_leaving_the_archive_through_other_symlinks_are_refused():
    data = legacy_tar(("sub/a/b", tarfile.SYMTYPE, ".."), ("sub/x", tarfile.SYMTYPE, "a/b/../.."))
    with pytest.raises(legacy.LegacyArchiveError, match="leads out of the target through other links"):
        _canonical(data)


def test_a_member_below_a_symlink_is_refused_whatever_the_member_order():
    data = legacy_tar(("sub/l/f", tarfile.REGTYPE, "f"), ("sub/l", tarfile.SYMTYPE, "."))
    with pytest.raises(legacy.LegacyArchiveError, match="clashes with|through symlink"):
        _canonical(data)


def test_truncated_legacy_tar_is_refused(tmp_path):
    src = _folder(tmp_path)
    data = _mltraq_tar(src, ["b.txt"])
    with pytest.raises(legacy.LegacyArchiveError):
        _canonical(data[:512 + 100])


def test_pass_one_reads_headers_only(tmp_path):
    src = _folder(tmp_path)
    data = _mltraq_tar(src, ["b.txt", "sub/c.txt"])

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            chunk = super().read(n)
            Counting.read_bytes += len(chunk)
            return chunk

    members = legacy.read_members(Counting(data))
    assert [m.name for m in members] == [b"b.txt", b"sub/c.txt"]
    assert Counting.read_bytes == 3 * 512  # two headers and the end block, no data


# --------------------------------------------------------------------------- DataPak rewrite (unit)


def _c_pickle_in_other_process(expr: str, seed: int) -> bytes:
    code = f"import pickle, sys; sys.stdout.buffer.write(pickle.dumps({expr}, protocol=5))"
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rewrite_keeps_set_order_of_another_process(seed):
    expr = ("{'DATAPAK-0': 'mltraq.Bunch-0', 'value': {'tags': {'a', 'bb', 'ccc', 'dddd', 'eeeee'}, "
            "'data': {'DATAPAK-0': 'mltraq.ArchiveStore-0', 'value': 'file:///x/y'}}}")
    old = _c_pickle_in_other_process(expr, seed)
    new = migration.rewrite_datapak(old, [(("value", "data"), {"blob": "b", "arc_dir": ".", "size": 1})])
    assert set_order(new) == set_order(old)
    assert datapak.safe_unpickle(new)["value"]["data"] == {"DATAPAK-0": CASSTORE,
                                                          "value": {"blob": "b", "arc_dir": ".", "size": 1}}


@pytest.mark.parametrize("size", [65535, 65536, 65537, 300_000])
def test_rewrite_keeps_large_values_and_framing(size):
    plain = {"DATAPAK-0": "mltraq.Bunch-0", "value": {
        "big": b"x" * size, "text": "y" * size, "list": list(range(2500)), "s": set(range(1500)),
        "a": {"DATAPAK-0": LEGACY, "value": "file:///x/y"}}}
    old = pickle.dumps(plain, protocol=5)
    new = migration.rewrite_datapak(old, [(("value", "a"), {"blob": "b", "arc_dir": ".", "size": 1})])
    plain["value"]["a"] = {"DATAPAK-0": CASSTORE, "value": {"blob": "b", "arc_dir": ".", "size": 1}}
    assert new == pickle.dumps(plain, protocol=5)


def test_rewrite_keeps_compressed_form():
    old = b"C01" + zlib.compress(pickle.dumps({"a": {"DATAPAK-0": LEGACY, "value": "file:///x/y"}}, protocol=5))
    new = migration.rewrite_datapak(old, [(("a",), {"blob": "b", "arc_dir": ".", "size": 1})])
    assert new.startswith(b"C01")
    assert datapak.safe_unpickle(new)["a"]["DATAPAK-0"] == CASSTORE


def test_rewrite_refuses_a_pickle_that_does_not_round_trip():
    old = pickle.dumps({"a": {"DATAPAK-0": LEGACY, "value": "file:///x/y"}}, protocol=2)  # not MLtraq's protocol
    with pytest.raises(InvalidInput, match="re-pickle"):
        migration.rewrite_datapak(old, [(("a",), {"blob": "b", "arc_dir": ".", "size": 1})])


def test_rewrite_refuses_globals():
    with pytest.raises(InvalidInput):
        migration.rewrite_datapak(pickle.dumps({"a": ArchiveStore}, protocol=5), [])


# --------------------------------------------------------------------------- live MLtraq


@pytest.mark.skipif(not MLTRAQ_PYTHON,
                    reason=NO_MLTRAQ)
def test_live_mltraq_project_migrates_and_loads_as_mltraq_loaded_it(tmp_path, workdir):
    out = tmp_path / "live"
    generator = Path(__file__).parent / "make_legacy_fixture.py"
    done = subprocess.run([MLTRAQ_PYTHON, str(generator), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    p = Project(out, json.loads((out / "manifest.json").read_text()))
    report = p.migrate()
    assert [(f.experiment, f.field) for f in report.failures] == [("unsafe", "bad")]
    s = create_session(p.url)
    for name, expected in p.manifest["experiments"].items():
        s.load_experiment(name)
        if expected["loaded"]:
            got = tree(Path("mltraq.archivestore") / expected["id"])
            assert got == {"tree": expected["tree"], "hardlinks": expected["hardlinks"]}, name
