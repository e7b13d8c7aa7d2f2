"""Faults around a persist, and unusable arguments.

- a file changing while it is archived: a consistent snapshot, or SourceChanged with the
  stored experiment unchanged; never a blob whose content does not match its id;
- no space left on device (a 2 MB tmpfs datastore; a full disk), a file size limit
  (RLIMIT_FSIZE: EFBIG) and permission denied (a worker running as `nobody`): a clear
  error, the stored experiment unchanged, verify() with no problems, nothing half-written
  visible under blobs/ and no temp file left behind;
- unusable arguments to the library: typed errors (casstore.errors.*)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from typing import Iterator

import pytest

import reliability_worker as rw
from fork_runner import CommandServer
from casstore import ArchiveStore, ArchiveStoreIO, create_session, options
from casstore.cas.gc import collect, parse_duration
from casstore.cas.verify import verify
from casstore.errors import (BlobNotFound, CasStoreError, DatastoreError, ExperimentNotFound, InvalidInput,
                             NoSpace, SourceChanged, SourceNotFound)
from casstore.session import field_roots


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


def write_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def loaded(project, session, name: str) -> dict:
    return rw.tree(project.target(session.load_experiment(name)))


def assert_store_consistent(project, session) -> None:
    """verify deep finds nothing; every blob file hashes to its id; no temp file is left."""
    report = verify(session.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == [], report.problems
    rw.check_every_blob(project.store())
    tmp = os.path.join(project.datastore, "casstore", "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == [], os.listdir(tmp)


# --------------------------------------------------------------------------- a file changing while archived


@pytest.mark.parametrize("codec", ["none", "zstd"])
@pytest.mark.parametrize("change", ["append", "rewrite"])
def test_file_changing_while_archived_gives_a_snapshot_or_source_changed(tmp_path, codec, change):
    project = rw.Project(tmp_path / "p")
    src = str(tmp_path / "src")
    rnd = random.Random(7)
    initial = rnd.randbytes(8 << 20)
    write_tree(src, {"big.bin": initial, "small.txt": b"v1"})
    s = project.session()
    options().set("archivestore.codec", codec)
    s.create_experiment("x", data=ArchiveStore(src_dir=src)).persist()
    v1 = loaded(project, s, "x")
    outcomes = []
    # (delay before the writer starts, how long it writes): continuous changes, a burst that
    # may end before or during the read, changes that start midway
    plans = [(0.0, None), (0.0, 0.004), (0.01, 0.01), (0.03, None)]
    for attempt, (delay, burst) in enumerate(plans):
        stop = threading.Event()
        big = os.path.join(src, "big.bin")

        def writer() -> None:
            chunk = b"%08d" % attempt * 8192
            if stop.wait(delay):
                return
            until = None if burst is None else time.monotonic() + burst
            while not stop.is_set() and (until is None or time.monotonic() < until):
                if change == "append":
                    with open(big, "ab") as f:
                        f.write(chunk)
                else:  # same size, new bytes somewhere in the middle
                    with open(big, "r+b") as f:
                        f.seek(rnd.randrange(0, len(initial) - len(chunk)))
                        f.write(chunk)
                time.sleep(0.0005)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            e = s.create_experiment("x", data=ArchiveStore(src_dir=src))
            try:
                e.persist(if_exists="replace")
                outcomes.append("stored")
            except SourceChanged:
                outcomes.append("SourceChanged")
                e = None
        finally:
            stop.set()
            thread.join()
        final = open(big, "rb").read()
        got = loaded(project, s, "x")
        if e is None:
            # nothing referenced changed: the stored experiment is the one before
            assert got == v1
        else:
            content = got[b"big.bin"][1]
            if change == "append":  # a state the file really had: a prefix of what it became
                assert final.startswith(content) and len(content) >= len(initial)
            project.store().check(e.fields.data.blob_id)
            v1 = got
        assert_store_consistent(project, s)
    print(change, codec, outcomes)
    assert outcomes  # either outcome is allowed; both keep the store consistent


# --------------------------------------------------------------------------- no space left on device


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MB tmpfs (needs mount rights); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                        capture_output=True).returncode
    if rc != 0:
        pytest.skip("cannot mount a tmpfs here (see the RLIMIT_FSIZE test for the fallback)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(fs) -> str:
    """Fill the file system `fs` to the last block; returns the filler file to delete."""
    path = os.path.join(fs, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return path


def project_on(tmp_path, fs) -> rw.Project:
    """A project whose datastore lives on `fs` and the rest in tmp_path."""
    project = rw.Project(tmp_path / "p")
    project.datastore = str(fs / "datastore")
    return project


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_no_space_left_while_writing_a_blob(tmp_path, small_fs, codec):
    project = project_on(tmp_path, small_fs)
    write_tree(tmp_path / "v1", {"a.txt": b"version one"})
    write_tree(tmp_path / "v2", {"big.bin": random.Random(1).randbytes(4 << 20)})  # > the 2 MB disk
    s = project.session()
    options().set("archivestore.codec", codec)
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v1"))).persist()
    files = project.blob_files()
    with pytest.raises(OSError) as info:
        s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v2"))).persist(if_exists="replace")
    assert info.value.errno == errno.ENOSPC, info.value
    assert loaded(project, s, "x") == {b"a.txt": ("file", b"version one")}
    assert project.blob_files() == files
    assert_store_consistent(project, s)
    # the space is back: the store stays usable
    write_tree(tmp_path / "v3", {"c.txt": b"three"})
    s.create_experiment("y", data=ArchiveStore(src_dir=str(tmp_path / "v3"))).persist()
    assert loaded(project, s, "y") == {b"c.txt": ("file", b"three")}


def test_persist_onto_a_full_disk_fails_cleanly(tmp_path, small_fs):
    """The disk is already full: even the lease cannot be written."""
    project = project_on(tmp_path, small_fs)
    write_tree(tmp_path / "v1", {"a.txt": b"version one"})
    write_tree(tmp_path / "v2", {"b.txt": b"version two" * 100})
    s = project.session()
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v1"))).persist()
    filler = fill(small_fs)
    try:
        with pytest.raises(OSError) as info:
            s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v2"))).persist(if_exists="replace")
        assert info.value.errno == errno.ENOSPC, info.value
        assert loaded(project, s, "x") == {b"a.txt": ("file", b"version one")}
        report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
        assert report.problems == []
    finally:
        os.unlink(filler)
    assert_store_consistent(project, s)


def test_file_size_limit_while_writing_a_blob_fails_cleanly(tmp_path):
    """Fallback for ENOSPC that needs no mount: RLIMIT_FSIZE in the worker makes writing a
    blob over 1 MB fail with EFBIG (SIGXFSZ ignored)."""
    project = rw.Project(tmp_path / "p")
    write_tree(tmp_path / "v1", {"a.txt": b"version one"})
    write_tree(tmp_path / "v2", {"big.bin": random.Random(2).randbytes(3 << 20)})
    s = project.session()
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v1"))).persist()
    files = project.blob_files()
    for codec in ("none", "zstd"):
        proc = rw.start("persist-one", project.cfg(name="x", src=str(tmp_path / "v2"), codec=codec, if_exists="replace",
                                                   fsize_limit=1 << 20), stderr_path=str(tmp_path / "err"))
        rc, events = rw.finish(proc)
        assert rc == 0, (tmp_path / "err").read_text()
        errors = [e for e in events if e["event"] == "error"]
        assert len(errors) == 1, events
        assert "OSError" in errors[0]["mro"] and errors[0]["errno"] == errno.EFBIG, errors[0]
        assert loaded(project, s, "x") == {b"a.txt": ("file", b"version one")}
        assert project.blob_files() == files
        assert_store_consistent(project, s)


def big_archive(tmp_path) -> tuple[rw.Project, ArchiveStoreIO]:
    """A project (in tmp_path) with a 3 MiB ArchiveStoreIO archive."""
    project = rw.Project(tmp_path / "p")
    project.configure()
    write_tree(tmp_path / "big", {"big.bin": random.Random(3).randbytes(3 << 20)})
    return project, ArchiveStoreIO.create(src_dir=str(tmp_path / "big"), arc_dir="data")


def extract_by(how: str, archive: ArchiveStoreIO, target: str) -> None:
    if how == "extract":
        archive.extract(target)
    else:
        with archive.open() as tar:
            tar.extractall(target)


@pytest.mark.parametrize("how", ["extract", "open-extractall"])
def test_no_space_left_while_extracting_is_no_space_and_the_target_is_untouched(tmp_path, small_fs, how):
    """The target on a 2 MB tmpfs, a 3 MiB archive: NoSpace (an OSError, errno ENOSPC), the
    target as it was, the staging folder removed (the space is free again)."""
    _, archive = big_archive(tmp_path)
    target = small_fs / "target"
    write_tree(target, {"keep.txt": b"kept"})
    free = os.statvfs(small_fs).f_bfree
    with pytest.raises(NoSpace) as info:
        extract_by(how, archive, str(target))
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC, info.value
    assert sorted(os.listdir(target)) == ["keep.txt"] and (target / "keep.txt").read_bytes() == b"kept"
    assert os.statvfs(small_fs).f_bfree == free


def test_file_size_limit_while_extracting_is_no_space_and_the_target_is_untouched(tmp_path):
    """Fallback for ENOSPC that needs no mount (runs in CI): RLIMIT_FSIZE of 1 MiB in the
    worker, a 3 MiB archive. NoSpace with errno EFBIG; the target as it was."""
    project, archive = big_archive(tmp_path)
    target = tmp_path / "target"
    write_tree(target, {"keep.txt": b"kept"})
    proc = rw.start("io-extract", project.cfg(url=archive.url, target=str(target), fsize_limit=1 << 20),
                    stderr_path=str(tmp_path / "err"))
    rc, events = rw.finish(proc)
    assert rc == 0, (tmp_path / "err").read_text()
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, events
    assert "NoSpace" in errors[0]["mro"] and "OSError" in errors[0]["mro"], errors[0]
    assert errors[0]["errno"] == errno.EFBIG, errors[0]
    assert sorted(os.listdir(target)) == ["keep.txt"] and (target / "keep.txt").read_bytes() == b"kept"


# --------------------------------------------------------------------------- permission denied


def unprivileged() -> list[str]:
    """A command prefix under which file permission bits apply to the worker: for root,
    setpriv drops the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
    CAP_FOWNER); for other users, nothing is needed."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("locked", ["blobs", "tmp"])
