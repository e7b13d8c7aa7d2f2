"""Every `--json` document is one object whose first key, "schema", names a stable shape
(docs/cli.md "JSON schemas"): one test per shape, checking the key and the fields."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import run_cli as run

from casstore import create_session, options
from casstore.cli.output import SCHEMAS
from casstore.storage.archivestore import ArchiveStore

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


@pytest.fixture
def project(workdir: Path) -> list[str]:
    """runs.db with experiments `baseline` and `rerun`, sharing one archive."""
    (workdir / "data").mkdir()
    (workdir / "data" / "a.txt").write_bytes(os.urandom(2000))
    with options().ctx({"datastore.url": "file:///" + str(workdir / "store")}):
        session = create_session("sqlite:///runs.db")
        for name in ("baseline", "rerun"):
            session.create_experiment(name, data=ArchiveStore(src_dir="data", arc_dir="data")).persist()
        session.index.dispose()
    return ["--db", "sqlite:///runs.db", "--datastore", str(workdir / "store")]


def document(*words: str, code: int = 0) -> dict:
    text = run(*words, "--json", code=code).stdout
    found = json.loads(text)
    assert list(found)[0] == "schema"
    return found


def blob(project: list[str]) -> str:
    return document("ls", "--refs", *project)["refs"][0]["blob"]


def test_every_schema_is_documented():
    docs = DOCS.read_text()
    assert all(f"`casstore.{name}/{version}`" in docs for name, version in SCHEMAS.items())


def test_ls(project):
    found = document("ls", *project)
    assert found["schema"] == "casstore.ls/2"
    assert set(found) == {"schema", "experiments"}
    assert set(found["experiments"][0]) == {"experiment", "short_id", "name", "when", "archives", "logical_bytes",
                                            "exclusive_bytes"}


def test_ls_refs(project):
    found = document("ls", "--refs", *project)
    assert found["schema"] == "casstore.ls-refs/1"
    assert set(found["refs"][0]) == {"experiment", "name", "field", "blob", "size"}


def test_show(project):
    found = document("show", "baseline", *project)
    assert found["schema"] == "casstore.show/1"
    assert set(found) == {"schema", "experiment", "name", "when", "fields", "archives"}
    assert set(found["fields"][0]) == {"field", "type", "value"}
    assert set(found["archives"][0]) == {"field", "blob", "size", "stored_size", "codec"}


def test_rm(project):
    found = document("rm", "rerun", "--dry-run", *project)
    assert found["schema"] == "casstore.rm/1"
    assert set(found) == {"schema", "dry_run", "experiments"}
    assert set(found["experiments"][0]) == {"experiment", "name", "archives", "folder"}


def test_du(project):
    found = document("du", *project)
    assert found["schema"] == "casstore.du/1"
    assert set(found) == {"schema", "datastore", "stored_bytes", "experiments"}
    assert set(found["experiments"][0]) == {"experiment", "name", "archives", "logical_bytes", "stored_bytes",
                                            "shared_bytes", "exclusive_bytes", "missing_blobs"}


def test_stats(project):
    found = document("stats", *project)
    assert found["schema"] == "casstore.stats/1"
    assert {"blobs", "references", "logical_bytes", "stored_bytes", "dedup_ratio", "on_disk_bytes",
            "reclaimable_bytes", "datastore"} <= set(found)


def test_verify(project):
    found = document("verify", *project)
    assert found["schema"] == "casstore.verify/1"
    assert set(found) == {"schema", "problems", "reclaimable"}


def test_gc(project):
    found = document("gc", "--dry-run", *project)
    assert found["schema"] == "casstore.gc/1"
    assert set(found) == {"schema", "deleted", "freed_bytes", "kept", "grace"}


def test_extract(project):
    found = document("extract", "baseline", "--target", "out", *project)
    assert found["schema"] == "casstore.extract/1"
    assert set(found) == {"schema", "experiment", "name", "blob", "target", "fields", "failed"}


def test_export(project):
    found = document("export", blob(project), "out.tar", *project)
    assert found["schema"] == "casstore.export/1"
    assert set(found) == {"schema", "blob", "path", "bytes", "codec"}


def test_format(project):
    found = document("format", *project)
    assert found["schema"] == "casstore.format/1"
    assert {"format", "whole", "chunked", "datastore"} <= set(found)


def test_registry(project):
    found = document("registry", *project)
    assert found["schema"] == "casstore.registry/1"
    assert set(found) == {"schema", "datastore", "databases", "unreadable", "forgotten"}


def test_registry_trust(project):
    found = document("registry", "--trusted", *project)
    assert found["schema"] == "casstore.registry-trust/1"
    assert {"file", "confirmed"} <= set(found)


def test_relocate(project):
    found = document("relocate", *project)
    assert found["schema"] == "casstore.relocate/1"
    assert set(found) == {"schema", "datastore", "registered", "dropped"}


def test_db_current(project):
    found = document("db", "current", *project)
    assert found["schema"] == "casstore.db-current/1"
    assert set(found) == {"schema", "current", "head", "up_to_date"}


def test_db_upgrade(project):
    found = document("db", "upgrade", *project)
    assert found["schema"] == "casstore.db-upgrade/1"
    assert set(found) == {"schema", "before", "after", "head"}


def test_migrate(tmp_path, workdir):
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root, symlinks=True)
    found = document("migrate", "--dry-run", "--db", f"sqlite:///{root / 'mltraq.db'}",
                     "--datastore", str(root / "datastore"), code=None)
    assert found["schema"] == "casstore.migrate/1"
    assert {"failures", "bytes_saved", "exit_code"} <= set(found)
