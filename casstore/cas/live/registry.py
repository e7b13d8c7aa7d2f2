"""The registry of databases that reference blobs of a datastore.

gc must know every project that shares a datastore before it may delete anything, so each
database that stores a reference registers itself here: SQLite files by absolute path,
servers by URL without password. In-memory databases are never registered (they die with
their process, and nothing could ever open them again).

An entry is `casstore/registry/<sha256(url)[:32]>.json`, holding
`{"format": "casstore-registry-2", "project": <uuid>, "url": ..., "registered": <unix time>}`
and, for an SQLite file, `"file": [st_dev, st_ino]`, which tells the same file renamed
(moves.py) from another one (docs/datastore.md). casstore 0.1.0 wrote `{"url": ..., "registered": ...}`: such an entry is
read, and protects its database, as one without a project id. The key stays the hash of the
URL: copies of one database file share a project id, and keyed by URL they never overwrite
each other's entry; the project id tells a database that moved from one that was replaced.

An entry that cannot be read stops gc and verify (`entries`), naming its key: the project it
named could otherwise lose its blobs. Its project repairs it at its next write (`register`),
or a user drops it with `casstore registry --forget KEY`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from casstore.cas.backends.base import BlobStore, ObjectStat
from casstore.cas.backends.layout import INTERNAL, is_torn_object
from casstore.cas.index.engine import sqlite_file
from casstore.errors import UnreadableObject, UnresolvedRegistryEntry

REGISTRY_PREFIX = f"{INTERNAL}/registry"
REGISTRY_FORMAT = "casstore-registry-2"
MAX_ENTRY_BYTES = 4096
BACKENDS = ("sqlite", "postgresql")  # the databases casstore's index runs on
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}\.json")


@dataclass(frozen=True, slots=True)
class Entry:
    """A registered database. `project` is None in an entry written by casstore 0.1.0."""

    key: str
    url: str
    project: str | None
    registered: float
    file: tuple[int, int] | None = None  # (st_dev, st_ino) of an SQLite file when it registered

    @property
    def file_exists(self) -> bool | None:
        """Whether the database file of an SQLite entry is there; None for a server database."""
        found = sqlite_file(self.url)
        return None if found is None else found.exists()


@dataclass(frozen=True, slots=True)
class BrokenEntry:
    """An object of the registry that is not a readable entry: `key` is its name there.
    `folder`: the registry folder itself (or `casstore/`) is a symlink, `key` its datastore
    key; no entry can be read, and none can be forgotten."""

    key: str
    reason: str
    folder: bool = False


def registry_url(url: str | URL) -> str | None:
    """The URL gc will use to reopen a database, or None for an in-memory one."""
    parsed = make_url(url) if isinstance(url, str) else url
    found = sqlite_file(parsed)
    if found is not None:
        if found.memory:
            return None
        parsed = parsed.set(database=os.path.abspath(found.path))
    return parsed.render_as_string(hide_password=True).replace(":***@", "@")


def entry_key(url: str) -> str:
    """The key of the entry of `url` (as `registry_url` writes it)."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _object_key(key: str) -> str:
    return f"{REGISTRY_PREFIX}/{key}.json"


def register(blobs: BlobStore, url: str | URL, project: str) -> str | None:
    """Record that the database at `url`, of project `project`, references this datastore.

    Writes only if the entry is missing, unreadable or disagrees (another project, an entry
    of casstore 0.1.0): a project repairs its own entry whenever it writes."""
    reg = registry_url(url)
    if reg is None:
        return None
    key = entry_key(reg)
    current = _read_entry(blobs, key)
    if not (isinstance(current, Entry) and current.url == reg and current.project == project
            and current.file == file_identity(reg)):
        body: dict[str, object] = {"format": REGISTRY_FORMAT, "project": project, "url": reg,
                                   "registered": time.time()}
        identity = file_identity(reg)
        if identity is not None:
            body["file"] = list(identity)
        blobs.put_object(_object_key(key), json.dumps(body).encode())
    return reg


def read_registry(blobs: BlobStore) -> tuple[list[Entry], list[BrokenEntry]]:
    """Every entry (by URL) and every object of the registry that is not one (by key).
    Temp files of interrupted writes are leftovers (gc), not entries. Anything there that is
    not a regular file (a symlink, a FIFO, a folder named like an entry) is broken too: gc
    and verify refuse rather than skip it, since the project it stands for would lose its
    blobs; and so is a registry folder that is a symlink (`BrokenEntry.folder`)."""
    entries: list[Entry] = []
    specials: list[ObjectStat] = []
    objects = list(blobs.list_objects(REGISTRY_PREFIX, specials))
    broken = [_special(obj) for obj in specials if not is_torn_object(obj.key)]
    for obj in objects:
        if is_torn_object(obj.key):
            continue
        name = obj.key[len(REGISTRY_PREFIX) + 1:]
        if _ENTRY_NAME.fullmatch(name) is None:
            broken.append(BrokenEntry(name, "not the name of a registry entry"))
            continue
        key = name[: -len(".json")]
        if obj.size > MAX_ENTRY_BYTES:
            broken.append(BrokenEntry(key, f"{obj.size} bytes, more than an entry's {MAX_ENTRY_BYTES}"))
            continue
        found = _read_entry(blobs, key)
        if isinstance(found, Entry):
            entries.append(found)
        elif found is not None:  # None: forgotten since the listing
            broken.append(found)
    return sorted(entries, key=lambda e: (e.url, e.key)), sorted(broken, key=lambda b: b.key)


