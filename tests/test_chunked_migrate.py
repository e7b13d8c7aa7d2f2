"""`casstore migrate` into a chunked datastore (P13, issue 13 item 6): a legacy MLtraq TAR of
at least `whole_below` bytes becomes a chunked blob, so near-identical legacy archives share
their chunks; the migrated experiments load byte for byte and verify clean.

The legacy project is the frozen MLtraq one (tests/fixtures/legacy, see test_migrate.py) with
two of its legacy TARs (alpha.data and beta.data) replaced by larger ones, built as MLtraq
builds them (tarfile), large enough for the default chunk policy (the one migrate cuts with)."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import run_cli

from casstore import create_session, options
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.chunks.manifest import iter_manifest
from casstore.mltraq import datapak

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"
BIG = random.Random(13).randbytes(6 << 20)  # over the default large_file: cut in fixed blocks


def legacy_tar(files: dict[str, bytes]) -> bytes:
    """A legacy TAR as MLtraq writes one (tarfile, GNU format), members in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ALPHA = {"data/big.bin": BIG, "data/notes.txt": b"first run\n"}
BETA = {"data/notes.txt": b"second run, other notes\n", "data/big.bin": BIG, "data/extra.csv": b"a,b\n1,2\n"}


class Legacy:
    def __init__(self, root: Path):
        self.root = root
        self.url = f"sqlite:///{root / 'mltraq.db'}"
        self.datastore = root / "datastore"

    def value(self, name: str, field: str) -> dict:
        import sqlite3

        with sqlite3.connect(self.root / "mltraq.db") as conn:
            (fields,) = conn.execute("SELECT fields FROM experiments WHERE name = ?", (name,)).fetchone()
        return datapak.safe_unpickle(fields)["value"][field]

    def legacy_path(self, name: str, field: str) -> Path:
        return self.datastore / self.value(name, field)["value"][len("file:///"):]

    def blob(self, name: str, field: str = "data") -> str:
        return self.value(name, field)["value"]["blob"]

    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(str(self.datastore))

    def chunks_of(self, blob_id: str) -> list:
        with self.blobs().open_copy(blob_id, "chunked")[0] as f:
            return list(iter_manifest(f, blob_id))


def legacy_project(tmp_path: Path, planted: dict[tuple[str, str], dict[str, bytes]]) -> Legacy:
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root, symlinks=True)
    project = Legacy(root)
    for (name, field), files in planted.items():
        project.legacy_path(name, field).write_bytes(legacy_tar(files))
    return project


@pytest.fixture
def migrated(tmp_path, workdir) -> Legacy:
    """The legacy project with alpha.data and beta.data near-identical 6 MiB archives,
    migrated by `casstore migrate` (exit 1: the fixture's hostile TAR unsafe.bad stays)."""
    project = legacy_project(tmp_path, {("alpha", "data"): ALPHA, ("beta", "data"): BETA})
    report = json.loads(run_cli("migrate", "--db", project.url, "--datastore", str(project.datastore), "--json",
                                code=1).stdout)
    assert [f["field"] for f in report["failures"]] == ["bad"]
    return project


def test_the_report_counts_the_chunks_of_chunked_blobs_once_in_their_stored_bytes(tmp_path, workdir):
    project = legacy_project(tmp_path, {("alpha", "data"): ALPHA, ("beta", "data"): BETA})
    report = json.loads(run_cli("migrate", "--db", project.url, "--datastore", str(project.datastore), "--json",
                                code=1).stdout)
    assert len(BIG) <= report["blob_bytes"] < 1.2 * len(BIG)  # the 6 MiB the two archives share, once
    assert report["new_bytes"] <= report["blob_bytes"]


def test_migrate_starts_a_datastore_that_has_no_format_yet_as_chunked(migrated):
    assert migrated.blobs().read_format() == "chunked"


def test_migrate_stores_a_legacy_tar_of_at_least_whole_below_as_a_chunked_blob(migrated):
    blobs = migrated.blobs()
    assert blobs.find(migrated.blob("alpha")).codec == "chunked"
    assert blobs.find(migrated.blob("beta")).codec == "chunked"
    assert blobs.find(migrated.blob("alpha", "other")).codec == "none"  # a small legacy TAR stays whole


def test_two_near_identical_legacy_archives_share_their_chunks(migrated):
    alpha, beta = (migrated.chunks_of(migrated.blob(n)) for n in ("alpha", "beta"))
    shared = {r.chunk_id for r in alpha} & {r.chunk_id for r in beta}
    assert sum(r.size for r in alpha if r.chunk_id in shared) >= len(BIG)
    stored = sum(o.size for o in migrated.blobs().list_objects(CHUNKS.prefix))
    one_archive = sum(r.size for r in alpha)
    assert stored < 1.1 * one_archive  # two archives, about the bytes of one


def test_a_migrated_chunked_blob_loads_byte_for_byte(migrated):
    session = create_session(migrated.url)
    for name, files in (("alpha", ALPHA), ("beta", BETA)):
        target = Path(session.load_experiment(name).fields.data.get_target())
        assert {rel: (target / rel).read_bytes() for rel in files} == files, name
    session.index.dispose()


def test_verify_deep_is_clean_after_migrating_into_chunked_blobs(migrated):
    report = json.loads(run_cli("verify", "--db", migrated.url, "--deep", "--json", code=None).stdout)
    assert report["problems"] == []


def test_migrating_again_adds_no_chunk(migrated):
    before = sorted(o.key for o in migrated.blobs().list_objects(CHUNKS.prefix))
    run_cli("migrate", "--db", migrated.url, "--datastore", str(migrated.datastore), code=None)
    assert sorted(o.key for o in migrated.blobs().list_objects(CHUNKS.prefix)) == before


def test_migrate_cuts_blobs_where_option_datastore_chunks_says(tmp_path, workdir):
    options().set("datastore.chunks", {"whole_below": 16384, "large_file": 65536, "block": 16384,
                                       "cdc_min": 1024, "cdc_avg": 4096, "cdc_max": 16384})
    files = {"data/big.bin": random.Random(5).randbytes(200_000)}  # under the default whole_below
    project = legacy_project(tmp_path, {("alpha", "data"): files})
    run_cli("migrate", "--db", project.url, "--datastore", str(project.datastore), code=None)
    assert project.blobs().find(project.blob("alpha")).codec == "chunked"
