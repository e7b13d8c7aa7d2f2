"""verify --deep --sample: a random part of the stored objects re-hashed, the part and the
seed reported, the same seed picking the same objects, and the cheap checks over all."""

from __future__ import annotations

import json
import random
import shlex
from pathlib import Path

import pytest
from helpers import blob_path, make_folder, run_cli
from hypothesis import given
from hypothesis import strategies as st

from casstore import ArchiveStore, create_session
from casstore.cas.backends.layout import CHUNKS
from casstore.cas.chunks.manifest import iter_manifest
from casstore.cas.verify import verify
from casstore.cas.verify_sample import Sample, plan_sample
from casstore.errors import InvalidInput
from casstore.opts import options
from casstore.session import field_roots

DB = "sqlite:///p.db"
TINY = {"whole_below": 16384, "large_file": 65536, "block": 16384, "cdc_min": 1024, "cdc_avg": 4096,
        "cdc_max": 16384}
WHOLE = [f"w{i}" for i in range(6)]


@pytest.fixture
def session(workdir):
    """Six experiments whose blobs are stored whole, and one chunked ("c")."""
    options().set("datastore.chunks", TINY)
    s = create_session(DB)
    rng = random.Random(1)
    for name in WHOLE:
        make_folder(name, {"f.bin": rng.randbytes(3000)})
        s.create_experiment(name, data=ArchiveStore(name)).persist()
    make_folder("c", {"big.bin": rng.randbytes(200_000)})
    s.create_experiment("c", data=ArchiveStore("c")).persist()
    yield s
    s.index.dispose()


def blob_of(s, name: str) -> str:
    return s.index.refs_of(s.index.get_experiment(name).id_experiment)[0].blob_id


def flip(path: str | Path, offset: int = -100) -> None:
    """One byte changed, the size kept: only a re-hash finds it."""
    path = Path(path)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_blob(s, blob_id: str) -> None:
    flip(blob_path(s.content_store().blobs, blob_id, "none"))


def chunk_refs(s, blob_id: str) -> list:
    with s.content_store().blobs.open_copy(blob_id, "chunked")[0] as f:
        return list(iter_manifest(f, blob_id))


def damage_chunk(s, ref) -> None:
    flip(Path(s.content_store().blobs.root) / CHUNKS.blob_key(ref.chunk_id, ref.codec), 5)


def plan(s, sample: Sample):
    """The objects verify picks for `sample` (verify checks the copies plan_sample is given)."""
    blobs = s.content_store().blobs
    described = {r.blob_id: blobs.find(r.blob_id) for r in s.index.iter_refs()}
    return plan_sample(blobs, sample, described)


def run_verify(s, **kw):
    return verify(s.index, s.content_store(), field_roots=field_roots, deep=True, **kw)


def verify_cli(*extra: str, code: int) -> dict:
    return json.loads(run_cli("verify", "--db", DB, "--json", "--deep", *extra, code=code).stdout)


# the part


@pytest.mark.parametrize("text, percent, budget", [("10%", 10.0, None), ("0.5%", 0.5, None), ("100%", 100.0, None),
                                                   ("2GiB", None, 2 << 30), ("2G", None, 2 << 30),
                                                   ("500MB", None, 500 * 10**6), ("64KiB", None, 65536),
                                                   ("1000B", None, 1000)])
def test_a_sample_is_a_percentage_or_a_byte_budget(text, percent, budget):
    assert (Sample.parse(text).percent, Sample.parse(text).budget) == (percent, budget)


@pytest.mark.parametrize("text", ["10", "", "abc", "0%", "101%", "-5%", "0B", "3/10", "10 %%"])
def test_a_sample_that_is_no_part_is_refused(text):
    with pytest.raises(InvalidInput):
        Sample.parse(text)


@given(st.one_of(st.builds(lambda p: Sample(percent=p), st.floats(min_value=1e-6, max_value=100)),
                 st.builds(lambda b: Sample(budget=b), st.integers(min_value=1, max_value=1 << 60))))
def test_a_sample_reads_back_as_it_describes_itself(sample):
    assert Sample.parse(sample.describe()) == sample


def test_the_library_refuses_a_sample_without_deep(session):
    with pytest.raises(InvalidInput):
        verify(session.index, session.content_store(), field_roots=field_roots, sample=Sample(percent=10))


# which objects


def test_a_sample_with_a_seed_picks_the_same_objects_twice(session):
    first, second = plan(session, Sample(percent=40, seed=5)), plan(session, Sample(percent=40, seed=5))
    assert (first.whole, first.chunks) == (second.whole, second.chunks) and first.report == second.report
    assert run_verify(session, sample=Sample(percent=40, seed=5)).sample == first.report


def test_other_seeds_pick_other_objects(session):
    picks = {frozenset(plan(session, Sample(percent=30, seed=seed)).whole) for seed in range(10)}
    assert len(picks) > 1