def test_permission_denied_in_the_datastore_fails_cleanly(tmp_path, locked):
    """A writer without write permission on blobs/ (where it publishes) or on the temp area
    (where it ingests) of the datastore."""
    prefix = unprivileged()
    project = rw.Project(tmp_path / "p")
    write_tree(tmp_path / "v1", {"a.txt": b"version one"})
    write_tree(tmp_path / "v2", {"b.txt": b"version two" * 1000})
    s = project.session()
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v1"))).persist()
    files = project.blob_files()
    locked_dir = os.path.join(project.datastore, "casstore", locked)
    os.makedirs(locked_dir, exist_ok=True)
    locked_dirs = [d for d, _, _ in os.walk(locked_dir)]
    for d in locked_dirs:
        os.chmod(d, 0o555)
    try:
        proc = rw.start("persist-one", project.cfg(name="x", src=str(tmp_path / "v2"), if_exists="replace"),
                        stderr_path=str(tmp_path / "err"), prefix=prefix)
        rc, events = rw.finish(proc)
    finally:
        for d in locked_dirs:
            os.chmod(d, 0o755)
    stderr = (tmp_path / "err").read_text()
    assert rc == 0, stderr
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, (events, stderr)
    assert errors[0]["errno"] == errno.EACCES and "OSError" in errors[0]["mro"], errors[0]
    assert loaded(project, s, "x") == {b"a.txt": ("file", b"version one")}
    assert project.blob_files() == files
    assert_store_consistent(project, s)


