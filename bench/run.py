#!/usr/bin/env python3
"""casstore speed benchmark (issue #5): casstore against MLtraq 0.1.165 and GNU tar.

    python bench/run.py            # full size (1.5 GiB big files, 512 MiB CSV, 20,000 small files)
    python bench/run.py --quick    # small size, under 2 minutes
    python bench/run.py --profile repeat-small,persist-big   # cProfile casstore operations instead

Every timed operation runs in its own subprocess: casstore with this interpreter, MLtraq with
the python of its own venv (bench/.mltraq-venv, created on first use with
`pip install mltraq==0.1.165`). A worker times only the operation itself (after imports and
session set-up) and reports its peak RSS (VmHWM), which is compared with a bare interpreter
measured the same way. Every run gets fresh folders (datastore, database, stat cache,
extraction target): nothing is deleted and re-created in place between runs (design.md §6).
Figures are medians over the runs of the per-run ratio casstore ÷ peer (same run, same data).
At full size, free memory is first filled with a page-cache ballast (see `warm_memory`).
Results and what they mean: docs/performance.md.

This file is also the worker: `--worker JSON` runs one operation; at module level it imports
only the standard library, so that MLtraq's venv can run it too."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MLTRAQ_VERSION = "0.1.165"
MIB = 1 << 20

SIZES = {
    "full": {"big_files": 6, "big_mib": 256, "csv_mib": 512, "small_files": 20_000, "small_bytes": 174_000_000},
    "quick": {"big_files": 3, "big_mib": 32, "csv_mib": 48, "small_files": 2_000, "small_bytes": 17_400_000},
}

# (figure key, label, target kind, target value)
TARGETS = [
    ("repeat_big", "repeat persist, big files ÷ MLtraq 2nd experiment", "max", 0.05),
    ("repeat_small", "repeat persist, small files ÷ MLtraq 2nd experiment", "max", 0.10),
    ("persist_big", "first persist, big files ÷ MLtraq", "max", 0.8),
    ("persist_small", "first persist, small files ÷ MLtraq", "max", 0.8),
    ("load_big", "load, big files ÷ MLtraq", "max", 0.8),
    ("load_small", "load, small files ÷ MLtraq", "max", 0.8),
    ("persist_small_tar", "first persist, small files ÷ tar -cf", "max", 3.0),
    ("zstd_time", "zstd -3 -T0 persist, CSV: time ÷ tar -I 'zstd -T0 -3'", "max", 1.1),
    ("zstd_size", "zstd -3 -T0 persist, CSV: size ÷ tar -I 'zstd -T0 -3'", "within", 0.02),
    ("rss_persist_big", "peak RSS above bare python, persist big files (MB)", "max", 100.0),
    ("rss_load_big", "peak RSS above bare python, load big files (MB)", "max", 100.0),
]

FLOOR = [
    ("floor_big_mltraq", "durable write of the big files' byte count (dd oflag=direct conv=fsync) ÷ MLtraq first persist"),
    ("persist_big_floor", "casstore first persist, big files ÷ that durable write"),
]


# --------------------------------------------------------------------------- workers
# Run as `python run.py --worker JSON` in a fresh process; print one JSON line.

def _hwm_kb() -> int:
    """Peak resident set size of this process (VmHWM, reset at exec), in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def _worker(spec: dict) -> dict:
    op = spec["op"]
    if op == "bare":
        return {"hwm_kb": _hwm_kb()}
    root = spec["root"]
    os.chdir(root)
    if op.startswith("mltraq-"):
        import mltraq
        from mltraq.storage.archivestore import ArchiveStore

        mltraq.options().set("datastore.url", "file:///" + os.path.join(root, "datastore"))
        mltraq.options().set("archivestore.url", "file:///" + os.path.join(root, "archivestore"))
        session = mltraq.create_session("sqlite:///" + os.path.join(root, "db.sqlite"))
        imports_kb = _hwm_kb()
        if op == "mltraq-persist":
            experiment = session.create_experiment(spec["name"])
            experiment.fields.data = ArchiveStore(src_dir=spec["src"], arc_dir="data")
            t0 = time.perf_counter()
            experiment.persist()
            seconds = time.perf_counter() - t0
            return {"seconds": seconds, "hwm_kb": _hwm_kb(), "imports_kb": imports_kb}
        if op == "mltraq-load":
            t0 = time.perf_counter()
            experiment = session.load_experiment(spec["name"])
            seconds = time.perf_counter() - t0
            target = experiment.fields.data.get_target()
            return {"seconds": seconds, "hwm_kb": _hwm_kb(), "imports_kb": imports_kb,
                    "files": _count_files(target)}
    if op.startswith("cas-"):
        from casstore import ArchiveStore, create_session, options

        options().set("datastore.url", os.path.join(root, "datastore"))
        options().set("archivestore.url", "file:///" + os.path.join(root, "archivestore"))
        options().set("statcache.path", spec["statcache"])
        options().set("archivestore.codec", spec.get("codec", "none"))
        options().set("archivestore.level", spec.get("level", 3))
        session = create_session("sqlite:///" + os.path.join(root, "db.sqlite"))
        imports_kb = _hwm_kb()
        profiler = None
        if spec.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
        if op == "cas-persist":
            experiment = session.create_experiment(spec["name"])
            experiment.fields.data = ArchiveStore(src_dir=spec["src"], arc_dir="data")
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            experiment.persist()
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - t0
            out = {"seconds": seconds, "hwm_kb": _hwm_kb(), "imports_kb": imports_kb,
                   "blob_id": experiment.fields.data.blob_id}
        elif op == "cas-load":
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            experiment = session.load_experiment(spec["name"])
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - t0
            out = {"seconds": seconds, "hwm_kb": _hwm_kb(), "imports_kb": imports_kb,
                   "files": _count_files(experiment.fields.data.get_target())}
        else:
            raise SystemExit(f"unknown worker op {op!r}")
        if profiler:
            profiler.dump_stats(spec["profile"])
        return out
    raise SystemExit(f"unknown worker op {op!r}")


