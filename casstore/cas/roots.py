"""What keeps a blob alive: references in every database registered with the datastore (the
reference rows and the archive values of the fields), named references (ArchiveStoreIO) in
the datastore, and leases of writes in progress."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from casstore.cas.blobs import INTERNAL, BlobStore, ObjectStat, is_torn_object
from casstore.cas.engine import make_engine
from casstore.cas.index import Index
from casstore.cas.leases import leased_blob_ids
from casstore.cas.registry import registered, registry_url
from casstore.errors import DatastoreError, FieldsUnreadable

REF_FORMAT = "casstore-ref-1"
MAX_REF_BYTES = 4096


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


@dataclass(frozen=True, slots=True)
class NamedRef:
    key: str
    blob_id: str
    size: int | None


def named_refs(blobs: BlobStore) -> list[NamedRef]:
    """Every named reference in the datastore (small JSON objects outside casstore/)."""
    found = []
    for obj in blobs.list_small_objects():
        if obj.key.startswith(f"{INTERNAL}/") or obj.size > MAX_REF_BYTES or is_torn_object(obj.key):
            continue
        data = blobs.get_object(obj.key) or b""
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
    datastore. Refuses (DatastoreError) if one cannot be read: deleting on a partial view
    is how other stores lost data."""
    ids = referenced_blob_ids(index, field_roots)
    mine = registry_url(index.engine.url)
    for url in registered(blobs):
        if url != mine:
            ids |= _read_other(url, field_roots)
    return ids


def _read_other(url: str, field_roots: FieldRoots) -> set[str]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not os.path.isfile(parsed.database or ""):
        raise DatastoreError(f"registered database {url} does not exist; if it is gone for good, "
                             f"run `casstore registry --forget {url}`")
    other = Index(make_engine(url))
    try:
        return referenced_blob_ids(other, field_roots)
    except SQLAlchemyError as exc:
        raise DatastoreError(f"cannot read registered database {url}: {exc.__class__.__name__}; "
                             f"if it is gone for good, run `casstore registry --forget {url}`") from exc
    finally:
        other.dispose()


def live_blob_ids(blobs: BlobStore, index: Index, field_roots: FieldRoots) -> set[str]:
    """Leases first, then references: a writer drops its lease only after its reference is
    committed, so reading in this order never misses a blob in use."""
    leased = leased_blob_ids(blobs)
    return leased | registered_blob_ids(blobs, index, field_roots) | {r.blob_id for r in named_refs(blobs)}
