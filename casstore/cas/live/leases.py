"""Leases: small objects naming the blobs a writer is about to reference (containerd's idea).

A writer takes a lease on a blob id *before* it checks whether the blob exists, and drops it
only after the index rows referencing the blob are committed. gc never deletes a leased blob,
and re-reads the leases after it has moved its candidates aside (see gc.py), so a dedup hit on
an old unreferenced blob can never lose that blob. A crashed writer's lease expires."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass

from casstore.cas.backends.base import BlobStore
from casstore.cas.backends.layout import INTERNAL
from casstore.errors import UnreadableObject

LEASES_PREFIX = f"{INTERNAL}/leases"
DEFAULT_TTL_S = 24 * 3600
MAX_LEASE_BYTES = 16 << 20  # ~400,000 blob ids
_LEASE_KEY = re.compile(rf"{LEASES_PREFIX}/[0-9a-f]{{32}}\.json")


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    key: str
    blob_ids: frozenset[str]
    expires: float

    def expired(self, now: float) -> bool:
        return self.expires <= now


class Lease:
    """A lease held by this process; use as a context manager, released on exit."""

    def __init__(self, blobs: BlobStore, ttl_s: float = DEFAULT_TTL_S):
        self._blobs = blobs
        self._ttl_s = ttl_s
        self.key = _new_key()
        self.blob_ids: set[str] = set()
        self._main: set[str] = set()  # the ids `add` wrote into `key`
        self._parts: list[str] = []  # the keys `add_many` wrote

    def add(self, blob_id: str) -> None:
        """Protect `blob_id`; written through before returning."""
        if blob_id in self.blob_ids:
            return
        self.blob_ids.add(blob_id)
        self._main.add(blob_id)
        self._write(self.key, sorted(self._main))

    def add_many(self, ids: list[str]) -> None:
        """Protect every id of `ids` (a chunked write's next chunks) with one write: a lease
        object of their own, so a write of n chunks in batches writes O(n) bytes of leases,
        not the O(n^2) of rewriting one ever-growing object."""
        fresh = sorted(set(ids) - self.blob_ids)
        if not fresh:
            return
        key = _new_key()
        self._parts.append(key)
        self.blob_ids.update(fresh)
        self._write(key, fresh)

    def _write(self, key: str, ids: list[str]) -> None:
        now = time.time()
        body = {"blobs": ids, "created": now, "expires": now + self._ttl_s,
                "host": socket.gethostname(), "pid": os.getpid()}
        self._blobs.put_object(key, json.dumps(body).encode())

    def release(self) -> None:
        if self.blob_ids:
            for key in [self.key, *self._parts]:
                self._blobs.delete_object(key)
            self.blob_ids.clear()
            self._main.clear()
            self._parts.clear()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _new_key() -> str:
    return f"{LEASES_PREFIX}/{uuid.uuid4().hex}.json"


def read_leases(blobs: BlobStore) -> list[LeaseInfo]:
    """Every lease in the datastore: the objects named `casstore/leases/<32 hex>.json`, as
    `Lease` names them (anything else there is not a lease, and never deleted as one). An
    unreadable one (or one over MAX_LEASE_BYTES) counts as expired (it protects nothing it
    can name), so a torn write never blocks gc forever."""
    leases = []
    for obj in blobs.list_objects(LEASES_PREFIX):
        if _LEASE_KEY.fullmatch(obj.key) is None:  # not a name Lease writes: not gc's to delete
            continue
        try:
            body = json.loads(blobs.get_object(obj.key, max_bytes=MAX_LEASE_BYTES) or b"")
            leases.append(LeaseInfo(obj.key, frozenset(body["blobs"]), float(body["expires"])))
        except (ValueError, KeyError, TypeError, UnreadableObject):
            leases.append(LeaseInfo(obj.key, frozenset(), 0.0))
    return leases


def leased_blob_ids(blobs: BlobStore, now: float | None = None) -> set[str]:
    now = time.time() if now is None else now
    return {b for lease in read_leases(blobs) if not lease.expired(now) for b in lease.blob_ids}
