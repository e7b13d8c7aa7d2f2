"""Concurrency: several processes on one SQLite file and one datastore.

- writers persisting the same and different folders all succeed (no "database is locked"),
  and identical content is still one blob file;
- a fresh database opened by several processes at once works;
- concurrent loads of one experiment into the same target are safe;
- gc.collect(grace_s=0) looping while others persist never removes a blob a persist is
  about to reference (leases + trash recheck).

Each worker is a real process (tests/reliability_worker.py) started behind a barrier (a
`go` file) so that they really run at the same time: a child of the module's fork server
(tests/fork_runner.py), which imported casstore once, so it starts in milliseconds."""

from __future__ import annotations

import os
import random

import pytest

import reliability_worker as rw
from fork_runner import CommandServer
from casstore.cas.verify import verify
from casstore.session import field_roots

WRITERS = 4


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


def make_folder(path, seed: int, big: int = 1 << 20) -> dict[bytes, tuple[str, bytes]]:
    rnd = random.Random(seed)
    os.makedirs(os.path.join(path, "sub", "deeper"), exist_ok=True)
    files = {"big.bin": rnd.randbytes(big), "sub/a.txt": b"a %d\n" % seed * 1000,
             "sub/deeper/b.csv": b"".join(b"%d,%d\n" % (i, seed) for i in range(20000)), "empty": b""}
    for rel, data in files.items():
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)
    return rw.tree(path)


WORKERS: list[CommandServer] = []  # the module's fork server of workers


@pytest.fixture(scope="module", autouse=True)
def _workers(tmp_path_factory):
    """The workers are children of one fork server (reliability_worker.SERVED imported once):
    each is a process of its own that starts in milliseconds instead of ~1.5 s of imports."""
    with CommandServer(str(tmp_path_factory.mktemp("workers")), modules=rw.SERVED) as server:
        WORKERS.append(server)
        yield
        WORKERS.clear()


def run_barrier(tmp_path, workers: list[tuple[str, dict]], limit_s: float = 120.0):
    """Start every worker, wait until each is ready, release them together; returns
    [(returncode, events, stderr text)]."""
    gate = tmp_path / "gate"
    gate.mkdir(parents=True, exist_ok=True)
    go = str(gate / "go")
    procs = []
    for i, (command, cfg) in enumerate(workers):
        cfg = {**cfg, "ready_file": str(gate / f"ready-{i}"), "go": go}
        procs.append(rw.start(command, cfg, stderr_path=str(gate / f"stderr-{i}"), server=WORKERS[0]))
    try:
        rw.wait_files([str(gate / f"ready-{i}") for i in range(len(workers))], limit_s)
    finally:
        open(go, "w").close()
    results = []
    for i, proc in enumerate(procs):
        rc, events = rw.finish(proc, limit_s)
        results.append((rc, events, (gate / f"stderr-{i}").read_text()))
    return results


def assert_all_succeeded(results) -> None:
    for i, (rc, events, stderr) in enumerate(results):
        # (the stat cache turning itself off on a busy cache file only costs speed)
        locked = [line for line in stderr.splitlines()
                  if "database is locked" in line and not line.startswith("stat cache ")]
        assert not locked, f"worker {i}: {stderr[-2000:]}"
        errors = [e for e in events if e["event"] == "error"]
        assert rc == 0 and not errors, f"worker {i} rc={rc} errors={errors}\n{stderr[-3000:]}"


def assert_loads(project, session, expected: dict[str, dict]) -> None:
    for name, tree in expected.items():
        e = session.load_experiment(name)
        assert e.fields.data.get_target() is not None
        assert rw.tree(os.path.join(project.target(e), arc_dir_of(e))) == tree, name