# --------------------------------------------------------------------------- children

def run_child(cmd: list[str], cwd: str | None = None) -> tuple[float, dict]:
    """Run a child to completion; (wall seconds, its JSON output or {}), exit code checked."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)[:300]} failed ({proc.returncode}):\n"
                               f"{err.read().decode(errors='replace')[-4000:]}")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result["ru_maxrss_kb"] = usage.ru_maxrss
    return wall, result


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.size = SIZES["quick" if args.quick else "full"]
        self.workdir = os.path.abspath(args.workdir)
        self.data = os.path.join(self.workdir, "data-quick" if args.quick else "data-full")
        self.mltraq_python = os.path.join(os.path.abspath(args.mltraq_venv), "bin", "python")
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.runs_dir = os.path.join(self.workdir, "runs", f"{self.stamp}-{os.getpid()}")
        self.samples: dict[str, list[float]] = {}

    # ---------------------------------------------------------------- set-up

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def ensure_mltraq(self) -> None:
        check = [self.mltraq_python, "-c", f"import mltraq; assert mltraq.__version__ == {MLTRAQ_VERSION!r}"]
        if os.path.exists(self.mltraq_python) and subprocess.run(check, capture_output=True).returncode == 0:
            return
        venv = os.path.dirname(os.path.dirname(self.mltraq_python))
        self.log(f"creating MLtraq {MLTRAQ_VERSION} environment in {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        with open(os.path.join(venv, ".gitignore"), "w") as f:
            f.write("*\n")  # keep the venv out of git, as Python 3.13's venv does
        subprocess.run([self.mltraq_python, "-m", "pip", "install", "-q", f"mltraq=={MLTRAQ_VERSION}"], check=True)
        subprocess.run(check, check=True)

    def ensure_data(self) -> None:
        marker = os.path.join(self.data, "COMPLETE.json")
        spec = dict(self.size, version=2)
        if reusable_data(self.data, spec, self.stamp, self.log):
            return
        t0 = time.perf_counter()
        os.makedirs(self.data)
        rng = random.Random(5)
        big = os.path.join(self.data, "big")
        os.makedirs(big)
        for i in range(self.size["big_files"]):
            with open(os.path.join(big, f"part-{i:02d}.bin"), "wb") as f:
                for _ in range(self.size["big_mib"] // 4):
                    f.write(os.urandom(4 * MIB))
        _write_csv(os.path.join(self.data, "csv"), self.size["csv_mib"] * MIB, rng)
        _write_small(os.path.join(self.data, "small"), self.size["small_files"], self.size["small_bytes"], rng)
        os.sync()
        with open(marker, "w") as f:
            json.dump(spec, f)
        self.log(f"  generated in {time.perf_counter() - t0:.1f} s")
        time.sleep(1.2)  # the stat cache refuses listings younger than 1 s (racy timestamps)

    # ---------------------------------------------------------------- operations

    def fresh(self, name: str) -> str:
        path = os.path.join(self.runs_dir, name)
        os.makedirs(path)  # fails if it exists: every run gets new folders
        return path

    def worker(self, python: str, spec: dict) -> dict:
        os.sync()  # start every timed operation with no dirty pages of earlier ones
        _, result = run_child([python, os.path.abspath(__file__), "--worker", json.dumps(spec)], cwd=spec.get("root"))
        return result

    def cas(self, spec: dict) -> dict:
        return self.worker(sys.executable, spec)

    def mltraq(self, spec: dict) -> dict:
        return self.worker(self.mltraq_python, spec)

    def tool(self, cmd: list[str], cwd: str) -> float:
        os.sync()
        wall, _ = run_child(cmd, cwd=cwd)
        return wall

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def bare_kb(self, python: str) -> int:
        values = [run_child([python, os.path.abspath(__file__), "--worker", '{"op": "bare"}'])[1]["hwm_kb"]
                  for _ in range(3)]
        return int(statistics.median(values))

    # ---------------------------------------------------------------- one run

    def run_folder_pair(self, i: int, kind: str) -> None:
        """MLtraq and casstore on one folder: first persist, second experiment, load."""
        src = os.path.join(self.data, kind)
        nfiles = _count_files(src)
        order = ["mltraq", "cas"] if i % 2 == 0 else ["cas", "mltraq"]
        for who in order:
            root = self.fresh(f"{who}-{kind}-{i}")
            if who == "mltraq":
                p1 = self.mltraq({"op": "mltraq-persist", "root": root, "src": src, "name": "e1"})
                p2 = self.mltraq({"op": "mltraq-persist", "root": root, "src": src, "name": "e2"})
                ld = self.mltraq({"op": "mltraq-load", "root": root, "name": "e1"})
            else:
                cache = os.path.join(root, "statcache.sqlite")
                base = {"root": root, "src": src, "statcache": cache}
                p1 = self.cas(dict(base, op="cas-persist", name="e1"))
                p2 = self.cas(dict(base, op="cas-persist", name="e2"))
                if p1["blob_id"] != p2["blob_id"]:
                    raise RuntimeError(f"casstore: same folder, two blob ids {p1['blob_id']} {p2['blob_id']}")
                ld = self.cas(dict(base, op="cas-load", name="e1"))
            if ld["files"] != nfiles:
                raise RuntimeError(f"{who} load of {kind}: {ld['files']} files extracted, {nfiles} in the source")
            self.add(f"{who}_persist_{kind}", p1["seconds"])
            self.add(f"{who}_repeat_{kind}", p2["seconds"])
            self.add(f"{who}_load_{kind}", ld["seconds"])
            self.add(f"{who}_rss_persist_{kind}", p1["hwm_kb"])
            self.add(f"{who}_rss_load_{kind}", ld["hwm_kb"])
            self.add(f"{who}_rss_imports", p1["imports_kb"])
        for fig in ("persist", "repeat", "load"):
            self.add(f"{fig}_{kind}", self.samples[f"cas_{fig}_{kind}"][-1] / self.samples[f"mltraq_{fig}_{kind}"][-1])

    def run_disk_floor(self, i: int) -> None:
        """The disk's own time to make as many bytes as the big files durable: `dd` writing
        zeros with O_DIRECT and an fsync, no reading, no hashing, no Python. A store that
        returns only once its blob is on disk (P4) cannot persist the big files faster; MLtraq
        does not wait for the disk, so this bounds the first-persist ratio from below."""
        root = self.fresh(f"floor-big-{i}")
        count = self.size["big_files"] * self.size["big_mib"] // 8
        self.add("floor_big", self.tool(["dd", "if=/dev/zero", f"of={os.path.join(root, 'floor')}", "bs=8M",
                                          f"count={count}", "oflag=direct", "conv=fsync", "status=none"], root))
        self.add("floor_big_mltraq", self.samples["floor_big"][-1] / self.samples["mltraq_persist_big"][-1])
        self.add("persist_big_floor", self.samples["cas_persist_big"][-1] / self.samples["floor_big"][-1])

    def run_tar_small(self, i: int) -> None:
        src = os.path.join(self.data, "small")
        root = self.fresh(f"tar-small-{i}")
        self.add("tar_c_small", self.tool(["tar", "-cf", os.path.join(root, "small.tar"), "-C", src, "."], root))
        target = os.path.join(root, "x")
        os.mkdir(target)
        self.add("tar_x_small", self.tool(["tar", "-xf", os.path.join(root, "small.tar"), "-C", target], root))
        self.add("persist_small_tar", self.samples["cas_persist_small"][-1] / self.samples["tar_c_small"][-1])

    def run_zstd(self, i: int) -> None:
        src = os.path.join(self.data, "csv")
        order = ["tar", "cas"] if i % 2 == 0 else ["cas", "tar"]
        for who in order:
            root = self.fresh(f"{who}-zstd-{i}")
            if who == "tar":
                out = os.path.join(root, "csv.tar.zst")
                self.add("tar_zstd_time", self.tool(["tar", "-I", "zstd -T0 -3", "-cf", out, "-C", src, "."], root))
                self.add("tar_zstd_size", os.path.getsize(out))
            else:
                r = self.cas({"op": "cas-persist", "root": root, "src": src, "name": "e1", "codec": "zstd",
                              "level": 3, "statcache": os.path.join(root, "statcache.sqlite")})
                self.add("cas_zstd_time", r["seconds"])
                stored = os.path.join(root, "datastore", "casstore")  # a chunked blob's chunks included
                self.add("cas_zstd_size", sum(_tree_bytes(os.path.join(stored, part)) for part in ("blobs", "chunks")
                                              if os.path.isdir(os.path.join(stored, part))))
        self.add("zstd_time", self.samples["cas_zstd_time"][-1] / self.samples["tar_zstd_time"][-1])
        self.add("zstd_size", self.samples["cas_zstd_size"][-1] / self.samples["tar_zstd_size"][-1])

    def warm_memory(self) -> None:
        """Fill free memory with a page-cache ballast (fill_page_cache), leaving the disk the
        runs need plus 10 GiB to others."""
        if not self.args.no_warm:
            fill_page_cache(self.runs_dir, self.disk_needed() + (10 << 30), self.log)

    def disk_needed(self) -> int:
        """Bytes the runs write at most: one run's big-file and CSV folders (dropped after each
        run), every run's small-file folders (kept until the end)."""
        size = self.size
        big = size["big_files"] * size["big_mib"] * MIB
        return 6 * big + 2 * size["csv_mib"] * MIB + self.args.runs * 8 * size["small_bytes"]

    def check_disk(self) -> None:
        free = shutil.disk_usage(self.runs_dir).free
        if free < self.disk_needed() + (10 << 30):
            raise SystemExit(f"not enough free disk in {self.workdir}: {free / 2**30:.1f} GiB free, "
                             f"{self.disk_needed() / 2**30:.1f} GiB needed plus 10 GiB left to others")

    def drop_big(self, i: int) -> None:
        """Delete run i's big-file and CSV folders (a few large files each) to bound disk use.
        Small-file trees stay until the end: design.md §6 warns that creating files next to
        tens of thousands of fresh deletes is slow for minutes."""
        for name in os.listdir(self.runs_dir):
            if name.endswith((f"-big-{i}", f"-zstd-{i}")):
                shutil.rmtree(os.path.join(self.runs_dir, name))
        os.sync()

    def warm_sources(self) -> None:
        """Read every source file once, so that no run reads them from disk."""
        for kind in ("big", "small", "csv"):
            read_tree(os.path.join(self.data, kind))

    # ---------------------------------------------------------------- main

    def main(self) -> int:
        t_start = time.perf_counter()
        self.ensure_mltraq()
        self.ensure_data()
        os.makedirs(self.runs_dir)
        self.check_disk()
        info = machine_info(self.mltraq_python, self.workdir)
        bare_cas, bare_mltraq = self.bare_kb(sys.executable), self.bare_kb(self.mltraq_python)
        runs = self.args.runs
        for i in range(runs):
            t0 = time.perf_counter()
            if i == 0:
                self.warm_memory()
            self.warm_sources()
            self.run_folder_pair(i, "big")
            self.run_disk_floor(i)
            self.run_folder_pair(i, "small")
            self.run_tar_small(i)
            self.run_zstd(i)
            if not self.args.keep:
                self.drop_big(i)
            if i + 1 < runs:
                self.warm_memory()
            self.log(f"run {i + 1}/{runs} done in {time.perf_counter() - t0:.1f} s")
        for who, bare in (("cas", bare_cas), ("mltraq", bare_mltraq)):
            for what in ("persist", "load"):
                self.samples[f"{who}_rss_{what}_big_mb"] = [(kb - bare) / 1000 for kb in self.samples[f"{who}_rss_{what}_big"]]
        self.samples["rss_persist_big"] = self.samples["cas_rss_persist_big_mb"]
        self.samples["rss_load_big"] = self.samples["cas_rss_load_big_mb"]
        info.update(bare_kb_casstore=bare_cas, bare_kb_mltraq=bare_mltraq, runs=runs,
                    size="quick" if self.args.quick else "full", sizes=self.size,
                    total_seconds=round(time.perf_counter() - t_start, 1))
        report = render(info, self.samples)
        print(report)
        results = os.path.join(self.workdir, f"results-{self.stamp}.json")
        with open(results, "w") as f:
            json.dump({"info": info, "samples": self.samples, "report": report}, f, indent=1)
        self.log(f"raw samples: {results}")
        if not self.args.keep:
            shutil.rmtree(self.runs_dir, ignore_errors=True)
        return 0

    def profile(self, ops: list[str]) -> int:
        """cProfile casstore operations (after the set-up each needs); print the top functions.
        The .pstats files are kept under <workdir>/profiles/."""
        import pstats

        self.ensure_data()
        os.makedirs(self.runs_dir)
        self.check_disk()
        out_dir = os.path.join(self.workdir, "profiles")
        os.makedirs(out_dir, exist_ok=True)
        try:
            self.warm_memory()
            self.warm_sources()
            for what in ops:
                op, kind = what.split("-")
                root = self.fresh(f"profile-{what}")
                prof = os.path.join(out_dir, f"{self.stamp}-{what}.pstats")
                base = {"root": root, "src": os.path.join(self.data, kind), "name": "e1",
                        "statcache": os.path.join(root, "statcache.sqlite")}
                if kind == "csv":
                    base.update(codec="zstd", level=3)
                if op in ("repeat", "load"):
                    self.cas(dict(base, op="cas-persist"))
                spec = dict(base, op="cas-load" if op == "load" else "cas-persist", profile=prof)
                if op == "repeat":
                    spec["name"] = "e2"
                result = self.cas(spec)
                self.log(f"\n=== {what}: {result['seconds']:.3f} s under cProfile, peak RSS "
                         f"{result['hwm_kb'] / 1000:.0f} MB; {prof}")
                stats = pstats.Stats(prof)
                stats.sort_stats("cumulative").print_stats(self.args.profile_top)
                stats.sort_stats("tottime").print_stats(self.args.profile_top)
        finally:
            if not self.args.keep:
                shutil.rmtree(self.runs_dir, ignore_errors=True)
        return 0


