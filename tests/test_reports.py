"""Nothing silent: what gc's grace period keeps, what stats counts on disk and reclaimable,
index rows whose experiment is gone, and commands suggested by messages that run as written."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from helpers import DB, make_folder, run_cli, verify_json

from casstore import ArchiveStoreIO
from casstore.cas.gc import collect
from casstore.session import field_roots


def _drop_a(project) -> None:
    project.session.load_experiment("a").delete()


def _suggested(text: str, after: str) -> list[str]:
    """The arguments of the command quoted after `after` in `text` (up to the line's end)."""
    line = next(line for line in text.splitlines() if after in line)
    words = shlex.split(line.split(after, 1)[1])
    assert words[0] == "casstore"
    return words[1:]


def test_gc_report_lists_what_the_grace_period_keeps_and_when_it_becomes_reclaimable(project):
    _drop_a(project)
    before = time.time()
    report = collect(project.session.index, project.session.content_store(), field_roots=field_roots,
                     grace_s=3600, dry_run=True)
    assert [h.blob for h in report.held] == [project.kept] and report.deleted == []
    assert report.held_bytes > 0
    assert before + 3500 < report.first_reclaimable <= report.last_reclaimable < time.time() + 3600


def test_gc_with_grace_zero_holds_nothing(project):
    _drop_a(project)
    report = collect(project.session.index, project.session.content_store(), field_roots=field_roots,
                     grace_s=0, dry_run=True)
    assert report.held == [] and [d.blob for d in report.deleted] == [project.kept]


def test_gc_dry_run_says_the_grace_period_keeps_the_reclaimable_bytes_verify_shows(project):
    _drop_a(project)
    out = run_cli("gc", "--db", DB, "--dry-run").stdout
    assert "would delete 0 item(s)" in out
    assert "1 item(s) (" in out and "are kept by the grace period (1.0h) until 20" in out and "(in " in out


def test_the_command_gc_suggests_to_reclaim_now_runs_as_written_and_reclaims(project):
    _drop_a(project)
    out = run_cli("gc", "--db", DB, "--dry-run").stdout
    args = _suggested(out, "to reclaim them now: ")
    assert args == ["gc", "--grace", "0", "--db", DB]
    run_cli(*args)
    assert not project.blob_exists(project.kept) and project.blob_exists(project.other)


def test_the_suggested_gc_names_the_datastore_the_user_gave(project):
    _drop_a(project)
    out = run_cli("gc", "--db", DB, "--datastore", "mltraq.datastore", "--dry-run").stdout
    assert _suggested(out, "to reclaim them now: ")[-2:] == ["--datastore", "mltraq.datastore"]


def test_gc_json_reports_what_the_grace_period_holds(project):
    _drop_a(project)
    report = json.loads(run_cli("gc", "--db", DB, "--dry-run", "--json").stdout)
    grace = report["grace"]
    assert grace["held_items"] == 1 and grace["held_bytes"] > 0 and grace["grace_s"] == 3600
    assert grace["held"][0]["blob"] == project.kept and grace["last_reclaimable"].endswith("Z")
    assert grace["reclaim_now"] == f"casstore gc --grace 0 --db {DB}"


def test_gc_says_nothing_of_the_grace_period_when_it_holds_nothing(project):
    out = run_cli("gc", "--db", DB, "--dry-run").stdout
    assert "grace period" not in out
    assert json.loads(run_cli("gc", "--db", DB, "--json").stdout)["grace"]["reclaim_now"] is None


def _files_bytes(*folders: str) -> int:
    return sum(p.stat().st_size for folder in folders for p in Path("mltraq.datastore", "casstore", folder).rglob("*")
               if p.is_file())


def _stats() -> dict:
    return json.loads(run_cli("stats", "--db", DB, "--json").stdout)


def test_stats_on_disk_bytes_are_every_blob_and_chunk_file_of_the_datastore(project):
    _drop_a(project)  # its blob stays on disk until gc
    found = _stats()
    assert found["on_disk_bytes"] == _files_bytes("blobs", "chunks") > found["stored_bytes"]


def test_stats_reclaimable_bytes_are_those_verify_lists_and_referenced_the_rest(project):
    _drop_a(project)
    found = _stats()
    reclaim = sum(r["bytes"] for r in verify_json(code=0)["reclaimable"])
    assert found["reclaimable_bytes"] == reclaim > 0
    assert found["referenced_bytes"] == found["on_disk_bytes"] - reclaim
    assert found["reclaimable_unknown"] is None


def test_stats_reclaimable_bytes_are_zero_when_everything_is_referenced(project):
    found = _stats()
    assert found["reclaimable_bytes"] == 0 and found["referenced_bytes"] == found["on_disk_bytes"]


def test_stats_counts_the_standalone_archives_verify_checks(project):
    make_folder("solo", {"s.txt": b"standalone"})
    ArchiveStoreIO.create("solo")
    found = _stats()
    assert found["standalone_archives"] == 1
    assert verify_json(code=0)["reclaimable"] == []  # the named reference keeps its blob
    assert "standalone archives" in run_cli("stats", "--db", DB).stdout


def test_stats_text_has_the_on_disk_referenced_and_reclaimable_lines(project):
    _drop_a(project)
    out = run_cli("stats", "--db", DB).stdout
    assert {line.split("  ")[0] for line in out.splitlines()} >= {"on disk", "referenced", "reclaimable"}


def test_stats_says_reclaimable_bytes_are_unknown_when_a_registered_database_cannot_be_read(project):
    Path("mltraq.datastore/casstore/registry", "0" * 32 + ".json").write_bytes(b"")
    result = run_cli("stats", "--db", DB, "--json")
    found = json.loads(result.stdout)
    assert found["reclaimable_bytes"] is None and found["reclaimable_unknown"]
    assert "reclaimable bytes unknown" in result.stderr


def _replace_a_underneath(project) -> None:
    """Another tool replaces experiment a by a new row (a new id, fields that name no
    archive): a's reference rows name an id that has no experiments row any more."""
    project.session.create_experiment("plain", value=1).persist()
    project.sql("DELETE FROM experiments WHERE id_experiment = ?", project.id_a)
    project.sql("UPDATE experiments SET name = 'a' WHERE name = 'plain'")


def test_reference_rows_of_an_experiment_replaced_underneath_are_listed_nowhere_with_a_blank_name(project):
    _replace_a_underneath(project)
    names = [r.name for r in project.session.index.iter_refs()]
    assert names == ["b"]
    assert _stats()["references"] == 1


def test_verify_reports_the_rows_of_an_experiment_replaced_underneath_as_reclaimable(project):
    _replace_a_underneath(project)
    report = verify_json(code=0)
    assert {"kind": "orphaned_ref", "blob": project.kept, "bytes": 0} in report["reclaimable"]


def test_gc_deletes_the_rows_of_an_experiment_replaced_underneath_then_the_blob_they_named(project):
    _replace_a_underneath(project)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert project.rows("SELECT count(*) FROM casstore_refs WHERE id_experiment = ?", project.id_a) == [(0,)]
    assert not project.blob_exists(project.kept) and project.blob_exists(project.other)
    assert verify_json(code=0) == {"problems": [], "reclaimable": []}
