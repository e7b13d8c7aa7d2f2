"""How casstore reads a SQLite URL (casstore.cas.index.engine.sqlite_file): one reading for
the engine, the index, the registry, gc's roots, the CLI and the migration."""

from __future__ import annotations

import pytest
from helpers import deadline

from casstore.cas.index.engine import sqlite_file


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true",
                                 "sqlite:///file:x?mode=memory&uri=on", "sqlite:///file:x?mode=memory&uri=yes",
                                 "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_database_is_in_memory(url):
    found = sqlite_file(url)
    assert found is not None and found.memory and not found.exists()


def test_mode_memory_without_uri_names_a_file_as_sqlite_reads_it(tmp_path):
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    found = sqlite_file(f"sqlite:///{db}?mode=memory")
    assert found is not None and (found.memory, found.path, found.exists()) == (False, str(db), True)


def test_a_file_uri_is_a_uri_whose_file_casstore_does_not_look_for(tmp_path):
    found = sqlite_file(f"sqlite:///file:{tmp_path}/x.db?uri=true")
    assert found is not None and (found.memory, found.uri, found.exists()) == (False, True, False)


def test_a_relative_path_stays_relative_and_exists_only_if_the_file_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (sqlite_file("sqlite:///runs.db").path, sqlite_file("sqlite:///runs.db").exists()) == ("runs.db", False)
    (tmp_path / "runs.db").write_bytes(b"")
    assert sqlite_file("sqlite:///runs.db").exists()


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@h/db", "not a url"])
def test_another_database_or_no_url_at_all_is_none(url):
    assert sqlite_file(url) is None


@pytest.mark.parametrize("flag", ["true", "on", "yes", "1"])
def test_an_engine_on_a_memory_uri_opens_whatever_spelling_of_uri_it_has(flag):
    from sqlalchemy import text

    from casstore.cas.index.engine import make_engine

    engine = make_engine(f"sqlite:///file:casstore-mem?mode=memory&uri={flag}")  # hung in _use_wal on "on"
    with deadline(20), engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "memory"
    engine.dispose()


def test_a_new_database_file_switches_to_wal_at_once(tmp_path, monkeypatch):
    """The switch to WAL succeeds at the first try when no other connection holds the file: no
    pause for a retry (it paused 50 ms on every new database, not seeing "wal" as success)."""
    import time
    import types

    from sqlalchemy import text

    from casstore.cas.index import engine as engine_module

    def no_pause(seconds: float) -> None:
        raise AssertionError(f"paused {seconds} s switching a database nobody else holds to WAL")

    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=no_pause))
    engine = engine_module.make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
