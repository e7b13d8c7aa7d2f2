"""Damage records: what a reader learnt about a stored blob, kept for the next writer.

A load or `verify --deep` that finds a blob's content not matching its id (or its zstd
stream not decompressing) writes `casstore/damaged/<algo>/<hex>.json` in the datastore, so
every project sharing it knows. The next writer that holds those bytes re-reads the stored
copy, and if the read confirms the damage, moves the copy into the quarantine and publishes
its own (store/ingest.py); then it drops the record. A record is only a reason to read: a
false or stale one (written by anyone who can write the datastore) costs one re-hash and
never replaces a copy that reads correctly."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.backends.layout import INTERNAL
from casstore.cas.digest import id_or_none, parse_id
from casstore.errors import UnreadableObject

DAMAGE_PREFIX = f"{INTERNAL}/damaged"
CHUNK_DAMAGE_PREFIX = f"{INTERNAL}/damaged-chunks"  # the same for chunks (a chunk store: blobs.ns is CHUNKS)
DAMAGE_FORMAT = "casstore-damage-1"
MAX_RECORD_BYTES = 4096
_DETAIL_CHARS = 500
_DAMAGE_NAME = r"/(xxh128|sha256)/([0-9a-f]{32,64})\.json"


@dataclass(frozen=True, slots=True)
class DamageRecord:
    blob_id: str
    codec: str | None
    stored_size: int | None
    reason: str
    detail: str
    seen: float


def damage_prefix(blobs: BlobStore) -> str:
    """Where the damage records of the objects `blobs` works on live: blobs' or chunks'."""
    return DAMAGE_PREFIX if blobs.ns.what == "blob" else CHUNK_DAMAGE_PREFIX


def damage_key(blob_id: str, prefix: str = DAMAGE_PREFIX) -> str:
    algorithm, hexdigest = parse_id(blob_id)
    return f"{prefix}/{algorithm}/{hexdigest}.json"


def parse_damage_key(key: str, prefix: str = DAMAGE_PREFIX) -> str | None:
    """The id a damage record's key below `prefix` names, None for any other key (matched whole)."""
    match = re.fullmatch(re.escape(prefix) + _DAMAGE_NAME, key)
    if match is None:
        return None
    return id_or_none(match.group(1), match.group(2))


def record_damage(blobs: BlobStore, copy: BlobStat, reason: str, detail: str) -> None:
    """Record that `copy` (the stored copy a reader used) failed its check."""
    body = {"format": DAMAGE_FORMAT, "blob": copy.blob_id, "codec": copy.codec, "stored_size": copy.stored_size,
            "reason": reason, "detail": detail[:_DETAIL_CHARS], "seen": time.time()}
    blobs.put_object(damage_key(copy.blob_id, damage_prefix(blobs)), json.dumps(body).encode())


def read_damage(blobs: BlobStore, blob_id: str) -> DamageRecord | None:
    """The damage recorded for `blob_id`, None if none. A record that is there but does not
    read as one (too large, not JSON, another blob's) still counts: it only makes the next
    writer re-read the copy."""
    fallback = DamageRecord(blob_id, None, None, "unreadable", "the damage record does not read", 0.0)
    try:
        data = blobs.get_object(damage_key(blob_id, damage_prefix(blobs)), max_bytes=MAX_RECORD_BYTES)
    except UnreadableObject:
        return fallback
    if data is None:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return fallback
    if not isinstance(body, dict) or body.get("format") != DAMAGE_FORMAT or body.get("blob") != blob_id:
        return fallback
    codec, stored_size = body.get("codec"), body.get("stored_size")
    seen = body.get("seen")
    return DamageRecord(blob_id, codec if isinstance(codec, str) else None,
                        stored_size if isinstance(stored_size, int) and not isinstance(stored_size, bool) else None,
                        str(body.get("reason", "")), str(body.get("detail", ""))[:_DETAIL_CHARS],
                        float(seen) if isinstance(seen, (int, float)) and not isinstance(seen, bool) else 0.0)


def clear_damage(blobs: BlobStore, blob_id: str) -> None:
    blobs.delete_object(damage_key(blob_id, damage_prefix(blobs)))


def damaged_ids(blobs: BlobStore) -> set[str]:
    """The ids with a damage record, from one listing of the records' folder."""
    prefix = damage_prefix(blobs)
    return {i for o in blobs.list_objects(prefix) if (i := parse_damage_key(o.key, prefix)) is not None}


def describes(record: DamageRecord, copy: BlobStat) -> bool:
    """Whether `record` is about this stored copy (same codec and size), not one replaced since."""
    return record.codec in (None, copy.codec) and record.stored_size in (None, copy.stored_size)
