"""What keeps a blob alive: references in every database registered with the datastore (the
reference rows and the archive values of the fields), named references (ArchiveStoreIO) in
the datastore (their format: refs.py), and leases of writes in progress.

An entry whose SQLite file is gone but whose file is the one another entry (or this
database) names now, renamed or moved within its file system (cas/live/moves.py), is the
entry that move left behind: skipped, since that file's references are read. Any other entry
that cannot be read stops gc."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Iterable, Protocol

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from casstore.cas.backends.base import BlobStore, ObjectStat
from casstore.cas.backends.layout import INTERNAL, is_torn_object
from casstore.cas.index.engine import cli_command, make_engine, sqlite_file
from casstore.cas.index.queries import PROJECT_KEY, Index
from casstore.cas.live.leases import leased_blob_ids
from casstore.cas.live.refs import named_refs
from casstore.cas.live.moves import renamed_from
from casstore.cas.live.registry import Entry, entries, file_identity, registry_url
from casstore.cas.live.trust import trusted_urls
from casstore.errors import FieldsUnreadable, UnresolvedRegistryEntry


@dataclass(frozen=True, slots=True)
class FieldRoot:
    """An archive value in a project's fields: the blob an experiment, or one of its runs,
    names under `field` (as `casstore_refs.field` spells it)."""

    experiment: str  # the experiment's id
    id_run: str  # "" for the experiment's own fields
    field: str
    blob_id: str


class FieldRoots(Protocol):
    """The archive values of a database's fields, from the layer that decodes them (the
    content store knows nothing of the fields' format): every one it finds, or
    FieldsUnreadable (a DatastoreError) for a row it cannot decode, so that gc refuses
    rather than deleting what that row may name."""

    def __call__(self, index: Index) -> Iterable[FieldRoot]: ...


def leftovers(blobs: BlobStore) -> list[ObjectStat]:
    """Temp files of interrupted writes: blob ingests in casstore/tmp, and small objects
    (leases, registry entries, named references) torn between write and rename."""
    return [o for o in blobs.list_small_objects() if o.key.startswith(f"{INTERNAL}/tmp/") or is_torn_object(o.key)]


def referenced_blob_ids(index: Index, field_roots: FieldRoots) -> set[str]:
    """Blob ids the reference rows of `index` name, and those its fields name."""
    ids = index.referenced_blob_ids()
    try:
        return ids | {root.blob_id for root in field_roots(index)}
    except FieldsUnreadable as exc:
        raise FieldsUnreadable(f"database {index.engine.url.render_as_string(hide_password=True)}: {exc}; "
                               f"gc deletes nothing until it is repaired") from exc


def registered_blob_ids(blobs: BlobStore, index: Index, field_roots: FieldRoots) -> set[str]:
    """Blob ids referenced by `index` and by every other database registered in the
    datastore. Refuses (UnresolvedRegistryEntry, naming the entry) if one cannot be read,
    reached or trusted: deleting on a partial view is how other stores lost data."""
    ids = referenced_blob_ids(index, field_roots)
    mine = registry_url(index.engine.url)
    files = [] if mine is None else [file_identity(mine)]  # the files whose references are counted
    left: list[Entry] = []  # entries whose SQLite file is not there
    for entry in entries(blobs):
        if entry.url == mine:
            _check_project(entry, index.get_fact(PROJECT_KEY), index.engine.url)
        elif entry.file_exists is False:
            left.append(entry)
        else:
            ids |= _read_other(entry, index.engine.url, field_roots)
            files.append(file_identity(entry.url))
    for entry in left:
        if not any(renamed_from(entry, f) for f in files):
            _check_sqlite_file(entry, _sqlite_path(entry), index.engine.url)
    return ids


def _read_other(entry: Entry, own: URL, field_roots: FieldRoots) -> set[str]:
    """The references of another project's database. An SQLite file is opened only if it is
    a regular file; a server only if the user confirmed its URL (trust.py), and then with no
    password but those configured for it (`_open_url`): an entry proves nothing about who
    wrote it, so it must not make casstore send credentials anywhere (docs/teams.md)."""
    url, forget = entry.url, _suggest(own, "--forget", entry.key)
    parsed, found = make_url(url), sqlite_file(url)
    if found is not None:
        _check_sqlite_file(entry, found.path, own)
    elif url not in trusted_urls():
        raise UnresolvedRegistryEntry(
            entry.key, f"registry entry {entry.key} names the server database {url}, which you have not confirmed: "
            "gc and verify connect only to servers you confirmed, since your credentials would go there; if it is "
            f"your team's database, run `{_suggest(own, '--trust', url)}`, if not, `{forget}`")
    other = Index(make_engine(_open_url(parsed, own), read_only=True))
    try:
        project, ids = other.get_fact(PROJECT_KEY), referenced_blob_ids(other, field_roots)
    except SQLAlchemyError as exc:
        raise UnresolvedRegistryEntry(entry.key, f"cannot read registered database {url} (registry entry "
                                      f"{entry.key}): {exc.__class__.__name__}; if it is gone for good, "
                                      f"run `{forget}`") from exc
    finally:
        other.dispose()
    _check_project(entry, project, own)
    return ids


def _sqlite_path(entry: Entry) -> str:
    found = sqlite_file(entry.url)
    assert found is not None  # file_exists is None for a server
    return found.path


def _check_sqlite_file(entry: Entry, path: str, own: URL) -> None:
    forget = _suggest(own, "--forget", entry.key)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        project = f", project {entry.project}" if entry.project else ""
        raise UnresolvedRegistryEntry(
            entry.key, f"registered database {entry.url} (registry entry {entry.key}{project}) does not exist, and "
            "gc deletes nothing that project may reference: if that database moved, run casstore relocate with "
            "--db naming it where it is now (renamed within one file system, any casstore command on it is "
            f"enough); if it is gone for good, run `{forget}`") from None
    except OSError as exc:
        raise UnresolvedRegistryEntry(entry.key, f"cannot read registered database {entry.url} (registry entry "
                                      f"{entry.key}): {exc.strerror}; if it is gone for good, run `{forget}`") from exc
    if not stat.S_ISREG(mode):
        raise UnresolvedRegistryEntry(entry.key, f"registered database {entry.url} (registry entry {entry.key}) "
                                      f"is not a regular file; run `{forget}`")


def _open_url(parsed: URL, own: URL) -> URL:
    """How to reach another project's server: on the server of the user's own database
    (same host, port and options), with the user's credentials for it; anywhere else with
    an empty password, so that libpq takes one only from its password file (~/.pgpass),
    whose lines name the server, never from PGPASSWORD or the user's own URL."""
    if parsed.get_backend_name() == "sqlite":
        return parsed
    if own.get_backend_name() != "sqlite" and _server(parsed) == _server(own):
        return parsed.set(password=own.password) if parsed.username == own.username else parsed
    return parsed.update_query_dict({"password": ""})


