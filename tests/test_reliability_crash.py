"""Crashes: a persist or a gc killed with SIGKILL at random instants (seeded) loses nothing.

After every kill: each experiment committed before loads with the right bytes; the
experiment being replaced holds its old or its new content, never a mix; every file under
blobs/ hashes to its id (no half blob is ever visible); verify() finds no damage; running
the interrupted operation again completes; gc then reclaims the killed writer's leftovers.

A killed writer's lease is not expired (24 h TTL): it only keeps blobs alive, which is the
safe side. The reliability worker (tests/reliability_worker.py) does the persisting and the
collecting in a real subprocess: a child of its fork server (rw.ForkServer), killed with
SIGKILL, which starts in milliseconds instead of paying Python's start-up and casstore's
imports (~1.5 s) at each kill. The first persist of a fresh project is killed in a worker
started from scratch, so that its kills can land in the imports too."""

from __future__ import annotations

import os
import random
import time

import pytest

import reliability_worker as rw
from casstore import ArchiveStore, options
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.gc import collect
from casstore.cas.tar.header import FILE, RECORD, header, padding
from casstore.cas.verify import verify
from casstore.session import field_roots

SEED = 20240606
PERSIST_KILLS = 20
GC_KILLS = 16
SLOTS = 3  # experiment names the persisting worker cycles through (replace)
ALLOWED_RECLAIMABLE = {"unreferenced", "unreferenced_chunk", "leftover", "expired_lease"}


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


