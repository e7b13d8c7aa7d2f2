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


CLOCK_SKEW_S = 3600.0
"""How far a window lease reaches back before its writer's clock: an object store stamps
objects with its own clock, which may be behind the writer's."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    key: str
    blob_ids: frozenset[str]
    expires: float
    since: float | None = None  # a window: every chunk stored at or after this time is leased

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

    def add_window(self) -> None:
        """Protect every chunk stored from now on (a chunked write's new chunks), with one
        write for the whole write: gc keeps every chunk whose mtime is at or after `since`
        (now less CLOCK_SKEW_S) while the lease lives. Chunks stored earlier that the write
        reuses are named with `add_many`."""
        key = _new_key()
        self._parts.append(key)
        self._write(key, [], since=time.time() - CLOCK_SKEW_S)

    def _write(self, key: str, ids: list[str], since: float | None = None) -> None:
        now = time.time()
        body: dict[str, object] = {"blobs": ids, "created": now, "expires": now + self._ttl_s,
                                   "host": socket.gethostname(), "pid": os.getpid()}
        if since is not None:
            body["since"] = since
        # Not durable: a lease only matters to processes alive with its writer (P8); a
        # machine crash ends the writer, and a lease torn by it reads as expired.
        self._blobs.put_object(key, json.dumps(body).encode(), durable=False)

    def release(self) -> None:
        if self.blob_ids or self._parts:
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
            since = body.get("since")
            leases.append(LeaseInfo(obj.key, frozenset(body["blobs"]), float(body["expires"]),
                                    None if since is None else float(since)))
        except (ValueError, KeyError, TypeError, UnreadableObject):
            leases.append(LeaseInfo(obj.key, frozenset(), 0.0))
    return leases


def leased_since(blobs: BlobStore, now: float | None = None) -> float:
    """The earliest time from which a live window lease protects every chunk stored (inf
    if there is none): gc deletes no chunk stored at or after it."""
    now = time.time() if now is None else now
    return min((lease.since for lease in read_leases(blobs) if lease.since is not None and not lease.expired(now)),
               default=float("inf"))


def leased_blob_ids(blobs: BlobStore, now: float | None = None) -> set[str]:
    now = time.time() if now is None else now
    return {b for lease in read_leases(blobs) if not lease.expired(now) for b in lease.blob_ids}
