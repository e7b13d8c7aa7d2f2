"""Time a fresh load against loads into a target that already holds the experiment's files.

For each data set (20,000 small files; 1 GB in 5 files of random bytes) one experiment is
persisted, then, per run: the target is removed and loaded fresh; loaded again at once
(nothing touched: only the files the fresh load wrote in its last 20 ms are racy, read and
hashed; nothing is written); loaded a third time at once. Medians of --runs runs, with the
ratio to the fresh load. Every load is timed in this process around `load_experiment`, page cache warm.

    python bench/reload.py                 # both data sets, 3 runs
    python bench/reload.py --small-only --runs 5 --workdir /big/disk
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

from casstore import ArchiveStore, create_session, options


def write_small(folder: str, count: int = 20_000, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(count):
        sub = os.path.join(folder, f"d{i % 100:02d}", f"e{i % 7}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}.bin"), "wb") as f:
            f.write(rng.randbytes(rng.randint(100, 16_000)))


def write_big(folder: str, files: int = 5, each: int = 200_000_000) -> None:
    os.makedirs(folder, exist_ok=True)
    piece = 1 << 24
    for i in range(files):
        with open(os.path.join(folder, f"big{i}.bin"), "wb") as f:
            for _ in range(each // piece):
                f.write(os.urandom(piece))
            f.write(os.urandom(each % piece))


def timed_load(session, name: str) -> float:
    t0 = time.perf_counter()
    session.load_experiment(name)
    return time.perf_counter() - t0


def bench(root: str, name: str, make, runs: int) -> dict[str, float]:
    src = os.path.join(root, f"src-{name}")
    if not os.path.exists(src):
        make(src)
    session = create_session("sqlite:///" + os.path.join(root, "db.sqlite"))
    experiment = session.create_experiment(name, data=ArchiveStore(src, arc_dir="data")).persist()
    target = os.path.join(root, "archivestore", str(experiment.id_experiment))
    samples: dict[str, list[float]] = {"fresh": [], "second (at once)": [], "third (at once)": []}
    for _ in range(runs):
        shutil.rmtree(target, ignore_errors=True)
        samples["fresh"].append(timed_load(session, name))
        samples["second (at once)"].append(timed_load(session, name))
        samples["third (at once)"].append(timed_load(session, name))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where data, datastore and targets go (default: a temp dir)")
    parser.add_argument("--small-only", action="store_true")
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="casstore-reload-")
    os.makedirs(root, exist_ok=True)
    options().set("datastore.url", os.path.join(root, "datastore"))
    options().set("archivestore.url", "file:///" + os.path.join(root, "archivestore"))
    options().set("statcache.path", os.path.join(root, "statcache.sqlite"))
    sets = [("small", write_small)] + ([] if args.small_only else [("big", write_big)])
    print(f"{'data':<8} {'load':<28} {'seconds':>9} {'÷ fresh':>8}")
    for name, make in sets:
        medians = bench(root, name, make, args.runs)
        for label, seconds in medians.items():
            print(f"{name:<8} {label:<28} {seconds:9.3f} {seconds / medians['fresh']:8.3f}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
