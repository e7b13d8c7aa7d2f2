"""Leases (casstore/cas/live/leases.py): the small objects naming the blobs a writer is about
to reference, so that gc keeps them until the writer's index rows are committed."""

from __future__ import annotations

import os

from helpers import files_below, put


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
