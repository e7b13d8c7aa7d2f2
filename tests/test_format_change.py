"""`casstore format` and format_change.change_format (P13, issue 13 item 2): a datastore
changes how it stores blobs only when told, converts the blobs already stored on request
(resumable, each new copy checked before the old one goes), and every blob keeps its id and
its bytes through any conversion, for this project and for another one sharing the datastore."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import file_tree, make_folder, run_cli

from casstore import ArchiveStore, create_session, stores
from casstore.cas.backends.layout import CHUNKS, FORMAT_KEY
from casstore.cas.format_change import change_format, describe
from casstore.cas.store.chunk_io import chunk_store
from casstore.opts import options

TINY = {"whole_below": 16384, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
        "cdc_max": 16384}
DB = "sqlite:///p.db"
OTHER_DB = "sqlite:///q.db"
BIG = 200_000  # over TINY's whole_below: converted
SMALL_EXPERIMENT = "small"  # a blob under whole_below: stays whole


def folder(path: Path, seed: int, big: int = BIG) -> str:
    rng = random.Random(seed)
    make_folder(path, {"big.bin": rng.randbytes(big), **{f"s/{i}": rng.randbytes(1500) for i in range(8)}})
    return str(path)


def whole_datastore() -> None:
    """The options' datastore created as format 1 ("whole"), as casstore 0.1.0 left it."""
    blobs = stores.content_store().blobs
    blobs.ensure_format()
    blobs.set_format("whole")


def persist(session, name: str, src: str, codec: str = "none") -> str:
    with options().ctx({"archivestore.codec": codec}):
        e = session.create_experiment(name, data=ArchiveStore(src_dir=src, arc_dir="data"))
        e.persist(if_exists="replace")
    return e.fields.data.blob_id


@pytest.fixture
def project(workdir):
    """A whole datastore holding three blobs of project p.db: two over whole_below (one of
    them zstd), one under it; the source folders of each experiment."""
    options().set("datastore.chunks", TINY)
    whole_datastore()
    session = create_session(DB)
    sources = {"plain": folder(workdir / "plain", 1), "zstd": folder(workdir / "zstd", 2),
               SMALL_EXPERIMENT: str(workdir / "tiny")}
    make_folder(workdir / "tiny", {"a.txt": b"small"})
    for name, src in sources.items():
        persist(session, name, src, "zstd" if name == "zstd" else "none")
    yield session, sources
    session.index.dispose()


def blobs():
    return stores.content_store().blobs


def codecs() -> dict[str, str]:
    """blob id -> how it is stored (none, zstd, chunked)."""
    return {b.blob_id: b.codec for b in blobs().iter_blobs()}


def blob_of(session, name: str) -> str:
    return session.read_experiment(name).fields.data.blob_id


def listing() -> list[tuple[str, int]]:
    return sorted((o.key, o.size) for o in blobs().list_objects("casstore/blobs"))


def everything() -> list[tuple[str, int, float]]:
    """Every object but the leases and the format file (rewritten with the same text), with
    its mtime: what a no-op leaves as it was."""
    return sorted((o.key, o.size, o.mtime) for o in blobs().list_objects("")
                  if "/leases/" not in o.key and o.key != FORMAT_KEY)


def format_json(*args: str, code: int = 0, db: str = DB) -> dict:
    return json.loads(run_cli("format", *args, "--db", db, "--json", code=code).stdout)


def loads_as_stored(session, sources: dict[str, str]) -> None:
    """Every experiment of `sources` loads into a fresh folder, byte for byte its source."""
    for name, src in sources.items():
        loaded = session.load_experiment(name)
        assert file_tree(Path(loaded.fields.data.get_target()) / "data") == file_tree(src), name


def verify_problems(db: str = DB) -> list[dict]:
    return json.loads(run_cli("verify", "--db", db, "--deep", "--json", code=None).stdout)["problems"]


# showing the format


def test_format_shows_the_format_and_how_many_blobs_are_stored_each_way(project):
    report = format_json()
    assert (report["format"], report["whole"], report["chunked"]) == ("whole", 3, 0)
    text = run_cli("format", "--db", DB).stdout
    assert "format" in text and "whole" in text and "3" in text


def test_describe_counts_a_converted_blob_as_chunked(project):
    session, _sources = project
    change_format(session.content_store(), "chunked", convert=True, index=session.index)
    report = describe(session.content_store())
    assert (report.format, report.whole, report.chunked) == ("chunked", 1, 2)