def make_source(src: str, seed: int) -> dict[bytes, bytes]:
    """A folder of ~2 MB: incompressible bytes, compressible text, small files, nesting."""
    rnd = random.Random(seed)
    files = {
        "rand.bin": rnd.randbytes(1 << 20),
        "table.csv": b"".join(b"%d,%d,%s\n" % (i, i * i, b"abc" * (i % 7)) for i in range(60000)),
        "nested/deeper/small.txt": b"small",
        "nested/empty.txt": b"",
    }
    for rel, data in files.items():
        path = os.path.join(src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return {os.fsencode(os.path.join("data", rel)): data for rel, data in files.items()}


def loaded_tree(project, experiment) -> dict[bytes, bytes]:
    return {k: v[1] for k, v in rw.tree(project.target(experiment)).items()}


def check_new_blobs(store, seen: set) -> None:
    """Every blob file that appeared since the last call hashes to its id (blobs are
    immutable, so a file already checked needs no second look)."""
    from casstore.cas.backends.layout import parse_blob_key

    for dirpath, _dirs, files in os.walk(os.path.join(store.blobs.root, "casstore", "blobs")):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            if (path, st.st_ino, st.st_size) in seen:
                continue
            key = os.path.relpath(path, store.blobs.root).replace(os.sep, "/")
            parsed = parse_blob_key(key)
            assert parsed is not None, f"stray file under blobs/: {key}"
            store.check(parsed[0])
            seen.add((path, st.st_ino, st.st_size))


def assert_no_damage(project, session, deep: bool = False) -> None:
    report = verify(session.index, project.store(), field_roots=field_roots, deep=deep)
    assert report.problems == [], report.problems
    kinds = {r.kind for r in report.reclaimable}
    assert kinds <= ALLOWED_RECLAIMABLE, kinds


# --------------------------------------------------------------------------- persist killed


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_persist_killed_at_random_instants_loses_nothing(tmp_path, fmt):
    """A worker persists new content again and again (replacing SLOTS experiments, both
    codecs) and is killed at a seeded random instant, PERSIST_KILLS times. Chunked: no
    manifest is ever published without its chunks, and no half chunk is visible."""
    project = rw.Project(tmp_path / "p", fmt=fmt)
    src = str(tmp_path / "src")
    static = make_source(src, SEED)
    s = project.session()
    store = project.store()
    for codec in ("none", "zstd"):  # committed before any crash, never touched again
        options().set("archivestore.codec", codec)
        with open(os.path.join(src, "counter.txt"), "w") as f:
            f.write(f"base-{codec}")
        s.create_experiment(f"base-{codec}", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
    allowed: dict[str, set] = {f"base-{c}": {f"base-{c}"} for c in ("none", "zstd")}
    allowed.update({f"slot-{i}": {None} for i in range(SLOTS)})  # None: not stored yet
    rnd = random.Random(SEED)
    seen: set = set()
    interrupted_count = 0
    server = rw.ForkServer(str(tmp_path / "server.err"))
    for round_ in range(PERSIST_KILLS):
        codecs = ["none", "zstd"] if round_ % 2 else ["zstd", "none"]
        server.run("persist-loop", project.cfg(src=src, prefix=f"r{round_}", count=100000, codecs=codecs,
                                               slots=SLOTS))
        server.until("ready")
        time.sleep(rnd.uniform(0.0, 0.3))
        events = server.kill_and_reap()
        interrupted = None
        for i, e in enumerate(events):
            if e["event"] != "start":
                continue
            finished = i + 1 < len(events) and events[i + 1]["event"] == "done"
            if finished:
                allowed[e["name"]] = {e["counter"]}
            else:  # killed during this persist: the old state or the new one
                interrupted = e
                allowed[e["name"]].add(e["counter"])
        # 1. every committed experiment loads with its bytes; the interrupted one holds its
        #    old content or its new one, never a mix
        stored = {r.name for r in s.ls().itertuples()}
        for name, counters in allowed.items():
            if name not in stored:
                assert None in counters, f"committed experiment {name} is gone"
                continue
            got = loaded_tree(project, s.load_experiment(name))
            counter = got.pop(b"data/counter.txt", b"").decode()
            assert counter in counters, (name, counter, counters)
            assert got == static, f"{name}: loaded tree differs from the source"
        # 2. no half blob under any id, no manifest without its chunks; 3. verify finds no damage
        check_new_blobs(store, seen)
        assert rw.manifest_holes(store) == []
        assert_no_damage(project, s)
        # 4. re-running the interrupted persist completes
        if interrupted is not None:
            interrupted_count += 1
            with open(os.path.join(src, "counter.txt"), "w") as f:
                f.write(interrupted["counter"])
            options().set("archivestore.codec", interrupted["codec"])
            s.create_experiment(interrupted["name"], data=ArchiveStore(src_dir=src, arc_dir="data")).persist(
                if_exists="replace")
            allowed[interrupted["name"]] = {interrupted["counter"]}
            got = loaded_tree(project, s.load_experiment(interrupted["name"]))
            assert got == {**static, b"data/counter.txt": interrupted["counter"].encode()}
        # 5. gc reclaims replaced blobs and the killed writer's temp file (its lock died with
        # it) once the file is older than gc's one-minute floor for temp files
        age_temp_files(project)
        collect(s.index, store, field_roots=field_roots, grace_s=0)
        assert os.listdir(os.path.join(project.datastore, "casstore", "tmp")) == [], \
            "gc left a temp file of the killed writer behind"
        assert_no_damage(project, s)
    server.close()
    assert interrupted_count >= PERSIST_KILLS // 2, "the kills did not land inside persists"
    assert_no_damage(project, s, deep=True)
    assert rw.check_every_blob(store) > 0
    rw.check_every_chunk(store)
    project.assert_format_used()


# --------------------------------------------------------------------------- gc killed


def tiny_tar(name: bytes, data: bytes) -> bytes:
    """A small valid TAR with one file (canonical layout, as put_tar_bytes expects)."""
    body = header(name, FILE, 0o644, len(data)) + data + padding(len(data)) + bytes(1024)
    return body + bytes(-len(body) % RECORD)


def plant_blob(store, data: bytes) -> str:
    """Put a valid, unreferenced blob straight into its place (faster than ingesting
    hundreds, which fsyncs each one; the test is about gc, not ingest)."""
    from casstore.cas.backends.layout import blob_key
    from casstore.cas.digest import digest_bytes

    blob_id = digest_bytes(data)
    path = os.path.join(store.blobs.root, *blob_key(blob_id, "none").split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o444)
    return blob_id


def age_temp_files(project, seconds: float = 120) -> None:
    """Make the temp area's files look `seconds` old, as if the crash were that long ago."""
    tmp = os.path.join(project.datastore, "casstore", "tmp")
    old = time.time() - seconds
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
        os.utime(os.path.join(tmp, name), (old, old))


def referenced_now(session) -> set[str]:
    return {r.blob_id for r in session.index.iter_refs()}


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_gc_killed_at_random_instants_loses_no_referenced_blob(tmp_path, fmt):
    """Chunked: the revived content (stored, deleted, collected by the killed gc, stored
    again) is cut into chunks, so the writer reuses chunks the killed gc left, trashed or
    deleted; no chunk a manifest names is ever lost."""
    project = rw.Project(tmp_path / "p", fmt=fmt)
    s = project.session()
    store = project.store()
    # Referenced blobs, both codecs.
    kept = {}
    for i, codec in enumerate(("none", "zstd", "none")):
        src = tmp_path / f"kept{i}"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "f.txt").write_bytes(f"kept {i} ".encode() * 5000)
        options().set("archivestore.codec", codec)
        e = s.create_experiment(f"kept{i}", data=ArchiveStore(src_dir=str(src)))
        e.persist()
        kept[e.name] = rw.tree(src)
    rnd = random.Random(SEED + 1)
    # Time one collect of 300 unreferenced blobs to spread the kills over its duration.
    fillers = 300
    outcomes: list[str] = []
    server = rw.ForkServer(str(tmp_path / "server.err"))
    for round_ in range(GC_KILLS + 1):
        # Unreferenced blobs: fillers, and a folder whose experiment was deleted (revived below).
        for k in range(fillers):
            plant_blob(store, tiny_tar(b"f%d" % k, b"round %d filler %d" % (round_, k)))
        revive = tmp_path / f"revive{round_}"
        revive.mkdir()
        (revive / "r.txt").write_bytes(b"revive %d" % round_)
        (revive / "r.bin").write_bytes(rnd.randbytes(40_000))  # over whole_below: chunked
        gone = s.create_experiment(f"gone{round_}", data=ArchiveStore(src_dir=str(revive)))
        gone.persist()
        gone.delete()
        if round_ == 0:
            started = time.perf_counter()
            collect(s.index, store, field_roots=field_roots, grace_s=0)
            window = max(0.01, 1.5 * (time.perf_counter() - started))
            print(f"one gc of {fillers} blobs: {window / 1.5:.3f}s")
            continue
        server.run("gc-once", project.cfg(grace=0.0))
        server.until("ready")
        time.sleep(rnd.uniform(0.0, window))
        done = [e for e in server.kill_and_reap() if e["event"] == "done"]
        finished = bool(done)
        if done:  # too late: aim within the worker's own duration (it varies with load)
            window = max(0.005, done[0]["seconds"])
        referenced = referenced_now(s)
        left = sum(1 for b in store.blobs.iter_blobs() if b.blob_id not in referenced)
        trash = os.path.join(project.datastore, "casstore", "trash")
        in_trash = len(os.listdir(trash)) if os.path.isdir(trash) else 0
        outcomes.append("finished" if finished else "mid-gc" if (0 < left < fillers + 1 or in_trash) else "before")
        # Every referenced blob is present, or in the trash (restorable).
        trashed = set(os.listdir(trash)) if os.path.isdir(trash) else set()
        for ref in s.index.iter_refs():
            if store.blobs.find(ref.blob_id) is None:
                hexdigest = ref.blob_id.split(":")[1]
                assert any(hexdigest[2:] in t for t in trashed), f"referenced blob {ref.blob_id} is lost"
        # A writer persisting the content of a blob the killed gc may have trashed.
        again = s.create_experiment(f"revived{round_}", data=ArchiveStore(src_dir=str(revive)))
        again.persist()
        kept[again.name] = rw.tree(revive)
        # gc again completes, then nothing is damaged and every experiment loads.
        collect(s.index, store, field_roots=field_roots, grace_s=0)
        assert not os.path.isdir(trash) or os.listdir(trash) == []
        assert_no_damage(project, s)
        check_new_blobs(store, set())
        assert rw.manifest_holes(store) == []
        for name in ("kept0", "kept1", "kept2", again.name):  # all of them at the end
            assert rw.tree(project.target(s.load_experiment(name))) == kept[name], name
    server.close()
    for name, expected in kept.items():
        assert rw.tree(project.target(s.load_experiment(name))) == expected, name
    print("gc kills:", outcomes)
    assert outcomes.count("mid-gc") >= 2, f"the kills did not land inside gc: {outcomes}"
    assert_no_damage(project, s, deep=True)
    # Only referenced blobs are left (fillers and leases of nobody are gone).
    referenced = {r.blob_id for r in s.index.iter_refs()}
    assert {b.blob_id for b in store.blobs.iter_blobs()} == referenced
    assert {c.blob_id for c in store.blobs.view(CHUNKS).iter_blobs()} == rw.named_chunks(store)
    project.assert_format_used()


# --------------------------------------------------------------------------- load killed


LOAD_KILLS = 10


@pytest.fixture(scope="module", params=rw.FORMATS)
def killed_loads(tmp_path_factory, request):
    """One experiment loaded by a worker killed at LOAD_KILLS random instants; shared by
    the tests below (the kills are the slow part). Once per datastore format."""
    saved = options().copy_values()
    tmp_path = tmp_path_factory.mktemp("killed-loads")
    try:
        project = rw.Project(tmp_path / "p", fmt=request.param)
        src = str(tmp_path / "src")
        static = make_source(src, SEED)
        os.link(os.path.join(src, "rand.bin"), os.path.join(src, "rand-link.bin"))
        static[b"data/rand-link.bin"] = static[b"data/rand.bin"]
        s = project.session()
        options().set("archivestore.codec", "zstd")
        e = s.create_experiment("loaded", data=ArchiveStore(src_dir=src, arc_dir="data"))
        e.persist()
        project.assert_format_used()
        target = project.target(e)
        rnd = random.Random(SEED + 3)
        torn = []
        server = rw.ForkServer(str(tmp_path / "server.err"))
        for _round in range(LOAD_KILLS):
            server.run("load-loop", project.cfg(name="loaded", count=100000))
            server.until("ready")
            time.sleep(rnd.uniform(0.0, 0.08))
            server.kill_and_reap()
            # whatever the instant, every published file is complete (staged, then renamed)
            torn += [rel for rel, (_kind, content) in rw.tree(target).items()
                     if not rel.startswith(b".casstore-extract-") and static.get(rel) != content]
        server.close()
        yield project, target, static, torn
    finally:
        options().copy_from(saved)


def test_load_killed_at_random_instants_then_loading_again_gives_the_right_bytes(killed_loads):
    project, target, static, torn = killed_loads
    assert torn == [], "a killed load left a torn file in the target"
    s = project.session()
    s.load_experiment("loaded")
    got = {k: v[1] for k, v in rw.tree(target).items() if not k.startswith(b".casstore-extract-")}
    assert got == static
    assert_no_damage(project, s)


def test_load_killed_leaves_no_staging_folder_behind_after_the_next_load(killed_loads):
    """A killed load leaves its hidden staging folder (a partial copy of the archive) in the
    target. The next load of the same target should clear stale ones, or they pile up."""
    project, target, _static, _torn = killed_loads
    project.session().load_experiment("loaded")
    leftovers = [n for n in os.listdir(target) if n.startswith(".casstore-extract-")]
    assert leftovers == [], f"{len(leftovers)} staging folders of killed loads left in {target}"


# --------------------------------------------------------------------------- first persist of a fresh project killed


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_first_persist_of_a_fresh_project_killed_then_rerun_completes(tmp_path, fmt):
    """Killed while it creates the schema, the datastore, the registry entry, the first blob:
    opening the project again and persisting again works, and nothing is damaged."""
    rnd = random.Random(SEED + 2)
    src = str(tmp_path / "src")
    static = make_source(src, SEED)
    for round_ in range(6):
        project = rw.Project(tmp_path / f"fresh{round_}", fmt=fmt)
        proc = rw.start("persist-one", project.cfg(name="first", src=src, codec="zstd" if round_ % 2 else "none"),
                        stderr_path=str(tmp_path / f"fresh-{round_}.err"))
        time.sleep(rnd.uniform(0.25, 0.6))  # imports take ~0.4 s: kills land in open/schema/persist
        rw.kill_and_read(proc)
        s = project.session()
        e = s.create_experiment("first", data=ArchiveStore(src_dir=src, arc_dir="data"))
        e.persist(if_exists="replace")
        got = loaded_tree(project, s.load_experiment("first"))
        got.pop(b"data/counter.txt", None)
        assert got == static
        assert_no_damage(project, s, deep=True)
        assert rw.manifest_holes(project.store()) == []
        project.assert_format_used()
        s.index.dispose()


# --------------------------------------------------------------------------- migrate killed


MIGRATE_KILLS = 10
LEGACY_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy")


def legacy_copy(root, fmt: str | None = None) -> rw.Project:
    """A copy of the frozen MLtraq project (tests/fixtures/legacy) as a rw.Project (of
    datastore format `fmt`, as rw.Project takes it)."""
    import shutil

    shutil.copytree(LEGACY_FIXTURE, root, symlinks=True)
    project = rw.Project(root, fmt=fmt)
    if fmt == "chunked":  # the fixture's canonical TARs are a few KiB: cut them all
        project.chunks = {**rw.TINY_CHUNKS, "whole_below": 1024}
    project.db = os.path.join(project.root, "mltraq.db")
    return project


def migrated_state(project) -> dict:
    """What a finished migration leaves: each experiment's fields bytes and loaded tree
    (or its load error), and the legacy side of the datastore (outside casstore/)."""
    import sqlite3

    from casstore.mltraq import migrate
    from casstore.cas.backends.layout import is_torn_object

    s = project.session()
    state: dict = {"refs left": [r.label for r in migrate.plan(project.url, project.datastore).refs]}
    with sqlite3.connect(project.db) as conn:
        state["fields"] = dict(conn.execute("SELECT name, fields FROM experiments"))
    for name in sorted(state["fields"]):
        try:
            state[name] = rw.tree(project.target(s.load_experiment(name)))
        except Exception as exc:  # compared with the uninterrupted run's, whatever it is
            state[name] = type(exc).__name__
    legacy = {}
    for dirpath, dirs, files in os.walk(project.datastore):
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(dirpath, d), project.datastore) != "casstore"]
        for f in files:
            path = os.path.join(dirpath, f)
            key = os.path.relpath(path, project.datastore).replace(os.sep, "/")
            if is_torn_object(key):  # a named reference's write killed before its rename: gc's leftover
                continue
            with open(path, "rb") as fh:
                legacy[key] = fh.read()
    state["legacy files"] = legacy
    s.index.dispose()
    return state


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_migrate_killed_at_random_instants_then_rerun_ends_as_an_uninterrupted_one(tmp_path, fmt):
    """`migrate` killed at MIGRATE_KILLS seeded instants of a real migration of the frozen
    MLtraq project (after a random number of its stage events, plus a random delay). After each kill, no legacy TAR that a not-yet-migrated reference needs is
    gone. Running migrate again completes, and the end state (fields bytes, loaded trees,
    legacy files left) is the one of an uninterrupted migration, with verify clean."""
    from casstore.mltraq import migrate

    if not os.path.isdir(LEGACY_FIXTURE):
        pytest.skip("no legacy fixture")
    reference = legacy_copy(tmp_path / "reference", fmt)  # migrated by a worker, uninterrupted
    server = rw.ForkServer(str(tmp_path / "server.err"))
    server.run("migrate", reference.cfg())
    events = server.until("done")
    status, after = server.reap()
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "server.err").read_text()
    stages = sum(e["event"] == "progress" for e in events + after)
    expected = migrated_state(reference)  # chunked: see the test below
    rnd = random.Random(SEED + 4)
    interrupted = 0
    progress: list[int] = []  # references still legacy after each kill
    for round_ in range(MIGRATE_KILLS):
        project = legacy_copy(tmp_path / f"killed{round_}", fmt)
        server.run("migrate", project.cfg())
        server.until("ready")
        # a random point of the migration: after k of its stage events, plus a random delay
        finished = False
        for _ in range(rnd.randrange(stages)):
            if server.until("progress", "done")[-1]["event"] == "done":
                finished = True
                break
        time.sleep(rnd.uniform(0.0, 0.004))
        finished = any(e["event"] == "done" for e in server.kill_and_reap()) or finished
        interrupted += not finished
        # nothing legacy is deleted before its new copy is committed
        project.configure()
        left = migrate.plan(project.url, project.datastore).refs
        progress.append(len(left))
        for ref in left:  # a missing file gives the ref a problem: compare with the fixture's files
            if ref.relpath and os.path.exists(os.path.join(LEGACY_FIXTURE, "datastore", ref.relpath)):
                assert os.path.exists(os.path.join(project.datastore, ref.relpath)), (round_, ref.label)
        migrate.execute(migrate.plan(project.url, project.datastore))
        assert migrated_state(project) == expected, f"kill {round_}: the resumed migration ended elsewhere"
        assert_no_damage(project, project.session(), deep=True)
        assert rw.manifest_holes(project.store()) == []
    server.close()
    print("legacy references left after each kill:", progress)
    assert interrupted >= MIGRATE_KILLS // 2, "the kills did not land inside migrations"


