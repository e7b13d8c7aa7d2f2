"""Small helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner, Result

from casstore import Session
from casstore.cas.backends.layout import blob_key
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cli import main
from casstore.mltraq import datapak


def blob_files(datastore: str | Path = "mltraq.datastore") -> list[Path]:
    """The blob files of a local datastore, sorted."""
    root = Path(datastore) / "casstore" / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def write(path: str | os.PathLike, data: bytes = b"x", mode: int | None = None) -> str | os.PathLike:
    """Write a file (making its folders), optionally chmod it; returns `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def make_src(root, scale: int = 1):
    """A small folder below `root` (a csv, a binary, a nested text file, a symlink, three
    file modes); its path."""
    write(os.path.join(root, "a.csv"), b"col1,col2\n" + b"1,2\n" * 2000 * scale, 0o644)
    write(os.path.join(root, "sub/b.bin"), bytes(range(256)) * 16, 0o600)
    write(os.path.join(root, "sub/deeper/c.txt"), b"c\n", 0o755)
    os.symlink("../a.csv", os.path.join(root, "sub/link"))
    return str(root)


def files_below(path) -> list[str]:
    """The relative paths of the files below `path`, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(dirpath, f), path) for f in files]
    return sorted(out)


def blob_path(ds: LocalBlobStore, blob_id: str, codec: str) -> str:
    """The file of a blob in a local datastore."""
    return os.path.join(ds.root, *blob_key(blob_id, codec).split("/"))


def put(cs: ContentStore, src, arc_dir: str = "data", **kw):
    """`cs.put_dir` under a lease of its own, released at once."""
    with cs.lease() as lease:
        return cs.put_dir(str(src), arc_dir, lease=lease, **kw)


def make_folder(path: str | Path, files: dict[str, bytes]) -> None:
    """Create the files of `files` ('/'-separated relative path -> bytes) below `path`."""
    for rel, data in files.items():
        p = Path(path) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def db_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def file_tree(root: str | Path) -> dict[str, bytes]:
    """Every file below `root`: '/'-separated relative path -> its bytes."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def facts_outside(root: str | os.PathLike, inside: str | os.PathLike) -> dict[str, tuple]:
    """Every path below `root` except `inside` (a folder the test lets change, e.g. the
    project's datastore) with its type, size, mtime and inode (symlinks not followed): a
    snapshot that must not change."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) != os.fspath(inside)]
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def run_cli(*args: str, code: int | None = 0, env: dict | None = None) -> Result:
    """Run the `casstore` command in-process; check its exit code unless `code` is None."""
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    result = CliRunner(**kwargs).invoke(main, list(args), env=env, catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError if the block runs longer than `seconds` (SIGALRM interrupts a
    blocking open() or read(), e.g. of a FIFO): a hang fails the test instead of the suite."""
    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_casstore(*args: str, timeout: float = 60, memory_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run the `casstore` console script in a child process, killed after `timeout` seconds
    (a hang fails the test instead of stalling the suite); `memory_bytes` caps its address
    space (RLIMIT_AS), so that an unbounded read fails at once instead of filling memory."""
    script = Path(sys.executable).parent / "casstore"

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    try:
        return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit_memory if memory_bytes else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"casstore {' '.join(args)} still ran after {timeout} s (a hang)", pytrace=False)

# ---------------------------------------------------------------------------------------
# A project whose database another tool tampers with (test_gc, test_verify, test_index):
# every change goes through `sqlite3` with its foreign keys off, never through casstore.

DB = "sqlite:///p.db"
MISSING = "xxh128:" + "0" * 32  # a well-formed id that no blob has


@dataclass
class Project:
    session: Session
    kept: str  # the blob experiment "a" names in its field `data`
    other: str  # the blob experiment "b" names
    id_a: str

    def sql(self, query: str, *args) -> None:
        with sqlite3.connect("p.db") as conn:
            conn.execute(query, args)

    def rows(self, query: str, *args) -> list[tuple]:
        with sqlite3.connect("p.db") as conn:
            return conn.execute(query, args).fetchall()

    def blob_exists(self, blob_id: str) -> bool:
        return self.session.content_store().blobs.find(blob_id) is not None

    def loads_a(self) -> bytes:
        loaded = self.session.load_experiment("a")
        return (Path(loaded.fields.data.get_target()) / "f.txt").read_bytes()


def row_deleted(p: Project) -> str | None:
    p.sql("DELETE FROM casstore_refs WHERE id_experiment = ?", p.id_a)
    return None


def _row_names_another_blob(p: Project) -> str | None:
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE id_experiment = ?", p.other, p.id_a)
    return p.other


def _row_names_a_missing_blob(p: Project) -> str | None:
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE id_experiment = ?", MISSING, p.id_a)
    return MISSING


def _facts_row_changed(p: Project) -> str | None:
    p.sql("UPDATE casstore_blobs SET blob_id = ? WHERE blob_id = ?", MISSING, p.kept)
    p.sql("UPDATE casstore_refs SET blob_id = ? WHERE blob_id = ?", MISSING, p.kept)
    return MISSING


# Each makes the reference row of a.data disagree with the fields; returns what the row names.
TAMPERING = {"row_deleted": row_deleted, "row_names_another_blob": _row_names_another_blob,
             "row_names_a_missing_blob": _row_names_a_missing_blob, "facts_row_changed": _facts_row_changed}


def verify_json(*extra: str, code: int) -> dict:
    """The JSON report of `casstore verify` on the project `DB`, its exit code checked, less
    its schema key (tests/test_cli_schemas.py checks it)."""
    report = json.loads(run_cli("verify", "--db", DB, "--json", *extra, code=code).stdout)
    assert report.pop("schema") == "casstore.verify/1"
    return report


def zlib_bomb(monkeypatch) -> bytes:
    """Fields of a few KB that inflate past the (lowered) DataPak limit."""
    monkeypatch.setattr(datapak, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    return b"C01" + zlib.compress(datapak.dumps(bytes(4 << 20)), 9)


def run_rows(root: Path) -> list[tuple]:
    """(id_run, field, blob_id) of the run-level reference rows of a migrated project."""
    with sqlite3.connect(root / "mltraq.db") as conn:
        return conn.execute("SELECT id_run, field, blob_id FROM casstore_refs WHERE id_run != ''").fetchall()


def _mltraq_python() -> str | None:
    """The Python that runs real MLtraq 0.1.165: CASSTORE_MLTRAQ_PYTHON if set, else this
    one when mltraq is installed beside casstore (the test extra installs it)."""
    import importlib.util

    return os.environ.get("CASSTORE_MLTRAQ_PYTHON") or (sys.executable if importlib.util.find_spec("mltraq") else None)


MLTRAQ_PYTHON = _mltraq_python()
NO_MLTRAQ = "needs mltraq==0.1.165: install the test extra or set CASSTORE_MLTRAQ_PYTHON"
