"""What keeps a blob alive: references in every database registered with the datastore,
named references (ArchiveStoreIO) in the datastore, and leases of writes in progress."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from casstore.cas.blobs import INTERNAL, BlobStore, ObjectStat, is_torn_object
from casstore.cas.engine import make_engine
from casstore.cas.index import Index
from casstore.cas.leases import leased_blob_ids
from casstore.cas.registry import registered, registry_url
from casstore.errors import DatastoreError, UnreadableObject

REF_FORMAT = "casstore-ref-1"
MAX_REF_BYTES = 4096
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NamedRef:
    key: str
    blob_id: str
    size: int | None


def named_refs(blobs: BlobStore) -> list[NamedRef]:
    """Every named reference in the datastore (small JSON objects outside casstore/). Only
    regular files of at most MAX_REF_BYTES are read; one that is not (any more) is skipped."""
    found = []
    for obj in blobs.list_small_objects():
        if obj.key.startswith(f"{INTERNAL}/") or obj.size > MAX_REF_BYTES or is_torn_object(obj.key):
            continue
        try:
            data = blobs.get_object(obj.key, max_bytes=MAX_REF_BYTES) or b""
        except UnreadableObject as exc:
            log.warning("not a named reference, skipped: %s", exc)
            continue
        if not data.startswith(b"{"):
            continue
        try:
            body = json.loads(data)
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("format") == REF_FORMAT and isinstance(body.get("blob"), str):
            found.append(NamedRef(obj.key, body["blob"], body.get("size")))
    return found


def leftovers(blobs: BlobStore) -> list[ObjectStat]:
    """Temp files of interrupted writes: blob ingests in casstore/tmp, and small objects
    (leases, registry entries, named references) torn between write and rename."""
    return [o for o in blobs.list_small_objects() if o.key.startswith(f"{INTERNAL}/tmp/") or is_torn_object(o.key)]


def registered_blob_ids(blobs: BlobStore, index: Index) -> set[str]:
    """Blob ids referenced by `index` and by every other database registered in the
    datastore. Refuses (DatastoreError) if one cannot be read: deleting on a partial view
    is how other stores lost data."""
    ids = index.referenced_blob_ids()
    mine = registry_url(index.engine.url)
    for url in registered(blobs):
        if url != mine:
            ids |= _read_other(url)
    return ids


def _read_other(url: str) -> set[str]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not os.path.isfile(parsed.database or ""):
        raise DatastoreError(f"registered database {url} does not exist; if it is gone for good, "
                             f"run `casstore registry --forget {url}`")
    other = Index(make_engine(url))
    try:
        return other.referenced_blob_ids()
    except SQLAlchemyError as exc:
        raise DatastoreError(f"cannot read registered database {url}: {exc.__class__.__name__}; "
                             f"if it is gone for good, run `casstore registry --forget {url}`") from exc
    finally:
        other.dispose()


def live_blob_ids(blobs: BlobStore, index: Index) -> set[str]:
    """Leases first, then references: a writer drops its lease only after its reference is
    committed, so reading in this order never misses a blob in use."""
    leased = leased_blob_ids(blobs)
    return leased | registered_blob_ids(blobs, index) | {r.blob_id for r in named_refs(blobs)}
