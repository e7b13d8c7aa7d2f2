"""Named references: the small JSON object at a path of the datastore that names a blob
(ArchiveStoreIO writes them; migrate puts one where a standalone legacy TAR was). The one
definition of their format (docs/datastore.md): the bytes a writer puts, and the one parser
that gc, verify, migrate and the reader all use, so that gc never deletes a blob a reader
can reach through a reference."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from casstore.cas.backends.base import BlobStore
from casstore.cas.backends.layout import CODEC_SUFFIX, INTERNAL, is_torn_object
from casstore.cas.digest import parse_id
from casstore.errors import InvalidInput, UnreadableObject

REF_FORMAT = "casstore-ref-1"
MAX_REF_BYTES = 4096
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RefFacts:
    """What a named reference records of the stored copy its writer found or wrote (as a
    `casstore_blobs` row does: casstore.cas.store.copy_checks.StoredFacts): readers prefer the copy that
    matches, verify checks the one it describes."""

    stored_size: int
    codec: str


@dataclass(frozen=True, slots=True)
class NamedRef:
    """A named reference as parse_named_ref read it. gc keeps `blob_id` alive whatever
    `problem` says; a reader refuses a reference with a `problem` (why it cannot be read
    safely: no valid blob id, no valid size, facts that are not facts)."""

    key: str
    blob_id: str | None  # None: `blob` is not a string (it names nothing gc could keep)
    size: int | None
    facts: RefFacts | None = None
    problem: str | None = None


def parse_named_ref(key: str, data: bytes) -> NamedRef | None:
    """The named reference that object `key` holds, None if it holds none (a file of the
    user's, a legacy TAR, an object of casstore's own folder, a torn temp file, a key no
    listing gives: `a//b`, `./a`, `/a`). The one parser of references: ArchiveStoreIO reads
    exactly what this accepts without a `problem`, and gc counts every reference it returns
    as a root, so that gc never deletes a blob a reader can reach through a reference."""
    parts = key.split("/")
    if key.startswith(f"{INTERNAL}/") or is_torn_object(key) or len(data) > MAX_REF_BYTES \
            or any(part in ("", ".", "..") for part in parts):  # a listing gives every key in this form
        return None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: brackets nested deeper than the parser goes
        return None
    if not isinstance(body, dict) or body.get("format") != REF_FORMAT:
        return None
    blob, size = body.get("blob"), body.get("size")
    facts, facts_problem = _ref_facts(body)
    problem = (None if _is_blob_id(blob) else f"names no valid blob id: {blob!r}") \
        or (None if ref_size(size) is not None else
            f"records no valid size ({size!r}): nothing would bound the read of its blob") \
        or facts_problem
    return NamedRef(key, blob if isinstance(blob, str) else None, ref_size(size), facts, problem)


def _is_blob_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_id(value)
    except InvalidInput:
        return False
    return True


def _ref_facts(body: dict[str, Any]) -> tuple[RefFacts | None, str | None]:
    """The optional `codec` and `stored_size` of a reference (written since issue 11): both
    or neither, each valid; with the problem if not."""
    if "codec" not in body and "stored_size" not in body:
        return None, None
    codec, stored_size = body.get("codec"), ref_size(body.get("stored_size"))
    if codec not in CODEC_SUFFIX or stored_size is None:
        return None, (f"records no valid stored copy (codec {codec!r}, stored_size {body.get('stored_size')!r}): "
                      "it does not say which copy of its blob to read")
    return RefFacts(stored_size, codec), None


def named_ref_data(blob_id: str, size: int, facts: RefFacts, arc_dir: str | None) -> bytes:
    """The bytes of a new named reference (docs/datastore.md), as parse_named_ref reads them."""
    return json.dumps({"format": REF_FORMAT, "blob": blob_id, "size": size, "codec": facts.codec,
                       "stored_size": facts.stored_size, "arc_dir": arc_dir}).encode()


def named_refs(blobs: BlobStore) -> list[NamedRef]:
    """Every named reference in the datastore (parse_named_ref), those with a problem too.
    Only regular files of at most MAX_REF_BYTES are read; one that is not (any more) is
    skipped, and no reader reads it either (get_object refuses it)."""
    found = []
    for obj in blobs.list_small_objects():
        if obj.key.startswith(f"{INTERNAL}/") or obj.size > MAX_REF_BYTES or is_torn_object(obj.key):
            continue
        try:
            data = blobs.get_object(obj.key, max_bytes=MAX_REF_BYTES) or b""
        except UnreadableObject as exc:
            log.warning("not a named reference, skipped: %s", exc)
            continue
        ref = parse_named_ref(obj.key, data)
        if ref is not None:
            found.append(ref)
    return found


def owned_refs(blobs: BlobStore, experiments: set[uuid.UUID]) -> tuple[list[tuple[uuid.UUID, NamedRef]],
                                                                       list[NamedRef]]:
    """The named references of the datastore that name a blob, split into those in the
    folder of one of `experiments` and the others (standalone archives). MLtraq, and so
    casstore.mltraq.enable() and `migrate --form mltraq`, keep an experiment's archives at
    `<experiment id>/<uuid hex>`: a project in that form has its archives there, not in
    reference rows. A reference with a `problem` is never an experiment's archive."""
    owned, standalone = [], []
    for ref in named_refs(blobs):
        if ref.blob_id is None:
            continue
        owner = _experiment_folder(ref.key)
        if owner in experiments and ref.problem is None:
            owned.append((owner, ref))
        else:
            standalone.append(ref)
    return owned, standalone


def delete_owned_refs(blobs: BlobStore, experiments: set[uuid.UUID]) -> list[str]:
    """Delete the references in the folders of `experiments` (owned_refs, one listing), as
    MLtraq's `Experiment.delete` removes that folder; their blobs are then gc's. The keys deleted."""
    owned = [ref.key for _owner, ref in owned_refs(blobs, experiments)[0]]
    for key in owned:
        blobs.delete_object(key)
    return owned


def _experiment_folder(key: str) -> uuid.UUID | None:
    """The experiment id that `key`'s folder spells exactly (`<id>/<name>`), else None."""
    folder, _, name = key.partition("/")
    if not name or "/" in name:
        return None
    try:
        found = uuid.UUID(folder)
    except ValueError:
        return None
    return found if str(found) == folder else None


def ref_size(value: object) -> int | None:
    """The `size` of a named reference if it is one (a non-negative integer), else None:
    a reference without a valid size bounds no read."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