def _server(url: URL) -> tuple[str | None, int | None, list[tuple[str, str | tuple[str, ...]]]]:
    return url.host, url.port, sorted(url.query.items())


def _suggest(own: URL, *words: str) -> str:
    """The `casstore registry` command that resolves an entry, on the database gc runs on."""
    return cli_command(own, "registry", *words)


def _check_project(entry: Entry, found: str | None, own: URL) -> None:
    """An entry that names a project must find that project at its URL: another one there
    means the project moved or was replaced, and its references are not where gc looks."""
    if entry.project is not None and found != entry.project:
        raise UnresolvedRegistryEntry(
            entry.key, f"registry entry {entry.key} says {entry.url} is project {entry.project}, but that database "
            f"is {'project ' + found if found else 'of no project'}: if project {entry.project} moved, its next "
            "persist that stores an archive registers it where it is now; if it is gone for good, or to go on "
            f"without it, run `{_suggest(own, '--forget', entry.key)}`")


def live_blob_ids(blobs: BlobStore, index: Index, field_roots: FieldRoots) -> set[str]:
    """Leases first, then references: a writer drops its lease only after its reference is
    committed, so reading in this order never misses a blob in use."""
    leased = leased_blob_ids(blobs)
    registered = registered_blob_ids(blobs, index, field_roots)
    return leased | registered | {r.blob_id for r in named_refs(blobs) if r.blob_id is not None}
