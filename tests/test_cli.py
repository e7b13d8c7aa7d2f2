"""The `casstore` command, run over projects built with the real library.

Most tests drive the click app in-process with CliRunner; a few run the installed console
script and the checkout launcher (`python cli.py`) as subprocesses."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import zstandard
from helpers import run_cli as run

from casstore import create_session, options
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.digest import digest_bytes
from casstore.cas.store.content_store import ContentStore
from casstore.cli import main
from casstore.storage.archivestore import ArchiveStore

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "cli.md"


@dataclass
class Project:
    root: Path
    db: str
    db_path: Path
    datastore: Path
    src: Path

    def session(self):
        with options().ctx({"datastore.url": "file:///" + str(self.datastore)}):
            return create_session(self.db)

    def persist(self, name: str, **folders: str):
        """Persist experiment `name` with one ArchiveStore field per {field: folder}."""
        with options().ctx({"datastore.url": "file:///" + str(self.datastore)}):
            session = create_session(self.db)
            exp = session.create_experiment(name, **{f: ArchiveStore(src_dir=str(d), arc_dir=f)
                                                    for f, d in folders.items()})
            exp.persist()
            session.index.dispose()
            return exp

    def blob_path(self, blob_id: str) -> Path:
        found = LocalBlobStore(str(self.datastore)).find(blob_id)
        assert found is not None
        algo, hexd = blob_id.split(":")
        suffix = ".tar.zst" if found.codec == "zstd" else ".tar"
        return self.datastore / "casstore" / "blobs" / algo / hexd[:2] / f"{hexd[2:]}{suffix}"


def run_json(*args: str, code: int = 0):
    """The command's JSON document, less its schema key (tests/test_cli_schemas.py checks those)."""
    result = run(*args, "--json", code=code)
    document = json.loads(result.stdout)
    assert document.pop("schema").startswith("casstore.")
    return document


def _make_tree(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return path


def _new_project(root: Path, name: str, datastore: Path) -> Project:
    db_path = root / f"{name}.db"
    src = root / f"src-{name}"
    return Project(root, f"sqlite:///{db_path}", db_path, datastore, src)


@pytest.fixture
def project(workdir) -> Project:
    """p.db with two experiments sharing one blob (`data`), one with a second field."""
    proj = _new_project(workdir, "p", workdir / "store")
    data = _make_tree(workdir / "datasets", {"a.txt": b"hello\n", "sub/b.bin": os.urandom(50_000)})
    other = _make_tree(workdir / "other", {"c.txt": b"other content\n" * 100})
    proj.persist("baseline", data=data)
    proj.persist("rerun", data=data, model=other)
    return proj


def args(proj: Project) -> list[str]:
    return ["--db", proj.db, "--datastore", str(proj.datastore)]


def refs(proj: Project) -> list[dict]:
    return run_json("ls", "--refs", *args(proj))["refs"]


def blob_of(proj: Project, name: str, field: str) -> str:
    return next(r["blob"] for r in refs(proj) if r["name"] == name and r["field"] == field)


# -- basics: version, help, docs, launchers ------------------------------------------------

def _leaf_commands(group: click.Group, prefix: str = "casstore"):
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, path)


def test_every_command_has_help_and_a_docs_heading():
    docs = DOCS.read_text()
    headings = [line for line in docs.splitlines() if line.startswith("#")]
    commands = list(_leaf_commands(main))
    assert {p for p, _ in commands} >= {"casstore stats", "casstore ls", "casstore verify", "casstore gc",
                                        "casstore extract", "casstore cat", "casstore registry",
                                        "casstore db", "casstore db upgrade", "casstore db current",
                                        "casstore migrate"}
    for path, command in commands:
        assert (command.help or "").strip(), f"{path} has no help text"
        result = run(*path.split()[1:], "--help")
        assert "Usage:" in result.stdout
        assert any(f"`{path}`" in h for h in headings), f"{path} has no heading `{path}` in docs/cli.md"
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{path} {param.opts} has no help text"
                assert all(opt in docs for opt in param.opts), f"{path} {param.opts} not in docs/cli.md"


