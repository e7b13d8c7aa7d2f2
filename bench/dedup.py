#!/usr/bin/env python3
"""Dedup benchmark (issue 13): casstore against DVC 3, restic and borg, version after version.

    python bench/dedup.py            # full size (10 x 100 MiB, 20,000 small files), 3 runs
    python bench/dedup.py --quick    # small sizes, a smoke run of about 3 minutes

Each scenario is a folder changed step by step; after each step every tool stores the folder as
a new version in its own store (casstore: a new experiment with an ArchiveStore field; restic:
`restic backup`; borg: `borg create`; DVC: `dvc add` + `git commit`). Printed for each step and
tool: the bytes added to the store (growth of the apparent size of the files in the store's
folder) and the wall time of the store command, medians over the runs, with casstore ÷ each peer
(median of the per-run ratios) and issue 13's targets for casstore's bytes (PASS/MISS, printed,
never asserted). Peers run as subprocesses with their defaults; casstore runs in a worker
subprocess timed in-process around persist() (imports and session set-up excluded).

This file is also the casstore worker: `--worker JSON` persists one version."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from dedup_report import render
from dedup_tools import Casstore, CasstoreWhole, Tool, cas_worker, ensure_borg, ensure_dvc, ensure_restic
from run import _filesystem, _tree_bytes, _write_small, fill_page_cache, read_tree, reusable_data

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
LARGE = MIB  # files at or above this size are the "large files" a rename step renames

SIZES = {
    "full": {"big_files": 10, "big_mib": 100, "small_files": 20_000, "small_bytes": 174_000_000,
             "ckpt_mib": 20, "epochs": 5},
    "quick": {"big_files": 10, "big_mib": 8, "small_files": 2_000, "small_bytes": 17_400_000,
              "ckpt_mib": 4, "epochs": 5},
}
DISK_NEEDED = {"full": 12 << 30, "quick": 2 << 30}  # the most one run writes (stores, work folders, copies)
# The manifest allowance of the small-file targets ("≤ 4 MiB plus the manifest"): a manifest
# entry per file of at most this many bytes.
MANIFEST_PER_FILE = 128


# --------------------------------------------------------------------------- scenarios

Mutate = Callable[[str, dict], int]  # (data folder, sizes) -> bytes changed or added
Target = Callable[[int, int, int], int]  # (changed bytes, folder bytes, files) -> most bytes added


@dataclass
class Step:
    name: str
    label: str
    mutate: Mutate
    arc_dir: str = "data"
    peers: bool = True
    target: Optional[Target] = None
    target_text: str = ""


@dataclass
class Scenario:
    name: str
    source: Optional[str]  # folder of the generated data copied in as the first version's folder
    steps: list[Step]
    loads: bool = False  # time casstore's loads of the first version (load_tables), cold and warm


def _nothing(data: str, size: dict) -> int:
    return 0


def _write_random(path: str, nbytes: int) -> None:
    with open(path, "wb") as f:
        for off in range(0, nbytes, 4 * MIB):
            f.write(os.urandom(min(4 * MIB, nbytes - off)))


def _rewrite_and_add(data: str, size: dict) -> int:
    nbytes = size["big_mib"] * MIB
    _write_random(os.path.join(data, "part-00.bin"), nbytes)
    _write_random(os.path.join(data, f"part-{size['big_files']:02d}.bin"), nbytes)
    return 2 * nbytes


def _change_middle(data: str, size: dict) -> int:
    with open(os.path.join(data, "part-01.bin"), "r+b") as f:
        f.seek(size["big_mib"] * MIB // 2)
        f.write(os.urandom(MIB))
    return MIB


def _rename_large(data: str, size: dict) -> int:
    for name in sorted(os.listdir(data)):
        path = os.path.join(data, name)
        if os.path.getsize(path) >= LARGE:
            os.rename(path, os.path.join(data, "renamed-" + name))
    return 0


def _add_small(data: str, size: dict) -> int:
    nbytes = size["small_bytes"] // size["small_files"]
    _write_random(os.path.join(data, "g000", "s00", "added.bin"), nbytes)
    return nbytes


def _remove_small(data: str, size: dict) -> int:
    os.remove(os.path.join(data, "g000", "s00", "f00050.bin"))
    return 0


def _epoch(k: int) -> Mutate:
    def add_checkpoint(data: str, size: dict) -> int:
        nbytes = size["ckpt_mib"] * MIB
        _write_random(os.path.join(data, f"checkpoint-epoch{k}.bin"), nbytes)
        return nbytes
    return add_checkpoint


def _within_new(changed: int, folder: int, files: int) -> int:
    return int(1.05 * changed)


def _eight_mib(changed: int, folder: int, files: int) -> int:
    return 8 * MIB


def _rename_bound(changed: int, folder: int, files: int) -> int:
    return folder // 100 + 4 * MIB


def _small_bound(changed: int, folder: int, files: int) -> int:
    return 4 * MIB + MANIFEST_PER_FILE * files


def _zero(changed: int, folder: int, files: int) -> int:
    return 0


def scenarios(size: dict) -> list[Scenario]:
    big = f"{size['big_files']} x {size['big_mib']} MiB"
    rename_text = "≤ 1% of folder + 4 MiB"
    small_text = f"≤ 4 MiB + manifest ({MANIFEST_PER_FILE} B/file)"
    return [
        Scenario("big", "big", loads=True, steps=[
            Step("A", f"A, first version ({big})", _nothing),
            Step("B", "B, 1 file rewritten + 1 added", _rewrite_and_add, target=_within_new,
                 target_text="≤ 1.05x changed + added"),
            Step("C", "C, 1 MiB changed in one file", _change_middle, target=_eight_mib, target_text="≤ 8 MiB"),
        ]),
        Scenario("rename", "big", [
            Step("A", f"A, first version ({big})", _nothing),
            Step("arc_dir", "A under another arc_dir (casstore only)", _nothing, arc_dir="data-again",
                 peers=False, target=_rename_bound, target_text=rename_text),
            Step("renamed", "A with its large files renamed", _rename_large, target=_rename_bound,
                 target_text=rename_text),
        ]),
        Scenario("small", "small", loads=True, steps=[
            Step("S", f"{size['small_files']:,} small files, first version", _nothing),
            Step("unchanged", "the same folder, unchanged", _nothing, target=_zero, target_text="0"),
            Step("add", "one small file added", _add_small, target=_small_bound, target_text=small_text),
            Step("remove", "one small file removed", _remove_small, target=_small_bound, target_text=small_text),
        ]),
        Scenario("training", None, [
            Step(f"epoch{k}", f"epoch {k}: + one {size['ckpt_mib']} MiB checkpoint", _epoch(k), target=_within_new,
                 target_text="≤ 1.05x the new checkpoint")
            for k in range(1, size["epochs"] + 1)
        ]),
    ]


# --------------------------------------------------------------------------- the run

def drop_page_cache() -> bool:
    """Write back and drop the page cache (needs root); whether it was dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def _files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.kind = "quick" if args.quick else "full"
        self.size = SIZES[self.kind]
        self.workdir = os.path.abspath(args.workdir)
        self.data = os.path.join(self.workdir, f"src-{self.kind}")
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.runs_dir = os.path.join(self.workdir, "runs", f"{self.stamp}-{os.getpid()}")
        # samples[scenario][step][tool] = {"bytes": [...], "seconds": [...]}; "total" is a step too
        self.samples: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
        self.steps_info: dict[str, dict[str, dict[str, int]]] = {}

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def ensure_data(self) -> None:
        marker = os.path.join(self.data, "COMPLETE.json")
        spec = dict(self.size, version=1)
        if reusable_data(self.data, spec, self.stamp, self.log):
            return
        os.makedirs(os.path.join(self.data, "big"))
        for i in range(self.size["big_files"]):
            _write_random(os.path.join(self.data, "big", f"part-{i:02d}.bin"), self.size["big_mib"] * MIB)
        _write_small(os.path.join(self.data, "small"), self.size["small_files"], self.size["small_bytes"],
                     random.Random(13))
        with open(marker, "w") as f:
            json.dump(spec, f)

    def record(self, scenario: str, step: str, tool: str, nbytes: int, seconds: Optional[float]) -> None:
        cell = self.samples.setdefault(scenario, {}).setdefault(step, {}).setdefault(tool, {"bytes": [], "seconds": []})
        cell["bytes"].append(nbytes)
        if seconds is not None:
            cell["seconds"].append(seconds)

    def run_scenario(self, i: int, sc: Scenario, tools: list[Tool]) -> None:
        base = os.path.join(self.runs_dir, f"run{i}", sc.name)
        work = os.path.join(base, "work")
        data = os.path.join(work, "data")
        if sc.source:
            shutil.copytree(os.path.join(self.data, sc.source), data)
        else:
            os.makedirs(data)
            with open(os.path.join(data, "config.json"), "w") as f:
                json.dump({"lr": 0.01, "epochs": self.size["epochs"]}, f)
        for tool in tools:
            tool.setup(os.path.join(base, tool.name.replace(" ", "-")), work)
        for step in sc.steps:
            changed = step.mutate(data, self.size)
            changed_at = time.monotonic()
            folder, files = _tree_bytes(data), _files(data)
            self.steps_info.setdefault(sc.name, {})[step.name] = {
                "changed": changed, "folder": folder, "files": files,
                "limit": step.target(changed, folder, files) if step.target else -1}
            for tool in tools:
                if not step.peers and not isinstance(tool, Casstore):
                    continue
                if isinstance(tool, Casstore):
                    # casstore's stat cache trusts no listing younger than 1 s (racy timestamps)
                    time.sleep(max(0.0, 1.05 - (time.monotonic() - changed_at)))
                before = _tree_bytes(tool.store_dir()) if os.path.exists(tool.store_dir()) else 0
                read_tree(data)  # borg drops the files it read from the page cache: every tool starts with them in it
                seconds = tool.store(f"{sc.name}-{step.name}", step.arc_dir)
                self.record(sc.name, step.name, tool.name, _tree_bytes(tool.store_dir()) - before, seconds)
                if isinstance(tool, Casstore) and tool.name == "casstore":
                    self.record(sc.name, step.name, "casstore (subprocess wall)", 0, tool.last_wall)
        if sc.loads:
            self.time_loads(sc, base, [t for t in tools if isinstance(t, Casstore)])
        for tool in tools:
            self.record(sc.name, "total", tool.name, _tree_bytes(tool.store_dir()), None)
        if not self.args.keep:
            shutil.rmtree(base)

    def time_loads(self, sc: Scenario, base: str, tools: list[Casstore]) -> None:
        """Each casstore tool loads the first version into an empty folder twice: "cold",
        with the page cache dropped first (the datastore read from the disk; skipped where
        /proc/sys/vm/drop_caches is not writable), then "warm" (what the cold load read is
        cached)."""
        first = f"{sc.name}-{sc.steps[0].name}"
        for tool in tools:
            for kind in ("cold", "warm"):
                if kind == "cold" and not drop_page_cache():
                    continue
                target = os.path.join(base, f"load-{kind}")
                seconds = tool.load(first, target)
                self.record(sc.name, f"load-{kind}", tool.name, 0, seconds)
                shutil.rmtree(target)

    def tools(self) -> list[Tool]:
        found: list[Optional[Tool]] = [Casstore(), CasstoreWhole(), ensure_dvc(os.path.abspath(self.args.dvc_venv), self.log),
                                       ensure_restic(self.log), ensure_borg(self.log)]
        return [t for t in found if t is not None]

    def main(self) -> int:
        t_start = time.perf_counter()
        tools = self.tools()
        self.ensure_data()
        os.makedirs(self.runs_dir)
        chosen = [sc for sc in scenarios(self.size) if not self.args.only or sc.name in self.args.only.split(",")]
        for i in range(self.args.runs):
            t0 = time.perf_counter()
            order = tools[i % len(tools):] + tools[:i % len(tools)]  # who goes first changes per run
            if not self.args.no_warm:  # see fill_page_cache: first touches of free memory are slow, at random
                fill_page_cache(self.runs_dir, DISK_NEEDED[self.kind] + (10 << 30), self.log)
            for sc in chosen:
                t1 = time.perf_counter()
                self.run_scenario(i, sc, order)
                self.log(f"  run {i + 1}: {sc.name} in {time.perf_counter() - t1:.1f} s")
            self.log(f"run {i + 1}/{self.args.runs} done in {time.perf_counter() - t0:.1f} s")
        info = {
            "size": self.kind, "sizes": self.size, "runs": self.args.runs, "nproc": os.cpu_count(),
            "filesystem": _filesystem(self.workdir), "python": sys.version.split()[0],
            "tools": {t.name: {"version": t.version, "settings": t.settings} for t in tools},
            "command": " ".join([os.path.basename(sys.executable), "bench/dedup.py", *sys.argv[1:]]),
            "total_seconds": round(time.perf_counter() - t_start, 1),
        }
        names = [t.name for t in tools]
        report = render(info, names, [sc for sc in chosen], self.samples, self.steps_info)
        print(report)
        out = os.path.join(self.workdir, f"dedup-{self.stamp}.json")
        with open(out, "w") as f:
            json.dump({"info": info, "samples": self.samples, "steps": self.steps_info, "report": report}, f, indent=1)
        self.log(f"raw samples: {out}")
        if not self.args.keep:
            shutil.rmtree(self.runs_dir, ignore_errors=True)
        return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(cas_worker(json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run of about 3 minutes)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3, at least 3: figures are medians)")
    parser.add_argument("--workdir", default=os.path.join(HERE, ".data-dedup"),
                        help="data and run folders (default bench/.data-dedup)")
    parser.add_argument("--dvc-venv", default=os.path.join(HERE, ".dvc-venv"), help="DVC's own venv")
    parser.add_argument("--only", default="", help="comma-separated scenarios: big,rename,small,training")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (stores, work folders)")
    parser.add_argument("--no-warm", action="store_true",
                        help="do not fill free memory with a page-cache ballast before each run (as run.py does)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 (figures are medians)")
    return Bench(args).main()


if __name__ == "__main__":
    sys.exit(main())