# --------------------------------------------------------------------------- unusable arguments


@pytest.fixture
def project(tmp_path):
    p = rw.Project(tmp_path / "p")
    write_tree(tmp_path / "src", {"a.txt": b"a"})
    return p


def _persist(session, src, name="e", **kwargs):
    return session.create_experiment(name, data=ArchiveStore(src_dir=src)).persist(**kwargs)


@pytest.mark.parametrize("if_exists", ["bogus", None, "REPLACE", 1])
def test_bad_if_exists_is_invalid_input(project, tmp_path, if_exists):
    with pytest.raises(InvalidInput):
        _persist(project.session(), str(tmp_path / "src"), if_exists=if_exists)


@pytest.mark.parametrize("codec", ["lz4", None, 5, "ZSTD"])
def test_bad_codec_option_is_invalid_input(project, tmp_path, codec):
    s = project.session()
    options().set("archivestore.codec", codec)
    with pytest.raises(InvalidInput):
        _persist(s, str(tmp_path / "src"))
    assert project.blob_files() == []


@pytest.mark.parametrize("level", [0, 23, -1, "3", 3.5, None])
def test_bad_level_option_is_invalid_input(project, tmp_path, level):
    s = project.session()
    options().set("archivestore.codec", "zstd")
    options().set("archivestore.level", level)
    with pytest.raises(InvalidInput):
        _persist(s, str(tmp_path / "src"))


