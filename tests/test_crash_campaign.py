"""The crash campaign: kill -9 at random instants of persist, replace, delete, load, gc and
migrate, each kill checked at once: KILLS["chunked"] times in all (110) on a datastore of the
default format, chunked, and KILLS["whole"] times (66, at least 10 of each operation) on one of
format whole. The whole format's writer is the simpler one (one file per blob, no chunk,
no manifest), and test_reliability_crash kills its persists, gcs, loads and migrations too:
its campaign is three fifths of the chunked one, so that the suite runs in ~9 minutes.

One master seed (printed; CASSTORE_CRASH_SEED replays another) draws the order of the
operations, the content, the codecs, the victims and each kill's instant. The instant is a
fraction of the operation's own measured duration, drawn from [0, SPREAD) and timed from the
worker's "ready", the moment its work begins: the first run of each operation is not killed
and measures it, and every run that finishes before its kill measures it again (the median is
used, because it varies with load). A replay draws the same fractions, so it runs the same
campaign with kills in the same places of the work, as closely as timing allows. The kills that
landed before the worker said "done" are counted, and at least MID_WORK_FLOOR of them must
have done so: if the calibration breaks and the kills all land after the work, the test fails.

After each kill: `verify(deep=True)` finds no damage. Every experiment committed before loads
with exactly the bytes of its source folder. The experiment the killed worker was writing holds
its old content or its new content, never a mix. Every new file under casstore/blobs hashes to
its id. Running the interrupted operation again completes. A migration killed at any instant
keeps every legacy TAR that a not-yet-migrated reference needs, and migrating again ends where an
uninterrupted migration ends.

The workers are children of one fork server (rw.ForkServer): each is a real process, killed with
SIGKILL, but it starts in milliseconds, so Python's start-up does not dominate the run time.
One project (database and datastore) goes through the whole campaign, so the leftovers of every
kill meet the operations after it: some new experiments share a committed one's content (one
blob, two experiments), and after each killed gc, before gc runs again, a writer stores the
content of the newest unreferenced blob, which that gc may have left in its trash. Each
migration works on a fresh copy of the legacy fixture."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass

import pytest

import reliability_worker as rw
from casstore import ArchiveStore, options
from casstore.mltraq import migrate
from casstore.cas.backends.layout import is_torn_object
from casstore.cas.gc import collect
from casstore.cas.live.roots import leftovers
from casstore.cas.verify import verify
from casstore.errors import ExperimentAlreadyExists, ExperimentNotFound
from casstore.session import field_roots
from test_reliability_crash import (LEGACY_FIXTURE, assert_no_damage, check_new_blobs, legacy_copy,
                                    migrated_state, plant_blob, tiny_tar)

SEED = int(os.environ.get("CASSTORE_CRASH_SEED", "20261201"))
KILLS = {"chunked": {"persist": 20, "replace": 20, "delete": 18, "load": 18, "gc": 18, "migrate": 16},
         "whole": {"persist": 12, "replace": 12, "delete": 11, "load": 11, "gc": 10, "migrate": 10}}
OPS = tuple(KILLS["chunked"])
MIN_KILLS = {"chunked": 100, "whole": 60}
SPREAD = 1.25  # kills fall in [0, 1.25) x the measured duration: about 4 in 5 inside the work
MID_WORK_FLOOR = 0.6
LIVE = (2, 6)  # the campaign keeps between 2 and 6 experiments committed (soft bounds)
FILLERS = 150  # unreferenced blobs planted before each gc, so that gc has work to be killed in
CODECS = ("none", "zstd")

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _work(workdir):
    return workdir


@dataclass(frozen=True)
class Kill:
    op: str
    fraction: float  # of the measured duration
    mid_work: bool  # the worker had not said "done"


Tree = dict[bytes, tuple[str, bytes]]


@dataclass(frozen=True)
class Source:
    path: str
    tree: Tree  # what an experiment persisted from it loads as (arc_dir "data")


def differences(got: Tree, want: Tree, limit: int = 5) -> list[str]:
    """The paths where a loaded tree differs from the expected one (a few, for the message)."""
    paths = sorted(p for p in got.keys() | want.keys() if got.get(p) != want.get(p))
    return [p.decode(errors="replace") for p in paths[:limit]]


def walk_keys(root: str) -> list[str]:
    """Every file below `root`, as datastore keys."""
    return [os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/") for d, _, files in os.walk(root) for f in files]


class Campaign:
    """The project, the model of what it must hold, and one method per operation."""

    def __init__(self, root, server: rw.ForkServer, rnd: random.Random, fmt: str):
        self.root = str(root)
        self.server = server
        self.rnd = rnd
        self.fmt = fmt
        self.project = rw.Project(os.path.join(self.root, "p"), fmt=fmt)
        self.session = self.project.session()
        self.store = self.project.store()
        self.live: dict[str, Source] = {}  # committed experiments and the source each must load as
        self.dropped: list[Source] = []  # sources of deleted and replaced experiments, newest last
        self.sources = 0
        self.seen_blobs: set = set()
        self.durations: dict[str, list[float]] = {op: [] for op in OPS}
        self.kills: list[Kill] = []
        self.reference: dict | None = None  # the state an uninterrupted migration ends in
        self.notes: list[str] = []

    # ------------------------------------------------------------------ the kill

    def strike(self, op: str, command: str, cfg: dict) -> None:
        """Run `command` in a child of the fork server and SIGKILL it at a random instant of
        its work (the first run of each operation only measures the work's duration)."""
        fraction = self.rnd.uniform(0.0, SPREAD)  # drawn whatever happens: replays stay in step
        self.server.run(command, cfg)
        self.server.until("ready")
        measured = self.durations[op]
        window = statistics.median(measured[-5:]) if measured else None  # the recent ones: load varies
        if window is not None:
            time.sleep(fraction * window)
            self.server.kill()
            events = []
        else:
            events = self.server.until("done", "error")
        status, after = self.server.reap()
        events += after
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, -9), f"{op} worker failed ({code}), see {self.root}/server.err"
        assert not [e for e in events if e["event"] == "error"], events
        done = [e for e in events if e["event"] == "done"]
        if done:
            measured.append(done[0]["seconds"])
        if window is not None:
            self.kills.append(Kill(op, fraction, mid_work=not done))
            print(f"kill {len(self.kills):3}: {op:8} at {fraction:.2f} x {window * 1000:5.0f} ms: "
                  f"{'mid-work' if not done else 'after the work'}")

    # ------------------------------------------------------------------ checks

    def load(self, name: str) -> Tree:
        return rw.tree(self.project.target(self.session.load_experiment(name)))

    def check(self, in_flight: str | None = None, allowed: tuple[Tree | None, ...] = ()) -> Tree | None:
        """Everything the model says is committed loads byte-exact; `in_flight`, the
        experiment the killed worker was writing, holds one of `allowed` (None: absent).
        Returns what it holds."""
        assert_no_damage(self.project, self.session, deep=True)
        check_new_blobs(self.store, self.seen_blobs)
        assert rw.manifest_holes(self.store) == []
        stored = {name for _id, name in self.session.index.list_experiments()}
        assert stored - {in_flight} == set(self.live) - {in_flight}, (stored, sorted(self.live))
        for name, source in self.live.items():
            if name != in_flight:
                changed = differences(self.load(name), source.tree)
                assert not changed, f"committed experiment {name} changed: {changed}"
        if in_flight is None:
            return None
        if in_flight not in stored:
            may_be_absent = None in allowed
            assert may_be_absent, f"experiment {in_flight} is gone"
            return None
        got = self.load(in_flight)
        versions = [differences(got, tree) for tree in allowed if tree is not None]
        assert [] in versions, f"experiment {in_flight} holds neither its old nor its new content: {versions}"
        return got

    # ------------------------------------------------------------------ the operations

    def new_source(self) -> Source:
        """A folder of ~330 KB that shares no file with any other: random bytes, a
        compressible table, small files (some empty) in nested folders, a relative symlink."""
        self.sources += 1
        src = os.path.join(self.root, "src", str(self.sources))
        rnd = self.rnd
        files = {"weights.bin": rnd.randbytes(192 << 10),
                 "metrics.csv": b"".join(b"%d,%d,%d\n" % (self.sources, i, rnd.randrange(1000)) for i in range(12000))}
        for k in range(30):
            files[f"runs/{k % 4}/step{k % 3}/{k}.json"] = b'{"source": %d, "k": %d}' % (self.sources, k) * rnd.randrange(0, 60)
        for rel, data in files.items():
            path = os.path.join(src, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        os.symlink("../weights.bin", os.path.join(src, "runs", "latest.bin"))
        return Source(src, {b"data/" + rel: item for rel, item in rw.tree(src).items()})

    def persist_again(self, name: str, source: Source, codec: str, if_exists: str) -> None:
        """Persist in this process (the rerun of an interrupted persist), and update the model."""
        options().set("archivestore.codec", codec)
        self.session.create_experiment(name, data=ArchiveStore(src_dir=source.path, arc_dir="data")).persist(if_exists)
        if name in self.live:
            self.dropped.append(self.live[name])
        self.live[name] = source
        changed = differences(self.load(name), source.tree)
        assert not changed, f"{name} persisted again does not load as its source: {changed}"

    def persist(self, n: int) -> None:
        """A new experiment; one in four has the content of a committed one (one blob, two
        experiments: a dedup hit)."""
        name, codec, shared = f"new-{n}", self.rnd.choice(CODECS), self.rnd.choice(sorted(self.live))
        source = self.live[shared] if self.rnd.random() < 0.25 else self.new_source()
        self.strike("persist", "persist-one", self.project.cfg(name=name, src=source.path, codec=codec))
        held = self.check(name, (None, source.tree))
        try:
            self.persist_again(name, source, codec, "fail")
            assert held is None, "persist again succeeded over an experiment that was committed"
        except ExperimentAlreadyExists:
            assert held is not None, "persist again refused: the experiment exists, yet it did not load"
            self.live[name] = source

    def replace(self, _n: int) -> None:
        name, codec = self.rnd.choice(sorted(self.live)), self.rnd.choice(CODECS)
        new, old = self.new_source(), self.live[name]
        self.strike("replace", "persist-one", self.project.cfg(name=name, src=new.path, codec=codec,
                                                               if_exists="replace"))
        self.check(name, (old.tree, new.tree))
        self.persist_again(name, new, codec, "replace")

    def delete(self, _n: int) -> None:
        name = self.rnd.choice(sorted(self.live))
        experiment = self.session.read_experiment(name)
        target = self.project.target(experiment)
        assert os.path.isdir(target)  # every check loads every experiment: the delete has files to remove
        self.strike("delete", "delete-one", self.project.cfg(name=name))
        if self.check(name, (None, self.live[name].tree)) is None and os.path.exists(target):
            self.notes.append("a delete killed after its commit left part of the extraction folder")
        experiment.delete()
        self.dropped.append(self.live.pop(name))
        assert not os.path.exists(target)
        with pytest.raises(ExperimentNotFound):
            self.session.read_experiment(name)

    def load_(self, _n: int) -> None:
        name, empty_first = self.rnd.choice(sorted(self.live)), self.rnd.random() < 0.5
        target = self.project.target(self.session.read_experiment(name))
        if empty_first:
            shutil.rmtree(target)
        self.strike("load", "load-loop", self.project.cfg(name=name, count=1))
        expected = self.live[name].tree
        torn = [rel for rel, item in rw.tree(target).items()
                if not rel.startswith(b".casstore-extract-") and expected.get(rel) != item]
        assert torn == [], f"a killed load left files that are not the stored ones: {torn}"
        self.check()  # loads it again: exactly the stored tree, no staging folder left

    def gc(self, n: int) -> None:
        for k in range(FILLERS):
            plant_blob(self.store, tiny_tar(b"f%d" % k, b"gc %d filler %d" % (n, k)))
        self.age_leftovers()
        self.strike("gc", "gc-once", self.project.cfg(grace=0.0))
        self.check()
        # Before gc runs again: a writer stores the content of the newest unreferenced blob,
        # which the killed gc may have left in its trash or deleted.
        name, codec = self.rnd.choice(sorted(self.live)), self.rnd.choice(CODECS)
        if self.dropped:
            self.persist_again(name, self.dropped[-1], codec, "replace")
        self.age_leftovers()
        collect(self.session.index, self.store, field_roots=field_roots, grace_s=0)
        report = verify(self.session.index, self.store, field_roots=field_roots)
        assert report.problems == [] and report.reclaimable == [], (report.problems, report.reclaimable)
        assert not list(self.store.blobs.iter_trash()), "gc left blobs in the trash"

    def age_leftovers(self, seconds: float = 120) -> None:
        """Make the temp files of killed writers look old enough for gc (a crash long ago)."""
        old = time.time() - seconds
        for item in leftovers(self.store.blobs):
            os.utime(os.path.join(self.store.blobs.root, *item.key.split("/")), (old, old))

    def migrate(self, n: int) -> None:
        legacy = legacy_copy(os.path.join(self.root, f"legacy-{n}"), self.fmt)
        self.strike("migrate", "migrate", legacy.cfg())
        legacy.configure()
        for ref in migrate.plan(legacy.url, legacy.datastore).refs:  # still legacy: its file must be there
            if ref.relpath and os.path.exists(os.path.join(LEGACY_FIXTURE, "datastore", ref.relpath)):
                assert os.path.exists(os.path.join(legacy.datastore, ref.relpath)), f"{ref.label}: legacy file gone"
        assert rw.problems(legacy, deep=True) == []
        if self.reference is None:  # the first migration was not killed
            self.reference = migrated_state(legacy)
        migrate.execute(migrate.plan(legacy.url, legacy.datastore))
        assert migrated_state(legacy) == self.reference, "migrating again ended elsewhere than an uninterrupted run"
        torn = {key for key in walk_keys(legacy.datastore) if is_torn_object(key)}  # left out of that comparison
        assert torn <= {o.key for o in leftovers(legacy.store().blobs)}, "a torn temp file gc would not reclaim"
        assert rw.problems(legacy, deep=True) == []
        assert rw.check_every_blob(legacy.store()) > 0
        shutil.rmtree(legacy.root)
        self.project.configure()

    # ------------------------------------------------------------------ the schedule

    def next_op(self, left: dict[str, int]) -> str:
        """An operation with kills left, weighted by how many; persist and delete keep the
        number of committed experiments within LIVE while some other operation can run."""
        ops = [op for op in OPS if left[op] > 0]
        bounded = [op for op in ops if not (op == "persist" and len(self.live) >= LIVE[1])
                   and not (op == "delete" and len(self.live) <= LIVE[0])]
        ops = bounded or [op for op in ops if op != "delete" or len(self.live) > 1]
        return self.rnd.choices(ops, weights=[left[op] for op in ops])[0]

    def run(self) -> None:
        for n in range(3):  # committed before the first kill
            self.persist_again(f"base-{n}", self.new_source(), CODECS[n % 2], "fail")
        self.check()
        run = {"persist": self.persist, "replace": self.replace, "delete": self.delete, "load": self.load_,
               "gc": self.gc, "migrate": self.migrate}
        left = dict(KILLS[self.fmt])
        n = 0
        while any(left.values()):
            op = self.next_op(left)
            calibrating = not self.durations[op]
            self.project.configure()
            run[op](n)
            n += 1
            left[op] -= not calibrating


@pytest.mark.parametrize("fmt", rw.FORMATS)
def test_crash_campaign_of_kill_9_at_random_instants_loses_nothing(tmp_path, fmt):
    print(f"crash campaign ({fmt} datastore): seed {SEED} (replay with CASSTORE_CRASH_SEED={SEED})")
    assert os.path.isdir(LEGACY_FIXTURE)
    started = time.monotonic()
    with rw.ForkServer(str(tmp_path / "server.err")) as server:
        campaign = Campaign(tmp_path, server, random.Random(SEED), fmt)
        campaign.run()
    kills = campaign.kills
    assert rw.check_every_blob(campaign.store) > 0
    rw.check_every_chunk(campaign.store)
    campaign.project.assert_format_used()
    assert_no_damage(campaign.project, campaign.session, deep=True)
    per_op = {op: sum(k.op == op for k in kills) for op in OPS}
    mid = {op: sum(k.op == op and k.mid_work for k in kills) for op in OPS}
    fraction = sum(mid.values()) / len(kills)
    print(f"{len(kills)} kills in {time.monotonic() - started:.0f} s, {fraction:.0%} mid-work; per operation "
          + ", ".join(f"{op} {mid[op]}/{per_op[op]}" for op in OPS))
    for note in sorted(set(campaign.notes)):
        print(f"note ({campaign.notes.count(note)}x): {note}")
    assert per_op == KILLS[fmt] and len(kills) >= MIN_KILLS[fmt]
    assert fraction >= MID_WORK_FLOOR, f"only {fraction:.0%} of the kills landed mid-work (seed {SEED})"
    assert all(mid[op] >= per_op[op] * MID_WORK_FLOOR / 2 for op in OPS), \
        f"the kills of an operation landed mostly after its work: {mid} of {per_op} (seed {SEED})"
