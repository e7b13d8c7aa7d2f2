"""Every command a message suggests runs as written: it names the database (and the
datastore) the user works on, quoted for a shell; here each is taken from the message and run."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import DB, make_folder, run_cli

from casstore import ArchiveStore, create_session
from casstore.cas.index.engine import cli_command
from casstore.cas.live.registry import REGISTRY_FORMAT, entry_key
from casstore.opts import options

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
TINY = {"whole_below": 1024, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
        "cdc_max": 16384}


def suggested(text: str) -> list[str]:
    """The arguments of the first `casstore ...` command quoted in backticks in `text`, or of
    the one after 'check with: ' / ': casstore' at a line's end."""
    found = re.search(r"`(casstore [^`]*)`", text) or re.search(r"(?:: )(casstore .*)$", text, re.MULTILINE)
    assert found, text
    words = shlex.split(found.group(1))
    assert words[0] == "casstore"
    return words[1:]


def test_a_suggested_command_quotes_what_a_shell_would_split_and_masks_a_password():
    line = cli_command("sqlite:///my runs.db", "gc", datastore="/data/my store")
    assert shlex.split(line) == ["casstore", "gc", "--db", "sqlite:///my runs.db", "--datastore", "/data/my store"]
    assert "s3cret" not in cli_command("postgresql://me:s3cret@db/x", "verify")


def test_migrate_ends_with_a_verify_of_the_migrated_project_that_runs_as_written(tmp_path, workdir):
    root = tmp_path / "legacy project"  # a space, which the command must quote
    shutil.copytree(FIXTURE, root, symlinks=True)
    out = run_cli("migrate", "--db", f"sqlite:///{root / 'mltraq.db'}", "--datastore", str(root / "datastore"),
                  code=1).stdout  # the fixture holds one reference that cannot be migrated
    check = next(line for line in out.splitlines() if line.startswith("check with: "))
    assert "URL" not in check
    result = run_cli(*suggested(check))
    assert "0 problem(s)" in result.stdout


@pytest.fixture
def project(workdir):
    session = create_session(DB)
    make_folder("a", {"f.txt": b"kept" * 1000})
    session.create_experiment("a", data=ArchiveStore("a")).persist()
    yield session
    session.index.dispose()


def _blob(session) -> str:
    return session.index.refs_of(session.index.get_experiment("a").id_experiment)[0].blob_id


def test_verify_on_a_blob_in_the_trash_of_an_interrupted_gc_suggests_a_gc_that_restores_it(project):
    blobs = project.content_store().blobs
    assert blobs.move_to_trash(blobs.find(_blob(project))) is not None
    problem = json.loads(run_cli("verify", "--db", DB, "--json", code=1).stdout)["problems"][0]
    run_cli(*suggested(problem["detail"]))
    assert json.loads(run_cli("verify", "--db", DB, "--json").stdout)["problems"] == []


def test_stats_on_a_missing_blob_suggests_a_verify_that_runs_and_reports_it(project):
    project.content_store().blobs.delete_blob(_blob(project), "none")
    warning = run_cli("stats", "--db", DB).stderr
    result = run_cli(*suggested(warning), "--json", code=1)
    assert [p["kind"] for p in json.loads(result.stdout)["problems"]] == ["missing"]


def test_setting_whole_while_blobs_are_chunked_suggests_the_conversion_that_runs_as_written(workdir):
    options().set("datastore.chunks", TINY)
    session = create_session(DB)
    make_folder("a", {"f.bin": bytes(range(256)) * 400})
    session.create_experiment("a", data=ArchiveStore("a")).persist()
    run_cli("format", "chunked", "--db", DB)
    refusal = run_cli("format", "whole", "--db", DB, code=3).stderr
    run_cli(*suggested(refusal))
    assert json.loads(run_cli("format", "--db", DB, "--json").stdout)["format"] == "whole"


def test_db_current_on_an_outdated_database_suggests_the_upgrade_that_runs_as_written(project):
    with sqlite3.connect("p.db") as conn:
        conn.execute("UPDATE casstore_alembic_version SET version_num = '0001'")
    out = run_cli("db", "current", "--db", DB).stdout
    run_cli(*suggested(out))
    assert "up to date" in run_cli("db", "current", "--db", DB).stdout


def _plant(url: str) -> str:
    key = entry_key(url)
    body = {"format": REGISTRY_FORMAT, "project": "6c0b9c53-8f39-4c1e-9f3c-3b2d8a3b1f00", "url": url, "registered": 1.0}
    Path("mltraq.datastore/casstore/registry", f"{key}.json").write_text(json.dumps(body))
    return key


def test_gc_refusing_on_a_registered_database_that_is_gone_suggests_the_forget_that_runs_as_written(project, workdir):
    _plant(f"sqlite:///{workdir / 'gone.db'}")
    refusal = run_cli("gc", "--db", DB, code=3).stderr
    run_cli(*suggested(refusal))
    run_cli("gc", "--db", DB)


def test_gc_refusing_on_an_unconfirmed_server_suggests_a_trust_that_runs_as_written(project):
    _plant("postgresql+psycopg://team@127.0.0.1:1/runs")
    refusal = run_cli("gc", "--db", DB, "--dry-run", code=3).stderr
    args = suggested(refusal)
    assert args[:2] == ["registry", "--trust"]
    run_cli(*args)
    assert "postgresql+psycopg://team@127.0.0.1:1/runs" in run_cli("registry", "--db", DB, "--trusted").stdout


def test_the_registry_listing_suggests_the_trust_of_an_unconfirmed_server_that_runs_as_written(project):
    key = _plant("postgresql+psycopg://team@127.0.0.1:1/runs")
    out = run_cli("registry", "--db", DB).stdout
    line = next(line for line in out.splitlines() if line.startswith("to confirm "))
    assert suggested(line)[:3] == ["registry", "--trust", key]
    run_cli(*suggested(line))
    assert "to confirm " not in run_cli("registry", "--db", DB).stdout


def test_forgetting_an_unknown_entry_suggests_the_listing_that_runs_as_written(project):
    refusal = run_cli("registry", "--db", DB, "--forget", "0" * 32, code=3).stderr
    assert suggested(refusal) == ["registry", "--db", DB]
    run_cli(*suggested(refusal))
