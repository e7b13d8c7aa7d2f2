"""Experiments from the command line: ls, show, rm, du, cat and extract by experiment and
field, short ids, and the options every command takes before or after its name."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import click
import pytest
from helpers import run_cli as run

from casstore import create_session, options
from casstore.cli import main
from casstore.storage.archivestore import ArchiveStore


@pytest.fixture
def project(workdir: Path) -> list[str]:
    """runs.db: `baseline` (data) and `rerun` (the same data, and a model of its own); the
    --db and --datastore options that name it."""
    for rel, data in {"data/a.txt": b"hello\n", "data/b.bin": os.urandom(30_000), "model/m.txt": b"m" * 5000}.items():
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / rel).write_bytes(data)
    datastore = workdir / "store"
    with options().ctx({"datastore.url": "file:///" + str(datastore)}):
        session = create_session("sqlite:///runs.db")
        session.create_experiment("baseline", data=ArchiveStore(src_dir="data", arc_dir="data"), lr=0.1).persist()
        session.create_experiment("rerun", data=ArchiveStore(src_dir="data", arc_dir="data"),
                                  model=ArchiveStore(src_dir="model", arc_dir="model")).persist()
        session.index.dispose()
    return ["--db", "sqlite:///runs.db", "--datastore", str(datastore)]


def listing(project: list[str], *names: str) -> list[dict]:
    return json.loads(run("ls", *names, *project, "--json").stdout)["experiments"]


def refs(project: list[str]) -> list[dict]:
    return json.loads(run("ls", "--refs", *project, "--json").stdout)["refs"]


def blob(project: list[str], name: str, field: str) -> str:
    return next(r["blob"] for r in refs(project) if r["name"] == name and r["field"] == field)


def test_ls_lists_one_row_per_experiment(project):
    lines = run("ls", *project).stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "WHEN", "ARCHIVES", "SIZE", "EXCLUSIVE"]
    assert [line.split()[0] for line in lines[1:]] == ["baseline", "rerun"]


def test_ls_du_and_show_fit_100_columns(project, workdir):
    with options().ctx({"datastore.url": "file:///" + str(workdir / "store")}):
        session = create_session("sqlite:///runs.db")
        session.create_experiment("n" * 80, data=ArchiveStore(src_dir="data", arc_dir="data")).persist()
        session.index.dispose()
    for words in (["ls"], ["ls", "--refs"], ["du"], ["show", "n" * 80]):
        assert max(len(line) for line in run(*words, *project).stdout.splitlines()) <= 100


def test_ls_counts_archives_and_the_bytes_only_an_experiment_holds(project):
    found = {e["name"]: e for e in listing(project)}
    assert found["baseline"]["archives"] == 1 and found["rerun"]["archives"] == 2
    assert found["baseline"]["exclusive_bytes"] == 0  # its one blob is shared with rerun
    assert 0 < found["rerun"]["exclusive_bytes"] < found["rerun"]["logical_bytes"]
    assert found["baseline"]["when"].endswith("Z")


def test_ls_names_filter(project):
    assert [e["name"] for e in listing(project, "rerun")] == ["rerun"]


def test_ls_of_an_unknown_name_is_exit_3(project):
    result = run("ls", "nope", *project, code=3)
    assert result.stderr.startswith("casstore: error:") and len(result.stderr.splitlines()) == 1


def test_ls_refs_lists_one_row_per_reference(project):
    assert sorted((r["name"], r["field"]) for r in refs(project)) == [
        ("baseline", "data"), ("rerun", "data"), ("rerun", "model")]


def test_show_lists_fields_and_archives_with_blob_size_and_codec(project):
    shown = json.loads(run("show", "baseline", *project, "--json").stdout)
    assert {f["field"]: f["value"] for f in shown["fields"]}["lr"] == "0.1"
    assert shown["archives"] == [{"field": "data", "blob": blob(project, "baseline", "data"), "size": shown["archives"][0]["size"],
                                  "stored_size": shown["archives"][0]["stored_size"], "codec": "none"}]
    assert shown["archives"][0]["size"] > 30_000
    text = run("show", "baseline", *project).stdout
    assert blob(project, "baseline", "data") in text and "lr" in text


def test_show_takes_a_short_experiment_id(project):
    short = listing(project, "rerun")[0]["short_id"]
    assert json.loads(run("show", short, *project, "--json").stdout)["name"] == "rerun"


def test_rm_dry_run_deletes_nothing(project):
    result = json.loads(run("rm", "rerun", "--dry-run", *project, "--json").stdout)
    assert [e["name"] for e in result["experiments"]] == ["rerun"] and result["dry_run"] is True
    assert [e["name"] for e in listing(project)] == ["baseline", "rerun"]


def test_rm_yes_deletes_rows_references_and_the_extracted_folder(project, workdir):
    rerun = listing(project, "rerun")[0]["experiment"]
    run("extract", "rerun", *project)
    folder = workdir / "mltraq.archivestore" / rerun
    assert folder.is_dir()
    run("rm", "rerun", "--yes", *project)
    assert [e["name"] for e in listing(project)] == ["baseline"]
    assert {r["name"] for r in refs(project)} == {"baseline"}
    assert not folder.exists()


def test_rm_of_an_unknown_name_deletes_none_of_the_others(project):
    run("rm", "rerun", "nope", "--yes", *project, code=3)
    assert [e["name"] for e in listing(project)] == ["baseline", "rerun"]


def test_short_ids_are_the_shortest_unique_prefix_of_at_least_8_digits():
    from casstore.cli.ids import short_ids

    known = ["xxh128:" + "ab" * 16, "xxh128:" + "abababab0" + "1" * 23, "xxh128:" + "f" * 32]
    assert short_ids(known, known) == {known[0]: "ababababa", known[1]: "abababab0", known[2]: "ffffffff"}


def test_rm_leaves_the_blobs_to_gc(project):
    model = blob(project, "rerun", "model")
    run("rm", "rerun", "--yes", *project)
    run("cat", model, *project)  # still in the datastore: a blob id the index names no more is still taken whole


def test_rm_without_a_terminal_and_without_yes_refuses_with_exit_2(project):
    result = run("rm", "rerun", *project, code=2)
    assert "--yes" in result.stderr
    assert [e["name"] for e in listing(project)] == ["baseline", "rerun"]


@pytest.mark.parametrize("answer", [True, False])
def test_rm_on_a_terminal_deletes_only_once_confirmed(project, monkeypatch, answer):
    monkeypatch.setattr("casstore.cli.output.stdin_is_terminal", lambda: True)
    asked = []
    monkeypatch.setattr(click, "confirm", lambda text, **k: asked.append(text) or answer)
    result = run("rm", "rerun", *project, code=0 if answer else 2)
    assert "rerun" in asked[0]
    assert [e["name"] for e in listing(project)] == (["baseline"] if answer else ["baseline", "rerun"])
    assert answer or "nothing deleted" in result.stderr


def test_du_counts_shared_and_exclusive_bytes(project):
    found = {e["name"]: e for e in json.loads(run("du", *project, "--json").stdout)["experiments"]}
    assert found["baseline"]["shared_bytes"] == found["baseline"]["stored_bytes"] > 0
    assert found["rerun"]["shared_bytes"] == found["baseline"]["stored_bytes"]
    assert found["rerun"]["exclusive_bytes"] == found["rerun"]["stored_bytes"] - found["rerun"]["shared_bytes"] > 0


def test_cat_takes_an_experiment_and_a_field(project):
    out = run("cat", "rerun", "model", *project).stdout_bytes
    assert tarfile.open(fileobj=io.BytesIO(out)).getnames() == ["model/m.txt"]


def test_cat_of_a_field_the_experiment_lacks_is_exit_3(project):
    assert "archive fields: data" in run("cat", "baseline", "model", *project, code=3).stderr


def test_cat_takes_a_short_blob_id(project):
    full = blob(project, "rerun", "model")
    out = run("cat", full.split(":")[1][:8], *project).stdout_bytes
    assert tarfile.open(fileobj=io.BytesIO(out)).getnames() == ["model/m.txt"]


def test_a_short_id_under_8_digits_is_exit_3(project):
    full = blob(project, "rerun", "model")
    assert run("cat", full.split(":")[1][:7], *project, code=3).stderr.startswith("casstore: error: not a blob id")


def test_an_unknown_short_id_is_exit_3(project):
    assert "no blob" in run("cat", "0123456789abcdef", *project, code=3).stderr


def test_an_ambiguous_short_id_is_exit_3(project):
    from sqlalchemy import insert

    from casstore.cas.index.models import BlobRow
    from casstore.cas.index.queries import Index

    full = blob(project, "rerun", "model")
    twin = full[:-1] + ("0" if full[-1] != "0" else "1")
    index = Index.open("sqlite:///runs.db")
    with index.engine.begin() as conn:
        conn.execute(insert(BlobRow).values(blob_id=twin, size=1, stored_size=1, codec="none", created=0.0))
    index.dispose()
    assert "ambiguous" in run("cat", full.split(":")[1][:8], *project, code=3).stderr


def test_export_takes_a_short_blob_id(project, workdir):
    full = blob(project, "baseline", "data")
    run("export", "xxh128:" + full.split(":")[1][:10], "out.tar", *project)
    assert "data/a.txt" in tarfile.open(workdir / "out.tar").getnames()


def test_extract_takes_a_blob_id_and_a_target(project, workdir):
    run("extract", blob(project, "rerun", "model"), "--target", "out", *project)
    assert (workdir / "out" / "model" / "m.txt").read_bytes() == b"m" * 5000


def test_extract_of_a_blob_without_target_is_a_usage_error(project):
    run("extract", blob(project, "rerun", "model"), *project, code=2)


@pytest.mark.parametrize("where", ["before", "after"])
def test_db_datastore_and_json_work_before_or_after_the_command(project, where):
    words = [*project, "--json", "stats"] if where == "before" else ["stats", *project, "--json"]
    assert json.loads(run(*words).stdout)["schema"] == "casstore.stats/1"


def test_a_missing_db_names_casstore_db(workdir):
    assert "CASSTORE_DB" in run("stats", code=2, env={"CASSTORE_DB": None}).stderr


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("words", [()] + list(_commands(main)), ids=lambda w: " ".join(w) or "casstore")
def test_every_commands_help_has_an_example(words):
    text = run(*words, "--help").stdout
    assert "Examples:" in text
    assert f"casstore {words[0]}" in text if words else "casstore " in text