def _special(obj: ObjectStat) -> BrokenEntry:
    """Why `obj`, found in the registry but not a regular file, is a broken entry."""
    if not obj.key.startswith(f"{REGISTRY_PREFIX}/"):
        return BrokenEntry(obj.key, "a symlink, not a folder: the registry is not read through it", folder=True)
    name = obj.key[len(REGISTRY_PREFIX) + 1:]
    return BrokenEntry(name[: -len(".json")] if _ENTRY_NAME.fullmatch(name) else name, "not a regular file")


def entries(blobs: BlobStore) -> list[Entry]:
    """Every entry; refuses (UnresolvedRegistryEntry, naming it) if one cannot be read."""
    found, broken = read_registry(blobs)
    for folder in (b for b in broken if b.folder):
        raise UnresolvedRegistryEntry(
            folder.key, f"the registry of datastore {blobs.url} cannot be read: {folder.key!r} is {folder.reason}; "
            "gc and verify refuse until it is a folder again, since the entries behind it may name projects "
            "whose blobs they would otherwise delete")
    if broken:
        first = broken[0]
        raise UnresolvedRegistryEntry(
            first.key, f"registry entry {first.key} of datastore {blobs.url} cannot be read ({first.reason}); "
            "gc and verify refuse until it is resolved, since it may name a project whose blobs they would "
            "otherwise delete: that project repairs it at its next persist that stores an archive, or, if "
            f"you know it is gone for good, run `casstore registry --forget {first.key}`"
            + (f" ({len(broken) - 1} more entries are unreadable)" if len(broken) > 1 else ""))
    return found


def registered(blobs: BlobStore) -> list[str]:
    """The URLs of every registered database; refuses if an entry cannot be read."""
    return [e.url for e in entries(blobs)]


def _read_entry(blobs: BlobStore, key: str) -> Entry | BrokenEntry | None:
    """The entry under `key`, why it is not one, or None if there is no object."""
    try:
        data = blobs.get_object(_object_key(key), max_bytes=MAX_ENTRY_BYTES)
    except UnreadableObject as exc:
        return BrokenEntry(key, str(exc))
    return None if data is None else parse_entry(key, data)


def parse_entry(key: str, data: bytes) -> Entry | BrokenEntry:
    """The entry stored under `key`, or why it is not one."""
    if not data:
        return BrokenEntry(key, "empty")
    if len(data) > MAX_ENTRY_BYTES:
        return BrokenEntry(key, f"more than {MAX_ENTRY_BYTES} bytes")
    try:
        body = json.loads(data)
    except ValueError:
        return BrokenEntry(key, "not JSON")
    if not isinstance(body, dict):
        return BrokenEntry(key, "not a JSON object")
    problem = url_problem(body.get("url"))
    if problem is not None:
        return BrokenEntry(key, problem)
    fmt, project = body.get("format"), body.get("project")
    if fmt is None and project is not None:
        return BrokenEntry(key, "it names a project but has no format")
    if fmt is not None and fmt != REGISTRY_FORMAT:
        return BrokenEntry(key, f"format {str(fmt)[:40]!r} is unknown to this casstore (written by a newer one?)")
    if fmt is not None and not is_project_id(project):
        return BrokenEntry(key, "its project is not a UUID")
    registered_at = body.get("registered")
    if isinstance(registered_at, bool) or not isinstance(registered_at, (int, float)):
        return BrokenEntry(key, "its registration time is not a number")
    file = body.get("file")
    if file is not None and not (isinstance(file, list) and len(file) == 2
                                 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in file)):
        return BrokenEntry(key, "its file is not a pair of numbers")
    return Entry(key, body["url"], project, float(registered_at),  # project None: written by casstore 0.1.0
                 None if file is None else (file[0], file[1]))


def file_identity(url: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the SQLite file `url` names, if it is one and is there."""
    found = sqlite_file(url)
    if found is None or found.memory:
        return None
    try:
        st = os.stat(found.path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def url_problem(url: object) -> str | None:
    """Why `url` is not a URL that register() could have written, or None."""
    if not isinstance(url, str):
        return "its url is not a string"
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "its url is not a database URL"
    if parsed.get_backend_name() not in BACKENDS:
        return f"its url is not of {' or '.join(BACKENDS)}"
    if parsed.password is not None or "password" in parsed.query:
        return "its url holds a password"
    found = sqlite_file(parsed)
    if found is not None and (parsed.query or not os.path.isabs(found.path)):
        return "its url is not an absolute SQLite file path"
    if registry_url(parsed) != url:
        return "its url is not written as casstore writes it"
    return None


def is_project_id(value: object) -> bool:
    """A project id as casstore writes it: a UUID in canonical form."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def forget(blobs: BlobStore, target: str) -> list[str]:
    """Drop the registry objects named `target` (a key, as a message names it) or whose
    entry has URL `target`; returns the keys dropped."""
    try:
        url = registry_url(target) or target
    except ArgumentError:
        url = target
    entries, broken = read_registry(blobs)
    keys = {e.key for e in entries if target == e.key or url == e.url} | \
        {b.key for b in broken if b.key == target and not b.folder}
    for key in sorted(keys):
        blobs.delete_object(_object_key(key) if _ENTRY_NAME.fullmatch(f"{key}.json") else f"{REGISTRY_PREFIX}/{key}")
    return sorted(keys)