def test_bad_codec_and_level_to_the_content_store_are_invalid_input(project, tmp_path):
    store = project.store()
    with store.lease() as lease:
        with pytest.raises(InvalidInput):
            store.put_dir(str(tmp_path / "src"), lease=lease, codec="lz4")
        with pytest.raises(InvalidInput):
            store.put_dir(str(tmp_path / "src"), lease=lease, codec="zstd", level=99)


@pytest.mark.parametrize("src_dir", [123, None, b"src", 1.5, ["src"]])
def test_non_path_src_dir_is_invalid_input(src_dir):
    with pytest.raises(InvalidInput):
        ArchiveStore(src_dir=src_dir)


def test_missing_or_non_folder_src_dir_is_a_typed_error(project, tmp_path):
    s = project.session()
    with pytest.raises(SourceNotFound):
        _persist(s, str(tmp_path / "missing"))
    with pytest.raises(InvalidInput):
        _persist(s, str(tmp_path / "src" / "a.txt"))
    assert s.ls().empty


@pytest.mark.parametrize("arc_dir", ["../x", "/abs", "", "a/../../b", 5, None])
def test_bad_arc_dir_is_invalid_input(tmp_path, arc_dir):
    with pytest.raises(InvalidInput):
        ArchiveStore(src_dir=str(tmp_path), arc_dir=arc_dir)


@pytest.mark.parametrize("include", [5, ["a", 5], "../*", "/etc/*"])
def test_bad_include_is_invalid_input(project, tmp_path, include):
    s = project.session()
    with pytest.raises(InvalidInput):
        s.create_experiment("e", data=ArchiveStore(src_dir=str(tmp_path / "src"), include=include)).persist()


@pytest.mark.parametrize("url", ["not a url", 123, "sqlite:////nonexistent-dir/x.db", "nosuchdialect://x",
                                 "postgresql://u:p@127.0.0.1:1/db", "mysql://u:p@127.0.0.1:1/db", "garbage-file"])
def test_bad_database_url_is_a_typed_error(tmp_path, url):
    if url == "garbage-file":
        path = tmp_path / "not-a-database.db"
        path.write_bytes(b"this is not an SQLite file" * 100)
        url = f"sqlite:///{path}"
    with pytest.raises(CasStoreError):
        create_session(url)


@pytest.mark.parametrize("url", [5, "s3://bucket/prefix", "file://host/x", "regular-file"])
def test_bad_datastore_url_is_a_typed_error(project, tmp_path, url):
    s = project.session()
    if url == "regular-file":
        (tmp_path / "regular-file").write_text("x")
        url = str(tmp_path / "regular-file")
    options().set("datastore.url", url)
    with pytest.raises(CasStoreError):
        _persist(s, str(tmp_path / "src"))


