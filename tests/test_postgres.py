"""The index on SQLite and on PostgreSQL: the same tests, parametrized over both (design
P5, P12; docs/teams.md). PostgreSQL comes from $CASSTORE_TEST_PG_URL (CI), else from a
throwaway server that conftest.py starts on a free loopback port; each test gets a new
database. The last tests run a team's whole setup: the index on PostgreSQL, the blobs in S3."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid

import pytest
from helpers import file_tree, run_cli
from sqlalchemy.engine import make_url

from casstore import create_session, options
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cas.gc import collect
from casstore.cas.index.facts import BlobFacts
from casstore.cas.index.queries import ExperimentRecord, Index, Ref
from casstore.cas.live.registry import register, registered, registry_url
from casstore.cas.verify import verify
from casstore.errors import DatastoreError, ExperimentAlreadyExists
from casstore.session import field_roots
from casstore.storage.archivestore import ArchiveStore


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new, empty project database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    return request.getfixturevalue("pg_url")


def _folder(root, seed: int = 0) -> str:
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    with open(os.path.join(root, "a.csv"), "wb") as f:
        f.write(b"x,y\n" + b"1,2\n" * 3000 + str(seed).encode())
    with open(os.path.join(root, "sub", "b.txt"), "wb") as f:
        f.write(f"seed {seed}\n".encode() * 100)
    return str(root)


@pytest.fixture
def project(workdir, db_url):
    """(database URL, datastore folder): a project on the parametrized database."""
    datastore = str(workdir.parent / "datastore")
    options().set("datastore.url", datastore)
    return db_url, datastore


# ---------------------------------------------------------------------------------------
# the index on both databases


def test_persist_load_replace_delete(project, workdir):
    db, datastore = project
    s = create_session(db)
    first, second = _folder(workdir / "first", 1), _folder(workdir / "second", 2)
    e = s.create_experiment("exp", data=ArchiveStore(src_dir=first, arc_dir="data"), note="kept")
    e.persist()
    s.create_experiment("twin", data=ArchiveStore(src_dir=first, arc_dir="data")).persist()
    with pytest.raises(ExperimentAlreadyExists):
        s.create_experiment("exp", data=ArchiveStore(src_dir=second, arc_dir="data")).persist()
    loaded = s.load_experiment("exp")
    assert loaded.fields.note == "kept"
    assert file_tree(workdir / "mltraq.archivestore" / str(loaded.id_experiment) / "data") == file_tree(first)
    s.create_experiment("exp", data=ArchiveStore(src_dir=second, arc_dir="data")).persist(if_exists="replace")
    again = s.load_experiment("exp")
    assert file_tree(workdir / "mltraq.archivestore" / str(again.id_experiment) / "data") == file_tree(second)
    assert sorted(s.ls()["name"]) == ["exp", "twin"]
    assert len(list(LocalBlobStore(datastore).iter_blobs())) == 2
    s.delete_experiment(s.read_experiment("twin"))
    assert list(s.ls()["name"]) == ["exp"]
    assert registered(LocalBlobStore(datastore)) == [registry_url(db)]
    s.index.dispose()


def test_index_rows_and_blob_facts(db_url):
    index = Index.open(db_url)
    Index.open(db_url).dispose()  # a second open finds the schema in force
    a, b = f"xxh128:{'a' * 32}", f"xxh128:{'b' * 32}"
    record = ExperimentRecord(uuid.uuid4(), "e1", b"fields")
    index.save_experiment(record, [Ref("data", a, "d"), Ref("inputs.x", b, "x")],
                          [BlobFacts(a, 100, 100, "none"), BlobFacts(b, 50, 20, "zstd")], "fail")
    with pytest.raises(ExperimentAlreadyExists):
        index.save_experiment(ExperimentRecord(uuid.uuid4(), "e1", b"f"), [], [], "fail")
    # facts are upserted: a blob stored again in the other codec
    index.save_experiment(ExperimentRecord(uuid.uuid4(), "e2", b"f"), [Ref("data", a, "d")],
                          [BlobFacts(a, 100, 40, "zstd")], "fail")
    assert index.blob_facts(a) == BlobFacts(a, 100, 40, "zstd")
    assert index.referenced_blob_ids() == {a, b}
    assert len(list(index.iter_refs())) == 3
    replaced = index.save_experiment(ExperimentRecord(uuid.uuid4(), "e1", b"new"), [], [], "replace")
    assert replaced == [record.id_experiment]
    assert index.referenced_blob_ids() == {a}
    index.forget_blob_facts([a, b])
    assert index.blob_facts(a) is not None and index.blob_facts(b) is None
    assert [(r.name, r.field) for r in index.iter_refs()] == [("e2", "data")]
    index.set_fact("datastore", "s3://bucket/prefix")
    index.set_fact("datastore", "s3://bucket/other")
    assert index.get_fact("datastore") == "s3://bucket/other"
    index.dispose()


def test_the_cli_on_the_database(project, workdir):
    db, datastore = project
    s = create_session(db)
    src = _folder(workdir / "src")
    s.create_experiment("a", data=ArchiveStore(src_dir=src, arc_dir="d")).persist()
    s.create_experiment("b", data=ArchiveStore(src_dir=src, arc_dir="d")).persist()
    s.index.dispose()
    stats = json.loads(run_cli("stats", "--db", db, "--json").stdout)
    assert (stats["blobs"], stats["references"]) == (1, 2)
    assert json.loads(run_cli("verify", "--db", db, "--json").stdout)["problems"] == []
    assert [r["name"] for r in json.loads(run_cli("ls", "--db", db, "--json").stdout)["experiments"]] == ["a", "b"]
    assert json.loads(run_cli("db", "current", "--db", db, "--json").stdout)["up_to_date"] is True
    run_cli("gc", "--db", db, "--grace", "0")


def test_a_password_never_shows(pg_url):
    """In the registry, in messages: the URL with its password removed (docs/teams.md)."""
    with_password = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    reg = registry_url(with_password)
    assert "hunter2" not in reg and ":***" not in reg
    assert make_url(reg).username == make_url(pg_url).username
    assert (make_url(reg).host, make_url(reg).port, make_url(reg).database) == \
        (make_url(pg_url).host, make_url(pg_url).port, make_url(pg_url).database)
    unreachable = make_url(pg_url).set(password="hunter2", database="no_such_db_casstore")
    result = run_cli("stats", "--db", unreachable.render_as_string(hide_password=False), code=3)
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# concurrent writers from several processes

_WORKER = r"""
import json, sys, time
from casstore import create_session, options
from casstore.storage.archivestore import ArchiveStore

