"""One test suite for every blob store backend (zarr-python's way): `BlobStoreContract` is
what casstore needs of a datastore, and each backend's class below runs all of it on a fresh
store. Then the same user-level story (persist, dedup, load, named references, gc, verify,
the CLI) on a local folder and on S3, and what is particular to S3 (docs/teams.md).

The S3 tests run against a real S3-protocol server: $CASSTORE_TEST_S3_ENDPOINT (CI), else a
moto server that conftest.py starts on a free loopback port."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from multiprocessing.pool import ThreadPool

import pytest
from helpers import blob_path, deadline, file_tree, run_cli

from casstore import create_session, options
from casstore.cas.backends.base import BlobStat
from casstore.cas.backends.factory import open_blobstore
from casstore.cas.backends.layout import CHUNKS, FORMAT_KEY, FORMAT_TEXT, TRASH_PREFIX, blob_key, trash_key
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.digest import digest_bytes
from casstore.cas.gc import collect
from casstore.cas.index.queries import DATASTORE_KEY, Index
from casstore.cas.live.leases import Lease
from casstore.cas.live.registry import registered
from casstore.cas.verify import verify
from casstore.errors import BlobNotFound, CorruptBlob, DatastoreError, LoadError, UnreadableObject
from casstore.session import field_roots
from casstore.storage.archivestore import ArchiveStore, ArchiveStoreIO

MiB = 1 << 20
TMP_PREFIX = "casstore/tmp"


def ingest(store, data: bytes, codec: str = "none", blob_id: str | None = None, chunk: int = MiB):
    """Write `data` through an ingest and commit it under `blob_id` (default: its digest)."""
    blob_id = blob_id or digest_bytes(data)
    with store.begin_ingest() as ing:
        for start in range(0, len(data), chunk):
            ing.write(data[start:start + chunk])
        return ing.commit(blob_id, codec)


def read_blob(store, blob_id: str) -> bytes:
    f, _stat = store.open_blob(blob_id)
    with f:
        out = bytearray()
        while chunk := f.read(MiB):
            out += chunk
        return bytes(out)


def keys(store, prefix: str = "") -> list[str]:
    return sorted(o.key for o in store.list_objects(prefix))


def resembling(blob_id: str) -> str:
    """A key under blobs/ that parses to `blob_id` but is not its key (the shard folder is
    three digits): what only a whole-key check tells from the blob. Unlike a name with a
    newline, every S3 server stores it."""
    algorithm, hexdigest = blob_id.split(":")
    return f"casstore/blobs/{algorithm}/{hexdigest[:3]}/{hexdigest[3:]}.tar"


def payload(n: int, seed: int = 0) -> bytes:
    """n pseudo-random bytes, deterministic, cheap."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