def test_bad_archivestore_url_is_invalid_input(project, tmp_path):
    s = project.session()
    _persist(s, str(tmp_path / "src"))
    options().set("archivestore.url", "ftp://x")
    with pytest.raises(InvalidInput):
        s.load_experiment("e")


def test_bad_experiment_lookups_are_typed_errors(project):
    s = project.session()
    with pytest.raises(InvalidInput):
        s.load_experiment(id_experiment="not-a-uuid")
    with pytest.raises(InvalidInput):
        s.load_experiment()
    with pytest.raises(ExperimentNotFound):
        s.load_experiment("missing")
    with pytest.raises(ExperimentNotFound):
        s.load_experiment(id_experiment=uuid.uuid4())


@pytest.mark.parametrize("grace", [-1, "1h", None, float("nan")])
def test_bad_grace_period_is_invalid_input(project, grace):
    s = project.session()
    with pytest.raises(InvalidInput):
        collect(s.index, project.store(), field_roots=field_roots, grace_s=grace)


@pytest.mark.parametrize("text", ["5 parsecs", "-1h", "", 5, None, "1w"])
def test_bad_duration_is_invalid_input(text):
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_bad_blob_ids_are_typed_errors(project, tmp_path):
    store = project.store()
    with pytest.raises(InvalidInput):
        store.extract("not-a-blob-id", str(tmp_path / "t"))
    with pytest.raises(InvalidInput):
        store.extract("xxh128:" + "g" * 32, str(tmp_path / "t"))
    with pytest.raises(BlobNotFound):
        store.extract("xxh128:" + "0" * 32, str(tmp_path / "t"))


def test_datastore_of_another_format_is_refused(project, tmp_path):
    os.makedirs(os.path.join(project.datastore, "casstore"))
    with open(os.path.join(project.datastore, "casstore", "FORMAT"), "w") as f:
        f.write("something else 9\n")
    with pytest.raises(DatastoreError):
        _persist(project.session(), str(tmp_path / "src"))


def test_no_space_left_for_the_database_fails_cleanly(tmp_path, small_fs):
    """The database's disk is full: the blob is written, the index transaction cannot be.
    A clear error (OSError or a casstore error, not a raw SQLAlchemy one), the stored
    experiment unchanged, the new blob merely unreferenced (reclaimable)."""
    project = rw.Project(tmp_path / "p")
    project.db = str(small_fs / "project.db")
    write_tree(tmp_path / "v1", {"a.txt": b"version one"})
    s = project.session()
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v1"))).persist()
    # many new field rows, so that the transaction needs new pages
    write_tree(tmp_path / "v2", {f"f{i}.txt": b"two %d" % i for i in range(50)})
    fields = {f"d{i}": ArchiveStore(src_dir=str(tmp_path / "v2"), arc_dir=f"a{i}" + "x" * 200) for i in range(300)}
    filler = fill(small_fs)
    try:
        with pytest.raises(Exception) as info:
            s.create_experiment("x", **fields).persist(if_exists="replace")
    finally:
        os.unlink(filler)
    assert loaded(project, s, "x") == {b"a.txt": ("file", b"version one")}
    assert_store_consistent(project, s)
    # checked last, so that the checks above run whatever the error's type
    assert isinstance(info.value, (OSError, CasStoreError)), f"untyped error: {info.value!r}"


# --------------------------------------------------------------------------- read-only and full disks (issue 11, item 4)
#
# Each command runs in a subprocess killed after 30 s: a regression that waits on the 300 s
# busy timeout fails instead of hanging the suite.

COMMAND_TIMEOUT_S = 30