args = json.loads(sys.argv[1])
options().set("datastore.url", args["datastore"])
options().set("datastore.storage_options", args.get("storage_options") or {})
options().set("statcache.disable", True)
while time.time() < args["start_at"]:
    time.sleep(0.002)
session = create_session(args["db"])
for name, folder, if_exists in args["jobs"]:
    session.create_experiment(name, data=ArchiveStore(src_dir=folder, arc_dir="d")).persist(if_exists=if_exists)
session.index.dispose()
"""


WRITERS: list = []  # the session's fork_runner.CommandServer


@pytest.fixture(autouse=True)
def _writers(command_server):
    WRITERS[:] = [command_server]


def _run_writers(db: str, datastore: str, jobs_per_process: list[list], storage_options: dict | None = None,
                 env: dict | None = None) -> None:
    """Each list of jobs in a process of its own: a child of the session's fork server, which
    imported casstore once (tests/fork_runner.py); they all start persisting at one instant."""
    start_at = time.time() + 0.5  # every process forked and waiting: they start together
    server, children = WRITERS[0], []
    for jobs in jobs_per_process:
        args = json.dumps({"db": db, "datastore": datastore, "jobs": jobs, "start_at": start_at,
                           "storage_options": storage_options})
        err = tempfile.TemporaryFile()
        with open(os.devnull, "r+b") as null:
            request = server.script_request(_WORKER, os.getcwd(), {**os.environ, **(env or {})})
            children.append((server.start({**request, "argv": ["-c", args]}, [null.fileno(), null.fileno(),
                                                                               err.fileno()]), err))
    failures = []
    for child, err in children:
        code = child.wait(timeout=300)
        with err:
            err.seek(0)
            if code != 0:
                failures.append(err.read().decode()[-2000:])
    assert not failures, "\n---\n".join(failures)


def test_write_transactions_take_the_advisory_lock_on_postgresql(project):
    db, _datastore = project
    """Concurrent writers are safe because casstore's write transactions queue: SQLite's
    BEGIN IMMEDIATE does it; on PostgreSQL, write_transaction takes an advisory lock."""
    if not db.startswith("postgresql"):
        pytest.skip("SQLite queues writers with BEGIN IMMEDIATE")
    from sqlalchemy import text

    from casstore.cas.index.engine import make_engine, write_transaction

    engine = make_engine(db)
    try:
        with write_transaction(engine) as conn:
            locked = conn.scalar(text("SELECT count(*) FROM pg_locks "
                                      "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"))
        with engine.connect() as conn:
            unlocked = conn.scalar(text("SELECT count(*) FROM pg_locks "
                                        "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"))
    finally:
        engine.dispose()
    assert locked == 1 and unlocked == 0


def _check_project(db: str, datastore: str, expected_names: set[str], expected_blobs: int, workdir) -> None:
    s = create_session(db)
    assert set(s.ls()["name"]) == expected_names
    store = ContentStore(LocalBlobStore(datastore)) if "://" not in datastore else None
    if store is not None:
        assert len(list(store.blobs.iter_blobs())) == expected_blobs
        report = verify(s.index, store, field_roots=field_roots, deep=True)
        assert report.problems == []
        assert [r.kind for r in report.reclaimable] == []
    for name in expected_names:
        s.load_experiment(name)
    s.index.dispose()


@pytest.mark.parametrize("fresh", [False, True], ids=["existing-project", "new-database"])
def test_concurrent_writers_of_one_blob_and_of_different_folders(project, workdir, fresh):
    db, datastore = project
    shared = _folder(workdir / "shared", 100)
    if not fresh:  # the project exists: its schema and recorded datastore
        s = create_session(db)
        s.create_experiment("seed", data=ArchiveStore(src_dir=shared, arc_dir="d")).persist()
        s.index.dispose()
    procs, per_process = 4, 3
    jobs = []
    for p in range(procs):
        mine = _folder(workdir / f"own{p}", p)
        jobs.append([[f"p{p}-shared-{i}", shared, "fail"] for i in range(per_process)]
                    + [[f"p{p}-own", mine, "fail"]])
    _run_writers(db, datastore, jobs)
    names = {j[0] for js in jobs for j in js} | (set() if fresh else {"seed"})
    _check_project(db, datastore, names, 1 + procs, workdir)


def test_concurrent_replacements_of_one_experiment(project, workdir):
    """Several processes persist the same name with if_exists="replace": writes queue, the
    last one wins, nothing fails and nothing is left half-replaced."""
    db, datastore = project
    s = create_session(db)
    s.create_experiment("same", data=ArchiveStore(src_dir=_folder(workdir / "f0", 0), arc_dir="d")).persist()
    s.index.dispose()
    folders = [_folder(workdir / f"f{p}", p) for p in range(1, 5)]
    _run_writers(db, datastore, [[["same", folder, "replace"]] * 3 for folder in folders])
    s = create_session(db)
    assert list(s.ls()["name"]) == ["same"]
    assert len(list(s.index.iter_refs())) == 1
    e = s.load_experiment("same")
    assert file_tree(workdir / "mltraq.archivestore" / str(e.id_experiment) / "d") in [file_tree(f) for f in folders]
    s.index.dispose()


# ---------------------------------------------------------------------------------------
# gc across projects: a PostgreSQL project registered in a shared datastore


def test_gc_reads_a_postgresql_project_registered_in_the_datastore(pg_url, workdir, tmp_path):
    datastore = str(tmp_path / "shared-datastore")
    options().set("datastore.url", datastore)
    pg_with_password = make_url(pg_url).set(password="not-needed-with-trust").render_as_string(hide_password=False)
    team = create_session(pg_with_password)
    kept = team.create_experiment("team", data=ArchiveStore(src_dir=_folder(workdir / "team", 1), arc_dir="d"))
    kept.persist()
    solo_db = f"sqlite:///{tmp_path / 'solo.db'}"
    solo = create_session(solo_db)
    mine = solo.create_experiment("mine", data=ArchiveStore(src_dir=_folder(workdir / "mine", 2), arc_dir="d"))
    mine.persist()
    solo.delete_experiment(mine)
    store = ContentStore(LocalBlobStore(datastore))
    pg_registered = registry_url(pg_with_password)
    assert set(registered(store.blobs)) == {pg_registered, registry_url(solo_db)}
    assert "not-needed-with-trust" not in json.dumps(registered(store.blobs))

    # gc from the SQLite project reopens the PostgreSQL one from the registry (no password),
    # once the user has confirmed it (docs/teams.md)
    run_cli("registry", "--db", solo_db, "--trust", pg_registered)
    report = collect(solo.index, store, field_roots=field_roots, grace_s=0)
    assert [d.blob for d in report.deleted if d.blob] == [mine.fields.data.blob_id]
    assert [b.blob_id for b in store.blobs.iter_blobs()] == [kept.fields.data.blob_id]
    out = json.loads(run_cli("gc", "--db", solo_db, "--grace", "0", "--json").stdout)
    assert out["deleted"] == []

    # the team deletes its experiment: now gc from the other project may take the blob
    team.delete_experiment(kept)
    report = collect(solo.index, store, field_roots=field_roots, grace_s=0)
    assert [d.blob for d in report.deleted if d.blob] == [kept.fields.data.blob_id]
    team.index.dispose()

    # a registered database that cannot be opened stops gc, naming it
    gone = make_url(pg_url).set(database="casstore_gone_" + uuid.uuid4().hex[:8]).render_as_string(
        hide_password=False)
    register(store.blobs, gone, str(uuid.uuid4()))
    run_cli("registry", "--db", solo_db, "--trust", gone)
    with pytest.raises(DatastoreError, match="casstore_gone_"):
        collect(solo.index, store, field_roots=field_roots, grace_s=0)
    result = run_cli("gc", "--db", solo_db, "--grace", "0", code=3)
    assert "casstore_gone_" in result.stderr and "registry --forget" in result.stderr
    run_cli("registry", "--db", solo_db, "--forget", gone)
    run_cli("gc", "--db", solo_db, "--grace", "0")
    solo.index.dispose()


# ---------------------------------------------------------------------------------------
# a team's whole setup: the index on PostgreSQL, the blobs in S3


def test_team_setup_postgresql_and_s3(pg_url, s3_bucket, s3_options, s3_endpoint, workdir):
    from conftest import S3_TEST_CREDENTIALS

    datastore = f"s3://{s3_bucket}/team"
    options().set("datastore.url", datastore)
    options().set("datastore.storage_options", s3_options)
    s = create_session(pg_url)
    src = _folder(workdir / "datasets", 7)
    s.create_experiment("baseline", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
    s.create_experiment("rerun", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
    gone = s.create_experiment("gone", data=ArchiveStore(src_dir=_folder(workdir / "x", 8), arc_dir="data"))
    gone.persist()
    s.delete_experiment(gone)
    assert s.index.get_fact("datastore") == datastore
    e = s.load_experiment("baseline")
    assert file_tree(workdir / "mltraq.archivestore" / str(e.id_experiment) / "data") == file_tree(src)
    s.index.dispose()

    # several team members persist at once, each with only the AWS variables set
    aws = {"AWS_ENDPOINT_URL": s3_endpoint, **S3_TEST_CREDENTIALS}
    _run_writers(pg_url, datastore, [[[f"m{p}", src, "fail"]] for p in range(3)], env=aws)

    options().reset()  # the command knows --db and the environment only
    assert json.loads(run_cli("verify", "--db", pg_url, "--deep", "--json", env=aws).stdout)["problems"] == []
    out = json.loads(run_cli("gc", "--db", pg_url, "--grace", "0", "--json", env=aws).stdout)
    assert [d["blob"] for d in out["deleted"] if "blob" in d] == [gone.fields.data.blob_id]
    stats = json.loads(run_cli("stats", "--db", pg_url, "--json", env=aws).stdout)
    # the workers archive under arc_dir "d", the first two under "data": two blobs
    assert (stats["blobs"], stats["references"], stats["datastore"]) == (2, 5, datastore)
    listed = json.loads(run_cli("registry", "--db", pg_url, "--json", env=aws).stdout)
    assert [d["url"] for d in listed["databases"]] == [registry_url(pg_url)]