def test_a_percentage_picks_that_share_of_the_objects_rounded_up(session):
    total = plan(session, Sample(percent=100, seed=1)).report.objects_total
    assert total > len(WHOLE)  # the blobs stored whole and the chunks of c
    assert plan(session, Sample(percent=10, seed=1)).report.objects == -(-total // 10)


def test_a_byte_budget_picks_objects_within_it(session):
    report = plan(session, Sample(budget=20_000, seed=3)).report
    assert 0 < report.bytes <= 20_000 < report.bytes_total and report.objects < report.objects_total


def test_a_sample_without_a_seed_draws_one_and_reports_it(session):
    report = run_verify(session, sample=Sample(percent=50)).sample
    assert report is not None and plan(session, Sample(percent=50, seed=report.seed)).report == report


# what it finds


def test_a_sample_of_100_percent_finds_the_damage_the_full_deep_verify_finds(session):
    damage_blob(session, blob_of(session, "w2"))
    damage_chunk(session, chunk_refs(session, blob_of(session, "c"))[3])
    full = {(p.blob, p.kind) for p in run_verify(session).problems}
    sampled = run_verify(session, sample=Sample(percent=100, seed=1))
    assert {(p.blob, p.kind) for p in sampled.problems} == full
    assert {blob for blob, _kind in full} == {blob_of(session, "w2"), blob_of(session, "c")}
    assert sampled.sample.objects == sampled.sample.objects_total


def test_damage_to_a_blob_outside_the_sample_is_not_reported_and_the_report_says_the_part(session):
    picked = plan(session, Sample(percent=1, seed=2))
    outside = next(blob_of(session, n) for n in WHOLE if blob_of(session, n) not in picked.whole)
    damage_blob(session, outside)
    result = verify_cli("--sample", "1%", "--seed", "2", code=0)
    assert result["problems"] == []
    assert result["sample"]["objects"] == 1 and result["sample"]["objects_total"] > 1 and result["sample"]["seed"] == 2


def test_damage_to_a_blob_inside_the_sample_is_found(session):
    picked = plan(session, Sample(percent=1, seed=2))
    inside = next((blob_of(session, n) for n in WHOLE if blob_of(session, n) in picked.whole), None)
    seed = 2
    while inside is None:  # the one object seed 2 picks may be a chunk: find a seed that picks a blob
        seed += 1
        picked = plan(session, Sample(percent=1, seed=seed))
        inside = next((blob_of(session, n) for n in WHOLE if blob_of(session, n) in picked.whole), None)
    damage_blob(session, inside)
    problems = verify_cli("--sample", "1%", "--seed", str(seed), code=1)["problems"]
    assert [p["blob"] for p in problems] == [inside]


def test_a_damaged_chunk_in_the_sample_is_damage_to_its_blob(session):
    chunked = blob_of(session, "c")
    seed = next(s for s in range(100) if plan(session, Sample(percent=20, seed=s)).chunks)
    picked = plan(session, Sample(percent=20, seed=seed))
    assert chunked not in picked.whole  # only some of its chunks
    ref = next(iter(picked.chunks.values()))
    damage_chunk(session, ref)
    problems = run_verify(session, sample=Sample(percent=20, seed=seed)).problems
    assert [(p.blob, p.kind) for p in problems] == [(chunked, "chunk")] and ref.chunk_id in problems[0].detail


def test_a_damaged_chunk_outside_the_sample_is_not_reported(session):
    chunked = blob_of(session, "c")
    picked = plan(session, Sample(percent=20, seed=4))
    ref = next(r for r in chunk_refs(session, chunked) if r.chunk_id not in picked.chunks)
    assert chunked not in picked.whole
    damage_chunk(session, ref)
    assert run_verify(session, sample=Sample(percent=20, seed=4)).problems == []


def test_the_cheap_checks_still_cover_the_blobs_outside_the_sample(session):
    picked = plan(session, Sample(percent=1, seed=2))
    outside = next(blob_of(session, n) for n in WHOLE if blob_of(session, n) not in picked.whole)
    Path(blob_path(session.content_store().blobs, outside, "none")).unlink()
    problems = verify_cli("--sample", "1%", "--seed", "2", code=1)["problems"]
    assert [(p["blob"], p["kind"]) for p in problems] == [(outside, "missing")]


# the command


def test_verify_text_says_the_part_and_the_command_that_repeats_it_runs_as_written(session):
    out = run_cli("verify", "--db", DB, "--deep", "--sample", "30%", "--seed", "9").stdout
    line = next(line for line in out.splitlines() if line.startswith("re-hashed a sample of 30%: "))
    assert " of " in line and "seed 9" in line
    words = shlex.split(line.split("Repeat it: ", 1)[1])
    assert words[:1] == ["casstore"]
    again = run_cli(*words[1:]).stdout
    assert line in again.splitlines()


def test_verify_json_has_no_sample_without_one(session):
    assert "sample" not in verify_cli(code=0)


@pytest.mark.parametrize("args", [["--sample", "10%"], ["--deep", "--seed", "3"], ["--deep", "--sample", "ten"],
                                  ["--deep", "--sample", "10%", "--seed", "-1"]])
def test_verify_refuses_a_sample_it_cannot_take_as_a_usage_error(session, args):
    result = run_cli("verify", "--db", DB, *args, code=2)
    assert "--sample" in result.stderr or "--seed" in result.stderr