def run_command(*args: str, prefix: list[str] | None = None,
                fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """`casstore ARGS` in a subprocess, under `prefix` (unprivileged()), with RLIMIT_FSIZE
    `fsize_limit` (a full disk: no file may grow past it; SIGXFSZ ignored, so writes fail
    with EFBIG)."""

    def limit() -> None:
        if fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run([*(prefix or []), sys.executable, "-m", "casstore.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, preexec_fn=limit)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casstore: error: "), proc.stderr


@pytest.fixture
def closed_project(tmp_path) -> tuple[rw.Project, str]:
    """A project with experiment `x` (one archive field), its database closed: a WAL file with
    no -wal or -shm beside it, as casstore leaves it. Returns (project, the field's blob id)."""
    project = rw.Project(tmp_path / "p")
    write_tree(tmp_path / "src", {"a.txt": b"version one"})
    session = project.session()
    experiment = session.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "src")))
    experiment.persist()
    session.index.dispose()
    assert sorted(os.listdir(project.root)) == ["datastore", "project.db"]
    return project, experiment.fields.data.blob_id


def read_commands(project: rw.Project, blob_id: str, target: str) -> list[list[str]]:
    """Every command that only reads the database, with --db and --datastore."""
    where = ["--db", project.url, "--datastore", project.datastore]
    commands = [["stats"], ["ls"], ["verify"], ["verify", "--deep"], ["gc", "--dry-run"], ["cat", blob_id],
                ["extract", "x", "--target", target], ["registry"]]
    return [[*c, *where] for c in commands] + [["db", "current", "--db", project.url]]


@contextlib.contextmanager
def read_only(*paths: str) -> Iterator[None]:
    """chmod a-w on `paths` (files and folders), restored afterwards."""
    modes = {p: os.stat(p).st_mode for p in paths}
    for p, mode in modes.items():
        os.chmod(p, mode & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)


