"""Leases (casstore/cas/live/leases.py): the small objects naming the blobs a writer is about
to reference, so that gc keeps them until the writer's index rows are committed."""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import files_below, put

from casstore.cas.live.leases import LEASES_PREFIX, Lease, LeaseInfo, leased_blob_ids, read_leases

BLOB = "xxh128:" + "1" * 32

def test_lease_file_exists_during_the_callers_block_and_is_gone_after_release(cs, ds, src):
    with cs.lease() as lease:
        info = cs.put_dir(src, "data", lease=lease)
        path = os.path.join(ds.root, *lease.key.split("/"))
        assert os.path.isfile(path)
        with open(path, "rb") as f:
            assert info.blob_id in f.read().decode()
        assert lease.blob_ids == {info.blob_id}
    assert not os.path.exists(path)
    assert files_below(os.path.join(ds.root, "casstore", "leases")) == []


def test_lease_is_also_taken_when_the_blob_already_exists(cs, ds, src):
    first = put(cs, src)
    with cs.lease() as lease:
        cs.put_dir(src, "data", lease=lease)
        assert lease.blob_ids == {first.blob_id}
        assert os.path.isfile(os.path.join(ds.root, *lease.key.split("/")))


# ---------------------------------------------------------------------------------------
# leases.py: the objects and how gc reads them


def test_a_lease_names_nothing_until_a_blob_is_added_and_is_written_through_on_add(ds):
    ds.ensure_format()
    lease = Lease(ds)
    assert read_leases(ds) == []
    lease.add(BLOB)
    assert [(info.key, info.blob_ids) for info in read_leases(ds)] == [(lease.key, frozenset({BLOB}))]
    lease.release()
    assert read_leases(ds) == []


def test_a_lease_past_its_ttl_protects_nothing(ds):
    ds.ensure_format()
    with Lease(ds, ttl_s=60) as lease:
        lease.add(BLOB)
        now = time.time()
        assert leased_blob_ids(ds, now) == {BLOB}
        assert leased_blob_ids(ds, now + 120) == set()


def test_an_unreadable_lease_counts_as_expired(ds):
    ds.ensure_format()
    key = f"{LEASES_PREFIX}/{'0' * 32}.json"
    ds.put_object(key, b"{torn")
    assert read_leases(ds) == [LeaseInfo(key, frozenset(), 0.0)]
    assert leased_blob_ids(ds) == set()


@pytest.mark.parametrize("name", ["0" * 31 + ".json", "0" * 32 + ".json.tmp", "other.json", "A" * 32 + ".json"])
def test_an_object_not_named_as_a_lease_is_not_one(ds, name):
    ds.ensure_format()
    body = json.dumps({"blobs": [BLOB], "expires": time.time() + 3600}).encode()
    ds.put_object(f"{LEASES_PREFIX}/{name}", body)
    assert read_leases(ds) == [] and leased_blob_ids(ds) == set()