# to chunked


def test_setting_chunked_on_a_whole_datastore_changes_no_blob(project):
    before = listing()
    report = format_json("chunked")
    assert (report["format"], report["whole"], report["chunked"], report["converted"]) == ("chunked", 3, 0, [])
    assert listing() == before
    assert blobs().get_object(FORMAT_KEY, max_bytes=100) == b"casstore-datastore 2\n"


def test_convert_stores_each_blob_of_at_least_whole_below_chunked_and_keeps_smaller_ones_whole(project):
    session, _sources = project
    report = format_json("chunked", "--convert")
    large = {blob_of(session, "plain"), blob_of(session, "zstd")}
    assert set(report["converted"]) == large
    assert codecs() == {**{b: "chunked" for b in large}, blob_of(session, SMALL_EXPERIMENT): "none"}


def test_a_zstd_blob_converted_is_cut_into_zstd_chunks(project):
    session, _sources = project
    change_format(session.content_store(), "chunked", convert=True, index=session.index)
    stored = {c.codec for c in chunk_store(blobs()).iter_blobs()}
    assert stored == {"none", "zstd"}  # the plain blob's chunks raw, the zstd blob's as frames


def test_a_converted_datastore_keeps_its_blob_ids(project):
    session, sources = project
    ids = {name: blob_of(session, name) for name in sources}
    before = set(codecs())
    run_cli("format", "chunked", "--convert", "--db", DB)
    assert set(codecs()) == before
    assert {name: blob_of(session, name) for name in sources} == ids


def test_a_converted_datastore_loads_every_experiment_byte_for_byte(project):
    session, sources = project
    run_cli("format", "chunked", "--convert", "--db", DB)
    loads_as_stored(session, sources)


def test_verify_deep_is_clean_after_conversion(project):
    run_cli("format", "chunked", "--convert", "--db", DB)
    assert verify_problems() == []


def test_conversion_updates_this_projects_index_facts(project):
    session, _sources = project
    run_cli("format", "chunked", "--convert", "--db", DB)
    facts = session.index.blob_facts(blob_of(session, "plain"))
    assert facts.codec == "chunked"


def test_converting_twice_is_a_noop(project):
    session, _sources = project
    run_cli("format", "chunked", "--convert", "--db", DB)
    before = everything()
    report = change_format(session.content_store(), "chunked", convert=True, index=session.index)
    assert report.converted == [] and report.skipped == {}
    assert everything() == before


def test_progress_is_told_each_blob_converted(project):
    session, _sources = project
    told: list[str] = []
    report = change_format(session.content_store(), "chunked", convert=True, index=session.index,
                           progress=told.append)
    assert sorted(told) == sorted(report.converted) and len(told) == 2


def test_an_unknown_format_is_refused(project):
    session, _sources = project
    from casstore.errors import InvalidInput

    with pytest.raises(InvalidInput, match="one of chunked, whole"):
        change_format(session.content_store(), "packed")


# to whole


def test_setting_whole_is_refused_in_one_line_while_blobs_are_stored_chunked(project):
    run_cli("format", "chunked", "--convert", "--db", DB)
    before = everything()
    result = run_cli("format", "whole", "--db", DB, code=3)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--convert" in result.stderr and "Traceback" not in result.stderr
    assert everything() == before
    assert blobs().read_format() == "chunked"


def test_setting_whole_on_a_datastore_with_no_chunked_blob_needs_no_convert(project):
    run_cli("format", "chunked", "--db", DB)
    before = listing()
    assert format_json("whole")["format"] == "whole"
    assert listing() == before


def test_convert_to_whole_stores_every_chunked_blob_whole_again(project):
    session, sources = project
    original = codecs()
    run_cli("format", "chunked", "--convert", "--db", DB)
    report = format_json("whole", "--convert")
    assert (report["format"], report["whole"], report["chunked"]) == ("whole", 3, 0)
    assert codecs() == original  # the zstd blob is whole zstd again, the plain one a .tar
    loads_as_stored(session, sources)
    assert verify_problems() == []


def test_after_convert_to_whole_casstore_sees_format_1_and_writes_whole_blobs(project, workdir):
    session, _sources = project
    run_cli("format", "chunked", "--convert", "--db", DB)
    run_cli("format", "whole", "--convert", "--db", DB)
    assert blobs().get_object(FORMAT_KEY, max_bytes=100) == b"casstore-datastore 1\n"
    assert blobs().read_format() == "whole"
    new = persist(session, "later", folder(workdir / "later", 9))
    assert codecs()[new] == "none"