def arc_dir_of(experiment) -> str:
    return experiment.fields.data.params.arc_dir


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_four_writers_persisting_same_and_different_folders_all_succeed_and_dedup(tmp_path, fmt):
    project = rw.Project(tmp_path / "p", fmt=fmt)
    project.session().index.dispose()  # the database exists; its datastore is set by the writers
    shared = str(tmp_path / "shared")
    shared_tree = make_folder(shared, 1)
    own = [str(tmp_path / f"own{i}") for i in range(WRITERS)]
    own_trees = [make_folder(p, 100 + i) for i, p in enumerate(own)]
    workers, expected = [], {}
    for i in range(WRITERS):
        jobs = [{"name": f"w{i}-shared-none", "src": shared, "codec": "none"},
                {"name": f"w{i}-own", "src": own[i], "codec": "zstd"},
                {"name": f"w{i}-shared-zstd", "src": shared, "codec": "zstd"},
                {"name": f"w{i}-shared-alt", "src": shared, "arc_dir": "alt", "codec": "none"}]
        expected.update({f"w{i}-shared-none": shared_tree, f"w{i}-own": own_trees[i],
                         f"w{i}-shared-zstd": shared_tree, f"w{i}-shared-alt": shared_tree})
        workers.append(("persist-jobs", project.cfg(jobs=jobs)))
    results = run_barrier(tmp_path, workers)
    assert_all_succeeded(results)
    s = project.session()
    assert len(s.ls()) == 4 * WRITERS
    assert_loads(project, s, expected)
    ids = {e["name"]: e["blob"] for _, events, _ in results for e in events if e["event"] == "done"}
    assert len({ids[f"w{i}-shared-none"] for i in range(WRITERS)} | {ids[f"w{i}-shared-zstd"] for i in range(WRITERS)}) == 1
    distinct = set(ids.values())
    assert len(distinct) == 2 + WRITERS  # shared, shared under "alt", one per own folder
    # identical content is one blob file, whichever codec each writer asked for
    assert len(project.blob_files()) == len(distinct), project.blob_files()
    report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == []
    assert rw.manifest_holes(project.store()) == []
    project.assert_format_used()


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_six_processes_opening_a_fresh_database_at_once_all_persist(tmp_path, fmt):
    """A new project started by several jobs at once: schema creation, datastore fact,
    registry entry, all concurrent. Three new projects, 6 processes each (more processes
    than cores, as on a busy machine)."""
    src = [str(tmp_path / f"src{i}") for i in range(6)]
    trees = [make_folder(p, 200 + i, big=1 << 12) for i, p in enumerate(src)]
    for round_ in range(3):
        project = rw.Project(tmp_path / f"p{round_}", fmt=fmt)
        assert not os.path.exists(project.db)
        workers = [("persist-jobs", project.cfg(open_after_go=True, jobs=[{"name": f"fresh{i}", "src": src[i]}]))
                   for i in range(6)]
        results = run_barrier(tmp_path / f"r{round_}", workers)
        assert_all_succeeded(results)
        s = project.session()
        assert_loads(project, s, {f"fresh{i}": trees[i] for i in range(6)})
        assert verify(s.index, project.store(), field_roots=field_roots, deep=True).problems == []
        project.assert_format_used()
        s.index.dispose()


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_concurrent_loads_of_one_experiment_into_the_same_target_are_safe(tmp_path, fmt):
    """Every load succeeds and the final bytes are right. (Which load's inode each name ends
    up with is a race, so hard-linked names are compared by content, not by inode.)"""
    project = rw.Project(tmp_path / "p", fmt=fmt)
    src = tmp_path / "src"
    make_folder(str(src), 7, big=2 << 20)
    os.link(src / "big.bin", src / "big-hardlink.bin")
    os.symlink("sub/a.txt", src / "link-inside")
    (src / "twins").mkdir()
    for i in range(40):  # many hard-linked pairs: each is a chance for loads to interleave
        (src / "twins" / f"t{i:02d}").write_bytes(b"twin %d " % i * 100)
        os.link(src / "twins" / f"t{i:02d}", src / "twins" / f"t{i:02d}-link")
    expected = rw.tree(src)
    from casstore import ArchiveStore, options

    s = project.session()
    options().set("archivestore.codec", "zstd")
    e = s.create_experiment("shared-load", data=ArchiveStore(src_dir=str(src)))
    e.persist()
    project.assert_format_used()
    loaders = 4
    workers = [("load-loop", project.cfg(name="shared-load", count=8)) for _ in range(loaders)]
    results = run_barrier(tmp_path, workers)
    assert_all_succeeded(results)
    target = project.target(e)
    assert rw.tree(target) == expected
    assert [n for n in os.listdir(target) if n.startswith(".casstore-extract-")] == []


