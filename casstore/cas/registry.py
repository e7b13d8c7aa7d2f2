"""The registry of databases that reference blobs of a datastore.

gc must know every project that shares a datastore before it may delete anything, so each
database that stores a reference registers itself here: SQLite files by absolute path,
servers by URL without password. In-memory databases are never registered (they die with
their process, and nothing could ever open them again)."""

from __future__ import annotations

import hashlib
import json
import os
import time

from sqlalchemy.engine import URL, make_url

from casstore.cas.blobs import INTERNAL, BlobStore

REGISTRY_PREFIX = f"{INTERNAL}/registry"
MAX_ENTRY_BYTES = 64 << 10


def registry_url(url: str | URL) -> str | None:
    """The URL gc will use to reopen a database, or None for an in-memory one."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or str(parsed.query.get("mode", "")) == "memory":
            return None
        parsed = parsed.set(database=os.path.abspath(parsed.database))
    return parsed.render_as_string(hide_password=True).replace(":***@", "@")


def _key(url: str) -> str:
    return f"{REGISTRY_PREFIX}/{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"


def register(blobs: BlobStore, url: str | URL) -> str | None:
    """Record that the database at `url` references this datastore (idempotent)."""
    reg = registry_url(url)
    if reg is None:
        return None
    key = _key(reg)
    if blobs.get_object(key, max_bytes=MAX_ENTRY_BYTES) is None:
        blobs.put_object(key, json.dumps({"url": reg, "registered": time.time()}).encode())
    return reg


def registered(blobs: BlobStore) -> list[str]:
    urls = []
    for obj in blobs.list_objects(REGISTRY_PREFIX):
        try:
            urls.append(json.loads(blobs.get_object(obj.key, max_bytes=MAX_ENTRY_BYTES) or b"")["url"])
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(urls)


def forget(blobs: BlobStore, url: str) -> bool:
    """Drop a database from the registry; False if it was not there."""
    for candidate in {url, registry_url(url) or url}:
        key = _key(candidate)
        if blobs.get_object(key, max_bytes=MAX_ENTRY_BYTES) is not None:
            blobs.delete_object(key)
            return True
    return False
