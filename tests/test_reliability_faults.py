"""Faults around a persist, and unusable arguments.

- a file changing while it is archived: a consistent snapshot, or SourceChanged with the
  stored experiment unchanged; never a blob whose content does not match its id;
- no space left on device (a 2 MB tmpfs datastore; a full disk), a file size limit
  (RLIMIT_FSIZE: EFBIG) and permission denied (a worker running as `nobody`): a clear
  error, the stored experiment unchanged, verify() with no problems, nothing half-written
  visible under blobs/ and no temp file left behind;
- unusable arguments to the library: typed errors (casstore.errors.*)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
import time
import uuid

import pytest

import reliability_worker as rw
from casstore import ArchiveStore, create_session, options
from casstore.cas.gc import collect, parse_duration
from casstore.cas.verify import verify
from casstore.errors import (BlobNotFound, CasStoreError, DatastoreError, ExperimentNotFound, InvalidInput,
                             SourceChanged, SourceNotFound)
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