# --------------------------------------------------------------------------- data

def reusable_data(data: str, spec: dict, stamp: str, log: Callable[[str], None]) -> bool:
    """Whether the data set in `data` was generated complete for `spec` (its COMPLETE.json);
    if not, an older or interrupted one is moved aside (a tree is never re-created in place)
    and the caller generates it."""
    try:
        with open(os.path.join(data, "COMPLETE.json")) as f:
            if json.load(f) == spec:
                log(f"reusing data in {data}")
                return True
    except (OSError, ValueError):
        pass
    if os.path.exists(data):
        stale = f"{data}.stale-{stamp}"
        os.rename(data, stale)
        log(f"moved an older data set aside to {stale}: delete it when convenient")
    log(f"generating data in {data} ...")
    return False


def _write_csv(folder: str, nbytes: int, rng: random.Random) -> None:
    """A compressible CSV of about `nbytes`: ids, dates, categories, floats, short text."""
    os.makedirs(folder)
    cats = ["train", "valid", "test", "holdout"]
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    written = 0
    row = 0
    with open(os.path.join(folder, "table.csv"), "w") as f:
        f.write("id,day,split,score,loss,label,note\n")
        while written < nbytes:
            lines = []
            for _ in range(20_000):
                r = rng.getrandbits(48)
                lines.append(f"{row},2024-{r % 12 + 1:02d}-{(r >> 4) % 28 + 1:02d},{cats[(r >> 9) & 3]},"
                             f"{(r >> 11) % 100000 / 1000:.3f},{rng.random():.6f},{(r >> 28) % 10},"
                             f"{words[(r >> 32) % 10]} {words[(r >> 36) % 10]}\n")
                row += 1
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk)


