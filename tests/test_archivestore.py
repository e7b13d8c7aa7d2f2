"""ArchiveStore fields (persist into the content store, load into the documented layout),
ArchiveStoreIO outside experiments, and the in-memory Archive."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import blob_files, db_url, make_folder
from helpers import file_tree as tree

from casstore import (Archive, ArchiveStore, ArchiveStoreIO, Bunch, InvalidInput, LoadError, SourceNotFound,
                      create_session, options)
from casstore.errors import CorruptBlob, CorruptReference

@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir




def blob_path(blob_id: str, datastore: str | Path = "mltraq.datastore") -> Path:
    """The one blob file of `blob_id` (codec suffix whatever it is)."""
    algorithm, hexdigest = blob_id.split(":", 1)
    folder = Path(datastore) / "casstore" / "blobs" / algorithm / hexdigest[:2]
    found = [p for p in folder.glob(hexdigest[2:] + ".*")] if folder.exists() else []
    assert len(found) == 1, found
    return found[0]


def extracted(e, arc_dir: str = ".") -> Path:
    return Path("mltraq.archivestore") / str(e.id_experiment) / arc_dir


DATA = {"first.csv": b",0\n0,1\n1,2\n2,3\n", "second.csv": b",0\n0,4\n1,5\n2,6\n", "sub/deep.bin": bytes(range(256)) * 9}


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("arc_dir", ["/abs", "/", "..", "../x", "a/../../b", "./../c"])
def test_arc_dir_absolute_or_climbing_out_is_refused_at_construction(arc_dir):
    with pytest.raises(InvalidInput):
        ArchiveStore(src_dir="d", arc_dir=arc_dir)


@pytest.mark.parametrize("arc_dir", ["/abs", "..", "x/../.."])
def test_archivestoreio_create_refuses_bad_arc_dir(arc_dir):
    make_folder("d", DATA)
    with pytest.raises(InvalidInput):
        ArchiveStoreIO.create(src_dir="d", arc_dir=arc_dir)


@pytest.mark.parametrize("arc_dir", [".", "e", "a/b", "a/../b"])
def test_relative_arc_dir_is_accepted(arc_dir):
    ArchiveStore(src_dir="d", arc_dir=arc_dir)


def test_archivestore_is_lazy_nothing_read_or_written_at_construction():
    store = ArchiveStore(src_dir="does-not-exist-yet", arc_dir="e")
    assert store.get_target() is None
    assert not Path("mltraq.datastore").exists()


# --------------------------------------------------------------------------- load layout


def test_load_extracts_into_archivestore_experiment_id_arc_dir_with_exact_bytes():
    make_folder("datasets", DATA)
    s = create_session()
    e = s.create_experiment("test")
    e.fields.archived = ArchiveStore(src_dir="datasets", arc_dir="e")
    e.persist()
    loaded = s.load_experiment("test")
    assert tree(extracted(e, "e")) == DATA
    assert loaded.fields.archived.get_target() == f"mltraq.archivestore/{e.id_experiment}"
    assert sorted(os.listdir(Path("mltraq.archivestore") / str(e.id_experiment))) == ["e"]


def test_get_target_is_none_before_load_and_after_persist():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", data=ArchiveStore("d"))
    assert e.fields.data.get_target() is None
    e.persist()
    assert e.fields.data.get_target() is None
    assert not Path("mltraq.archivestore").exists()


def test_arc_dir_dot_extracts_at_the_experiment_folder_root():
    make_folder("d", DATA)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d")).persist()
    s.load_experiment("x")
    assert tree(extracted(e)) == DATA


@pytest.mark.parametrize("mode", [0o600, 0o755, 0o640, 0o444])
def test_load_keeps_permission_bits(mode):
    make_folder("d", {"f": b"secret"})
    os.chmod("d/f", mode)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    s.load_experiment("x")
    assert stat.S_IMODE(os.stat(extracted(e, "a") / "f").st_mode) == mode


def test_load_overwrites_files_already_in_the_target_and_leaves_others():
    make_folder("d", DATA)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    out = extracted(e, "a")
    make_folder(out, {"first.csv": b"stale", "extra.txt": b"mine"})
    s.load_experiment("x")
    assert (out / "first.csv").read_bytes() == DATA["first.csv"]
    assert (out / "extra.txt").read_bytes() == b"mine"


def test_include_and_exclude_select_the_archived_files():
    make_folder("d", {"a.csv": b"1", "b.tmp": b"2", "sub/c.csv": b"3", ".hidden": b"4"})
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a", include="**", exclude="*.tmp")).persist()
    s.load_experiment("x")
    assert tree(extracted(e, "a")) == {"a.csv": b"1", "sub/c.csv": b"3"}


def test_nested_field_in_a_bunch_is_extracted():
    make_folder("train", {"t.csv": b"train"})
    make_folder("test", {"t.csv": b"test"})
    s = create_session()
    e = s.create_experiment("x")
    e.fields.inputs = Bunch(train=ArchiveStore("train", arc_dir="train"), test=ArchiveStore("test", arc_dir="test"))
    e.persist()
    loaded = s.load_experiment("x")
    assert (extracted(e, "train") / "t.csv").read_bytes() == b"train"
    assert (extracted(e, "test") / "t.csv").read_bytes() == b"test"
    assert loaded.fields.inputs.train.get_target() == f"mltraq.archivestore/{e.id_experiment}"


def test_archivestore_in_a_list_field_is_extracted():
    make_folder("d", {"f": b"x"})
    s = create_session()
    e = s.create_experiment("x", many=[ArchiveStore("d", arc_dir="one")]).persist()
    s.load_experiment("x")
    assert (extracted(e, "one") / "f").read_bytes() == b"x"


def test_loaded_archivestore_field_knows_its_blob_and_arc_dir():
    make_folder("d", DATA)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    loaded = s.load_experiment("x").fields.data
    assert isinstance(loaded, ArchiveStore)
    assert loaded.blob_id == e.fields.data.blob_id
    assert loaded.params.arc_dir == "a"


# --------------------------------------------------------------------------- dedup


def test_blob_id_names_the_digest_algorithm():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", data=ArchiveStore("d")).persist()
    assert re.fullmatch(r"[a-z0-9]+:[0-9a-f]+", e.fields.data.blob_id)
    assert blob_files() == [blob_path(e.fields.data.blob_id)]


def test_same_field_re_persisted_writes_no_second_blob():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    [blob] = blob_files()
    before = os.stat(blob)
    e.persist(if_exists="replace")
    e.persist(if_exists="replace")
    assert blob_files() == [blob]
    after = os.stat(blob)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_same_folder_in_another_field_is_one_blob():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", a=ArchiveStore("d", arc_dir="e"), b=ArchiveStore("d", arc_dir="e"))
    e.persist()
    assert e.fields.a.blob_id == e.fields.b.blob_id
    assert len(blob_files()) == 1


def test_same_folder_in_another_experiment_is_one_blob():
    make_folder("d", DATA)
    s = create_session()
    e1 = s.create_experiment("one", data=ArchiveStore("d", arc_dir="e")).persist()
    e2 = s.create_experiment("two", data=ArchiveStore("d", arc_dir="e")).persist()
    assert e1.fields.data.blob_id == e2.fields.data.blob_id
    assert len(blob_files()) == 1
    s.load_experiment("two")
    assert tree(extracted(e2, "e")) == DATA


def test_folder_copied_elsewhere_is_one_blob():
    make_folder("d", DATA)
    os.chmod("d/first.csv", 0o600)
    s = create_session()
    e1 = s.create_experiment("one", data=ArchiveStore("d", arc_dir="e")).persist()
    shutil.copytree("d", "elsewhere/copy")
    e2 = s.create_experiment("two", data=ArchiveStore("elsewhere/copy", arc_dir="e")).persist()
    assert e1.fields.data.blob_id == e2.fields.data.blob_id
    assert len(blob_files()) == 1


def test_same_folder_with_statcache_disabled_is_one_blob():
    options().set("statcache.disable", True)
    make_folder("d", DATA)
    s = create_session()
    s.create_experiment("one", data=ArchiveStore("d", arc_dir="e")).persist()
    s.create_experiment("two", data=ArchiveStore("d", arc_dir="e")).persist()
    assert len(blob_files()) == 1


def test_same_folder_from_another_process_is_one_blob(tmp_path):
    db = tmp_path / "p.db"
    make_folder("d", DATA)
    e = create_session(db_url(db)).create_experiment("one", data=ArchiveStore("d", arc_dir="e")).persist()
    script = (
        "import sys\n"
        "from casstore import create_session, options\n"
        "from casstore.storage.archivestore import ArchiveStore\n"
        "options().set('statcache.disable', True)\n"
        "e = create_session(sys.argv[1]).create_experiment('two', data=ArchiveStore('d', arc_dir='e')).persist()\n"
        "print(e.fields.data.blob_id)\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    proc = subprocess.run([sys.executable, "-c", script, db_url(db)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == e.fields.data.blob_id
    assert len(blob_files()) == 1


def test_same_folder_under_another_arc_dir_is_another_blob():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", a=ArchiveStore("d", arc_dir="a"), b=ArchiveStore("d", arc_dir="b"))
    e.persist()
    assert e.fields.a.blob_id != e.fields.b.blob_id
    assert len(blob_files()) == 2


def test_changed_content_is_a_new_blob_and_loads_the_new_content():
    make_folder("d", DATA)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    old_id = e.fields.data.blob_id
    Path("d/first.csv").write_bytes(b"changed")
    e.persist(if_exists="replace")
    assert e.fields.data.blob_id != old_id
    s.load_experiment("x")
    assert (extracted(e, "a") / "first.csv").read_bytes() == b"changed"


def test_index_records_one_reference_per_field(tmp_path):
    db = tmp_path / "p.db"
    make_folder("d", DATA)
    e = create_session(db_url(db)).create_experiment("x", a=ArchiveStore("d"), inputs=Bunch(b=ArchiveStore("d")))
    e.persist()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT field, blob_id FROM casstore_refs").fetchall()
        blobs = conn.execute("SELECT blob_id FROM casstore_blobs").fetchall()
    assert sorted(rows) == [("a", e.fields.a.blob_id), ("inputs.b", e.fields.a.blob_id)]
    assert blobs == [(e.fields.a.blob_id,)]


# --------------------------------------------------------------------------- persist never loses data


def test_loaded_experiment_re_persisted_with_replace_keeps_its_archives():
    make_folder("d", DATA)
    s = create_session()
    s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    loaded = s.load_experiment("x")
    loaded.persist(if_exists="replace")
    shutil.rmtree("mltraq.archivestore")
    shutil.rmtree("d")
    s.load_experiment("x")
    assert tree(extracted(loaded, "a")) == DATA


def test_loaded_experiment_re_persisted_with_replace_keeps_its_extracted_files():
    make_folder("d", DATA)
    s = create_session()
    s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    loaded = s.load_experiment("x")
    loaded.fields.note = "edited"
    loaded.persist(if_exists="replace")
    assert tree(extracted(loaded, "a")) == DATA
    assert s.load_experiment("x").fields.note == "edited"


def test_loaded_experiment_persisted_in_another_session_keeps_its_archives(tmp_path):
    db = tmp_path / "p.db"
    make_folder("d", DATA)
    create_session(db_url(db)).create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    loaded = create_session(db_url(db)).load_experiment("x")
    loaded.persist(if_exists="replace")
    again = create_session(db_url(db)).load_experiment("x")
    assert again.fields.data.blob_id == loaded.fields.data.blob_id
    assert tree(extracted(again, "a")) == DATA


def test_loaded_experiment_re_persisted_while_gc_holds_its_blob_in_the_trash_puts_it_back():
    """gc moves candidates into its trash before it re-reads the leases: the persist's lease
    makes the blob live, so the persist takes it back instead of failing with BlobNotFound."""
    from casstore.cas.backends.local import LocalBlobStore

    make_folder("d", DATA)
    s = create_session()
    s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    loaded = s.load_experiment("x")
    store = LocalBlobStore("mltraq.datastore")
    assert store.move_to_trash(store.find(loaded.fields.data.blob_id)) is not None
    loaded.persist(if_exists="replace")
    shutil.rmtree("mltraq.archivestore")
    assert tree(extracted(s.load_experiment("x"), "a")) == DATA
    assert list(store.iter_trash()) == []


def test_vanished_src_dir_raises_source_not_found_a_file_not_found_error():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", data=ArchiveStore("d"))
    shutil.rmtree("d")
    with pytest.raises(SourceNotFound) as info:
        e.persist()
    assert isinstance(info.value, FileNotFoundError)


def test_vanished_src_dir_on_replace_leaves_the_stored_experiment_as_it_was():
    make_folder("d", DATA)
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a"), v=1).persist()
    s.load_experiment("x")
    e.fields.v = 2
    shutil.rmtree("d")
    with pytest.raises(SourceNotFound):
        e.persist(if_exists="replace")
    assert tree(extracted(e, "a")) == DATA  # extracted files untouched
    shutil.rmtree("mltraq.archivestore")
    loaded = s.load_experiment("x")
    assert loaded.fields.v == 1
    assert tree(extracted(e, "a")) == DATA


def test_vanished_src_dir_in_a_new_replacing_experiment_keeps_the_old_one_and_its_folder():
    make_folder("d", DATA)
    s = create_session()
    old = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    s.load_experiment("x")
    with pytest.raises(SourceNotFound):
        s.create_experiment("x", data=ArchiveStore("gone", arc_dir="a")).persist(if_exists="replace")
    assert tree(extracted(old, "a")) == DATA
    assert s.load_experiment("x").id_experiment == old.id_experiment


def test_failed_persist_of_a_new_experiment_leaves_no_row():
    make_folder("d", DATA)
    s = create_session()
    with pytest.raises(SourceNotFound):
        s.create_experiment("x", ok=ArchiveStore("d"), bad=ArchiveStore("gone")).persist()
    assert s.ls()["name"].tolist() == []


def test_replace_by_name_with_a_new_experiment_removes_the_old_extraction_folder():
    make_folder("d", DATA)
    s = create_session()
    old = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    s.load_experiment("x")
    assert extracted(old).is_dir()
    new = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist(if_exists="replace")
    assert not extracted(old).exists()
    s.load_experiment("x")
    assert tree(extracted(new, "a")) == DATA


def test_delete_keeps_the_blob_for_gc():
    make_folder("d", DATA)
    s = create_session()
    s.create_experiment("x", data=ArchiveStore("d")).persist().delete()
    assert len(blob_files()) == 1


# --------------------------------------------------------------------------- damaged blobs


def three_field_experiment():
    make_folder("a", {"f": b"A" * 1000})
    make_folder("b", {"f": b"B" * 1000})
    make_folder("c", {"f": b"C" * 1000})
    s = create_session()
    e = s.create_experiment("x", good=ArchiveStore("a", arc_dir="good"), first=ArchiveStore("b", arc_dir="first"),
                            second=ArchiveStore("c", arc_dir="second")).persist()
    return s, e


def corrupt(path: Path, offset: int = 600) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_missing_blob_in_one_field_still_extracts_the_others_and_raises_load_error():
    s, e = three_field_experiment()
    blob = e.fields.first.blob_id
    blob_path(blob).unlink()
    with pytest.raises(LoadError) as info:
        s.load_experiment("x")
    err = info.value
    assert [(f.field, f.blob, f.experiment) for f in err.failures] == [("first", blob, str(e.id_experiment))]
    assert "first" in str(err) and blob in str(err) and str(e.id_experiment) in str(err)
    assert (extracted(e, "good") / "f").read_bytes() == b"A" * 1000
    assert (extracted(e, "second") / "f").read_bytes() == b"C" * 1000
    assert not extracted(e, "first").exists()
    # The experiment carried by the error has its good fields extracted.
    assert err.experiment.fields.good.get_target() == f"mltraq.archivestore/{e.id_experiment}"
    assert err.experiment.fields.first.get_target() is None


def test_corrupt_blob_in_one_field_still_extracts_the_others_and_raises_load_error():
    s, e = three_field_experiment()
    blob = e.fields.first.blob_id
    corrupt(blob_path(blob))
    with pytest.raises(LoadError) as info:
        s.load_experiment("x")
    err = info.value
    assert [(f.field, f.blob, f.experiment) for f in err.failures] == [("first", blob, str(e.id_experiment))]
    assert isinstance(err.failures[0].error, CorruptBlob)
    assert "first" in str(err) and blob in str(err) and str(e.id_experiment) in str(err)
    assert (extracted(e, "good") / "f").read_bytes() == b"A" * 1000
    assert (extracted(e, "second") / "f").read_bytes() == b"C" * 1000
    assert not (extracted(e, "first") / "f").exists()
    assert not list(extracted(e).glob(".casstore-extract-*"))  # no staging leftovers


def test_corrupt_tar_header_is_reported_as_a_failed_field():
    s, e = three_field_experiment()
    blob = e.fields.first.blob_id
    corrupt(blob_path(blob), offset=10)
    with pytest.raises(LoadError) as info:
        s.load_experiment("x")
    assert [f.field for f in info.value.failures] == ["first"]
    assert (extracted(e, "good") / "f").read_bytes() == b"A" * 1000


def test_load_error_names_every_failed_field():
    s, e = three_field_experiment()
    blob_path(e.fields.first.blob_id).unlink()
    corrupt(blob_path(e.fields.second.blob_id))
    with pytest.raises(LoadError) as info:
        s.load_experiment("x")
    err = info.value
    assert sorted((f.field, f.blob) for f in err.failures) == sorted(
        [("first", e.fields.first.blob_id), ("second", e.fields.second.blob_id)])
    for f in err.failures:
        assert f.experiment == str(e.id_experiment)
        assert f.field in str(err) and f.blob in str(err)
    assert str(e.id_experiment) in str(err)
    assert (extracted(e, "good") / "f").read_bytes() == b"A" * 1000


def test_load_error_is_raised_by_reload_too():
    s, e = three_field_experiment()
    blob_path(e.fields.first.blob_id).unlink()
    with pytest.raises(LoadError):
        e.reload()


# --------------------------------------------------------------------------- codec


def test_zstd_codec_stores_a_tar_zst_blob():
    make_folder("d", DATA)
    options().set("archivestore.codec", "zstd")
    s = create_session()
    e = s.create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    [blob] = blob_files()
    assert blob.name.endswith(".tar.zst")
    assert blob.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert blob_path(e.fields.data.blob_id) == blob
    s.load_experiment("x")
    assert tree(extracted(e, "a")) == DATA


def test_zstd_codec_gives_the_same_blob_id_as_codec_none(tmp_path):
    make_folder("d", DATA)
    plain_store, zstd_store = tmp_path / "plain", tmp_path / "zstd"
    with options().ctx({"datastore.url": f"file:///{plain_store}"}):
        plain = create_session().create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    with options().ctx({"datastore.url": f"file:///{zstd_store}", "archivestore.codec": "zstd"}):
        packed = create_session().create_experiment("x", data=ArchiveStore("d", arc_dir="a")).persist()
    assert plain.fields.data.blob_id == packed.fields.data.blob_id
    assert blob_path(plain.fields.data.blob_id, plain_store).name.endswith(".tar")
    assert blob_path(packed.fields.data.blob_id, zstd_store).name.endswith(".tar.zst")


def test_unknown_codec_option_is_refused():
    make_folder("d", DATA)
    options().set("archivestore.codec", "gzip")
    with pytest.raises(InvalidInput):
        create_session().create_experiment("x", data=ArchiveStore("d")).persist()


def test_plain_blob_is_a_tar_that_tarfile_reads_with_mltraq_member_names():
    make_folder("d", DATA)
    e = create_session().create_experiment("x", data=ArchiveStore("d", arc_dir="e")).persist()
    with tarfile.open(blob_path(e.fields.data.blob_id)) as tar:
        names = tar.getnames()
        assert tar.extractfile("e/first.csv").read() == DATA["first.csv"]
    assert sorted(names) == ["e/first.csv", "e/second.csv", "e/sub/deep.bin"]


# --------------------------------------------------------------------------- ArchiveStoreIO


def io_options(**extra):
    return options().ctx({"datastore.relative_path_prefix": "archives",
                          "archivestore.relative_path_prefix": "all", **extra})


def test_archivestoreio_create_writes_a_named_reference_at_the_mltraq_tar_place():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
    m = re.fullmatch(r"file:///archives/([0-9a-f]{32})", archive.url)
    assert m, archive.url
    ref = Path("mltraq.datastore") / "archives" / m.group(1)
    assert ref.is_file()
    assert len(blob_files()) == 1


def test_archivestoreio_create_twice_is_two_references_one_blob():
    make_folder("datasets", DATA)
    with io_options():
        a = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        b = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
    assert a.url != b.url
    assert len(list((Path("mltraq.datastore") / "archives").iterdir())) == 2
    assert len(blob_files()) == 1


def test_archivestoreio_extract_defaults_to_archivestore_prefix_and_returns_self():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        assert archive.extract() is archive
    assert tree("mltraq.archivestore/all/assets") == DATA


def test_archivestoreio_extract_to_explicit_target():
    make_folder("datasets", DATA)
    with io_options():
        ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").extract("out")
    assert tree("out/assets") == DATA
    assert not Path("mltraq.archivestore").exists()


def test_archivestoreio_extract_selected_members():
    make_folder("datasets", DATA)
    with io_options():
        ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").extract("out", members=["assets/first.csv"])
    assert tree("out") == {"assets/first.csv": DATA["first.csv"]}


def test_archivestoreio_getnames_joins_member_names_to_the_target():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        names = archive.getnames()
        explicit = archive.getnames("elsewhere")
    expected = ["assets/first.csv", "assets/second.csv", "assets/sub/deep.bin"]
    assert sorted(names) == [os.path.normpath(f"mltraq.archivestore/all/{n}") for n in expected]
    assert sorted(explicit) == [f"elsewhere/{n}" for n in expected]


def test_archivestoreio_open_returns_a_tarfile_that_reads_the_members():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        with archive.open() as tar:
            assert isinstance(tar, tarfile.TarFile)
            assert sorted(tar.getnames()) == ["assets/first.csv", "assets/second.csv", "assets/sub/deep.bin"]
            assert tar.extractfile("assets/second.csv").read() == DATA["second.csv"]


def test_archivestoreio_open_on_zstd_blob_returns_a_readable_stream_tarfile():
    make_folder("datasets", DATA)
    with io_options(**{"archivestore.codec": "zstd"}):
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        assert blob_files()[0].name.endswith(".tar.zst")
        contents = {}
        with archive.open() as tar:
            assert isinstance(tar, tarfile.TarFile)
            for member in tar:
                contents[member.name] = tar.extractfile(member).read()
    assert contents == {f"assets/{k}": v for k, v in DATA.items()}


def test_archivestoreio_zstd_and_none_give_the_same_blob_id(tmp_path):
    make_folder("datasets", DATA)
    with io_options(**{"datastore.url": f"file:///{tmp_path / 'p'}"}):
        plain = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").blob_id
    with io_options(**{"datastore.url": f"file:///{tmp_path / 'z'}", "archivestore.codec": "zstd"}):
        packed = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").blob_id
    assert plain == packed


def test_archivestoreio_reference_names_its_blob():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        blob_id = archive.blob_id
    ref = Path("mltraq.datastore") / archive.url[len("file:///"):]
    assert blob_id in ref.read_text()
    assert blob_path(blob_id).is_file()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_archivestoreio_reference_records_the_codec_and_stored_size_of_its_blob(codec):
    make_folder("datasets", DATA)
    with io_options(**{"archivestore.codec": codec}):
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
    body = json.loads((Path("mltraq.datastore") / archive.url[len("file:///"):]).read_bytes())
    stored = blob_path(archive.blob_id)
    assert (body["codec"], body["stored_size"]) == (codec, stored.stat().st_size)
    assert stored.name.endswith(".tar.zst" if codec == "zstd" else ".tar")


def test_archivestoreio_reads_a_reference_written_without_codec_and_stored_size():
    """References written before issue 11 record no stored copy: they stay valid."""
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        ref = Path("mltraq.datastore") / archive.url[len("file:///"):]
        body = json.loads(ref.read_bytes())
        ref.write_text(json.dumps({k: body[k] for k in ("format", "blob", "size", "arc_dir")}))
        ArchiveStoreIO(archive.url).extract("old")
    assert tree("old/assets") == DATA


def test_archivestoreio_url_reopens_in_a_new_object():
    make_folder("datasets", DATA)
    with io_options():
        url = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").url
        ArchiveStoreIO(url).extract("again")
    assert tree("again/assets") == DATA


def test_archivestoreio_create_returns_an_archive_pinned_to_its_blob():
    make_folder("datasets", DATA)
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        assert repr(ArchiveStoreIO(archive.url, blob_id=archive.blob_id)) == repr(archive)
        ArchiveStoreIO(archive.url, blob_id=archive.blob_id).extract("out")
    assert tree("out/assets") == DATA
    assert archive.blob_id in repr(archive)


def test_archivestoreio_pinned_to_another_blob_refuses_the_reference():
    make_folder("datasets", DATA)
    make_folder("other", {"x.txt": b"other"})
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        other = ArchiveStoreIO.create(src_dir="other", arc_dir="assets")
        with pytest.raises(CorruptReference, match="pinned"):
            ArchiveStoreIO(archive.url, blob_id=other.blob_id).extract("out")
    assert not Path("out").exists() or tree("out") == {}


def test_archivestoreio_pinned_to_something_that_is_not_a_blob_id_is_refused():
    with pytest.raises(InvalidInput, match="not a blob id"):
        ArchiveStoreIO("file:///archives/" + "0" * 32, blob_id="xxh128:nothex")


def test_archivestoreio_open_extractall_extracts_what_extract_does():
    make_folder("datasets", DATA)
    with io_options(**{"archivestore.codec": "zstd"}):
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        with archive.open() as tar:
            tar.extractall("out")
            assert tar.extractfile("assets/first.csv").read() == DATA["first.csv"]
    assert tree("out/assets") == DATA


def test_archivestoreio_open_extract_of_one_member_writes_only_that_member():
    make_folder("datasets", DATA)
    with io_options():
        with ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").open() as tar:
            tar.extract("assets/sub/deep.bin", "out")
            tar.extract(tar.getmember("assets/first.csv"), "out", filter="data")
    assert tree("out") == {"assets/sub/deep.bin": DATA["sub/deep.bin"], "assets/first.csv": DATA["first.csv"]}


def test_archivestoreio_open_extractall_with_a_filter_function_is_refused():
    """casstore's validation always applies; a filter function it would not honour is refused."""
    make_folder("datasets", DATA)
    with io_options():
        with ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets").open() as tar:
            with pytest.raises(InvalidInput, match="filter"):
                tar.extractall("out", filter=lambda member, path: member)
    assert not Path("out").exists()