def test_after_convert_to_whole_gc_reclaims_the_chunks_nothing_names(project):
    session, _sources = project
    run_cli("format", "chunked", "--convert", "--db", DB)
    assert list(chunk_store(blobs()).iter_blobs())
    run_cli("format", "whole", "--convert", "--db", DB)
    run_cli("gc", "--db", DB, "--grace", "0")
    assert list(blobs().list_objects(CHUNKS.prefix)) == []


# another project sharing the datastore


def test_another_project_sharing_the_datastore_loads_and_verifies_after_the_first_converts(project, workdir):
    session, sources = project
    other = create_session(OTHER_DB)
    theirs = {"shared": sources["plain"], "own": folder(workdir / "own", 5)}
    for name, src in theirs.items():
        persist(other, name, src)
    stale = other.index.blob_facts(blob_of(other, "own"))
    run_cli("format", "chunked", "--convert", "--db", DB)
    assert codecs()[blob_of(other, "own")] == "chunked"  # every blob of the datastore is converted
    assert other.index.blob_facts(blob_of(other, "own")) == stale  # q's facts still describe the .tar
    loads_as_stored(other, theirs)
    assert verify_problems(OTHER_DB) == []
    other.index.dispose()


def test_another_project_loads_after_a_round_trip_to_chunked_and_back(project, workdir):
    _session, sources = project
    other = create_session(OTHER_DB)
    theirs = {"own": folder(workdir / "own", 6)}
    persist(other, "own", theirs["own"], codec="zstd")
    run_cli("format", "chunked", "--convert", "--db", DB)
    run_cli("format", "whole", "--convert", "--db", DB)
    loads_as_stored(other, theirs)
    assert verify_problems(OTHER_DB) == []
    other.index.dispose()


# an interrupted conversion


def big_project(root: Path) -> tuple[str, dict[str, str]]:
    """A project in `root` (its own database and whole datastore) with blobs over the default
    policy's whole_below (the command in a child process cuts with the default policy)."""
    options().set("datastore.url", str(root / "ds"))
    options().set("datastore.chunks", {})
    whole_datastore()
    db = f"sqlite:///{root / 'p.db'}"
    session = create_session(db)
    sources = {}
    for i in range(BLOBS_TO_CONVERT):
        src = root / f"src{i}"
        make_folder(src, {"big.bin": random.Random(i).randbytes(1_500_000), "note.txt": b"n%d" % i})
        sources[f"e{i}"] = str(src)
        persist(session, f"e{i}", str(src))
    session.index.dispose()
    return db, sources


BLOBS_TO_CONVERT = 10


def convert_in_child(db: str) -> tuple[subprocess.Popen, float]:
    """`casstore format chunked --convert` in a child process, once it has converted its
    first blob (it prints a line per blob); the time that took."""
    script = Path(sys.executable).parent / "casstore"
    started = time.monotonic()
    child = subprocess.Popen([str(script), "format", "chunked", "--convert", "--db", db],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().startswith("converted "), child.stderr.read()
    return child, time.monotonic() - started


def test_a_conversion_killed_at_any_instant_leaves_every_blob_readable_and_resumes(workdir):
    """kill -9 of `casstore format chunked --convert` at a few random instants of its
    conversions: each blob still loads byte for byte; running the command again converts
    the rest, and verify --deep is clean."""
    db, _sources = big_project(workdir / "timed")
    child, _first = convert_in_child(db)
    started = time.monotonic()
    child.communicate(timeout=120)
    assert child.returncode == 0
    window = time.monotonic() - started  # converting the blobs after the first
    rng = random.Random(int(os.environ.get("CASSTORE_TEST_SEED", "13")))
    for attempt in range(3):
        db, sources = big_project(workdir / f"killed{attempt}")
        child, _first = convert_in_child(db)
        time.sleep(rng.uniform(0, 0.9) * window)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
        session = create_session(db)
        loads_as_stored(session, sources)
        report = change_format(session.content_store(), "chunked", convert=True, index=session.index)
        assert report.skipped == {}
        assert set(codecs().values()) == {"chunked"}, attempt
        assert verify_problems(db) == [], attempt
        loads_as_stored(session, sources)
        session.index.dispose()