def _write_small(folder: str, count: int, total: int, rng: random.Random) -> None:
    """`count` files in nested folders (groups of 10 sub-folders of 100 files), `total` bytes."""
    mean = total // count
    for n in range(count):
        path = os.path.join(folder, f"g{n // 1000:03d}", f"s{(n // 100) % 10:02d}")
        if n % 100 == 0:
            os.makedirs(path)
        size = rng.randint(0, 2 * mean)
        with open(os.path.join(path, f"f{n:05d}.bin"), "wb") as f:
            f.write(os.urandom(size))


def fill_page_cache(folder: str, keep_disk: int, log: Callable[[str], None]) -> None:
    """Keep the page cache full while a benchmark runs: fill free memory with a ballast file
    in `folder`, leaving `keep_disk` bytes of its disk free.

    On this kind of VM (Firecracker, with free-page reporting) the first touch of a guest
    page costs a fault in the host: writing a file into free memory runs at ~0.4 GB/s,
    into recycled page cache at ~3 GB/s, and which one an operation gets depends on how
    much memory happens to be free. With the page cache full, every operation allocates
    by reclaim, as on a machine that has been up for a while. Called before each run, it
    fills the memory that is free (the first time nearly all of it; later what the deleted
    folders of the previous run gave back) with a new ballast file, written once so that it
    sits on the inactive list (re-reading an old one would make it outrank the blobs the
    runs just wrote). Deleted run folders and new ballast balance out on disk."""
    free = _meminfo("MemFree")
    extra = min(free - (1 << 30), shutil.disk_usage(folder).free - keep_disk)
    if extra < (1 << 30):
        return
    t0 = time.perf_counter()
    path = os.path.join(folder, f"ballast-{time.time_ns()}")
    block = bytes(8 * MIB)
    with open(path, "wb") as f:
        for _ in range(extra // len(block)):
            f.write(block)
    os.sync()
    log(f"  warm-up: {extra / 2**30:.1f} GiB of page cache ballast in {time.perf_counter() - t0:.1f} s")


def read_tree(path: str) -> None:
    """Read every file under `path` once (into the page cache, if it has room)."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb", buffering=0) as f:
                while f.read(8 * MIB):
                    pass


def _meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes (0 where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, files in os.walk(path) for n in files)


# --------------------------------------------------------------------------- report

def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def _filesystem(path: str) -> str:
    """The file system type of `path` (`stat -f` says "ext2/ext3" for ext4 too)."""
    found = _first_line(["findmnt", "-n", "-o", "FSTYPE", "--target", path])
    return found if found != "?" else _first_line(["stat", "-f", "-c", "%T", path])


def machine_info(mltraq_python: str, workdir: str) -> dict:
    mem = "?"
    cpu = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    code = ("import casstore, zstandard, xxhash, sqlalchemy; "
            "print(casstore.__version__, zstandard.__version__, xxhash.VERSION, sqlalchemy.__version__)")
    cas_v, zstd_v, xxh_v, sqla_v = _first_line([sys.executable, "-c", code]).split()
    commit = _first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "casstore"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "filesystem": _filesystem(workdir),
        "python": platform.python_version(),
        "casstore": f"{cas_v} (git {commit}{' + local changes' if dirty else ''})",
        "mltraq": _first_line([mltraq_python, "-c", "import mltraq; print(mltraq.__version__)"]),
        "zstandard": zstd_v,
        "xxhash": xxh_v,
        "sqlalchemy": sqla_v,
        "tar": _first_line(["tar", "--version"]),
        "zstd": _first_line(["zstd", "--version"]),
        "command": " ".join([os.path.basename(sys.executable), "bench/run.py", *sys.argv[1:]]),
    }


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _verdict(kind: str, target: float, value: float) -> str:
    ok = value <= target if kind == "max" else abs(value - 1) <= target
    return "PASS" if ok else "MISS"


def render(info: dict, s: dict[str, list[float]]) -> str:
    size = info["sizes"]
    big = f"{size['big_files']} × {size['big_mib']} MiB"
    small = f"{size['small_files']:,} files, {size['small_bytes'] / 1e6:.0f} MB"
    lines = [
        f"casstore benchmark ({info['size']} size, {info['runs']} runs, median of per-run ratios)",
        f"machine: {info['nproc']} cores ({info['cpu']}), {info['memory']} RAM, Linux {info['kernel']}, "
        f"{info['filesystem']}",
        f"versions: Python {info['python']}, casstore {info['casstore']}, MLtraq {info['mltraq']}, "
        f"zstandard {info['zstandard']}, xxhash {info['xxhash']}, SQLAlchemy {info['sqlalchemy']}; "
        f"{info['tar']}; {info['zstd']}",
        f"data: big = {big}; small = {small}; CSV = {size['csv_mib']} MiB",
        f"command: {info['command']}",
        "",
        "| Figure | Ratio (median) | Runs | Target | |",
        "|---|---|---|---|---|",
    ]
    for key, label, kind, target in TARGETS:
        values = s[key]
        value = _med(values)
        runs = ", ".join(f"{v:.3g}" for v in values)
        fmt = f"{value:.1f} MB" if key.startswith("rss") else f"{value:.3f}x"
        tgt = (f"≤ {target:g} MB" if key.startswith("rss") else
               f"≤ {target:g}x" if kind == "max" else f"within {target:.0%}")
        lines.append(f"| {label} | {fmt} | {runs} | {tgt} | {_verdict(kind, target, value)} |")

    def t(key: str) -> str:
        return f"{_med(s[key]):.3f}" if key in s else "-"

    lines += [
        "",
        "The disk's floor for the big files (no target: what any store that fsyncs before returning pays)",
        "",
        "| Figure | Ratio (median) | Runs |",
        "|---|---|---|",
    ]
    for key, label in FLOOR:
        lines.append(f"| {label} | {_med(s[key]):.3f}x | {', '.join(f'{v:.3g}' for v in s[key])} |")
    lines += [
        "",
        "Absolute times, seconds (median; the machine is shared: compare ratios, not these)",
        "",
        "| Operation | casstore | MLtraq | GNU tar |",
        "|---|---|---|---|",
        f"| first persist, big ({big}) | {t('cas_persist_big')} | {t('mltraq_persist_big')} | |",
        f"| repeat persist, big (2nd experiment) | {t('cas_repeat_big')} | {t('mltraq_repeat_big')} | |",
        f"| load, big | {t('cas_load_big')} | {t('mltraq_load_big')} | |",
        f"| durable write of as many bytes (dd oflag=direct conv=fsync) | {t('floor_big')} | | |",
        f"| first persist, small ({small}) | {t('cas_persist_small')} | {t('mltraq_persist_small')} "
        f"| {t('tar_c_small')} (-cf) |",
        f"| repeat persist, small (2nd experiment) | {t('cas_repeat_small')} | {t('mltraq_repeat_small')} | |",
        f"| load, small | {t('cas_load_small')} | {t('mltraq_load_small')} | {t('tar_x_small')} (-xf) |",
        f"| zstd -3 -T0, CSV ({size['csv_mib']} MiB) | {t('cas_zstd_time')} | | {t('tar_zstd_time')} |",
        "",
        f"zstd sizes, bytes: casstore {int(_med(s['cas_zstd_size'])):,}; tar -I 'zstd -T0 -3' "
        f"{int(_med(s['tar_zstd_size'])):,}",
        f"peak RSS (VmHWM), MB: bare python {info['bare_kb_casstore'] / 1000:.1f} (MLtraq venv "
        f"{info['bare_kb_mltraq'] / 1000:.1f}); after imports + session: casstore "
        f"{_med(s['cas_rss_imports']) / 1000:.1f}, MLtraq {_med(s['mltraq_rss_imports']) / 1000:.1f}",
        f"peak RSS above bare python, big files, MB: casstore persist {_med(s['cas_rss_persist_big_mb']):.1f}, "
        f"load {_med(s['cas_rss_load_big_mb']):.1f}; MLtraq persist {_med(s['mltraq_rss_persist_big_mb']):.1f}, "
        f"load {_med(s['mltraq_rss_load_big_mb']):.1f}",
        f"total benchmark time: {info['total_seconds']} s",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry

def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data (finishes in under 2 minutes)")
    parser.add_argument("--runs", type=int, default=0, help="runs per figure (default 5, 3 with --quick; at least 3)")
    parser.add_argument("--workdir", default=os.path.join(HERE, ".data"), help="data and run folders (default bench/.data)")
    parser.add_argument("--mltraq-venv", default=os.path.join(HERE, ".mltraq-venv"), help="MLtraq's own venv")
    parser.add_argument("--keep", action="store_true", help="keep this run's folders (datastores, extractions)")
    parser.add_argument("--warm", dest="no_warm", action="store_false", default=None,
                        help="fill free memory with a page-cache ballast first (see warm_memory; the default "
                             "for the full size, about 40 s)")
    parser.add_argument("--no-warm", dest="no_warm", action="store_true", help="no ballast (the default with --quick)")
    profiles = [f"{op}-{d}" for op in ("persist", "repeat", "load") for d in ("big", "small")] + ["persist-csv"]
    parser.add_argument("--profile", metavar="OP-DATA[,...]", default=None,
                        help=f"cProfile casstore operations instead of benchmarking: {', '.join(profiles)}")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profile")
    args = parser.parse_args()
    if args.profile and not set(args.profile.split(",")) <= set(profiles):
        parser.error(f"--profile takes a comma-separated list of {', '.join(profiles)}")
    if args.runs and args.runs < 3:
        parser.error("--runs must be at least 3 (figures are medians)")
    args.runs = args.runs or (3 if args.quick else 5)
    if args.no_warm is None:
        args.no_warm = args.quick
    bench = Bench(args)
    if args.profile:
        return bench.profile(args.profile.split(","))
    return bench.main()


if __name__ == "__main__":
    sys.exit(main())