def set_journal_mode(db: str, mode: str) -> None:
    """`delete`: the database as a backup or a copy may hold it, in rollback-journal mode."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    finally:
        conn.close()


@pytest.fixture
def unprivileged_commands(tmp_path) -> Iterator[CommandServer]:
    """`casstore` commands run as unprivileged() (permission bits apply), each in a process
    of its own forked from a server that imported casstore once (tests/fork_runner.py)."""
    with CommandServer(str(tmp_path / "commands"), prefix=unprivileged()) as server:
        yield server


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_read_commands_work_on_a_read_only_database_file(closed_project, tmp_path, journal, unprivileged_commands):
    project, blob_id = closed_project
    set_journal_mode(project.db, journal)
    before = open(project.db, "rb").read()
    with read_only(project.db):
        for command in read_commands(project, blob_id, str(tmp_path / "target")):
            proc = unprivileged_commands.run(command, timeout=COMMAND_TIMEOUT_S)
            assert proc.returncode == 0, (command, proc.stderr)
    assert open(project.db, "rb").read() == before
    assert rw.tree(tmp_path / "target") == {b"a.txt": ("file", b"version one")}


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_read_commands_work_on_a_database_on_a_read_only_mount(closed_project, tmp_path, journal,
                                                               unprivileged_commands):
    """Neither the file nor its folder writable (as on a read-only mount): SQLite cannot create
    the -shm file a WAL database needs, and the database is read as immutable."""
    project, blob_id = closed_project
    set_journal_mode(project.db, journal)
    before = open(project.db, "rb").read()
    with read_only(project.db, project.root):
        for command in read_commands(project, blob_id, str(tmp_path / "target")):
            proc = unprivileged_commands.run(command, timeout=COMMAND_TIMEOUT_S)
            assert proc.returncode == 0, (command, proc.stderr)
    assert open(project.db, "rb").read() == before
    assert sorted(os.listdir(project.root)) == ["datastore", "project.db"]


def run_unprivileged_worker(command: str, cfg: dict) -> list[dict]:
    """A reliability worker under unprivileged(), killed after 30 s; its events."""
    proc = rw.start(command, cfg, prefix=unprivileged())
    try:
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        proc.kill()
    return rw.parse_events(out)


def test_a_session_on_a_read_only_database_loads_and_a_persist_fails_typed(closed_project, tmp_path):
    """The library opens a database it may not write read-only: loads work, a persist raises
    a CasStoreError with nothing stored, and neither waits on the busy timeout."""
    project, _ = closed_project
    set_journal_mode(project.db, "delete")
    before = open(project.db, "rb").read()
    write_tree(tmp_path / "v2", {"b.txt": b"version two"})
    with read_only(project.db):
        loaded_events = run_unprivileged_worker("load-loop", project.cfg(name="x", count=1))
        persisted = run_unprivileged_worker("persist-one", project.cfg(name="y", src=str(tmp_path / "v2")))
    assert [e["event"] for e in loaded_events] == ["ready", "done"], loaded_events
    errors = [e for e in persisted if e["event"] == "error"]
    assert len(errors) == 1 and "CasStoreError" in errors[0]["mro"], persisted
    assert open(project.db, "rb").read() == before


def test_gc_on_a_read_only_database_fails_at_once_and_deletes_nothing(closed_project, tmp_path):
    project, _ = closed_project
    s = project.session()
    write_tree(tmp_path / "v2", {"b.txt": b"version two"})
    s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / "v2"))).persist(if_exists="replace")
    s.index.dispose()
    files = project.blob_files()  # the blob of version one is unreferenced now
    with read_only(project.db):
        proc = run_command("gc", "--grace", "0", "--db", project.url, "--datastore", project.datastore,
                           prefix=unprivileged())
    assert_one_line_error(proc, 3)
    assert "read-only" in proc.stderr and project.db in proc.stderr
    assert project.blob_files() == files


def test_stats_with_the_database_on_a_full_disk_fails_at_once_in_one_line(closed_project):
    project, _ = closed_project
    proc = run_command("stats", "--db", project.url, "--datastore", project.datastore, fsize_limit=0)
    assert_one_line_error(proc, 3)
    assert project.db in proc.stderr


def test_migrate_with_the_database_on_a_full_disk_fails_at_once_and_changes_nothing(tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "fixtures", "legacy"), legacy, symlinks=True)
    db = str(legacy / "mltraq.db")
    before = open(db, "rb").read()
    proc = run_command("migrate", "--db", f"sqlite:///{db}", "--datastore", str(legacy / "datastore"),
                       fsize_limit=0)
    assert_one_line_error(proc, 1)
    assert db in proc.stderr
    assert open(db, "rb").read() == before
    assert sorted(os.listdir(legacy)) == ["datastore", "manifest.json", "mltraq.db"]


def two_projects(tmp_path) -> tuple[rw.Project, rw.Project]:
    """Projects `a` and `b` sharing a's datastore, each with one experiment; b's database closed."""
    a, b = rw.Project(tmp_path / "a"), rw.Project(tmp_path / "b")
    b.datastore = a.datastore
    for i, project in enumerate((a, b)):
        write_tree(tmp_path / f"src{i}", {"f.txt": b"project %d" % i})
        s = project.session()
        s.create_experiment("x", data=ArchiveStore(src_dir=str(tmp_path / f"src{i}"))).persist()
        s.index.dispose()
    return a, b


@pytest.mark.parametrize("command", [["gc", "--dry-run"], ["verify"]])
def test_another_projects_database_on_a_full_disk_is_refused_at_once_naming_it(tmp_path, command):
    """Only b's disk is full: a's database is held open (its -wal and -shm exist, so reading
    it needs no file to grow), b's is closed (reading it would create b's -shm)."""
    a, b = two_projects(tmp_path)
    holder = sqlite3.connect(a.db)
    try:
        holder.execute("SELECT count(*) FROM experiments").fetchone()
        proc = run_command(*command, "--db", a.url, "--datastore", a.datastore, fsize_limit=0)
    finally:
        holder.close()
    assert_one_line_error(proc, 3)
    assert b.db in proc.stderr


def test_gc_reads_another_projects_database_on_a_read_only_mount(tmp_path):
    a, b = two_projects(tmp_path)
    with read_only(b.db, b.root):
        proc = run_command("gc", "--dry-run", "--grace", "0", "--db", a.url, "--datastore", a.datastore,
                           "--json", prefix=unprivileged())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deleted"] == []