def with_gc_looping(tmp_path, project, workers) -> tuple[list, dict]:
    """Run `workers` (run_barrier) while a gc worker loops at grace 0; the workers' results
    and the gc's "done" event, once gc exited cleanly."""
    stop = str(tmp_path / "stop")
    gc_cfg = project.cfg(grace=0.0, stop=stop, max_s=90)
    gate = tmp_path / "gate"
    gate.mkdir()
    go = str(gate / "go")
    gc_proc = rw.start("gc-loop", {**gc_cfg, "ready_file": str(gate / "gc-ready"), "go": go}, server=WORKERS[0],
                       stderr_path=str(gate / "gc-stderr"))
    try:
        rw.wait_files([str(gate / "gc-ready")])
        results = run_barrier(tmp_path, workers)
    finally:
        open(stop, "w").close()
    gc_rc, gc_events = rw.finish(gc_proc)
    assert gc_rc == 0, (gc_events, (gate / "gc-stderr").read_text()[-3000:])
    gc_done = [e for e in gc_events if e["event"] == "done"][0]
    print("gc loop:", gc_done)
    return results, gc_done


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_gc_grace_zero_looping_during_persists_never_loses_a_blob(tmp_path, fmt):
    """Writers keep persisting (and deleting) experiments over the same content, so that the
    blob they dedup onto is unreferenced most of the time, while gc --grace 0 loops."""
    project = rw.Project(tmp_path / "p", statcache=True, fmt=fmt)
    project.session().index.dispose()
    shared = str(tmp_path / "shared")
    shared_tree = make_folder(shared, 3, big=1 << 16)
    writers = 3
    rounds = 20
    workers, expected = [], {}
    for w in range(writers):
        jobs = []
        for k in range(rounds):
            own = str(tmp_path / f"own-{w}-{k}")
            tree = make_folder(own, 1000 * w + k, big=1 << 14)
            codec = "zstd" if (w + k) % 2 else "none"
            last = k == rounds - 1
            # the shared blob is unreferenced between these persists: gc keeps trying to
            # delete it while the next persist dedups onto it
            jobs.append({"name": f"w{w}-shared-{k}", "src": shared, "codec": codec, "delete_after": not last})
            jobs.append({"name": f"w{w}-own-{k}", "src": own, "codec": codec, "delete_after": k % 3 == 0})
            if last:
                expected[f"w{w}-shared-{k}"] = shared_tree
            if k % 3:
                expected[f"w{w}-own-{k}"] = tree
        workers.append(("persist-jobs", project.cfg(jobs=jobs)))
    results, gc_done = with_gc_looping(tmp_path, project, workers)
    assert_all_succeeded(results)
    assert gc_done["runs"] >= 3 and gc_done["deleted"] >= 1, gc_done
    s = project.session()
    assert_loads(project, s, expected)
    report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == []
    assert rw.manifest_holes(project.store()) == []
    project.assert_format_used()


def test_gc_grace_zero_racing_chunked_writers_that_reuse_orphan_chunks_never_loses_a_chunk(tmp_path):
    """Every persist is a new blob (a new manifest) whose large file is the same bytes, so
    its fixed blocks are chunks of blobs deleted a moment ago: unreferenced, and gc --grace 0,
    looping, keeps deleting them while writers reuse them. A writer that reuses an
    unreferenced chunk never ends with a manifest naming a chunk gc deleted."""
    import shutil

    from casstore import ArchiveStore

    project = rw.Project(tmp_path / "p", fmt="chunked")
    base = random.Random(11).randbytes(12 * rw.TINY_CHUNKS["block"])
    first = tmp_path / "first"
    first.mkdir()
    (first / "big.bin").write_bytes(base)
    s = project.session()  # old orphan chunks: the large file's blocks, of a deleted experiment
    s.create_experiment("first", data=ArchiveStore(src_dir=str(first))).persist().delete()
    s.index.dispose()
    writers, rounds = 3, 12
    workers, expected = [], {}
    for w in range(writers):
        jobs = []
        for k in range(rounds):
            src = tmp_path / f"v-{w}-{k}"
            src.mkdir()
            shutil.copyfile(first / "big.bin", src / "big.bin")
            (src / "note.txt").write_bytes(b"writer %d round %d" % (w, k))
            kept = k == rounds - 1 or k % 4 == 1
            jobs.append({"name": f"w{w}-{k}", "src": str(src), "codec": "zstd" if (w + k) % 2 else "none",
                         "delete_after": not kept})
            if kept:
                expected[f"w{w}-{k}"] = rw.tree(src)
        workers.append(("persist-jobs", project.cfg(jobs=jobs)))
    results, gc_done = with_gc_looping(tmp_path, project, workers)
    assert_all_succeeded(results)
    assert gc_done["runs"] >= 3 and gc_done["chunks_deleted"] >= 1, gc_done
    store = project.store()
    assert rw.manifest_holes(store) == []
    s = project.session()
    assert_loads(project, s, expected)
    assert verify(s.index, store, field_roots=field_roots, deep=True).problems == []
    project.assert_format_used()


def _persisted(tmp_path, codec: str, seed: int, fmt: str | None = None):
    """A project with one experiment "a", persisted with `codec`, of a folder made from `seed`
    (datastore format `fmt`, as rw.Project takes it): (the project, the folder, the session,
    the experiment)."""
    from casstore import ArchiveStore, options

    project = rw.Project(tmp_path / "p", fmt=fmt)
    src = str(tmp_path / "src")
    make_folder(src, seed, big=1 << 16)
    s = project.session()
    options().set("archivestore.codec", codec)
    e = s.create_experiment("a", data=ArchiveStore(src_dir=src))
    e.persist()
    return project, src, s, e