class BlobStoreContract:
    """What every BlobStore backend must do. Subclasses provide a fresh `store` fixture."""

    large = 12 * MiB  # several upload parts on S3 (part_size is set to 5 MiB there)
    newline_keys = True  # whether the backend stores a key with a newline in it

    @pytest.fixture
    def store(self):
        raise NotImplementedError

    # the datastore's format file

    def test_a_new_store_exists_once_its_format_is_written(self, store):
        assert not store.exists()
        assert store.get_object(FORMAT_KEY, max_bytes=100) is None
        store.ensure_format()
        store.ensure_format()
        assert store.exists()
        assert store.get_object(FORMAT_KEY, max_bytes=100) == FORMAT_TEXT

    def test_a_datastore_of_another_format_is_refused(self, store):
        store.put_object(FORMAT_KEY, b"casstore-datastore 99\n")
        with pytest.raises(DatastoreError, match="unsupported datastore format"):
            store.ensure_format()

    def test_reads_refuse_only_a_format_this_casstore_does_not_know(self, store):
        store.check_format()  # nothing written yet: readable, and nothing is written
        assert store.get_object(FORMAT_KEY, max_bytes=100) is None
        store.ensure_format()
        store.check_format()
        store.put_object(FORMAT_KEY, b"casstore-datastore 3\n")
        with pytest.raises(DatastoreError, match="unsupported datastore format 'casstore-datastore 3'"):
            store.check_format()

    def test_a_new_store_starts_chunked_and_an_existing_one_keeps_its_format(self, store):
        assert store.ensure_format() == "chunked"
        store.set_format("whole")
        assert store.get_object(FORMAT_KEY, max_bytes=100) == b"casstore-datastore 1\n"
        assert store.ensure_format() == "whole"
        assert store.read_format() == "whole"

    # ingest and publish

    def test_commit_publishes_the_bytes_under_their_id(self, store):
        data = payload(100_000)
        stat, new = ingest(store, data)
        assert new is True
        assert (stat.blob_id, stat.stored_size, stat.codec) == (digest_bytes(data), len(data), "none")
        found = store.find(stat.blob_id)
        assert (found.blob_id, found.stored_size, found.codec) == (stat.blob_id, len(data), "none")
        assert read_blob(store, stat.blob_id) == data
        assert [b.blob_id for b in store.iter_blobs()] == [stat.blob_id]
        assert keys(store) == [blob_key(stat.blob_id, "none")]

    def test_a_blob_is_not_visible_before_its_commit(self, store):
        data = payload(self.large, seed=1)
        blob_id = digest_bytes(data)
        with store.begin_ingest() as ing:
            for start in range(0, len(data), MiB):
                ing.write(data[start:start + MiB])
                assert store.find(blob_id) is None
            assert keys(store, "casstore/blobs") == []
            _stat, new = ing.commit(blob_id, "none")
        assert new
        assert store.find(blob_id).stored_size == len(data)

    def test_large_blob_round_trip_leaves_no_temp_object(self, store):
        data = payload(self.large, seed=2)
        stat, new = ingest(store, data)
        assert new and stat.stored_size == len(data)
        assert read_blob(store, stat.blob_id) == data
        assert keys(store, TMP_PREFIX) == []
        assert keys(store) == [blob_key(stat.blob_id, "none")]

    @pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "large"])
    def test_a_second_writer_of_an_id_publishes_nothing(self, store, size):
        first = payload(size, seed=3)
        blob_id = digest_bytes(first)
        _stat, new = ingest(store, first)
        assert new
        stat, new = ingest(store, payload(size, seed=4), blob_id=blob_id)
        assert new is False
        assert stat.stored_size == size
        assert read_blob(store, blob_id) == first
        assert len(list(store.iter_blobs())) == 1
        assert keys(store, TMP_PREFIX) == []

    @pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "large"])
    def test_publish_never_overwrites_even_when_the_existence_check_misses(self, store, size, monkeypatch):
        """A concurrent writer published between our check and our publish: the publish
        itself must refuse to replace the blob."""
        first = payload(size, seed=5)
        blob_id = digest_bytes(first)
        ingest(store, first)
        real_find, calls = store.find, []

        def find_missing_once(bid):
            calls.append(bid)
            return None if len(calls) == 1 else real_find(bid)

        monkeypatch.setattr(store, "find", find_missing_once)
        stat, new = ingest(store, payload(size, seed=6), blob_id=blob_id)
        monkeypatch.undo()
        assert calls, "commit must check whether the id is there"
        assert new is False
        assert read_blob(store, blob_id) == first
        assert stat.stored_size == size
        assert keys(store, TMP_PREFIX) == []

    def test_an_id_stored_in_the_other_codec_counts_as_present(self, store):
        data = payload(5000, seed=7)
        blob_id = digest_bytes(data)
        zstd, new = ingest(store, b"pretend zstd frame", codec="zstd", blob_id=blob_id)
        assert new and zstd.codec == "zstd"
        stat, new = ingest(store, data, blob_id=blob_id)
        assert new is False and stat.codec == "zstd"
        assert keys(store, "casstore/blobs") == [blob_key(blob_id, "zstd")]

    @pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "large"])
    def test_an_ingest_left_without_commit_leaves_nothing(self, store, size):
        data = payload(size, seed=8)
        with pytest.raises(RuntimeError, match="interrupted"):
            with store.begin_ingest() as ing:
                for start in range(0, len(data), MiB):
                    ing.write(data[start:start + MiB])
                raise RuntimeError("interrupted")
        ing = store.begin_ingest()
        ing.write(data[:100])
        ing.abort()
        ing.abort()
        assert keys(store) == []

    def test_concurrent_writers_of_one_id_publish_it_once(self, store):
        data = payload(300_000, seed=9)
        results, errors = [], []
        barrier = threading.Barrier(6)

        def writer():
            try:
                with store.begin_ingest() as ing:
                    ing.write(data)
                    barrier.wait()
                    results.append(ing.commit(digest_bytes(data), "none"))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sum(new for _stat, new in results) == 1
        assert {s.stored_size for s, _new in results} == {len(data)}
        assert read_blob(store, digest_bytes(data)) == data
        assert keys(store) == [blob_key(digest_bytes(data), "none")]

    def test_mtime_is_the_time_of_publishing(self, store):
        before = time.time()
        stat, _new = ingest(store, payload(10))
        after = time.time()
        found = store.find(stat.blob_id)
        # object stores keep whole seconds; clocks of client and server may differ a little
        assert before - 5 <= found.mtime <= after + 5
        assert [b.mtime for b in store.iter_blobs()] == [found.mtime]

    # finding, reading and deleting blobs

    def test_a_missing_blob(self, store):
        missing = digest_bytes(b"never stored")
        assert store.find(missing) is None
        with pytest.raises(BlobNotFound) as raised:
            store.open_blob(missing)
        assert isinstance(raised.value, FileNotFoundError)
        store.delete_blob(missing, "none")

    def test_delete_blob(self, store):
        stat, _new = ingest(store, payload(1000, seed=10))
        store.delete_blob(stat.blob_id, stat.codec)
        assert store.find(stat.blob_id) is None
        assert list(store.iter_blobs()) == []
        store.delete_blob(stat.blob_id, stat.codec)

    def test_blobs_are_read_in_pieces(self, store):
        data = payload(3 * MiB + 17, seed=11)
        stat, _new = ingest(store, data)
        f, found = store.open_blob(stat.blob_id)
        with f:
            assert found.stored_size == len(data)
            pieces = [f.read(1000), f.read(MiB), f.read()]
        assert b"".join(pieces) == data

    def test_iter_blobs_ignores_strangers_under_blobs(self, store):
        stat, _new = ingest(store, payload(10, seed=12))
        store.put_object("casstore/blobs/xxh128/zz/not-a-blob.txt", b"x")
        store.put_object("casstore/blobs/README", b"x")
        assert [b.blob_id for b in store.iter_blobs()] == [stat.blob_id]

    # a key is a blob's only if it is exactly that blob's key (issue 11, item 1)

    def test_only_a_key_that_is_exactly_a_blobs_key_is_a_blob(self, store):
        stat, _new = ingest(store, payload(10, seed=30))
        real = blob_key(stat.blob_id, "none")
        folder, name = real.rsplit("/", 1)
        hexdigest = stat.blob_id.split(":")[1]
        strangers = [resembling(stat.blob_id), f"casstore/blobs/xxh128/{hexdigest[:2].upper()}/{hexdigest[2:].upper()}.tar"]
        if self.newline_keys:
            strangers += [f"{folder}/{name[:-4]}\n.tar", f"{folder}/{name}\n"]
        strangers.sort()
        for key in strangers:
            store.put_object(key, b"planted")
        found: list = []
        assert [(b.blob_id, b.codec, b.key) for b in store.iter_blobs(found)] == [(stat.blob_id, "none", real)]
        assert sorted(o.key for o in found) == strangers

    def test_moving_a_blob_to_the_trash_moves_only_the_object_listed_as_it(self, store):
        stat, _new = ingest(store, payload(10, seed=31))
        real, planted = blob_key(stat.blob_id, "none"), resembling(stat.blob_id)
        store.put_object(planted, b"planted")
        with pytest.raises(DatastoreError):
            store.move_to_trash(BlobStat(stat.blob_id, 7, "none", 0.0, planted))
        assert keys(store, "casstore/blobs") == sorted([real, planted])
        listed = list(store.iter_blobs())
        assert [store.move_to_trash(b) for b in listed] == [trash_key(stat.blob_id, "none")]
        assert keys(store, "casstore/blobs") == [planted]

    def test_a_planted_trash_name_never_publishes_its_bytes_as_a_blob(self, store):
        """gc first puts its trash back; an object there whose name only resembles a blob's
        trash name is dropped, never published under the id it resembles."""
        blob_id = digest_bytes(b"never stored")
        planted = f"{TRASH_PREFIX}/{resembling(blob_id).split('/', 2)[2].replace('/', '-')}"
        store.put_object(planted, b"planted")
        store.restore_from_trash(planted)
        assert store.find(blob_id) is None
        assert keys(store, "casstore/blobs") == []

    # small objects: leases, registry entries, named references

    def test_a_small_object_over_its_readers_bound_is_refused(self, store):
        store.put_object("refs/big", b"x" * 1000)
        assert store.get_object("refs/big", max_bytes=1000) == b"x" * 1000
        with pytest.raises(UnreadableObject):
            store.get_object("refs/big", max_bytes=999)

    def test_an_empty_small_object_reads_as_empty(self, store):
        store.put_object("refs/empty", b"")
        assert store.get_object("refs/empty", max_bytes=10) == b""

    def test_small_objects(self, store):
        assert store.get_object("refs/a", max_bytes=100) is None
        store.put_object("refs/a", b"one")
        store.put_object("refs/a", b"two")
        store.put_object("refs/deeper/b", b"three")
        store.put_object("top", b"4")
        assert store.get_object("refs/a", max_bytes=100) == b"two"
        listed = {o.key: o.size for o in store.list_objects("refs")}
        assert listed == {"refs/a": 3, "refs/deeper/b": 5}
        assert keys(store) == ["refs/a", "refs/deeper/b", "top"]
        assert list(store.list_objects("nothing/here")) == []
        store.delete_object("refs/a")
        store.delete_object("refs/a")
        assert store.get_object("refs/a", max_bytes=100) is None
        assert keys(store, "refs") == ["refs/deeper/b"]

    def test_a_listing_prefix_is_a_folder_not_a_string_prefix(self, store):
        store.put_object("casstore/tmp/a.partial", b"x")
        store.put_object("casstore/tmpfoo/b", b"x")
        store.put_object("casstore/tmp.txt", b"x")
        assert keys(store, "casstore/tmp") == ["casstore/tmp/a.partial"]

    def test_list_small_objects_is_everything_but_the_blobs_and_the_trash(self, store):
        kept, _new = ingest(store, payload(3000, seed=20))
        trashed, _new = ingest(store, payload(3000, seed=21))
        store.move_to_trash(trashed)
        small = ["casstore/leases/l1.json", "casstore/registry/r1.json", "casstore/tmp/x.partial",
                 "undefined/0123abcd", "deep/er/ref", "top", "casstore/leases/l2.json.0123456789abcdef0123456789abcdef.tmp"]
        store.ensure_format()
        for key in small:
            store.put_object(key, b"{}")
        listed = sorted(o.key for o in store.list_small_objects())
        assert listed == sorted(small + [FORMAT_KEY])
        every = keys(store)
        assert blob_key(kept.blob_id, "none") in every and any(k.startswith(f"{TRASH_PREFIX}/") for k in every)

    # gc's trash

    def test_trash_and_restore(self, store):
        data = payload(2000, seed=13)
        stat, _new = ingest(store, data)
        key = store.move_to_trash(store.find(stat.blob_id))
        assert key is not None and key.startswith(f"{TRASH_PREFIX}/")
        assert store.find(stat.blob_id) is None
        assert [o.key for o in store.iter_trash()] == [key]
        store.restore_from_trash(key)
        assert read_blob(store, stat.blob_id) == data
        assert list(store.iter_trash()) == []
        assert store.move_to_trash(store.find(stat.blob_id)) is not None
        assert store.move_to_trash(stat) is None  # already gone

    def test_restore_never_overwrites_an_id_written_again_meanwhile(self, store):
        old = payload(2000, seed=14)
        stat, _new = ingest(store, old)
        key = store.move_to_trash(stat)
        again, new = ingest(store, payload(2000, seed=15), blob_id=stat.blob_id)
        assert new
        store.restore_from_trash(key)
        assert read_blob(store, stat.blob_id) == payload(2000, seed=15)
        assert list(store.iter_trash()) == []

    def test_large_blob_through_the_trash(self, store):
        data = payload(self.large, seed=16)
        stat, _new = ingest(store, data)
        key = store.move_to_trash(store.find(stat.blob_id))
        store.restore_from_trash(key)
        assert read_blob(store, stat.blob_id) == data

    def test_find_leased_puts_back_a_blob_that_gc_holds_in_its_trash(self, store):
        data = payload(2000, seed=17)
        stat, _new = ingest(store, data)
        store.move_to_trash(store.find(stat.blob_id))
        assert store.find(stat.blob_id) is None
        assert store.find_leased(stat.blob_id) == store.find(stat.blob_id) is not None
        assert read_blob(store, stat.blob_id) == data
        assert list(store.iter_trash()) == []

    def test_find_leased_of_a_blob_deleted_for_good_is_none(self, store):
        stat, _new = ingest(store, payload(2000, seed=18))
        store.delete_object(store.move_to_trash(stat))
        assert store.find_leased(stat.blob_id) is None

    @pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "large"])
    def test_a_commit_racing_gcs_trash_still_publishes(self, store, size, monkeypatch):
        """The writer's check misses the blob, its publish finds the id taken, and gc moves
        that blob into its trash just then: the commit still ends with the blob published,
        never with an error."""
        data = payload(size, seed=19)
        stat, _new = ingest(store, data)
        real_find, calls = store.find, []

        def find_then_gc(bid):
            calls.append(bid)
            if len(calls) == 1:
                return None
            if len(calls) == 2:
                store.move_to_trash(stat)
            return real_find(bid)

        monkeypatch.setattr(store, "find", find_then_gc)
        again, _new = ingest(store, data)
        monkeypatch.undo()
        assert len(calls) >= 2, "the race was not reached"
        assert again.blob_id == stat.blob_id and again.stored_size == size
        assert read_blob(store, stat.blob_id) == data

    # damaged copies: the quarantine (issue 11, item 6)

    def test_a_commit_moves_a_copy_its_check_finds_damaged_into_the_quarantine_and_publishes_its_own(self, store):
        good = payload(3000, seed=40)
        blob_id = digest_bytes(good)
        ingest(store, b"planted garbage", blob_id=blob_id)
        checked = []

        def damaged(f, copy):
            checked.append((copy.blob_id, copy.codec, f.read()))
            return checked[-1][2] != good

        with store.begin_ingest() as ing:
            ing.write(good)
            stat, new = ing.commit(blob_id, "none", damaged)
        assert new is True and stat.stored_size == len(good)
        assert checked == [(blob_id, "none", b"planted garbage")]
        assert read_blob(store, blob_id) == good
        [moved] = list(store.iter_quarantine())
        assert (moved.blob_id, moved.codec, moved.size) == (blob_id, "none", len(b"planted garbage"))
        assert time.time() - 60 <= moved.moved <= time.time() + 1
        assert store.get_object(moved.key, max_bytes=1 << 20) == b"planted garbage"
        assert keys(store, TMP_PREFIX) == []

    def test_a_commit_keeps_a_copy_its_check_finds_sound(self, store):
        data = payload(3000, seed=41)
        first, _new = ingest(store, data)
        with store.begin_ingest() as ing:
            ing.write(data)
            stat, new = ing.commit(first.blob_id, "none", lambda f, copy: f.read() != data)
        assert new is False and stat.stored_size == len(data)
        assert list(store.iter_quarantine()) == []
        assert keys(store) == [blob_key(first.blob_id, "none")]

    def test_quarantine_of_a_copy_that_is_not_there_is_gone(self, store):
        stat, _new = ingest(store, payload(100, seed=42))
        store.delete_blob(stat.blob_id, "none")
        assert store.quarantine(stat, lambda f, copy: True) == "gone"
        assert list(store.iter_quarantine()) == []

    def test_quarantine_never_moves_a_copy_replaced_while_it_was_checked(self, store):
        """Another repair published the good bytes while this one read the damaged copy:
        the good copy stays under the id, and nothing of it lands in the quarantine."""
        good = payload(3000, seed=43)
        blob_id = digest_bytes(good)
        damaged_copy, _new = ingest(store, b"rotten", blob_id=blob_id)

        def replaced_meanwhile(f, copy):
            store.delete_blob(blob_id, "none")
            ingest(store, good)
            return True

        assert store.quarantine(damaged_copy, replaced_meanwhile) == "gone"
        assert read_blob(store, blob_id) == good
        assert list(store.iter_quarantine()) == []

    def test_open_blob_prefers_the_copy_the_caller_describes(self, store):
        data = payload(4000, seed=44)
        blob_id = digest_bytes(data)
        ingest(store, b"zstd copy", codec="zstd", blob_id=blob_id)
        store.put_object(blob_key(blob_id, "none"), data)  # a second copy, as two racing writers leave
        for codec, expected in (("zstd", b"zstd copy"), ("none", data)):
            f, found = store.open_blob(blob_id, lambda copy, codec=codec: copy.codec == codec)
            with f:
                assert (found.codec, f.read()) == (codec, expected)
        f, found = store.open_blob(blob_id, lambda copy: False)  # none matches: the first there is
        with f:
            assert found.codec == "none"

    def test_quarantined_copies_are_not_small_objects_nor_blobs(self, store):
        good = payload(500, seed=45)
        ingest(store, b"bad", blob_id=digest_bytes(good))
        with store.begin_ingest() as ing:
            ing.write(good)
            ing.commit(digest_bytes(good), "none", lambda f, copy: True)
        assert [o.key for o in store.list_small_objects()] == []
        assert [b.blob_id for b in store.iter_blobs()] == [digest_bytes(good)]
        assert len(list(store.iter_quarantine())) == 1

    # the chunk namespace (chunked blobs, P13): the same create-only publish, other keys

    def test_a_chunk_is_published_under_its_key_and_is_no_blob(self, store):
        chunks = store.view(CHUNKS)
        data = payload(5000, seed=40)
        stat, new = ingest(chunks, data, codec="zstd")
        assert new and stat.key == CHUNKS.blob_key(digest_bytes(data), "zstd")
        assert keys(store) == [stat.key]
        assert [c.blob_id for c in chunks.iter_blobs()] == [digest_bytes(data)]
        assert list(store.iter_blobs()) == [] and store.find(digest_bytes(data)) is None
        assert read_blob(chunks, stat.blob_id) == data

    def test_a_second_publish_of_a_chunk_id_keeps_the_first_even_when_the_check_misses(self, store, monkeypatch):
        chunks = store.view(CHUNKS)
        first = payload(3000, seed=41)
        chunk_id = digest_bytes(first)
        ingest(chunks, first)
        real_find, calls = chunks.find, []
        monkeypatch.setattr(chunks, "find", lambda cid: None if not calls.append(cid) and len(calls) == 1
                            else real_find(cid))
        _stat, new = ingest(chunks, payload(3000, seed=42), blob_id=chunk_id)
        monkeypatch.undo()
        assert calls and new is False
        assert read_blob(chunks, chunk_id) == first
        assert keys(store) == [CHUNKS.blob_key(chunk_id, "none")]

    def test_a_chunk_goes_through_its_own_trash(self, store):
        chunks = store.view(CHUNKS)
        stat, _new = ingest(chunks, payload(2000, seed=43))
        trashed = chunks.move_to_trash(stat)
        assert trashed == CHUNKS.trash_key(stat.blob_id, "none") and chunks.find(stat.blob_id) is None
        assert [o.key for o in chunks.iter_trash()] == [trashed] and list(store.iter_trash()) == []
        chunks.restore_from_trash(trashed)
        assert chunks.find(stat.blob_id) is not None

    # leftovers of interrupted writes

    def test_a_leftover_of_an_interrupted_write_is_deleted(self, store):
        store.put_object(f"{TMP_PREFIX}/dead.partial", b"half a blob")
        self.make_old(store, f"{TMP_PREFIX}/dead.partial")
        assert keys(store, TMP_PREFIX) == [f"{TMP_PREFIX}/dead.partial"]
        assert store.delete_leftover(f"{TMP_PREFIX}/dead.partial") is True
        assert keys(store, TMP_PREFIX) == []
        assert store.delete_leftover(f"{TMP_PREFIX}/dead.partial") is True

    def make_old(self, store, key: str) -> None:
        """Age an object past any grace period (each backend knows how)."""