def test_migrate_cuts_legacy_tars_at_option_datastore_chunks(tmp_path):
    """What makes the chunked migrate kills above kill chunked writes: migrate cuts where
    option datastore.chunks says, as every other writer does."""
    from casstore.mltraq import migrate

    project = legacy_copy(tmp_path / "legacy", "chunked")
    project.configure()
    migrate.execute(migrate.plan(project.url, project.datastore))
    project.assert_format_used()


# --------------------------------------------------------------------------- the aftermath of a crash, made by hand


def persisted_project(tmp_path):
    """A project with one experiment persisted (one small blob), and its session."""
    project = rw.Project(tmp_path / "p")
    s = project.session()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    s.create_experiment("a", data=ArchiveStore(src_dir=str(src))).persist()
    return project, s


def test_temp_file_of_a_killed_ingest_is_reclaimable_and_gc_removes_it(tmp_path):
    project, s = persisted_project(tmp_path)
    tmp = os.path.join(project.datastore, "casstore", "tmp")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "0123456789abcdef0123456789abcdef.partial"), "wb") as f:
        f.write(b"half a blob")
    report = verify(s.index, project.store(), field_roots=field_roots)
    assert report.problems == []
    assert [r.kind for r in report.reclaimable] == ["leftover"]
    collect(s.index, project.store(), field_roots=field_roots, grace_s=0)
    assert os.listdir(tmp) != [], "a temp file younger than a minute may be a write just started"
    age_temp_files(project)
    collect(s.index, project.store(), field_roots=field_roots, grace_s=0)
    assert os.listdir(tmp) == []


@pytest.mark.parametrize("folder", ["leases", "registry"])
def test_torn_small_object_write_of_a_killed_process_is_reclaimable(tmp_path, folder):
    """put_object writes `<key>.<uuid>.tmp` then renames it: a process killed in between
    leaves that temp file. It is a leftover of an interrupted write, so verify must list it
    as reclaimable and gc must remove it (otherwise such files pile up forever)."""
    project, s = persisted_project(tmp_path)
    torn = os.path.join(project.datastore, "casstore", folder, "0" * 32 + ".json." + "1" * 32 + ".tmp")
    os.makedirs(os.path.dirname(torn), exist_ok=True)
    with open(torn, "wb") as f:
        f.write(b'{"blobs": ["xxh1')
    old = time.time() - 7 * 86400
    os.utime(torn, (old, old))
    report = verify(s.index, project.store(), field_roots=field_roots)
    assert report.problems == []
    assert any(r.path and r.path.endswith(".tmp") for r in report.reclaimable), report.reclaimable
    collect(s.index, project.store(), field_roots=field_roots, grace_s=0)
    assert not os.path.exists(torn), "gc left a torn temp object of a killed process behind"