def test_archivestoreio_open_of_a_large_archive_keeps_memory_bounded():
    """open() checks the digest into a temp copy: in memory only up to 8 MiB (P11)."""
    import random
    import tracemalloc

    make_folder("datasets", {"big.bin": random.Random(5).randbytes(32 << 20)})
    with io_options():
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        tracemalloc.start()
        try:
            with archive.open() as tar:
                assert tar.getnames() == ["assets/big.bin"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_archivestoreio_create_of_missing_folder_raises_source_not_found_and_writes_no_reference():
    with io_options():
        with pytest.raises(SourceNotFound):
            ArchiveStoreIO.create(src_dir="nope", arc_dir="assets")
    assert not (Path("mltraq.datastore") / "archives").exists() or not any(
        (Path("mltraq.datastore") / "archives").iterdir())


# --------------------------------------------------------------------------- Archive


def test_archive_create_to_bytes_from_bytes_extract_round_trip():
    make_folder("src", {"simple_print.py": b"print('hello')\n", "pkg/mod.py": b"x = 1\n"})
    os.chmod("src/simple_print.py", 0o755)
    data = Archive.create("src").to_bytes()
    assert isinstance(data, bytes)
    Archive.from_bytes(data).extract("src_archived")
    assert tree("src_archived") == tree("src")
    assert stat.S_IMODE(os.stat("src_archived/simple_print.py").st_mode) == 0o755


def test_archive_bytes_are_a_tar_with_arc_dir_member_names():
    make_folder("src", {"simple_print.py": b"print('hello')\n"})
    data = Archive.create("src", arc_dir="code").to_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["code/simple_print.py"]


def test_archive_of_same_content_is_byte_identical():
    make_folder("src", DATA)
    shutil.copytree("src", "copy")
    assert Archive.create("src").to_bytes() == Archive.create("copy").to_bytes()


def test_archive_create_honours_exclude():
    make_folder("src", {"a.py": b"1", "b.pyc": b"2"})
    Archive.create("src", exclude="*.pyc").extract("out")
    assert tree("out") == {"a.py": b"1"}


def test_archive_default_extract_target_is_current_directory():
    make_folder("src", {"simple_print.py": b"p"})
    data = Archive.create("src", arc_dir="restored").to_bytes()
    Archive.from_bytes(data).extract()
    assert Path("restored/simple_print.py").read_bytes() == b"p"


def test_archive_field_round_trips_through_persist_and_load():
    make_folder("src", {"simple_print.py": b"print('hello')\n"})
    s = create_session()
    s.create_experiment("x", code=Archive.create("src")).persist()
    code = s.load_experiment("x").fields.code
    assert isinstance(code, Archive)
    code.extract("src_archived")
    assert Path("src_archived/simple_print.py").read_bytes() == b"print('hello')\n"
