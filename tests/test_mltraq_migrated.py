"""Real MLtraq 0.1.165 reads a project `casstore migrate` migrated, in both forms, once
`casstore.mltraq.enable()` is on: every experiment of the legacy fixture (tests/fixtures/legacy,
written by MLtraq) loads with its fields, runs and run-level archives, and extracts exactly
the files MLtraq extracted before the migration (the fixture's manifest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest

mltraq = pytest.importorskip("mltraq")

import casstore.mltraq as integration  # noqa: E402
from casstore.mltraq import datapak  # noqa: E402
from helpers import run_cli  # noqa: E402
from make_legacy_fixture import tree_record  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
LOADABLE = ["alpha", "beta", "gamma"]  # "unsafe" MLtraq itself cannot load (its manifest says why)


@pytest.fixture
def project(tmp_path, workdir):
    from mltraq import options

    options().set("tqdm.disable", True)
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root, symlinks=True)
    return root


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def migrate(root: Path, *form: str):
    return run_cli("migrate", *form, "--db", f"sqlite:///{root / 'mltraq.db'}", "--datastore", str(root / "datastore"),
                   code=None)


def load_with_mltraq(root: Path, name: str):
    """Load as MLtraq would in that project: its datastore, extraction into the working folder."""
    from mltraq import create_session, options

    with options().ctx({"datastore.url": f"file:///{root / 'datastore'}"}):
        return create_session(f"sqlite:///{root / 'mltraq.db'}").load_experiment(name)


def db_digest(root: Path) -> str:
    return hashlib.sha256((root / "mltraq.db").read_bytes()).hexdigest()


@pytest.mark.parametrize("form", [[], ["--form", "mltraq"]], ids=["casstore-form", "mltraq-form"])
@pytest.mark.parametrize("name", LOADABLE)
def test_mltraq_loads_a_migrated_experiment_with_the_files_it_had(project, form, name):
    assert migrate(project, *form).exit_code == 1  # the fixture's hostile TAR stays as it was
    expected = manifest(project)["experiments"][name]
    with integration.enable():
        e = load_with_mltraq(project, name)
    got = tree_record(os.path.join("mltraq.archivestore", expected["id"]))
    assert got == {"tree": expected["tree"], "hardlinks": expected["hardlinks"]}
    assert str(e.id_experiment) == expected["id"]


@pytest.mark.parametrize("form", [[], ["--form", "mltraq"]], ids=["casstore-form", "mltraq-form"])
def test_mltraq_loads_the_runs_of_a_migrated_experiment(project, form):
    migrate(project, *form)
    with integration.enable():
        e = load_with_mltraq(project, "alpha")
    assert sorted(e.runs.df()["i"]) == [1, 2]
    targets = {run.fields.model.get_target() for run in e.runs.values()}
    assert targets == {os.path.join("mltraq.archivestore", manifest(project)["experiments"]["alpha"]["id"])}


def mltraq_rows(root: Path) -> dict[str, list]:
    """Every row of every MLtraq table (all but casstore's own)."""
    with sqlite3.connect(root / "mltraq.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall()
                for t in tables if t == "experiments" or t.startswith("experiment_")}


def archive_urls(value) -> list[str]:
    if isinstance(value, dict):
        if value.get("DATAPAK-0") == "mltraq.ArchiveStore-0":
            return [value["value"]]
        return [u for v in value.values() for u in archive_urls(v)]
    return []


def test_mltraq_form_leaves_every_mltraq_row_byte_for_byte(project):
    before = mltraq_rows(project)
    migrate(project, "--form", "mltraq")
    assert mltraq_rows(project) == before and len(before) == 5


@pytest.mark.parametrize("name", LOADABLE)
def test_mltraq_form_replaces_each_legacy_tar_by_a_named_reference(project, name):
    from casstore.cas.live.refs import parse_named_ref

    migrate(project, "--form", "mltraq")
    with sqlite3.connect(project / "mltraq.db") as conn:
        fields = conn.execute("SELECT fields FROM experiments WHERE name = ?", (name,)).fetchone()[0]
    urls = archive_urls(datapak.safe_unpickle(fields))
    assert urls
    for url in urls:
        rel = url[len("file:///"):]
        assert parse_named_ref(rel, (project / "datastore" / rel).read_bytes()) is not None


def test_mltraq_form_run_again_changes_nothing(project):
    migrate(project, "--form", "mltraq")
    digest = db_digest(project)
    report = json.loads(run_cli("migrate", "--form", "mltraq", "--json", "--db", f"sqlite:///{project / 'mltraq.db'}",
                                "--datastore", str(project / "datastore"), code=1).stdout)
    assert report["references_migrated"] == 0 and report["references_already"] == 9
    assert db_digest(project) == digest


def test_mltraq_form_then_verify_deep_finds_no_damage(project):
    migrate(project, "--form", "mltraq")
    report = json.loads(run_cli("verify", "--deep", "--json", "--db", f"sqlite:///{project / 'mltraq.db'}",
                                "--datastore", str(project / "datastore")).stdout)
    assert report["problems"] == []


def test_migrate_says_mltraq_needs_the_integration(project):
    assert "casstore.mltraq.enable()" in migrate(project).stderr


def test_mltraq_without_the_integration_cannot_load_the_casstore_form(project):
    from mltraq.storage.serializers.datapak import UnsupportedObjectType

    migrate(project)
    with pytest.raises(UnsupportedObjectType, match="casstore.ArchiveStore-0"):
        load_with_mltraq(project, "alpha")


def test_mltraq_without_the_integration_reads_the_mltraq_form_reference_as_a_broken_tar(project):
    migrate(project, "--form", "mltraq")
    with pytest.raises(tarfile.ReadError):
        load_with_mltraq(project, "alpha")


def test_fields_of_the_mltraq_form_keep_mltraq_tag(project):
    migrate(project, "--form", "mltraq")
    with sqlite3.connect(project / "mltraq.db") as conn:
        fields = conn.execute("SELECT fields FROM experiments WHERE name = 'beta'").fetchone()[0]
    assert datapak.safe_unpickle(fields)["value"]["data"]["DATAPAK-0"] == "mltraq.ArchiveStore-0"