def _age_local(store: LocalBlobStore, key: str, seconds: float = 7200) -> None:
    path = os.path.join(store.root, *key.split("/"))
    old = time.time() - seconds
    os.utime(path, (old, old))


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalBlobStore(str(tmp_path / "ds"))

    def make_old(self, store, key):
        _age_local(store, key)

    def test_a_live_writers_temp_file_is_not_a_leftover(self, store):
        with store.begin_ingest() as ing:
            ing.write(b"x" * 10)
            key = keys(store, TMP_PREFIX)[0]
            assert store.delete_leftover(key) is False
        assert keys(store, TMP_PREFIX) == []

    # special files: only regular files are objects (issue 11, item 5); no S3 equivalent

    def special_files(self, store, folder: str) -> dict[str, str]:
        """A FIFO and symlinks (to a device, to a regular file, dangling) in `folder`."""
        base = os.path.join(store.root, *folder.split("/"))
        os.makedirs(base, exist_ok=True)
        regular = os.path.join(store.root, "outside-file")
        with open(regular, "wb") as f:
            f.write(b'{"format": "casstore-ref-1"}')
        made = {"fifo": "fifo", "to-dev-zero": "/dev/zero", "to-a-file": regular, "dangling": "/nonexistent"}
        for name, target in made.items():
            path = os.path.join(base, name)
            os.mkfifo(path) if target == "fifo" else os.symlink(target, path)
        return {name: f"{folder}/{name}" for name in made}

    def test_special_files_are_never_listed(self, store):
        store.ensure_format()
        for folder in ("undefined", "casstore/leases", "casstore/tmp", "casstore/trash", "casstore/blobs/xxh128/ab"):
            self.special_files(store, folder)
        assert keys(store) == sorted([FORMAT_KEY, "outside-file"])
        assert sorted(o.key for o in store.list_small_objects()) == sorted([FORMAT_KEY, "outside-file"])
        assert list(store.iter_blobs()) == [] and list(store.iter_trash()) == []

    def test_a_special_file_is_refused_unread_and_never_blocks(self, store):
        with deadline(10):
            for name, key in self.special_files(store, "refs").items():
                if name == "dangling":
                    with pytest.raises(UnreadableObject):  # a symlink, whatever it points at
                        store.get_object(key, max_bytes=4096)
                    continue
                with pytest.raises(UnreadableObject):
                    store.get_object(key, max_bytes=4096)

    def test_a_symlink_at_a_trash_name_is_never_published_as_the_blob(self, store):
        """A writer that misses its leased blob puts it back from the trash by name: a
        symlink planted there must not become the blob (link() would follow it)."""
        stat, _new = ingest(store, payload(10, seed=32))
        store.delete_object(store.move_to_trash(stat))
        elsewhere = os.path.join(store.root, "elsewhere")
        with open(elsewhere, "wb") as f:
            f.write(b"not the blob")
        os.symlink(elsewhere, os.path.join(store.root, *trash_key(stat.blob_id, "none").split("/")))
        assert store.find_leased(stat.blob_id) is None
        assert list(store.iter_blobs()) == []

    def test_a_fifo_or_symlink_in_place_of_a_blob_is_corrupt_and_never_blocks(self, store):
        for n, make in enumerate((os.mkfifo, lambda p: os.symlink("/dev/zero", p))):
            blob_id = digest_bytes(b"%d" % n)
            path = os.path.join(store.root, *blob_key(blob_id, "none").split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            make(path)
            with deadline(10), pytest.raises(CorruptBlob):
                store.open_blob(blob_id)


# ---------------------------------------------------------------------------------------
# LocalIngest (local_ingest.py): disk writes started every 8 MiB, fsync still at commit


def test_ingest_starts_writeback_every_8_mib_and_still_fsyncs_at_commit(ds, monkeypatch):
    from casstore.cas.backends import local_ingest as blobs

    kicks = []
    monkeypatch.setattr(blobs, "_libc_sync_file_range", lambda: lambda fd, off, n, flags: kicks.append((off, n, flags)))
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    data = os.urandom(2**20)
    ds.ensure_format()
    with ds.begin_ingest() as ingest:
        for _ in range(20):
            ingest.write(data)
        ingest.write(memoryview(data)[:1000])
        assert kicks == [(0, 8 << 20, 2), (8 << 20, 8 << 20, 2)]
        blob_id = digest_bytes(data * 20 + data[:1000])
        found, new = ingest.commit(blob_id, "none")
    assert new and fsyncs  # the fsync in commit stays
    with open(blob_path(ds, blob_id, "none"), "rb") as f:
        assert f.read() == data * 20 + data[:1000]


@pytest.mark.parametrize("how", ["missing", "failing"])
def test_ingest_without_a_working_sync_file_range_still_stores(ds, monkeypatch, how):
    from casstore.cas.backends import local_ingest as blobs

    monkeypatch.setattr(blobs, "_libc_sync_file_range", (lambda: None) if how == "missing" else (lambda: lambda *a: -1))
    data = os.urandom(17 << 20)
    ds.ensure_format()
    with ds.begin_ingest() as ingest:
        ingest.write(data)
        found, new = ingest.commit(digest_bytes(data), "none")
    assert new and found.stored_size == len(data)


def test_sync_file_range_is_found_on_linux():
    from casstore.cas.backends import local_ingest as blobs

    if not sys.platform.startswith("linux"):
        assert blobs._libc_sync_file_range() is None
        return
    func = blobs._libc_sync_file_range()
    assert func is not None
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        func(fd, 0, 4096, 2)  # whatever it returns, it raises nothing
    finally:
        os.close(fd)


class TestS3BlobStore(BlobStoreContract):
    """FsspecBlobStore over s3fs, against an S3-protocol server."""

    newline_keys = False  # S3 takes them, moto's server does not (answers 404)

    @pytest.fixture
    def store(self, s3_bucket, s3_options):
        store = open_blobstore(f"s3://{s3_bucket}/team/ds", s3_options)
        store.part_size = 5 * MiB  # S3's smallest part: large blobs take the multipart path
        return store

    def test_open_blobstore_routes_s3_urls(self, store, s3_bucket):
        from casstore.cas.backends.s3 import S3BlobStore

        assert isinstance(store, S3BlobStore)
        assert store.url == f"s3://{s3_bucket}/team/ds"
        assert isinstance(open_blobstore("relative/folder"), LocalBlobStore)
        assert isinstance(open_blobstore("file:////abs/folder"), LocalBlobStore)

    def test_objects_live_below_the_urls_prefix(self, store, s3_bucket, s3_options):
        import s3fs

        stat, _new = ingest(store, payload(10, seed=20))
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **s3_options)
        assert fs.find(s3_bucket) == [f"{s3_bucket}/team/ds/{blob_key(stat.blob_id, 'none')}"]

    def test_nothing_of_a_large_ingest_is_listed_until_commit_and_nothing_is_left(self, store, s3_bucket):
        data = payload(self.large, seed=21)
        with store.begin_ingest() as ing:
            ing.write(data)  # two parts uploaded, invisible until the upload completes
            assert keys(store) == []
            _stat, new = ing.commit(digest_bytes(data), "none")
        assert new
        assert keys(store) == [blob_key(digest_bytes(data), "none")]
        assert _multipart_uploads(store, s3_bucket) == []

    def test_an_aborted_large_ingest_leaves_no_multipart_upload(self, store, s3_bucket):
        with store.begin_ingest() as ing:
            ing.write(payload(self.large, seed=22))
            assert len(_multipart_uploads(store, s3_bucket)) == 1
        assert _multipart_uploads(store, s3_bucket) == []
        assert keys(store) == []

    def test_a_lost_publish_race_aborts_its_copy(self, store, s3_bucket, monkeypatch):
        data = payload(self.large, seed=23)
        ingest(store, data)
        real_find, calls = store.find, []
        monkeypatch.setattr(store, "find", lambda bid: None if not calls.append(bid) and len(calls) == 1
                            else real_find(bid))
        _stat, new = ingest(store, payload(self.large, seed=24), blob_id=digest_bytes(data))
        assert new is False
        assert _multipart_uploads(store, s3_bucket) == []
        assert keys(store) == [blob_key(digest_bytes(data), "none")]

    def test_listing_the_small_objects_sends_no_request_below_the_blobs_or_the_trash(self, store, monkeypatch):
        for seed in range(3):
            stat, _new = ingest(store, payload(100, seed=30 + seed))
        store.move_to_trash(stat)
        store.put_object("casstore/leases/l.json", b"{}")
        store.put_object("undefined/ref", b"{}")
        real_call, prefixes = store._call, []

        def record(method, **kwargs):
            if method == "list_objects_v2":
                prefixes.append((kwargs["Prefix"], kwargs.get("Delimiter")))
            return real_call(method, **kwargs)

        monkeypatch.setattr(store, "_call", record)
        assert sorted(o.key for o in store.list_small_objects()) == ["casstore/leases/l.json", "undefined/ref"]
        base = store._key("")
        assert prefixes and all(not p.startswith((f"{base}casstore/blobs", f"{base}casstore/trash")) for p, _d in prefixes)
        assert all(d == "/" for p, d in prefixes if p in (base, f"{base}casstore/")), prefixes

    def test_a_missing_bucket_is_a_datastore_error(self, s3_options):
        store = open_blobstore(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/ds", s3_options)
        assert not store.exists()
        with pytest.raises(DatastoreError, match="does not exist"):
            store.get_object(FORMAT_KEY, max_bytes=100)
        with pytest.raises(DatastoreError, match="does not exist"):
            store.ensure_format()

    def test_an_unreachable_endpoint_is_a_datastore_error(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        store = open_blobstore("s3://bucket/ds", {
            "endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s", "retries": 1,
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}})
        with pytest.raises(DatastoreError):
            store.get_object(FORMAT_KEY, max_bytes=100)

    def test_endpoint_and_credentials_come_from_the_aws_variables(self, s3_bucket, s3_env):
        store = open_blobstore(f"s3://{s3_bucket}/ds")
        store.ensure_format()
        assert store.exists()

    def test_a_missing_extra_names_what_to_install(self, monkeypatch):
        import fsspec

        def no_s3fs(protocol):
            raise ImportError("Install s3fs to access S3")

        monkeypatch.setattr(fsspec, "get_filesystem_class", no_s3fs)
        with pytest.raises(DatastoreError, match=r"casstore\[s3\]"):
            open_blobstore("s3://bucket/ds")


def _multipart_uploads(store, bucket: str) -> list:
    return store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


class TestMemoryFsspecBlobStore(BlobStoreContract):
    """Any other fsspec filesystem: the same layout, check-then-copy publishing."""

    @pytest.fixture
    def store(self):
        pytest.importorskip("fsspec")
        store = open_blobstore(f"memory://casstore-test-{uuid.uuid4().hex}/ds")
        yield store
        if store.fs.exists(store.url):
            store.fs.rm(store.url, recursive=True)

    def test_concurrent_writers_of_one_id_publish_it_once(self, store):
        """Check-then-copy: racing writers of one id may each copy it (docs/teams.md); the
        copies hold the same content, and the id ends up stored once."""
        data = payload(300_000, seed=9)
        with ThreadPool(6) as pool:
            results = pool.map(lambda _: ingest(store, data), range(6))
        assert sum(new for _stat, new in results) >= 1
        assert read_blob(store, digest_bytes(data)) == data
        assert keys(store) == [blob_key(digest_bytes(data), "none")]


# ---------------------------------------------------------------------------------------
# The same story on every backend: sessions, dedup, loads, named references, gc, verify, CLI


def _make_folder(root, seed: int = 0):
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    with open(os.path.join(root, "a.csv"), "wb") as f:
        f.write(b"x,y\n" + b"1,2\n" * 5000 + str(seed).encode())
    with open(os.path.join(root, "sub", "b.bin"), "wb") as f:
        f.write(payload(200_000, seed=seed))
    return str(root)


def _a_ref(blobs) -> str:
    """The URL of the one named reference in `blobs` (ArchiveStoreIO.create wrote it)."""
    from casstore.cas.live.refs import named_refs

    (ref,) = named_refs(blobs)
    return "file:///" + ref.key


class SessionContract:
    """A user's story, the same on every datastore backend. Subclasses provide `datastore`:
    (url, storage options), and `cli_env`: the environment the `casstore` command needs."""

    @pytest.fixture
    def datastore(self):
        raise NotImplementedError

    @pytest.fixture
    def cli_env(self):
        return {}

    @pytest.fixture
    def project(self, workdir, datastore):
        url, storage_options = datastore
        options().set("datastore.url", url)
        options().set("datastore.storage_options", storage_options)
        db = f"sqlite:///{workdir / 'runs.db'}"
        return db, url

    def _store(self, url):
        from casstore import stores

        return stores.content_store(url)

    def test_persist_dedup_and_load(self, project, workdir):
        db, url = project
        src = _make_folder(workdir / "datasets")
        s = create_session(db)
        s.create_experiment("baseline", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
        s.create_experiment("rerun", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
        store = self._store(url)
        assert len(list(store.blobs.iter_blobs())) == 1
        assert s.index.get_fact(DATASTORE_KEY) == url
        assert registered(store.blobs) == [f"sqlite:///{workdir / 'runs.db'}"]
        e = s.load_experiment("baseline")
        target = workdir / "mltraq.archivestore" / str(e.id_experiment) / "data"
        assert file_tree(target) == file_tree(src)
        assert os.path.abspath(e.fields.data.get_target()) == str(workdir / "mltraq.archivestore" / str(e.id_experiment))
        s.index.dispose()

    def test_a_datastore_a_newer_casstore_wrote_is_refused_by_loads_gc_and_verify(self, project, workdir):
        db, url = project
        s = create_session(db)
        s.create_experiment("baseline", data=ArchiveStore(src_dir=_make_folder(workdir / "datasets"), arc_dir="data")).persist()
        ArchiveStoreIO.create(_make_folder(workdir / "other", seed=3), arc_dir="o")
        blobs = self._store(url).blobs
        blobs.put_object(FORMAT_KEY, b"casstore-datastore 3\n")
        before = sorted((o.key, o.size) for o in blobs.list_objects(""))
        attempts = {"load": lambda: s.load_experiment("baseline"), "gc": lambda: s.gc(grace_s=0),
                    "verify": s.verify, "named reference": lambda: ArchiveStoreIO(_a_ref(blobs)).getnames()}
        for what, attempt in attempts.items():
            with pytest.raises(DatastoreError, match=r"'casstore-datastore 3'.*upgrade casstore"):
                attempt()
        assert sorted((o.key, o.size) for o in blobs.list_objects("")) == before
        assert not (workdir / "mltraq.archivestore").exists()
        s.index.dispose()

    def test_zstd_blobs_and_replace(self, project, workdir):
        db, url = project
        src = _make_folder(workdir / "datasets", seed=1)
        with options().ctx({"archivestore.codec": "zstd"}):
            s = create_session(db)
            s.create_experiment("z", data=ArchiveStore(src_dir=src, arc_dir="data")).persist()
        blobs = list(self._store(url).blobs.iter_blobs())
        assert [b.codec for b in blobs] == ["zstd"]
        other = _make_folder(workdir / "other", seed=2)
        s.create_experiment("z", data=ArchiveStore(src_dir=other, arc_dir="data")).persist(if_exists="replace")
        e = s.load_experiment("z")
        assert file_tree(workdir / "mltraq.archivestore" / str(e.id_experiment) / "data") == file_tree(other)
        s.index.dispose()

    def test_named_references(self, project, workdir):
        _db, url = project
        src = _make_folder(workdir / "datasets", seed=3)
        with options().ctx({"datastore.relative_path_prefix": "refs"}):
            io = ArchiveStoreIO.create(src, arc_dir="data")
            again = ArchiveStoreIO(url=io.url)
            assert any(name.endswith("data/a.csv") for name in again.getnames())
            again.extract(str(workdir / "out"))
        assert file_tree(workdir / "out" / "data") == file_tree(src)
        store = self._store(url)
        assert any(o.key.startswith("refs/") for o in store.blobs.list_objects("refs"))

    def test_gc_deletes_only_what_nothing_keeps(self, project, workdir, monkeypatch):
        import casstore.cas.gc

        monkeypatch.setattr(casstore.cas.gc, "MIN_LEFTOVER_AGE_S", 0)  # S3 objects cannot be backdated
        db, url = project
        s = create_session(db)
        kept = _make_folder(workdir / "kept", seed=4)
        dropped = _make_folder(workdir / "dropped", seed=5)
        leased = _make_folder(workdir / "leased", seed=6)
        s.create_experiment("kept", data=ArchiveStore(src_dir=kept, arc_dir="d")).persist()
        gone = s.create_experiment("gone", data=ArchiveStore(src_dir=dropped, arc_dir="d"))
        gone.persist()
        held = s.create_experiment("held", data=ArchiveStore(src_dir=leased, arc_dir="d"))
        held.persist()
        s.delete_experiment(gone)
        s.delete_experiment(held)
        store = self._store(url)
        store.blobs.put_object(f"{TMP_PREFIX}/dead.partial", b"half")
        index = Index.open(db)
        with Lease(store.blobs) as lease:
            lease.add(held.fields.data.blob_id)
            assert collect(index, store, field_roots=field_roots, grace_s=3600).deleted == []
            dry = collect(index, store, field_roots=field_roots, grace_s=0, dry_run=True)
            assert {d.blob for d in dry.deleted if d.blob} == {gone.fields.data.blob_id}
            assert len(list(store.blobs.iter_blobs())) == 3
            report = collect(index, store, field_roots=field_roots, grace_s=0)
        assert {(d.kind, d.blob or d.path) for d in report.deleted} == {
            ("unreferenced", gone.fields.data.blob_id), ("leftover", f"{TMP_PREFIX}/dead.partial")}
        assert {b.blob_id for b in store.blobs.iter_blobs()} == {
            s.read_experiment("kept").fields.data.blob_id, held.fields.data.blob_id}
        assert list(store.blobs.iter_trash()) == []
        s.load_experiment("kept")
        index.dispose()
        s.index.dispose()

    def test_a_planted_blob_name_never_makes_gc_delete_the_blob_it_resembles(self, project, workdir):
        """`<hex>\\n.tar` beside a referenced `<hex>.tar` (issue 11, item 1): gc deletes neither
        (it moves only objects that are exactly a blob's key), verify reports the stranger."""
        db, url = project
        s = create_session(db)
        e = s.create_experiment("kept", data=ArchiveStore(src_dir=_make_folder(workdir / "k", seed=11), arc_dir="d"))
        e.persist()
        store, index = self._store(url), Index.open(db)
        real = blob_key(e.fields.data.blob_id, "none")
        planted = real[:-4] + "\n.tar" if isinstance(store.blobs, LocalBlobStore) else resembling(e.fields.data.blob_id)
        store.blobs.put_object(planted, b"planted")
        assert [d for d in collect(index, store, field_roots=field_roots, grace_s=0).deleted if d.blob] == []
        assert keys(store.blobs, "casstore/blobs") == sorted([real, planted])
        problems = verify(index, store, field_roots=field_roots).problems
        assert [p.kind for p in problems] == ["foreign"] and repr(planted) in problems[0].detail
        s.load_experiment("kept")
        index.dispose()
        s.index.dispose()

    def test_gc_and_verify_list_the_blobs_once_and_never_the_whole_datastore(self, project, workdir, monkeypatch):
        db, url = project
        s = create_session(db)
        s.create_experiment("a", data=ArchiveStore(src_dir=_make_folder(workdir / "a", seed=10), arc_dir="d")).persist()
        store, index = self._store(url), Index.open(db)
        listed: list[str] = []
        real = store.blobs.list_objects
        monkeypatch.setattr(store.blobs, "list_objects", lambda prefix, *more: listed.append(prefix) or real(prefix, *more))
        for run in (lambda: collect(index, store, field_roots=field_roots, grace_s=0),
                    lambda: verify(index, store, field_roots=field_roots)):
            listed.clear()
            run()
            assert listed.count("casstore/blobs") == 1 and "" not in listed, listed
        index.dispose()
        s.index.dispose()

    def test_verify_finds_damage(self, project, workdir):
        db, url = project
        s = create_session(db)
        e1 = s.create_experiment("one", data=ArchiveStore(src_dir=_make_folder(workdir / "a", seed=7), arc_dir="d"))
        e1.persist()
        e2 = s.create_experiment("two", data=ArchiveStore(src_dir=_make_folder(workdir / "b", seed=8), arc_dir="d"))
        e2.persist()
        store, index = self._store(url), Index.open(db)
        report = verify(index, store, field_roots=field_roots, deep=True)
        assert report.problems == [] and report.blobs_checked == 2
        blobs = store.blobs
        b1, b2 = e1.fields.data.blob_id, e2.fields.data.blob_id
        blobs.delete_blob(b1, "none")
        stored = blobs.find(b2)
        f, _ = blobs.open_blob(b2)
        with f:
            data = bytearray(f.read())
        data[700] ^= 0xFF  # same size, other bytes
        blobs.delete_blob(b2, "none")
        with blobs.begin_ingest() as ing:
            ing.write(bytes(data))
            ing.commit(b2, stored.codec)
        assert [(p.kind, p.blob) for p in verify(index, store, field_roots=field_roots).problems] == [("missing", b1)]
        deep = sorted((p.kind, p.blob) for p in verify(index, store, field_roots=field_roots, deep=True).problems)
        assert deep == sorted([("missing", b1), ("digest", b2)])
        index.dispose()
        s.index.dispose()

    def test_a_damaged_blob_seen_by_a_load_is_repaired_by_the_next_persist_and_gc_reclaims_its_copy(
            self, project, workdir):
        db, url = project
        s = create_session(db)
        src = _make_folder(workdir / "datasets", seed=11)
        e = s.create_experiment("one", data=ArchiveStore(src_dir=src, arc_dir="d"))
        e.persist()
        store, index = self._store(url), Index.open(db)
        blob_id = e.fields.data.blob_id
        data = bytearray(read_blob(store.blobs, blob_id))
        data[len(data) // 2] ^= 0xFF  # bit rot: same size, other bytes
        store.blobs.delete_blob(blob_id, "none")
        store.blobs.put_object(blob_key(blob_id, "none"), bytes(data))
        with pytest.raises(LoadError):
            s.load_experiment("one")
        s.create_experiment("two", data=ArchiveStore(src_dir=src, arc_dir="d")).persist()
        for name in ("one", "two"):
            loaded = s.load_experiment(name)
            assert file_tree(workdir / "mltraq.archivestore" / str(loaded.id_experiment) / "d") == file_tree(src)
        [moved] = list(store.blobs.iter_quarantine())
        assert store.blobs.get_object(moved.key, max_bytes=1 << 30) == bytes(data)
        report = verify(index, store, field_roots=field_roots, deep=True)
        assert report.problems == [] and [r.kind for r in report.reclaimable] == ["quarantined"]
        assert collect(index, store, field_roots=field_roots, grace_s=3600).deleted == []
        assert [d.kind for d in collect(index, store, field_roots=field_roots, grace_s=0).deleted] == ["quarantined"]
        assert list(store.blobs.iter_quarantine()) == [] and verify(index, store, field_roots=field_roots).reclaimable == []
        index.dispose()
        s.index.dispose()

    def test_the_cli_over_the_recorded_datastore(self, project, workdir, cli_env):
        db, url = project
        s = create_session(db)
        src = _make_folder(workdir / "datasets", seed=9)
        s.create_experiment("a", data=ArchiveStore(src_dir=src, arc_dir="d")).persist()
        s.create_experiment("b", data=ArchiveStore(src_dir=src, arc_dir="d")).persist()
        s.index.dispose()
        options().reset()  # the command knows only --db and the environment
        stats = json.loads(run_cli("stats", "--db", db, "--json", env=cli_env).stdout)
        assert (stats["blobs"], stats["references"], stats["datastore"]) == (1, 2, url)
        assert stats["dedup_ratio"] == pytest.approx(2.0)
        assert json.loads(run_cli("verify", "--db", db, "--deep", "--json", env=cli_env).stdout)["problems"] == []
        run_cli("gc", "--db", db, "--grace", "0", env=cli_env)
        run_cli("extract", "--db", db, "a", "--target", str(workdir / "x"), env=cli_env)
        assert file_tree(workdir / "x" / "d") == file_tree(src)
        listed = json.loads(run_cli("registry", "--db", db, "--datastore", url, "--json", env=cli_env).stdout)
        assert [d["url"] for d in listed["databases"]] == [f"sqlite:///{workdir / 'runs.db'}"]


class TestLocalSession(SessionContract):
    @pytest.fixture
    def datastore(self, tmp_path):
        return str(tmp_path / "datastore"), {}


class TestS3Session(SessionContract):
    @pytest.fixture
    def datastore(self, s3_bucket, s3_options):
        return f"s3://{s3_bucket}/project", s3_options

    @pytest.fixture
    def cli_env(self, s3_endpoint):
        """A team member's shell: the standard AWS variables, no storage options."""
        from conftest import S3_TEST_CREDENTIALS

        return {"AWS_ENDPOINT_URL": s3_endpoint, **S3_TEST_CREDENTIALS}

    def test_a_missing_bucket_is_exit_3(self, project, workdir, cli_env):
        db, url = project
        s = create_session(db)
        s.create_experiment("a", data=ArchiveStore(src_dir=_make_folder(workdir / "d"), arc_dir="d")).persist()
        s.index.dispose()
        result = run_cli("stats", "--db", db, "--datastore", "s3://no-such-bucket-casstore/ds", env=cli_env, code=3)
        assert "no-such-bucket-casstore" in result.stderr and "does not exist" in result.stderr
        assert "Traceback" not in result.stderr

    def test_persist_to_a_missing_bucket_fails_before_anything_is_stored(self, workdir, s3_options):
        options().set("datastore.url", "s3://no-such-bucket-casstore/ds")
        options().set("datastore.storage_options", s3_options)
        s = create_session(f"sqlite:///{workdir / 'runs.db'}")
        with pytest.raises(DatastoreError, match="does not exist"):
            s.create_experiment("a", data=ArchiveStore(src_dir=_make_folder(workdir / "d"), arc_dir="d")).persist()
        assert s.index.list_experiments() == []
        s.index.dispose()


def test_opening_an_existing_datastore_refuses_what_is_not_one_and_creates_nothing(tmp_path):
    from casstore.cas.backends.factory import open_existing_blobstore

    root = tmp_path / "ds"
    with pytest.raises(DatastoreError, match=r"datastore .*ds does not exist \(--datastore\)$"):
        open_existing_blobstore(str(root), named_by="--datastore")
    assert not root.exists()
    root.mkdir()
    with pytest.raises(DatastoreError, match=r"is not a casstore datastore: no casstore/FORMAT$"):
        open_existing_blobstore(str(root))
    assert list(root.iterdir()) == []
    (root / "casstore").mkdir()
    (root / FORMAT_KEY).write_bytes(b"casstore-datastore 9\n")
    with pytest.raises(DatastoreError, match=r"has an unsupported format b'casstore-datastore 9'$"):
        open_existing_blobstore(str(root))
    (root / FORMAT_KEY).write_bytes(FORMAT_TEXT)
    assert open_existing_blobstore(str(root)).url == open_blobstore(str(root)).url