def test_version():
    from casstore import __version__

    result = run("--version")
    assert __version__ in result.stdout


def test_console_script_subprocess(project):
    script = Path(sys.executable).parent / "casstore"
    if not script.exists():
        script = Path(shutil.which("casstore") or "casstore")
    result = subprocess.run([str(script), "stats", "--json", "--db", project.db], capture_output=True, text=True,
                            env={**os.environ, "CASSTORE_DATASTORE": str(project.datastore)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["references"] == 3
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "casstore" in version.stdout


def test_checkout_launcher_subprocess():
    result = subprocess.run([sys.executable, "cli.py", "--version"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from casstore import __version__

    assert result.stdout.strip() == f"casstore, version {__version__}"


def test_bad_db_is_one_line_exit_3_subprocess(workdir):
    script = Path(sys.executable).parent / "casstore"
    for bad in ["sqlite:///does-not-exist.db", "not a url", "postgresql+nosuchdriver://x/y"]:
        result = subprocess.run([str(script), "verify", "--db", bad], capture_output=True, text=True, cwd=workdir)
        assert result.returncode == 3, (bad, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("casstore: error: "), result.stderr
    assert not (workdir / "does-not-exist.db").exists()


def test_bad_db_cli_runner(workdir):
    result = run("stats", "--db", "sqlite:///missing.db", code=3)
    assert result.stderr.count("\n") == 1 and "missing.db" in result.stderr
    assert not (workdir / "missing.db").exists()
    (workdir / "junk.db").write_bytes(b"this is not a database" * 100)
    result = run("ls", "--db", "sqlite:///junk.db", code=3)
    assert result.stderr.startswith("casstore: error: ") and result.stderr.count("\n") == 1


def test_missing_db_option_is_usage_error():
    result = run("stats", code=2)
    assert "--db" in result.stderr


def test_db_from_environment(project):
    result = run("stats", "--json", env={"CASSTORE_DB": project.db, "CASSTORE_DATASTORE": str(project.datastore)})
    assert json.loads(result.stdout)["blobs"] == 2


def test_bad_datastore_exit_3(project, workdir):
    result = run("stats", "--db", project.db, "--datastore", str(workdir / "nowhere"), code=3)
    assert "nowhere" in result.stderr and "does not exist" in result.stderr
    (workdir / "plain").mkdir()
    result = run("verify", "--db", project.db, "--datastore", str(workdir / "plain"), code=3)
    assert "not a casstore datastore" in result.stderr


def test_recorded_datastore_is_the_default(project, workdir):
    other = workdir / "elsewhere"
    other.mkdir()
    os.chdir(other)  # the recorded datastore is absolute: any folder works
    assert run_json("stats", "--db", project.db)["references"] == 3


def test_grace_usage_error(project):
    result = run("gc", *args(project), "--grace", "soon", code=2)
    assert "duration" in result.stderr


# -- stats and ls --------------------------------------------------------------------------

def test_stats_json(project):
    doc = run_json("stats", *args(project))
    rows = refs(project)
    assert doc["references"] == 3 == len(rows)
    assert doc["blobs"] == 2
    assert doc["logical_bytes"] == sum(r["size"] for r in rows)
    store = LocalBlobStore(str(project.datastore))
    distinct = {r["blob"] for r in rows}
    assert doc["stored_bytes"] == sum(store.find(b).stored_size for b in distinct)
    assert doc["dedup_ratio"] == pytest.approx(doc["logical_bytes"] / doc["stored_bytes"])
    assert doc["dedup_ratio"] > 1  # `data` is stored once, referenced twice


def test_stats_text_and_empty_project(project, workdir):
    text = run("stats", *args(project)).stdout
    assert re.search(r"^dedup ratio\s+\d+\.\d\d$", text, re.M)
    empty = _new_project(workdir, "empty", project.datastore)
    create_session(empty.db).index.dispose()
    doc = run_json("stats", *args(empty))
    assert doc["blobs"] == 0 and doc["stored_bytes"] == 0 and doc["dedup_ratio"] == 1.0


def test_stats_reads_stored_bytes_from_the_datastore(project):
    blob = blob_of(project, "rerun", "model")
    project.blob_path(blob).unlink()
    result = run("stats", *args(project), "--json")
    doc = json.loads(result.stdout)
    assert doc["missing_blobs"] == 1 and "missing" in result.stderr
    assert doc["stored_bytes"] == LocalBlobStore(str(project.datastore)).find(blob_of(project, "baseline", "data")).stored_size


def test_ls(project):
    rows = refs(project)
    assert all(set(r) == {"experiment", "name", "field", "blob", "size"} for r in rows)
    assert [(r["name"], r["field"]) for r in rows] == [("baseline", "data"), ("rerun", "data"), ("rerun", "model")]
    assert rows[0]["blob"] == rows[1]["blob"] != rows[2]["blob"]
    text = run("ls", "--refs", *args(project)).stdout.splitlines()
    assert text[0].split() == ["NAME", "ID", "FIELD", "BLOB", "SIZE"]
    assert len(text) == 4
    # aligned: every (short) blob id starts in the same column
    assert len({line.index(rows[i]["blob"].split(":")[1][:8]) for i, line in enumerate(text[1:])}) == 1


# -- verify, with real damage -----------------------------------------------------------------

def test_verify_clean(project):
    assert run_json("verify", *args(project), "--deep") == {"problems": [], "reclaimable": []}
    assert "0 problem(s)" in run("verify", *args(project)).stdout


def _writable(path: Path) -> None:
    path.chmod(0o644)


def test_verify_deep_finds_a_flipped_byte(project):
    blob = blob_of(project, "baseline", "data")
    path = project.blob_path(blob)
    _writable(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside b.bin's bytes: same size, other digest
    path.write_bytes(bytes(data))
    assert run_json("verify", *args(project))["problems"] == []  # shallow: size still right
    doc = run_json("verify", *args(project), "--deep", code=1)
    assert [(p["kind"], p["blob"]) for p in doc["problems"]] == [("digest", blob)]
    assert set(doc["problems"][0]) == {"kind", "blob", "experiment", "field", "detail"}
    result = run("verify", *args(project), "--deep", code=1)
    assert "digest" in result.stdout


def test_verify_finds_a_truncated_blob(project):
    blob = blob_of(project, "rerun", "model")
    path = project.blob_path(blob)
    _writable(path)
    os.truncate(path, path.stat().st_size - 700)
    doc = run_json("verify", *args(project), code=1)
    assert [(p["kind"], p["blob"], p["field"]) for p in doc["problems"]] == [("size", blob, "model")]


def test_verify_finds_a_deleted_blob(project):
    blob = blob_of(project, "baseline", "data")
    project.blob_path(blob).unlink()
    doc = run_json("verify", *args(project), code=1)
    assert [(p["kind"], p["blob"]) for p in doc["problems"]] == [("missing", blob)]
    assert "missing" in run("verify", *args(project), code=1).stdout


def test_verify_finds_a_deleted_index_row(project):
    blob = blob_of(project, "rerun", "model")
    with sqlite3.connect(project.db_path) as conn:  # foreign keys off: as a careless hand would
        conn.execute("DELETE FROM casstore_blobs WHERE blob_id = ?", (blob,))
    doc = run_json("verify", *args(project), code=1)
    assert [p["blob"] for p in doc["problems"]] == [blob]
    assert doc["problems"][0]["kind"] in ("facts", "missing"), doc


def test_verify_reports_a_leftover_temp_file_as_reclaimable(project):
    tmp = project.datastore / "casstore" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "x.partial").write_bytes(b"\0" * 1234)
    doc = run_json("verify", *args(project), code=0)
    assert doc["problems"] == []
    assert doc["reclaimable"] == [{"kind": "leftover", "path": "casstore/tmp/x.partial", "bytes": 1234}]
    assert "leftover" in run("verify", *args(project)).stdout


# -- gc ----------------------------------------------------------------------------------------

def _unreferenced_blob(project: Project) -> str:
    """Persist an experiment with a unique folder, then delete the experiment."""
    folder = _make_tree(project.root / "doomed", {"gone.txt": b"soon unreferenced\n" * 50})
    exp = project.persist("doomed", data=folder)
    blob = exp.fields.data.blob_id
    with options().ctx({"datastore.url": "file:///" + str(project.datastore)}):
        session = create_session(project.db)
        session.delete_experiment(exp)
        session.index.dispose()
    return blob


def test_gc_dry_run_deletes_nothing(project):
    blob = _unreferenced_blob(project)
    path = project.blob_path(blob)
    doc = run_json("gc", *args(project), "--dry-run", "--grace", "0")
    assert doc.pop("grace")["held"] == []
    assert doc == {"deleted": [{"blob": blob, "bytes": path.stat().st_size}], "freed_bytes": path.stat().st_size, "kept": []}
    assert path.exists()
    text = run("gc", *args(project), "--dry-run", "--grace", "0").stdout
    assert "would free" in text and blob in text
    assert path.exists()


def test_gc_grace_period_keeps_young_blobs(project):
    blob = _unreferenced_blob(project)
    doc = run_json("gc", *args(project))  # default 1h
    assert [h["blob"] for h in doc.pop("grace")["held"]] == [blob]
    assert doc == {"deleted": [], "freed_bytes": 0, "kept": []}
    assert project.blob_path(blob).exists()


def test_gc_grace_0_deletes_an_unreferenced_blob(project):
    blob = _unreferenced_blob(project)
    size = project.blob_path(blob).stat().st_size
    doc = run_json("gc", *args(project), "--grace", "0")
    doc.pop("grace")
    assert doc == {"deleted": [{"blob": blob, "bytes": size}], "freed_bytes": size, "kept": []}
    assert LocalBlobStore(str(project.datastore)).find(blob) is None
    assert run_json("verify", *args(project), "--deep") == {"problems": [], "reclaimable": []}


def test_gc_deletes_leftovers(project):
    tmp = project.datastore / "casstore" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "x.partial").write_bytes(b"\0" * 99)
    old = time.time() - 120
    os.utime(tmp / "x.partial", (old, old))
    doc = run_json("gc", *args(project), "--grace", "0s")
    doc.pop("grace")
    assert doc == {"deleted": [{"path": "casstore/tmp/x.partial", "bytes": 99}], "freed_bytes": 99, "kept": []}
    assert not (tmp / "x.partial").exists()


def test_gc_keeps_a_temp_file_younger_than_a_minute_even_with_grace_zero(project):
    tmp = project.datastore / "casstore" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "y.partial").write_bytes(b"\0" * 9)
    doc = run_json("gc", *args(project), "--grace", "0")
    assert [h["path"] for h in doc.pop("grace")["held"]] == ["casstore/tmp/y.partial"]
    assert doc == {"deleted": [], "freed_bytes": 0, "kept": []}
    assert (tmp / "y.partial").exists()


def test_gc_never_deletes_another_projects_blobs(project, workdir):
    other = _new_project(workdir, "q", project.datastore)
    folder = _make_tree(workdir / "q-data", {"only-q.txt": b"q's own\n" * 30})
    exp = other.persist("q-exp", data=folder)
    q_blob = exp.fields.data.blob_id
    mine = _unreferenced_blob(project)
    # From p: q's blob is not referenced by p, but q is registered in the datastore.
    doc = run_json("gc", *args(project), "--grace", "0")
    assert [d["blob"] for d in doc["deleted"]] == [mine]
    assert LocalBlobStore(str(project.datastore)).find(q_blob) is not None
    assert run_json("verify", *args(other), "--deep")["problems"] == []
    # And from q: p's blobs survive too.
    assert run_json("gc", *args(other), "--grace", "0")["deleted"] == []
    assert run_json("verify", *args(project), "--deep")["problems"] == []
    urls = [d["url"] for d in run_json("registry", *args(project))["databases"]]
    assert urls == sorted([f"sqlite:///{project.db_path}", f"sqlite:///{other.db_path}"])


def test_gc_refuses_when_a_registered_database_is_gone_then_forget(project, workdir):
    other = _new_project(workdir, "q", project.datastore)
    exp = other.persist("q-exp", data=_make_tree(workdir / "q-data", {"q.txt": b"q\n"}))
    q_blob = exp.fields.data.blob_id
    mine = _unreferenced_blob(project)
    other.db_path.unlink()
    result = run("gc", *args(project), "--grace", "0", code=3)
    assert str(other.db_path) in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    store = LocalBlobStore(str(project.datastore))
    assert store.find(q_blob) is not None and store.find(mine) is not None  # nothing touched
    listing = run_json("registry", *args(project))["databases"]
    gone = next(d for d in listing if d["url"] == f"sqlite:///{other.db_path}")
    assert (gone["this"], gone["exists"]) == (False, False)
    assert "missing" in run("registry", *args(project)).stdout
    doc = run_json("registry", *args(project), "--forget", f"sqlite:///{other.db_path}")
    assert doc["forgotten"] == [gone["key"]]
    assert [d["url"] for d in doc["databases"]] == [f"sqlite:///{project.db_path}"]
    deleted = {d["blob"] for d in run_json("gc", *args(project), "--grace", "0")["deleted"]}
    assert deleted == {mine, q_blob}


def test_registry_forget_unknown_is_exit_3(project):
    result = run("registry", *args(project), "--forget", "sqlite:////nowhere/x.db", code=3)
    assert "neither the key nor the URL of an entry" in result.stderr


def test_gc_during_a_persist_keeps_the_leased_blob(project, workdir):
    """A write in progress holds a lease from before its blob exists until its index rows
    are committed: gc --grace 0 run in between must not take the blob."""
    folder = _make_tree(workdir / "in-flight", {"new.txt": b"being persisted\n" * 100})
    store = ContentStore(LocalBlobStore(str(project.datastore)))
    with store.lease() as lease:
        info = store.put_dir(str(folder), "data", lease=lease)
        doc = run_json("gc", *args(project), "--grace", "0")
        assert info.blob_id not in {d.get("blob") for d in doc["deleted"]}
        assert store.blobs.find(info.blob_id) is not None
    # Lease released and still unreferenced: now it is reclaimable.
    doc = run_json("gc", *args(project), "--grace", "0")
    assert [d["blob"] for d in doc["deleted"]] == [info.blob_id]


# -- extract and cat ----------------------------------------------------------------------

def test_extract_by_name_into_the_default_place(project, workdir):
    result = run("extract", *args(project), "baseline")
    exp_id = refs(project)[0]["experiment"]
    target = workdir / "mltraq.archivestore" / exp_id
    assert str(target) in result.stdout
    assert (target / "data" / "a.txt").read_bytes() == b"hello\n"
    assert (target / "data" / "sub" / "b.bin").read_bytes() == (workdir / "datasets" / "sub" / "b.bin").read_bytes()


def test_extract_by_id_one_field_with_target(project, workdir):
    rerun_id = next(r["experiment"] for r in refs(project) if r["name"] == "rerun")
    doc = run_json("extract", *args(project), rerun_id, "model", "--target", str(workdir / "out"))
    assert doc == {"experiment": rerun_id, "name": "rerun", "blob": None, "target": str(workdir / "out"),
                   "fields": ["model"], "failed": []}
    assert (workdir / "out" / "model" / "c.txt").exists()
    assert not (workdir / "out" / "data").exists()


def test_extract_unknown_experiment_or_field_is_exit_3(project):
    assert "nope" in run("extract", *args(project), "nope", code=3).stderr
    assert run("extract", *args(project), str(uuid.uuid4()), code=3).stderr.startswith("casstore: error: ")
    result = run("extract", *args(project), "rerun", "nofield", code=3)
    assert "data, model" in result.stderr


def test_extract_damaged_field_exits_1_after_the_others(project, workdir):
    project.blob_path(blob_of(project, "rerun", "data")).unlink()
    result = run("extract", *args(project), "rerun", "--target", str(workdir / "out"), "--json", code=1)
    doc = json.loads(result.stdout)
    assert doc["fields"] == ["model"] and [f["field"] for f in doc["failed"]] == ["data"]
    assert (workdir / "out" / "model" / "c.txt").exists()
    assert result.stderr.startswith("casstore: error: ") and result.stderr.count("\n") == 1


def test_cat_writes_the_canonical_tar(project):
    blob = blob_of(project, "baseline", "data")
    result = run("cat", *args(project), blob)
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as tar:
        assert sorted(tar.getnames()) == ["data/a.txt", "data/sub/b.bin"]
    assert result.stdout_bytes == project.blob_path(blob).read_bytes()  # codec none: the blob itself


def test_cat_zstd_blob_is_decompressed(project, workdir):
    folder = _make_tree(workdir / "z", {"z.txt": b"zzz" * 10_000})
    with options().ctx({"datastore.url": "file:///" + str(project.datastore), "archivestore.codec": "zstd"}):
        session = create_session(project.db)
        exp = session.create_experiment("zipped", data=ArchiveStore(src_dir=str(folder)))
        exp.persist()
        session.index.dispose()
    blob = exp.fields.data.blob_id
    assert project.blob_path(blob).name.endswith(".tar.zst")
    result = run("cat", *args(project), blob)
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as tar:
        assert tar.getnames() == ["z.txt"]


def test_cat_zstd_writes_one_frame_around_the_canonical_tar(project):
    blob = blob_of(project, "baseline", "data")
    framed = run("cat", *args(project), blob, "--zstd=19").stdout_bytes
    assert zstandard.ZstdDecompressor().decompressobj().decompress(framed) == run("cat", *args(project), blob).stdout_bytes


def _corrupted_blob(project) -> str:
    """The blob of baseline's `data`, with one byte in its middle flipped."""
    blob = blob_of(project, "baseline", "data")
    path = project.blob_path(blob)
    _writable(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return blob


def test_cat_corrupt_blob_exits_1(project):
    blob = _corrupted_blob(project)
    result = run("cat", *args(project), blob, code=1)
    assert "corrupt" in result.stderr and result.stderr.count("\n") == 1


def test_cat_unknown_or_invalid_blob_is_exit_3(project):
    assert run("cat", *args(project), "xxh128:" + "0" * 32, code=3).stderr.startswith("casstore: error: ")
    assert "not a blob id" in run("cat", *args(project), "nonsense", code=3).stderr


def test_export_writes_the_canonical_tar_to_a_new_file(project, workdir):
    blob = blob_of(project, "baseline", "data")
    out = workdir / "baseline.tar"
    result = run("export", *args(project), blob, str(out))
    assert out.read_bytes() == run("cat", *args(project), blob).stdout_bytes
    assert digest_bytes(out.read_bytes()) == blob and "exported blob" in result.stdout


def test_export_zstd_writes_one_frame_around_the_canonical_tar(project, workdir):
    blob = blob_of(project, "baseline", "data")
    out = workdir / "baseline.tar.zst"
    report = json.loads(run("export", *args(project), "--json", blob, str(out), "--zstd").stdout)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes()) == project.blob_path(blob).read_bytes()
    assert (report["codec"], report["bytes"]) == ("zstd", out.stat().st_size)


def test_export_never_overwrites_a_file(project, workdir):
    out = workdir / "taken.tar"
    out.write_bytes(b"mine")
    result = run("export", *args(project), blob_of(project, "baseline", "data"), str(out), code=3)
    assert "exists" in result.stderr and out.read_bytes() == b"mine"


def test_export_into_a_folder_that_does_not_exist_is_exit_3(project, workdir):
    result = run("export", *args(project), blob_of(project, "baseline", "data"), str(workdir / "no" / "x.tar"), code=3)
    assert "cannot export into folder" in result.stderr and not (workdir / "no").exists()


def test_export_of_a_corrupt_blob_exits_1_and_leaves_no_file(project, workdir):
    blob = _corrupted_blob(project)
    result = run("export", *args(project), blob, str(workdir / "out.tar"), code=1)
    assert "nothing was written" in result.stderr and result.stderr.count("\n") == 1
    assert sorted(p.name for p in workdir.iterdir() if "out.tar" in p.name or "casstore-export" in p.name) == []


def test_cat_subprocess_pipes_into_tar(project):
    blob = blob_of(project, "baseline", "data")
    script = Path(sys.executable).parent / "casstore"
    result = subprocess.run([str(script), "cat", *args(project), blob], capture_output=True)
    assert result.returncode == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        assert "data/a.txt" in tar.getnames()


# -- registry and db ------------------------------------------------------------------------

def test_registry_lists_this_database(project):
    doc = run_json("registry", *args(project))
    project_id = sqlite3.connect(project.db_path).execute(
        "SELECT value FROM casstore_meta WHERE key = 'project'").fetchone()[0]
    assert doc["databases"] == [{"key": doc["databases"][0]["key"], "url": f"sqlite:///{project.db_path}",
                                 "project": project_id, "this": True, "exists": True, "trusted": None}]
    assert doc["unreadable"] == []
    assert "this database" in run("registry", *args(project)).stdout


def test_db_current_and_upgrade(project, workdir):
    assert run_json("db", "current", "--db", project.db) == {"current": "0002", "head": "0002", "up_to_date": True}
    fresh = workdir / "fresh.db"
    with sqlite3.connect(fresh) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    assert run_json("db", "current", "--db", f"sqlite:///{fresh}")["current"] is None
    result = run("stats", "--db", f"sqlite:///{fresh}", code=3)
    assert "no casstore tables" in result.stderr
    assert run_json("db", "upgrade", "--db", f"sqlite:///{fresh}") == {"before": None, "after": "0002", "head": "0002"}
    assert "already at 0002" in run("db", "upgrade", "--db", f"sqlite:///{fresh}").stdout
    assert run("db", "current", "--db", "sqlite:///nope.db", code=3).stderr.count("\n") == 1
    assert not (workdir / "nope.db").exists()


def test_unversioned_casstore_tables_are_refused_in_one_line(project):
    with sqlite3.connect(project.db_path) as conn:
        conn.execute("DELETE FROM casstore_alembic_version")
    result = run("stats", *args(project), code=3)
    assert "no casstore schema version" in result.stderr and result.stderr.count("\n") == 1
    doc = run_json("db", "current", "--db", project.db)
    assert doc["up_to_date"] is False


def test_schema_newer_than_the_library_is_refused_asking_to_upgrade_casstore(project):
    with sqlite3.connect(project.db_path) as conn:
        conn.execute("UPDATE casstore_alembic_version SET version_num = '9999'")
    for command in (["stats", *args(project)], ["db", "upgrade", "--db", project.db]):
        result = run(*command, code=3)
        assert "upgrade casstore" in result.stderr and result.stderr.count("\n") == 1


def _refused_database(path: Path, kind: str) -> None:
    """A database file the CLI refuses: another application's SQLite file, an MLtraq project
    not yet migrated, or an empty file."""
    if kind == "other-sqlite":
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE unrelated (x INTEGER)")
            conn.executemany("INSERT INTO unrelated VALUES (?)", [(i,) for i in range(100)])
        conn.close()
    elif kind == "mltraq-not-migrated":
        shutil.copyfile(REPO / "tests" / "fixtures" / "legacy" / "mltraq.db", path)
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["other-sqlite", "mltraq-not-migrated", "empty"])
def test_a_refused_database_file_is_left_byte_for_byte_as_it_was(project, workdir, kind):
    """No switch to WAL, no -wal, -shm or -journal file: the schema is read read-only first."""
    folder = workdir / "refused"
    folder.mkdir()
    db = folder / "their.db"
    _refused_database(db, kind)
    before, listing = db.read_bytes(), sorted(os.listdir(folder))
    where = ["--db", f"sqlite:///{db}", "--datastore", str(project.datastore)]
    blob = blob_of(project, "baseline", "data")
    for command in (["stats"], ["ls"], ["verify"], ["verify", "--deep"], ["gc", "--dry-run"], ["gc"], ["cat", blob],
                    ["extract", "baseline", "--target", str(workdir / "target")], ["registry"], ["ls", "--refs"],
                    ["show", "baseline"], ["du"], ["rm", "baseline", "--dry-run"], ["rm", "baseline", "--yes"]):
        result = run(*command, *where, code=3)
        assert result.stderr.startswith("casstore: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert db.read_bytes() == before and sorted(os.listdir(folder)) == listing, command
    assert run_json("db", "current", "--db", f"sqlite:///{db}")["current"] is None
    assert db.read_bytes() == before and sorted(os.listdir(folder)) == listing
    assert not (workdir / "target").exists()


def test_verify_deep_progress_bar_on_a_terminal_only(project, monkeypatch):
    result = run("verify", *args(project), "--deep")
    assert "re-hashing" not in result.stderr  # not a terminal: no bar
    monkeypatch.setattr("casstore.cli.output.stderr_is_terminal", lambda: True)
    assert "re-hashing" in run("verify", *args(project), "--deep").stderr
    result = run("verify", *args(project), "--deep", "--json")
    assert "re-hashing" not in result.stderr  # --json: no bar
    assert json.loads(result.stdout) == {"schema": "casstore.verify/1", "problems": [], "reclaimable": []}


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("tar")), reason="needs bash and tar")
def test_docs_examples_run(tmp_path, command_server):
    """Every ```sh block of docs/cli.md, in order, in a fresh folder, as a reader would paste them.
    Each `casstore` they run is a process of its own, forked from a server that imported casstore
    once (tests/fork_runner.py): 34 commands, ~1.5 s of imports each otherwise."""
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 8
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = command_server.path_env(env)
    env.pop("CASSTORE_DB", None)
    env.pop("CASSTORE_DATASTORE", None)
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "data/train.csv" in result.stdout and '"freed_bytes"' in result.stdout


def test_run_level_references_are_listed_and_extracted(project, workdir):
    from sqlalchemy import insert

    from casstore.cas.index.models import RefRow

    rows = refs(project)
    baseline = next(r for r in rows if r["name"] == "baseline")
    model_blob = blob_of(project, "rerun", "model")
    id_run = uuid.uuid4().hex
    session = project.session()
    with session.index.engine.begin() as conn:
        conn.execute(insert(RefRow).values(id_experiment=uuid.UUID(baseline["experiment"]), id_run=id_run,
                                           field="dataset", blob_id=model_blob, arc_dir="model"))
    session.index.dispose()
    name = f"runs[{id_run}].dataset"
    assert {"experiment": baseline["experiment"], "name": "baseline", "field": name, "blob": model_blob,
            "size": next(r["size"] for r in rows if r["blob"] == model_blob)} in refs(project)
    doc = run_json("extract", *args(project), "baseline", name, "--target", str(workdir / "runs-out"))
    assert doc["fields"] == [name]
    assert (workdir / "runs-out" / "model" / "c.txt").exists()
    assert not (workdir / "runs-out" / "data").exists()
