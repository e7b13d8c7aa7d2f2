"""Shared fixtures for the casstore test suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder (`tmp_path/work`) as the current directory, with every option
    reset to its default and restored afterwards; the stat cache and XDG cache live in
    `tmp_path/cache`, the user's config (confirmed databases) in `tmp_path/config`, outside
    the working folder and outside the user's home."""
    from casstore.opts import options

    saved = options().copy_values()
    options().reset()
    cache = tmp_path / "cache"
    options().set("statcache.path", str(cache / "statcache.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        yield work
    finally:
        options().copy_from(saved)


@pytest.fixture(scope="session")
def command_server(tmp_path_factory):
    """fork_runner.CommandServer: `casstore` commands in processes forked from a server that
    imported casstore once (its client script first on PATH runs them from a shell)."""
    from fork_runner import CommandServer

    with CommandServer(str(tmp_path_factory.mktemp("command-server"))) as server:
        yield server


# ---------------------------------------------------------------------------------------
# A content store over a local datastore (test_contentstore, test_statcache, test_leases).


@pytest.fixture
def ds(tmp_path):
    from casstore.cas.backends.local import LocalBlobStore

    return LocalBlobStore(str(tmp_path / "ds"))


@pytest.fixture
def cache_path(tmp_path):
    return str(tmp_path / "cache" / "statcache.sqlite")


@pytest.fixture
def cs(ds, cache_path):
    from casstore.cas.store.content_store import ContentStore
    from casstore.cas.store.statcache import StatCache

    return ContentStore(ds, StatCache(cache_path))


@pytest.fixture
def src(tmp_path):
    """helpers.make_src's folder (modules that need another `src` define their own)."""
    from helpers import make_src

    return make_src(tmp_path / "src")


# ---------------------------------------------------------------------------------------
# Projects whose databases another tool tampers with (test_gc, test_verify, test_index).


@pytest.fixture
def project(workdir):
    """helpers.Project: experiments "a" and "b" persisted in `DB`, one folder each (modules
    with a project of another shape define their own `project`)."""
    from helpers import DB, Project, make_folder

    from casstore import ArchiveStore, create_session

    session = create_session(DB)
    make_folder("a", {"f.txt": b"kept"})
    make_folder("b", {"f.txt": b"other"})
    a = session.create_experiment("a", data=ArchiveStore("a")).persist()
    b = session.create_experiment("b", data=ArchiveStore("b")).persist()
    return Project(session, a.fields.data.blob_id, b.fields.data.blob_id, a.id_experiment.hex)


@pytest.fixture
def migrated(tmp_path, workdir) -> Path:
    """The frozen MLtraq project (tests/fixtures/legacy), migrated: run `model` columns of
    experiment alpha hold casstore references, with run-level reference rows."""
    from casstore.mltraq import migrate as migration

    root = tmp_path / "legacy"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy", root, symlinks=True)
    migration.execute(migration.plan(f"sqlite:///{root / 'mltraq.db'}", str(root / "datastore")))
    return root


# ---------------------------------------------------------------------------------------
# Servers for the team backends (docs/teams.md): an S3-protocol server and PostgreSQL.
# CI (.ci/run) starts both and names them in CASSTORE_TEST_S3_ENDPOINT and
# CASSTORE_TEST_PG_URL. Without those variables the fixtures start throwaway servers on a
# free loopback port; if that is impossible the tests that need them skip, except under CI
# (env CI set), where they fail: CI must never skip them.

import contextlib  # noqa: E402
import glob as _glob  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run these tests: .ci/run starts the servers)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dies_with_us(signal_name: str, user: str | None = None) -> list[str]:
    """A command prefix that makes the server get `signal_name` when the test process dies,
    even killed (a server started by a fixture must not outlive an interrupted run), and
    drops root for `user`. util-linux's setpriv; without it, only the fixtures' teardown
    stops the servers."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return _as_user_fallback(user)
    prefix = [setpriv, "--pdeathsig", signal_name]
    if user is not None:
        prefix += ["--reuid", user, "--regid", user, "--clear-groups"]
    return prefix + ["--"]


def _as_user_fallback(user: str | None) -> list[str]:
    if user is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--"]
    raise RuntimeError("neither setpriv nor runuser: cannot run PostgreSQL as its own user")


def _wait_for_port(port: int, proc: subprocess.Popen | None, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """URL of an S3-protocol server: $CASSTORE_TEST_S3_ENDPOINT, else a moto server started
    here on a free loopback port (moto[server] is in the test extra)."""
    endpoint = os.environ.get("CASSTORE_TEST_S3_ENDPOINT")
    if endpoint:
        yield endpoint.rstrip("/")
        return
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        _unavailable(f"no S3 server: set CASSTORE_TEST_S3_ENDPOINT or install moto[server] and s3fs ({exc})")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(_dies_with_us("TERM") + [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                                     "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **S3_TEST_CREDENTIALS})
    try:
        if not _wait_for_port(port, proc):
            _unavailable(f"moto server did not start on 127.0.0.1:{port} (see {log.name})")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def s3_options(s3_endpoint):
    """fsspec storage options for the test S3 server."""
    return {"endpoint_url": s3_endpoint, "key": S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"region_name": S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"]}}


@pytest.fixture
def s3_bucket(s3_options):
    """A new, empty bucket on the test S3 server; its name."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **s3_options)
    name = f"casstore-test-{uuid.uuid4().hex[:16]}"
    fs.call_s3("create_bucket", Bucket=name)
    return name


@pytest.fixture
def s3_env(monkeypatch, s3_endpoint):
    """The standard AWS variables pointing at the test S3 server (as a team's shell has)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


def _postgres_bin() -> str | None:
    """The folder holding initdb and postgres: PATH, then Debian's and /usr/local's."""
    found = shutil.which("initdb")
    if found and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(found)), "postgres")):
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(_glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) if x.isdigit() else x for x in p.split("/")])
    for folder in list(reversed(candidates)) + ["/usr/local/bin", "/usr/local/pgsql/bin"]:
        if all(os.path.exists(os.path.join(folder, tool)) for tool in ("initdb", "postgres")):
            return folder
    return None


def _postgres_user() -> str | None:
    """The user to run PostgreSQL as: `postgres` if we are root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no postgres user to run PostgreSQL as")
    return "postgres"


@pytest.fixture(scope="session")
def pg_admin_url():
    """An SQLAlchemy URL of a PostgreSQL database whose user may create databases:
    $CASSTORE_TEST_PG_URL, else a throwaway server started here (trust auth, loopback,
    a temporary data folder, stopped and removed at the end of the session)."""
    url = os.environ.get("CASSTORE_TEST_PG_URL")
    try:
        import psycopg
    except ImportError as exc:
        _unavailable(f"psycopg is not installed (pip install 'casstore[postgres]'): {exc}")
    if url:
        yield url
        return
    folder = _postgres_bin()
    if folder is None:
        _unavailable("no PostgreSQL: set CASSTORE_TEST_PG_URL, or install PostgreSQL (initdb and postgres "
                     "on PATH or in /usr/lib/postgresql/*/bin)")
    user = _postgres_user()
    data = tempfile.mkdtemp(prefix="casstore-pg-")
    try:
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        initdb = subprocess.run(_dies_with_us("KILL", user) + [
            os.path.join(folder, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True)
        if initdb.returncode != 0:
            _unavailable(f"initdb failed: {initdb.stderr.strip()[-500:]}")
        port = _free_port()
        log = open(os.path.join(data, "server.log"), "wb")
        # In the foreground, as our child: SIGQUIT (immediate shutdown) if we die.
        server = subprocess.Popen(_dies_with_us("QUIT", user) + [
            os.path.join(folder, "postgres"), "-D", data, "-p", str(port), "-k", data,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=100"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                    connect_timeout=2).close()
                    break
                except psycopg.OperationalError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        with open(os.path.join(data, "server.log"), errors="replace") as f:
                            _unavailable(f"PostgreSQL did not start: {f.read()[-500:]}")
                    time.sleep(0.1)
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            server.send_signal(signal.SIGINT)  # fast shutdown
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_url(pg_admin_url):
    """A new, empty PostgreSQL database for one test, dropped afterwards; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"casstore_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
