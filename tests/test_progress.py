"""Progress on long work: the library's callback (casstore.cas.progress) for persist, load
and gc, and the CLI's bar (casstore/cli/progress.py), drawn on a terminal only, never on a
pipe or with --json."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from helpers import DB, make_folder
from helpers import run_cli as run

from casstore import ArchiveStore, create_session
from casstore.cas.progress import Meter, Step
from casstore.cli.progress import WIDTH, Bar

FILES = {"a.bin": os.urandom(300_000), "sub/b.bin": os.urandom(700_000), "c.txt": b"small"}
FILE_BYTES = sum(len(v) for v in FILES.values())


def _persisted(name: str = "big", folder: str = "big"):
    make_folder(folder, FILES)
    session = create_session(DB)
    steps: list[Step] = []
    experiment = session.create_experiment(name, data=ArchiveStore(folder)).persist(progress=steps.append)
    return session, experiment, steps


def test_a_meter_adds_up_what_it_is_told_and_reports_the_total():
    steps: list[Step] = []
    m = Meter(steps.append, "persist", "data", every_ns=0)
    m.expect(10)
    m(4)
    m(6)
    m.finish()
    assert [(s.done, s.total) for s in steps] == [(0, 10), (4, 10), (10, 10), (10, 10)]
    assert steps[-1].fraction == 1.0


def test_a_meter_reports_at_most_at_its_rate_but_always_the_last_step():
    steps: list[Step] = []
    m = Meter(steps.append, "load", every_ns=10**12)
    m(1)  # the first call reports (nothing was reported yet)
    for _ in range(1000):
        m(1)
    m.finish()
    assert len(steps) == 2 and steps[-1].done == 1001


def test_persist_reports_every_byte_of_the_folder_for_its_field(workdir):
    _, _, steps = _persisted()
    assert steps and {s.task for s in steps} == {"persist"} and {s.item for s in steps} == {"data"}
    assert steps[-1].done == steps[-1].total == FILE_BYTES
    assert [s.done for s in steps] == sorted(s.done for s in steps)


def test_a_repeat_persist_of_an_unchanged_folder_reports_it_done(workdir):
    session, _, _ = _persisted()
    steps: list[Step] = []
    session.create_experiment("again", data=ArchiveStore("big")).persist(progress=steps.append)
    assert steps[-1].done == steps[-1].total == FILE_BYTES


def test_load_reports_the_blobs_bytes_as_it_extracts_them(workdir):
    session, experiment, _ = _persisted()
    steps: list[Step] = []
    loaded = session.load_experiment("big", progress=steps.append)
    size = loaded.fields.data.size
    assert size > FILE_BYTES and {(s.task, s.item) for s in steps} == {("load", "data")}
    assert steps[-1].done == steps[-1].total == size


def test_gc_reports_the_bytes_it_deletes(workdir):
    session, experiment, _ = _persisted()
    experiment.delete()
    steps: list[Step] = []
    report = session.gc(grace_s=0, progress=steps.append)
    assert report.freed_bytes > 0 and steps[-1].task == "gc"
    assert steps[-1].done == steps[-1].total == sum(d.bytes for d in report.deleted if d.kind != "orphaned_ref")


def test_a_bar_line_shows_percent_bytes_rate_and_time_left_within_the_width():
    line = Bar("persist").line(Step("persist", "data", 512 << 20, 1 << 30), elapsed=4.0)
    assert "50%" in line and "512.0 MiB/1.0 GiB" in line and "128.0 MiB/s" in line and "4s left" in line
    assert len(line) < WIDTH


def test_a_bar_without_a_total_shows_bytes_and_rate():
    line = Bar("gc").line(Step("gc", "blobs", 3 << 20, None), elapsed=1.0)
    assert "3.0 MiB" in line and "3.0 MiB/s" in line and "%" not in line


def test_a_bar_ends_each_items_line_and_redraws_in_place():
    out = io.StringIO()
    bar = Bar("load", out)
    bar(Step("load", "a", 1, 2))
    bar(Step("load", "a", 2, 2))
    bar(Step("load", "b", 1, 1))
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 2 and text.count("\r") == 3


def test_verify_deep_draws_a_bar_on_a_terminal(workdir, monkeypatch):
    _persisted()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("verify", "--deep", "--db", DB)
    assert "re-hashing" in result.stderr and "100%" in result.stderr


def test_no_bar_with_json_even_on_a_terminal(workdir, monkeypatch):
    _persisted()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("verify", "--deep", "--db", DB, "--json")
    assert result.stderr == "" and json.loads(result.stdout)["problems"] == []


def test_no_bar_on_a_pipe(workdir):
    _persisted()
    result = run("verify", "--deep", "--db", DB)
    assert "re-hashing" not in result.stderr and "%" not in result.stderr


def test_gc_draws_a_bar_on_a_terminal(workdir, monkeypatch):
    _, experiment, _ = _persisted()
    experiment.delete()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("gc", "--grace", "0", "--db", DB)
    assert "gc blobs" in result.stderr and "100%" in result.stderr


def test_casstore_progress_0_turns_the_bar_off(workdir, monkeypatch):
    _persisted()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("verify", "--deep", "--db", DB, env={"CASSTORE_PROGRESS": "0"})
    assert "re-hashing" not in result.stderr


def test_a_real_terminal_gets_the_bar_and_stdout_stays_clean(workdir):
    """The command in a subprocess whose stderr is a pseudo-terminal, stdout a pipe."""
    _persisted()
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "casstore.cli", "verify", "--deep", "--db", DB],
                              stdout=subprocess.PIPE, stderr=slave, timeout=120, cwd=Path.cwd())
        os.close(slave)
        drawn = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            drawn += data
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"re-hashing" in drawn and b"\r" in drawn
    assert b"re-hashing" not in proc.stdout and b"\r" not in proc.stdout


def test_migrate_draws_a_bar_counting_experiments_on_a_terminal(tmp_path, workdir, monkeypatch):
    import shutil

    root = tmp_path / "legacy"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy", root, symlinks=True)
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("migrate", "--db", f"sqlite:///{root / 'mltraq.db'}", "--datastore", str(root / "datastore"),
                 code=1)  # the fixture holds one reference that cannot be migrated
    assert "migrating" in result.stderr and "4/4 experiments" in result.stderr and "100%" in result.stderr


def test_cat_draws_a_bar_on_stderr_and_writes_only_the_tar_on_stdout(workdir, monkeypatch):
    _, experiment, _ = _persisted()
    blob = experiment.fields.data.blob_id
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("cat", blob, "--db", DB)
    assert f"cat {blob.partition(':')[2][:8]}" in result.stderr and "100%" in result.stderr
    assert len(result.stdout_bytes) == experiment.fields.data.size


def test_extract_draws_a_bar_per_field_on_a_terminal(workdir, monkeypatch):
    _persisted()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("extract", "big", "--target", "out", "--db", DB)
    assert "extract data" in result.stderr and "100%" in result.stderr
    assert (Path("out") / "sub" / "b.bin").read_bytes() == FILES["sub/b.bin"]


def test_export_draws_a_bar_on_a_terminal(workdir, monkeypatch):
    _, experiment, _ = _persisted()
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    result = run("export", experiment.fields.data.blob_id, "big.tar", "--db", DB)
    assert "export" in result.stderr and "100%" in result.stderr
    assert Path("big.tar").stat().st_size == experiment.fields.data.size