@pytest.mark.parametrize("fmt", rw.FORMATS)
@pytest.mark.parametrize("first, second", [("none", "zstd"), ("zstd", "none")])
def test_blob_collected_then_stored_again_with_another_codec_keeps_index_facts_true(tmp_path, first, second, fmt):
    """What the gc loop above runs into: a blob is collected once nothing references it, and
    the same content is stored again later with another codec. The index must then describe
    the blob that is stored (its codec and stored size), or verify reports damage that is
    not there."""
    from casstore import ArchiveStore, options
    from casstore.cas.gc import collect

    project, src, s, e = _persisted(tmp_path, first, seed=5, fmt=fmt)
    e.delete()
    report = collect(s.index, project.store(), field_roots=field_roots, grace_s=0)
    assert [d.kind for d in report.deleted if d.kind != "unreferenced_chunk"] == ["unreferenced"]
    options().set("archivestore.codec", second)
    s.create_experiment("b", data=ArchiveStore(src_dir=src)).persist()
    assert rw.tree(project.target(s.load_experiment("b"))) == rw.tree(src)
    report = verify(s.index, project.store(), field_roots=field_roots, deep=True)
    assert report.problems == [], report.problems
    project.assert_format_used()


@pytest.mark.parametrize("first, second", [("none", "zstd"), ("zstd", "none")])
def test_both_codecs_of_one_id_left_by_racing_writers_are_not_reported_as_damage(tmp_path, monkeypatch, first, second):
    """Two writers storing the same new content at once with different codecs can both
    publish (docs/datastore.md): a `.tar` and a `.tar.zst` of one id. The index describes the
    copy one of them recorded; verify must compare it with that copy, whichever is listed
    first, and still count both copies as gc's once nothing references them."""
    from casstore import options

    project, src, s, e = _persisted(tmp_path, first, seed=6)
    store = project.store()
    options().set("archivestore.codec", second)
    real_find = type(store.blobs).find
    monkeypatch.setattr(type(store.blobs), "find", lambda self, blob_id: None)  # the racing writer's view
    with store.lease() as lease:
        store.put_dir(src, ".", lease=lease, codec=second)
    monkeypatch.setattr(type(store.blobs), "find", real_find)
    assert sorted(b.codec for b in store.blobs.iter_blobs()) == ["none", "zstd"]
    for deep in (False, True):
        assert verify(s.index, project.store(), field_roots=field_roots, deep=deep).problems == []
    e.delete()
    unreferenced = [r for r in verify(s.index, project.store(), field_roots=field_roots).reclaimable
                    if r.kind == "unreferenced"]
    assert sorted(r.bytes for r in unreferenced) == sorted(b.stored_size for b in store.blobs.iter_blobs())


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_writers_repairing_one_damaged_blob_at_once_with_gc_looping_all_succeed(tmp_path, codec):
    """Six writers of one folder whose blob is garbage under its id, and gc looping at grace 0
    meanwhile: every writer gets the id, the id ends with one copy that reads correctly, and
    no quarantined copy is a good one (docs/datastore.md, "Damaged blobs")."""
    import threading

    from casstore.cas.backends.layout import blob_key
    from casstore.cas.digest import digest_bytes
    from casstore.cas.gc import collect
    from casstore.cas.tar.scan import scan
    from casstore.cas.tar.write import tar_bytes

    project = rw.Project(tmp_path / "p")
    src = str(tmp_path / "src")
    make_folder(src, 7, big=1 << 18)
    s = project.session()
    store = project.store()
    store.blobs.ensure_format()
    tar = tar_bytes(scan(src, "data"))
    blob_id = digest_bytes(tar)
    planted = os.path.join(project.datastore, *blob_key(blob_id, codec).split("/"))
    os.makedirs(os.path.dirname(planted))
    with open(planted, "wb") as f:
        f.write(b"planted " * 5000)
    start, stop = threading.Barrier(6), threading.Event()
    results, errors = [], []

    def writer():
        try:
            with store.lease() as lease:
                start.wait()
                results.append(store.put_dir(src, "data", lease=lease, codec=codec).blob_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def gc_loop():
        while not stop.is_set():
            try:
                collect(s.index, store, field_roots=field_roots, grace_s=0)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer) for _ in range(6)]
    collector = threading.Thread(target=gc_loop)
    with store.lease() as keep:  # the id stays live until gc has stopped: no gc ever takes it
        keep.add(blob_id)
        collector.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        collector.join()
    assert errors == [] and results == [blob_id] * 6
    stored = [b for b in store.blobs.iter_blobs() if b.blob_id == blob_id]
    assert len(stored) == 1
    assert store.check(blob_id, len(tar)) == len(tar)
    for q in store.blobs.iter_quarantine():
        with open(os.path.join(project.datastore, *q.key.split("/")), "rb") as f:
            assert f.read() == b"planted " * 5000
