"""Nothing silent: what gc's grace period keeps, what stats counts on disk and reclaimable,
index rows whose experiment is gone, and commands suggested by messages that run as written."""

from __future__ import annotations

import json
import shlex
import time

from helpers import DB, run_cli, verify_json

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
