"""Where everything lives in a datastore: the object keys and prefixes, and their parsers.

Layout of a datastore (docs/datastore.md), the same on every backend:

    casstore/FORMAT                              "casstore-datastore 1"
    casstore/blobs/<algo>/<hex[:2]>/<hex[2:]>.tar[.zst]   read-only blobs
    casstore/tmp/<random>.partial                ingests in progress (or interrupted)
    casstore/leases/<lease id>.json              blobs a writer is about to reference
    casstore/registry/<key>.json                 databases that reference blobs here
    casstore/damaged/<algo>/<hex>.json           damage a reader saw in a blob (damage.py)
    casstore/trash/<algo>-<hex[:2]>-<hex[2:]><suffix>   blobs gc moved out of sight
    casstore/quarantine/<algo>-<hex><suffix>.<ns>.<uuid hex>   damaged copies a repair moved aside
    <prefix>/<uuid hex>                          named references (ArchiveStoreIO.create)

Every parser matches a key whole: a key is a blob's (or a trash or quarantine key) only if
it is exactly the key of what it parses to, so a planted look-alike is a stranger."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from casstore.cas.digest import id_or_none, parse_id

FORMAT_KEY = "casstore/FORMAT"
FORMAT_TEXT = b"casstore-datastore 1\n"
MAX_FORMAT_BYTES = 4096
INTERNAL = "casstore"
BLOBS_PREFIX = f"{INTERNAL}/blobs"
TMP_PREFIX = f"{INTERNAL}/tmp"
TRASH_PREFIX = f"{INTERNAL}/trash"
QUARANTINE_PREFIX = f"{INTERNAL}/quarantine"
BULK_PREFIXES = (f"{BLOBS_PREFIX}/", f"{TRASH_PREFIX}/", f"{QUARANTINE_PREFIX}/")  # what list_small_objects skips
CODEC_SUFFIX = {"none": ".tar", "zstd": ".tar.zst"}
TORN_SUFFIX = ".tmp"
_TORN_INSIDE = re.compile(rf"{INTERNAL}/.+\.[0-9a-f]{{32}}\.tmp")
_TORN_REF = re.compile(r"(?:[^/]+/)*[0-9a-f]{32}\.[0-9a-f]{32}\.tmp")
_QUARANTINE_NAME = re.compile(r"(xxh128|sha256)-([0-9a-f]{32,64})(\.tar|\.tar\.zst)\.([0-9]{1,20})\.[0-9a-f]{32}")


def is_torn_object(key: str) -> bool:
    """A small object's temp file (`<key>.<uuid hex>.tmp`) that a crash left behind, where
    casstore writes one: anywhere below casstore/ (leases, registry entries, the format
    file), and outside it only a named reference's `<prefix>/<uuid hex>.<uuid hex>.tmp`.
    Anything else outside casstore/ (a user's `notes/results.<hex>.tmp`) is not casstore's."""
    if key.startswith(f"{INTERNAL}/"):
        return _TORN_INSIDE.fullmatch(key) is not None
    return _TORN_REF.fullmatch(key) is not None


def blob_key(blob_id: str, codec: str) -> str:
    algorithm, hexdigest = parse_id(blob_id)
    return f"{BLOBS_PREFIX}/{algorithm}/{hexdigest[:2]}/{hexdigest[2:]}{CODEC_SUFFIX[codec]}"


def parse_blob_key(key: str) -> tuple[str, str] | None:
    """(blob id, codec) of a blob key, None for anything else found under blobs/. A key is
    a blob's only if it is exactly the key of what it parses to (`blob_key(...) == key`):
    `<hex>\\n.tar` or a three-digit shard folder is a stranger, not another name of a blob."""
    parts = key.split("/")
    if len(parts) != 5 or parts[:2] != [INTERNAL, "blobs"]:
        return None
    for codec, suffix in sorted(CODEC_SUFFIX.items(), key=lambda kv: -len(kv[1])):
        if parts[4].endswith(suffix):
            candidate = f"{parts[2]}:{parts[3]}{parts[4][:-len(suffix)]}"
            try:
                canonical = blob_key(candidate, codec)
            except ValueError:
                return None
            return (candidate, codec) if canonical == key else None
    return None


def trash_key(blob_id: str, codec: str) -> str:
    """Where gc keeps a blob between moving it out of sight and deleting it."""
    return f"{TRASH_PREFIX}/{blob_key(blob_id, codec).split('/', 2)[2].replace('/', '-')}"


def trash_key_blob(key: str) -> tuple[str, str] | None:
    """(blob id, codec) of a trash key `casstore/trash/<algo>-<hex[:2]>-<hex[2:]><suffix>`."""
    name = key.rsplit("/", 1)[-1]
    parts = name.split("-", 2)
    if len(parts) != 3:
        return None
    parsed = parse_blob_key(f"{BLOBS_PREFIX}/{parts[0]}/{parts[1]}/{parts[2]}")
    return parsed if parsed is not None and trash_key(*parsed) == key else None


def quarantine_key(blob_id: str, codec: str, now_ns: int) -> str:
    """Where a repair keeps a damaged copy it moved aside: the id, the codec and the time it
    was moved (gc's grace period runs from then: a rename keeps the blob's old mtime), and a
    random part, so two repairs of one id never collide."""
    algorithm, hexdigest = parse_id(blob_id)
    return f"{QUARANTINE_PREFIX}/{algorithm}-{hexdigest}{CODEC_SUFFIX[codec]}.{now_ns}.{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Quarantined:
    key: str
    blob_id: str
    codec: str
    moved: float  # unix time the copy was moved aside
    size: int


def parse_quarantine_key(key: str, size: int = 0) -> Quarantined | None:
    """The quarantined copy a key names, None for anything else (the whole name must match)."""
    prefix, _, name = key.rpartition("/")
    match = _QUARANTINE_NAME.fullmatch(name) if prefix == QUARANTINE_PREFIX else None
    if match is None:
        return None
    blob_id = id_or_none(match.group(1), match.group(2))
    if blob_id is None:
        return None
    codec = "zstd" if match.group(3) == CODEC_SUFFIX["zstd"] else "none"
    return Quarantined(key, blob_id, codec, int(match.group(4)) / 1e9, size)
