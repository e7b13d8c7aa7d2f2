"""Projects that move: where a database records its datastore, and how a project that was
moved, copied or restored finds its datastore and its place in the datastore's registry.

A database records its datastore twice (casstore_meta): `datastore`, absolute or a URL (what
casstore 0.1.0 reads), and, when the datastore lies inside the SQLite file's folder,
`datastore_relative`, the path from that folder. A project whose database and datastore
move together (a folder renamed, copied, restored from backup, mounted elsewhere) then opens
where it is with no command: the relative record is read first, as long as it names a
datastore. Otherwise `relocate` re-points the database and re-registers it.

The registry (registry.py) names databases by URL. A project opened where it is not
registered registers itself there (`settle_registration`), so a moved project protects its
blobs again as soon as anything opens it. The entry it left behind (its SQLite path gone) is
recognised, not guessed at: an entry records its file's (st_dev, st_ino), and only an entry
of the same file, renamed or moved within its file system, is dropped by the project (and
skipped by gc, roots.py). A copy, a backup restored, a move to another disk or machine make
a new file: the old entry stays, and gc refuses, naming the project, until `relocate` run on
the database that moved (or `casstore registry --forget`) says what became of it. A copy of
a database and its original that moved later look alike; only the user knows which one
holds the newer references."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from casstore.cas.backends.base import BlobStore
from casstore.cas.index.engine import sqlite_file
from casstore.cas.index.queries import DATASTORE_KEY, Index
from casstore.cas.live.registry import Entry, file_identity, forget, read_registry, register, registry_url
from casstore.errors import DatastoreError

log = logging.getLogger(__name__)

RELATIVE_KEY = "datastore_relative"


def database_folder(index: Index) -> str | None:
    """The folder of the index's SQLite file; None for a server or in-memory database."""
    found = sqlite_file(index.engine.url)
    if found is None or found.memory:
        return None
    return os.path.dirname(os.path.abspath(found.path))


def relative_record(index: Index, url: str) -> str | None:
    """The path from the database's folder to datastore `url`, if the datastore lies inside
    that folder (a local path, the database an SQLite file); else None."""
    base = database_folder(index)
    if base is None or "://" in url or not os.path.isabs(url):
        return None
    rel = os.path.relpath(url, base)
    if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None
    return rel


def recorded_datastore(index: Index) -> str | None:
    """The datastore the database records: the relative record resolved against the
    database's folder when it names a datastore there (the project moved as one folder, or
    never moved), else the absolute one, else None (nothing recorded yet)."""
    absolute = index.get_fact(DATASTORE_KEY)
    relative = index.get_fact(RELATIVE_KEY)
    base = database_folder(index)
    if absolute == "":  # damage: casstore never records one; the caller refuses
        return absolute
    if relative and base is not None and not os.path.isabs(relative):
        resolved = os.path.normpath(os.path.join(base, relative))
        if absolute is None or _is_datastore(resolved) or not _is_datastore(absolute):
            return resolved
    return absolute


def _is_datastore(url: str) -> bool:
    """Whether local path `url` holds a casstore datastore (its casstore/ folder); a URL
    (S3) is taken as it is."""
    return "://" in url or os.path.isdir(os.path.join(url, "casstore"))


def record_datastore(index: Index, url: str) -> None:
    """Record datastore `url` (absolute, and relative when it can be): writes only what
    changed, so that a moved project's absolute record follows it at its next write."""
    relative = relative_record(index, url)
    if index.get_fact(DATASTORE_KEY) != url:
        index.set_fact(DATASTORE_KEY, url)
    if relative is not None and index.get_fact(RELATIVE_KEY) != relative:
        index.set_fact(RELATIVE_KEY, relative)
    elif relative is None and index.get_fact(RELATIVE_KEY) is not None:
        index.forget_facts([RELATIVE_KEY])


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle_registration` did: the URL registered (None: an in-memory database)
    and the entries it dropped, which named this very file before it was renamed."""

    registered: str | None
    dropped: tuple[str, ...] = ()


def settle_registration(blobs: BlobStore, index: Index, forget_missing: bool = False) -> Settled:
    """Register the project of `index` in `blobs`'s registry, where it is now, and drop the
    entries its move left: entries of this project whose SQLite file is gone and that
    recorded this very file (`renamed_from`), or, with `forget_missing` (`relocate`: the
    user says this database is the one that moved), every entry of this project whose file
    is gone. Entries are dropped only once the new one is written."""
    mine = registry_url(index.engine.url)
    if mine is None:
        return Settled(None)
    project = index.project_id()
    found, _broken = read_registry(blobs)
    register(blobs, index.engine.url, project)
    here = file_identity(mine)
    left = [e for e in found if e.url != mine and e.project == project and e.file_exists is False]
    dropped = [e.key for e in left if forget_missing or renamed_from(e, here)]
    for key in dropped:
        forget(blobs, key)
        log.info("registry entry %s named this database (project %s) where it was before it moved: dropped",
                 key, project)
    return Settled(mine, tuple(dropped))


def renamed_from(entry: Entry, identity: tuple[int, int] | None) -> bool:
    """Whether `entry` was registered by the SQLite file whose (st_dev, st_ino) is
    `identity`: the same file, renamed or moved within its file system."""
    return identity is not None and entry.file == identity


def missing_blobs(index: Index, blobs: BlobStore, limit: int = 5) -> list[str]:
    """Up to `limit` blob ids the index references that `blobs` does not hold."""
    missing: list[str] = []
    for blob_id in sorted(index.referenced_blob_ids()):
        if blobs.find(blob_id) is None:
            missing.append(blob_id)
            if len(missing) >= limit:
                break
    return missing


def relocate(index: Index, blobs: BlobStore) -> Settled:
    """Re-point the project of `index` at datastore `blobs` (which must hold every blob the
    project references: else nothing changes) and register it there."""
    missing = missing_blobs(index, blobs)
    if missing:
        raise DatastoreError(f"datastore {blobs.url} lacks blobs this project references ({', '.join(missing)}"
                             f"{' ...' if len(missing) >= 5 else ''}): it is not this project's datastore, or not all "
                             "of it; nothing was changed")
    record_datastore(index, blobs.url)
    return settle_registration(blobs, index, forget_missing=True)
