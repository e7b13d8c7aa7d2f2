"""The registry of databases (casstore/cas/live/registry.py) and whom gc trusts (trust.py):
an entry that cannot be read, reached or trusted stops gc and verify, naming it; a project
repairs its own entry; a server is reached only once the user confirmed it, and then only
with the credentials configured for it (docs/gc.md, docs/teams.md)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import db_url, facts_outside, make_folder, run_cli

from casstore import create_session, options
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.store.content_store import ContentStore
from casstore.cas.gc import collect
from casstore.cas.live.registry import REGISTRY_FORMAT, entry_key, registry_url
from casstore.errors import UnreadableObject, UnresolvedRegistryEntry
from casstore.session import field_roots
from casstore.storage.archivestore import ArchiveStore


@dataclass
class Project:
    db: str
    path: Path
    blob: str
    experiment: str

    def entry(self, datastore: Path) -> Path:
        return datastore / "casstore" / "registry" / f"{entry_key(registry_url(self.db))}.json"

    def project_id(self) -> str | None:
        with sqlite3.connect(self.path) as conn:
            row = conn.execute("SELECT value FROM casstore_meta WHERE key = 'project'").fetchone()
        return row and row[0]


def _persist(workdir: Path, name: str, datastore: Path, content: bytes | None = None) -> Project:
    """Persist one experiment of project `name` (its own database) into `datastore`."""
    options().set("datastore.url", str(datastore))
    path = workdir / f"{name}.db"
    folder = workdir / f"src-{name}-{uuid.uuid4().hex[:6]}"
    make_folder(folder, {"f.txt": content or f"{name}'s data\n".encode() * 100})
    session = create_session(db_url(path))
    exp = session.create_experiment(f"{name}-{folder.name}", data=ArchiveStore(src_dir=str(folder), arc_dir="d"))
    exp.persist()
    session.index.dispose()
    return Project(db_url(path), path, exp.fields.data.blob_id, exp.name)


@pytest.fixture
def shared(workdir):
    """Projects a and b in one datastore; a also holds a blob nothing references."""
    datastore = workdir / "store"
    a, b = _persist(workdir, "a", datastore), _persist(workdir, "b", datastore)
    doomed = _persist(workdir, "a", datastore, b"doomed\n" * 50)
    session = create_session(a.db)
    session.delete_experiment(session.read_experiment(name=doomed.experiment))
    session.index.dispose()
    return datastore, a, b, doomed.blob


def _args(project: Project, datastore: Path) -> list[str]:
    return ["--db", project.db, "--datastore", str(datastore)]


def _stored(datastore: Path, blob: str) -> bool:
    return LocalBlobStore(str(datastore)).find(blob) is not None


def _entry_body(url: str, project: str | None = None) -> bytes:
    return json.dumps({"format": REGISTRY_FORMAT, "project": project or str(uuid.uuid4()), "url": url,
                       "registered": 1.0}).encode()


def _plant(datastore: Path, url: str, body: bytes) -> str:
    key = entry_key(url)
    (datastore / "casstore" / "registry" / f"{key}.json").write_bytes(body)
    return key


# -- item 2: an entry that cannot be read stops gc, naming it -----------------------------

BROKEN_BODIES = {
    "empty": b"",
    "not JSON": b"{\"url\": ",
    "not an object": b"[]",
    "url not a string": b'{"url": 5}',
    "newer format": json.dumps({"format": "casstore-registry-9", "url": "sqlite:////x.db", "registered": 1}).encode(),
    "project not a UUID": json.dumps({"format": REGISTRY_FORMAT, "project": "b", "url": "sqlite:////x.db",
                                      "registered": 1}).encode(),
    "relative SQLite path": b'{"url": "sqlite:///b.db", "registered": 1}',
}


@pytest.mark.parametrize("damage", list(BROKEN_BODIES))
def test_gc_refuses_naming_an_unreadable_entry_and_keeps_its_projects_blobs(shared, damage):
    datastore, a, b, doomed = shared
    b.entry(datastore).write_bytes(BROKEN_BODIES[damage])
    result = run_cli("gc", *_args(a, datastore), "--grace", "0", code=3)
    key = b.entry(datastore).stem
    assert f"registry entry {key}" in result.stderr and f"casstore registry --forget {key}" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert _stored(datastore, b.blob) and _stored(datastore, doomed)


def test_gc_refuses_an_unreadable_entry_in_the_library_with_its_key(shared):
    datastore, a, b, _ = shared
    b.entry(datastore).write_bytes(b"")
    session = create_session(a.db)
    with pytest.raises(UnresolvedRegistryEntry) as refused:
        collect(session.index, ContentStore(LocalBlobStore(str(datastore))), field_roots=field_roots, grace_s=0)
    session.index.dispose()
    assert refused.value.key == b.entry(datastore).stem


def test_verify_refuses_naming_an_unreadable_entry(shared):
    datastore, a, b, _ = shared
    b.entry(datastore).write_bytes(b"")
    result = run_cli("verify", *_args(a, datastore), code=3)
    assert f"registry entry {b.entry(datastore).stem}" in result.stderr


def test_a_file_in_the_registry_that_is_not_an_entry_stops_gc(shared):
    datastore, a, b, doomed = shared
    (datastore / "casstore" / "registry" / "notes.txt").write_bytes(b"hello")
    result = run_cli("gc", *_args(a, datastore), "--grace", "0", code=3)
    assert "registry entry notes.txt" in result.stderr and _stored(datastore, doomed)
    run_cli("registry", *_args(a, datastore), "--forget", "notes.txt")
    assert {d["blob"] for d in json.loads(run_cli("gc", *_args(a, datastore), "--grace", "0", "--json").stdout)
            ["deleted"]} == {doomed}


def test_registry_lists_an_unreadable_entry_and_forget_by_key_resolves_it(shared):
    datastore, a, b, doomed = shared
    b.entry(datastore).write_bytes(b"")
    key = b.entry(datastore).stem
    listing = json.loads(run_cli("registry", *_args(a, datastore), "--json").stdout)
    assert listing["unreadable"] == [{"key": key, "reason": "empty"}]
    assert "unreadable: empty" in run_cli("registry", *_args(a, datastore)).stdout
    forgot = json.loads(run_cli("registry", *_args(a, datastore), "--forget", key, "--json").stdout)
    assert forgot["forgotten"] == [key] and forgot["unreadable"] == []
    deleted = {d["blob"] for d in json.loads(run_cli("gc", *_args(a, datastore), "--grace", "0", "--json").stdout)
               ["deleted"]}
    assert deleted == {doomed, b.blob}  # what the user asked for: b is gone as far as gc knows


def _make_special(entry: Path, kind: str, elsewhere: Path) -> None:
    """Replace the registry entry `entry` by something that is not a regular file; what a
    symlink points at (outside the datastore) is a copy of the entry or a folder."""
    elsewhere.mkdir()
    copy = elsewhere / "entry-backup.json"
    copy.write_bytes(entry.read_bytes())
    entry.unlink()
    if kind == "symlink":
        entry.symlink_to(copy)
    elif kind == "symlink to a folder":
        entry.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        entry.mkdir()


SPECIAL_ENTRIES = ["symlink", "symlink to a folder", "fifo", "folder"]


@pytest.mark.parametrize("kind", SPECIAL_ENTRIES)
def test_an_entry_that_is_not_a_regular_file_stops_gc_and_verify_naming_it(shared, workdir, kind):
    """Was: the listing dropped it, so gc deleted the blobs of the project it stood for."""
    datastore, a, b, doomed = shared
    _make_special(b.entry(datastore), kind, workdir / "elsewhere")
    key = b.entry(datastore).stem
    for command in (["gc", "--grace", "0"], ["verify"]):
        result = run_cli(command[0], *_args(a, datastore), *command[1:], code=3)
        assert f"registry entry {key}" in result.stderr and "not a regular file" in result.stderr
    assert _stored(datastore, b.blob) and _stored(datastore, doomed)


@pytest.mark.parametrize("kind", SPECIAL_ENTRIES)
def test_registry_lists_an_entry_that_is_not_a_regular_file_and_forget_removes_it_unfollowed(shared, workdir, kind):
    datastore, a, b, _ = shared
    _make_special(b.entry(datastore), kind, workdir / "elsewhere")
    key = b.entry(datastore).stem
    listing = json.loads(run_cli("registry", *_args(a, datastore), "--json").stdout)
    assert listing["unreadable"] == [{"key": key, "reason": "not a regular file"}]
    before = facts_outside(workdir, datastore)
    forgot = json.loads(run_cli("registry", *_args(a, datastore), "--forget", key, "--json").stdout)
    assert forgot["forgotten"] == [key] and forgot["unreadable"] == []
    assert not os.path.lexists(b.entry(datastore)) and facts_outside(workdir, datastore) == before


def test_a_persist_whose_entry_is_a_folder_fails_typed_and_leaves_it(shared, workdir):
    """Was: a raw IsADirectoryError from the rename over the folder."""
    datastore, a, b, _ = shared
    b.entry(datastore).unlink()
    b.entry(datastore).mkdir()
    with pytest.raises(UnreadableObject, match="is a folder"):
        _persist(workdir, "b", datastore, b"more of b's data\n" * 10)
    assert b.entry(datastore).is_dir() and not list((datastore / "casstore" / "registry").glob("*.tmp"))


def test_a_registry_folder_that_is_a_symlink_stops_gc(shared, workdir):
    """Was: read through the link; skipping it instead would hide every project it names."""
    datastore, a, b, doomed = shared
    registry = datastore / "casstore" / "registry"
    registry.rename(workdir / "registry-elsewhere")
    registry.symlink_to(workdir / "registry-elsewhere")
    before = facts_outside(workdir, datastore)
    for command in (["gc", "--grace", "0"], ["verify"]):
        result = run_cli(command[0], *_args(a, datastore), *command[1:], code=3)
        assert "'casstore/registry' is a symlink" in result.stderr and result.stderr.count("\n") == 1
    run_cli("registry", *_args(a, datastore), "--forget", "casstore/registry", code=3)
    assert _stored(datastore, doomed) and registry.is_symlink() and facts_outside(workdir, datastore) == before


def test_a_project_repairs_its_own_damaged_entry_at_its_next_persist(shared, workdir):
    datastore, a, b, doomed = shared
    b.entry(datastore).write_bytes(b"")
    b_later = _persist(workdir, "b", datastore, b"b again\n" * 40)
    entry = json.loads(b.entry(datastore).read_bytes())
    assert entry["format"] == REGISTRY_FORMAT and entry["url"] == b.db and entry["project"] == b.project_id()
    deleted = {d["blob"] for d in json.loads(run_cli("gc", *_args(a, datastore), "--grace", "0", "--json").stdout)
               ["deleted"]}
    assert deleted == {doomed} and _stored(datastore, b.blob) and _stored(datastore, b_later.blob)


def test_an_entry_of_another_project_at_ones_own_url_is_rewritten_at_the_next_persist(shared, workdir):
    datastore, a, b, _ = shared
    b.entry(datastore).write_bytes(_entry_body(b.db))
    _persist(workdir, "b", datastore, b"b again\n" * 40)
    assert json.loads(b.entry(datastore).read_bytes())["project"] == b.project_id()


def test_an_entry_written_by_casstore_0_1_0_protects_its_project(shared):
    datastore, a, b, doomed = shared
    b.entry(datastore).write_bytes(json.dumps({"url": b.db, "registered": 1795687129.069666}).encode())
    deleted = {d["blob"] for d in json.loads(run_cli("gc", *_args(a, datastore), "--grace", "0", "--json").stdout)
               ["deleted"]}
    assert deleted == {doomed} and _stored(datastore, b.blob)


def test_an_entry_written_by_casstore_0_1_0_gets_the_project_id_at_the_next_persist(shared, workdir):
    datastore, a, b, _ = shared
    b.entry(datastore).write_bytes(json.dumps({"url": b.db, "registered": 1795687129.069666}).encode())
    _persist(workdir, "b", datastore, b"b again\n" * 40)
    assert json.loads(b.entry(datastore).read_bytes())["project"] == b.project_id()


def test_gc_refuses_when_another_project_now_lives_at_an_entrys_url(shared, workdir):
    """b's file was replaced by a new project: b's references are not where the entry says."""
    datastore, a, b, doomed = shared
    b.path.unlink()
    options().set("datastore.url", str(datastore))
    create_session(b.db).index.dispose()  # a new, empty project at b's path
    result = run_cli("gc", *_args(a, datastore), "--grace", "0", code=3)
    key = b.entry(datastore).stem
    assert f"registry entry {key} says {b.db} is project" in result.stderr and f"--forget {key}" in result.stderr
    assert _stored(datastore, b.blob) and _stored(datastore, doomed)


# -- item 2: the project's identity --------------------------------------------------------

def test_every_project_records_one_identity_in_its_database_and_its_entry(shared):
    datastore, a, b, _ = shared
    ids = {a.project_id(), b.project_id()}
    assert len(ids) == 2 and all(str(uuid.UUID(i)) == i for i in ids)
    assert json.loads(a.entry(datastore).read_bytes())["project"] == a.project_id()
    assert json.loads(b.entry(datastore).read_bytes())["project"] == b.project_id()


def _as_0001(path: Path) -> None:
    """The database as casstore 0.1.0 left it: schema 0001, no project identity."""
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM casstore_meta WHERE key = 'project'")
        conn.execute("UPDATE casstore_alembic_version SET version_num = '0001'")


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version_num FROM casstore_alembic_version").fetchone()[0]


def test_a_0001_database_is_read_as_it_is(shared):
    datastore, a, b, _ = shared
    _as_0001(b.path)
    assert json.loads(run_cli("stats", *_args(b, datastore), "--json").stdout)["references"] == 1
    assert _revision(b.path) == "0001" and b.project_id() is None


def test_a_0001_database_gets_its_identity_at_its_first_persist(shared, workdir):
    datastore, a, b, _ = shared
    _as_0001(b.path)
    _persist(workdir, "b", datastore, b"b again\n" * 40)
    assert _revision(b.path) == "0002"
    assert json.loads(b.entry(datastore).read_bytes())["project"] == b.project_id() is not None


# -- item 3: whom gc connects to ---------------------------------------------------------

@dataclass
class FakePostgres:
    """A listener on 127.0.0.1 that speaks just enough of PostgreSQL's protocol to ask for a
    cleartext password, then fails the login and closes. Records every connection, the
    startup parameters and every password it was sent."""

    sock: socket.socket = field(default_factory=socket.socket)
    connections: int = 0
    startups: list[bytes] = field(default_factory=list)
    passwords: list[bytes] = field(default_factory=list)

    def __post_init__(self):
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                try:
                    self._serve(conn)
                except (OSError, struct.error):
                    pass

    def _serve(self, conn: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!ii", _recv(conn, 8))
            body = _recv(conn, length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            self.startups.append(body)
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            if _recv(conn, 1) == b"p":
                (size,) = struct.unpack("!i", _recv(conn, 4))
                self.passwords.append(_recv(conn, size - 4).rstrip(b"\0"))
            error = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(error) + 4) + error)
            return

    def close(self) -> None:
        self.sock.close()


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def fake_postgres():
    server = FakePostgres()
    yield server
    server.close()


def test_gc_sends_nothing_to_an_unconfirmed_server_entry(shared, fake_postgres):
    datastore, a, b, doomed = shared
    url = f"postgresql+psycopg://victim@127.0.0.1:{fake_postgres.port}/db"
    key = _plant(datastore, url, _entry_body(url))
    result = run_cli("gc", *_args(a, datastore), "--dry-run", code=3, env={"PGPASSWORD": "s3cret"})
    assert fake_postgres.connections == 0
    assert f"registry entry {key}" in result.stderr and f"casstore registry --trust {url}" in result.stderr
    assert f"casstore registry --forget {key}" in result.stderr and _stored(datastore, doomed)


def test_verify_sends_nothing_to_an_unconfirmed_server_entry(shared, fake_postgres):
    datastore, a, b, _ = shared
    url = f"postgresql+psycopg://victim@127.0.0.1:{fake_postgres.port}/db"
    _plant(datastore, url, json.dumps({"url": url, "registered": 1}).encode())  # as casstore 0.1.0 wrote it
    run_cli("verify", *_args(a, datastore), code=3, env={"PGPASSWORD": "s3cret"})
    assert fake_postgres.connections == 0


def test_a_confirmed_server_is_never_sent_pgpassword(shared, fake_postgres, tmp_path):
    datastore, a, b, doomed = shared
    url = f"postgresql+psycopg://victim@127.0.0.1:{fake_postgres.port}/db"
    key = _plant(datastore, url, _entry_body(url))
    run_cli("registry", *_args(a, datastore), "--trust", url)
    env = {"PGPASSWORD": "s3cret", "PGPASSFILE": str(tmp_path / "no-such-pgpass")}
    result = run_cli("gc", *_args(a, datastore), "--grace", "0", code=3, env=env)
    assert fake_postgres.connections >= 1 and fake_postgres.passwords == []
    assert f"cannot read registered database {url} (registry entry {key})" in result.stderr
    assert _stored(datastore, doomed)


def test_a_confirmed_server_is_sent_only_its_password_file_line(shared, fake_postgres, tmp_path):
    datastore, a, b, _ = shared
    url = f"postgresql+psycopg://victim@127.0.0.1:{fake_postgres.port}/db"
    _plant(datastore, url, _entry_body(url))
    run_cli("registry", *_args(a, datastore), "--trust", url)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{fake_postgres.port}:db:victim:for-this-server\n")
    pgpass.chmod(0o600)
    run_cli("gc", *_args(a, datastore), "--grace", "0", code=3,
            env={"PGPASSWORD": "s3cret", "PGPASSFILE": str(pgpass)})
    assert fake_postgres.passwords and set(fake_postgres.passwords) == {b"for-this-server"}


def test_confirmations_are_kept_in_the_users_config_not_in_the_datastore(shared, tmp_path):
    datastore, a, _, _ = shared
    url = "postgresql+psycopg://team@db.example.internal:5432/ml_runs"
    doc = json.loads(run_cli("registry", *_args(a, datastore), "--trust", url.replace("team@", "team:pw@"),
                             "--json").stdout)
    assert doc["trusted"] == url and doc["confirmed"] == [url]
    config = tmp_path / "config" / "casstore" / "trusted-databases.json"
    assert doc["file"] == str(config) and "pw" not in config.read_text()
    assert (config.stat().st_mode & 0o777) == 0o600
    assert not any(url in p.read_text(errors="replace") for p in datastore.rglob("*.json"))
    assert run_cli("registry", *_args(a, datastore), "--trusted").stdout.strip() == url
    run_cli("registry", *_args(a, datastore), "--revoke", url)
    assert json.loads(run_cli("registry", *_args(a, datastore), "--trusted", "--json").stdout)["confirmed"] == []


def test_an_sqlite_file_needs_no_confirmation_and_cannot_be_confirmed(shared):
    datastore, a, b, _ = shared
    result = run_cli("registry", *_args(a, datastore), "--trust", b.db, code=3)
    assert "need no confirmation" in result.stderr


def test_registry_trust_by_the_key_a_refusal_names_confirms_that_entrys_url(shared, fake_postgres):
    datastore, a, _, _ = shared
    url = f"postgresql+psycopg://victim@127.0.0.1:{fake_postgres.port}/db"
    key = _plant(datastore, url, _entry_body(url))
    assert "not confirmed" in run_cli("registry", *_args(a, datastore)).stdout
    assert json.loads(run_cli("registry", *_args(a, datastore), "--trust", key, "--json").stdout)["trusted"] == url
    listed = json.loads(run_cli("registry", *_args(a, datastore), "--json").stdout)["databases"]
    assert next(d for d in listed if d["key"] == key)["trusted"] is True


def test_only_a_server_of_ones_own_database_gets_ones_own_password():
    """Another project's server gets an empty password (libpq then reads only ~/.pgpass);
    the server of the user's own database, same host, port and options, the user's own."""
    from sqlalchemy.engine import make_url

    from casstore.cas.live.roots import _open_url

    own = make_url("postgresql+psycopg://casstore:pw@db.internal:5432/ml_runs")
    same = _open_url(make_url("postgresql+psycopg://casstore@db.internal:5432/other"), own)
    assert same.password == "pw" and "password" not in same.query
    for elsewhere in ("postgresql+psycopg://casstore@evil:5432/ml_runs",
                      "postgresql+psycopg://casstore@db.internal:6543/ml_runs",
                      "postgresql+psycopg://casstore@db.internal:5432/ml_runs?host=/tmp/evil"):
        opened = _open_url(make_url(elsewhere), own)
        assert opened.password is None and opened.query["password"] == ""


def test_entry_statuses_say_which_files_are_there_and_which_servers_are_confirmed(shared):
    from casstore.cas.live.registry import read_registry
    from casstore.cas.live.trust import database_url, entry_statuses, trust
    from casstore.errors import InvalidInput

    datastore, a, b, _ = shared
    url = "postgresql+psycopg://team@db.example/x"
    key = _plant(datastore, url, _entry_body(url))
    b.path.unlink()
    blobs = LocalBlobStore(str(datastore))
    entries = read_registry(blobs)[0]
    status = {s.entry.url: (s.exists, s.trusted) for s in entry_statuses(entries, registry_url(a.db))}
    assert status == {registry_url(a.db): (True, None), registry_url(b.db): (False, None), url: (None, False)}
    assert [s.trusted for s in entry_statuses(entries, url) if s.entry.url == url] == [True]
    assert database_url(key, lambda: blobs) == url
    assert database_url(url, lambda: pytest.fail("a URL needs no datastore")) == url
    with pytest.raises(InvalidInput, match="is neither a database URL nor the key of an entry in the registry"):
        database_url("0" * 32, lambda: blobs)
    trust(url)
    assert [s.trusted for s in entry_statuses(entries, None) if s.entry.url == url] == [True]
