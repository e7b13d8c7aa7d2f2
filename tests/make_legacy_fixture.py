"""Build a legacy MLtraq project with real MLtraq 0.1.165, for `casstore migrate`'s tests.

Run it with a Python that has MLtraq installed, never casstore's venv:

    python3 -m venv /tmp/mltraq-venv
    /tmp/mltraq-venv/bin/pip install $(python3 tests/make_legacy_fixture.py --requirements)
    /tmp/mltraq-venv/bin/python tests/make_legacy_fixture.py --out tests/fixtures/legacy

It writes into --out: `mltraq.db` and `datastore/` (the project as MLtraq left it; its
datastore folder, `mltraq.datastore/` for MLtraq, is renamed because .gitignore skips that name),
and `manifest.json`, what MLtraq extracted when it loaded each experiment (paths, kinds,
bytes, link targets, hardlink groups) plus the members of every legacy TAR. The frozen copy
in tests/fixtures/legacy/ is the main input of tests/test_migrate.py; the test that sets
CASSTORE_MLTRAQ_PYTHON runs this script again into a temporary folder.

What the project covers (docs/migration.md, mltraq-contract.md):
- the same folder archived in several experiments by several processes, each with its own
  PYTHONHASHSEED (so MLtraq's member order differs), one from a copy with other mtimes;
- other arc_dir, include and exclude; several archive fields in one experiment, one nested;
- run-level archives (fields of runs, stored in the experiment_<name> table);
- DataStore values (fields and run columns), an inline Archive, numpy, pandas, datetime64,
  uuid, a set of str (pickled in hash-seed order) and plain values;
- an experiment replaced with the same object, one replaced by name with a new object (its
  old folder is orphaned, as MLtraq does), one deleted;
- orphan files: that old folder, a stray file, a standalone ArchiveStoreIO TAR;
- non-UTF-8 and long (> 100 bytes) names, a long symlink target, hardlinks, relative
  symlinks, a symlinked folder, an empty folder, hidden files, 0755 and 0600 files;
- an absolute symlink (experiment `unsafe`), which MLtraq itself cannot load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

MLTRAQ_VERSION = "0.1.165"
# The versions this fixture was generated with (the newest on the index at the time).
REQUIREMENTS = ["mltraq==0.1.165", "numpy==2.4.6", "pandas==3.1.1", "pyarrow==26.0.1", "SQLAlchemy==2.1.9",
                "cloudpickle==3.1.3", "joblib==1.6.0"]
SEEDS = {"alpha": 1, "beta": 2, "gamma": 3, "unsafe": 4, "inspect": 5}
DB = "mltraq.db"
DATASTORE = "mltraq.datastore"
OUT_DATASTORE = "datastore"  # in --out: .gitignore skips folders named mltraq.datastore
LONG_DIR = "deep/" + "a" * 60 + "/" + "b" * 60
NON_UTF8 = b"caf\xe9.txt"


# --------------------------------------------------------------------------- sources


def make_sources(work: str, data_mb: int = 0) -> None:
    src = os.path.join(work, "src")
    data = os.path.join(src, "data")

    def write(rel: str | bytes, text: str, mode: int = 0o644) -> None:
        path = os.path.join(os.fsencode(data), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(text.encode())
        os.chmod(path, mode)

    write("train.csv", "a,b\n" + "".join(f"{i},{i * i}\n" for i in range(20)))
    write("test.csv", "a,b\n1,1\n2,4\n")
    write("sub/notes.txt", "notes\n")
    write(".hidden", "hidden\n")
    write(NON_UTF8, "latin-1 name\n")
    write(f"{LONG_DIR}/file.txt", "long name\n")
    write("run.sh", "#!/bin/sh\necho hi\n", 0o755)
    write("secret.txt", "secret\n", 0o600)
    write("weights.bin", "weights " * 8)
    os.link(os.path.join(data, "weights.bin"), os.path.join(data, "a_weights.bin"))
    os.link(os.path.join(data, "weights.bin"), os.path.join(data, "z_weights.bin"))
    os.symlink("train.csv", os.path.join(data, "latest.csv"))
    os.symlink("../train.csv", os.path.join(data, "sub", "up.csv"))
    os.symlink(f"../{LONG_DIR}/file.txt", os.path.join(data, "sub", "longlink"))
    os.symlink("sub", os.path.join(data, "linkdir"))
    os.makedirs(os.path.join(data, "empty", "nested"))
    if data_mb:  # docs/migration.md's example: a dataset worth deduplicating
        import random

        with open(os.path.join(data, "dataset.bin"), "wb") as f:
            f.write(random.Random(0).randbytes(data_mb << 20))

    # The same content, other mtimes (and another inode for every file).
    copy = os.path.join(src, "data_copy")
    shutil.copytree(data, copy, symlinks=True)
    os.unlink(os.path.join(copy, "a_weights.bin"))
    os.unlink(os.path.join(copy, "z_weights.bin"))
    os.link(os.path.join(copy, "weights.bin"), os.path.join(copy, "a_weights.bin"))
    os.link(os.path.join(copy, "weights.bin"), os.path.join(copy, "z_weights.bin"))
    for dirpath, _dirs, files in os.walk(copy):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.utime(path, (1_600_000_000, 1_600_000_000))

    other = os.path.join(src, "other")
    os.makedirs(other)
    with open(os.path.join(other, "config.json"), "w") as f:
        f.write('{"lr": 0.1}\n')

    outside = os.path.join(work, "outside.txt")
    with open(outside, "w") as f:
        f.write("outside\n")
    bad = os.path.join(src, "badlinks")
    os.makedirs(bad)
    with open(os.path.join(bad, "plain.txt"), "w") as f:
        f.write("plain\n")
    os.symlink(outside, os.path.join(bad, "abs"))


# --------------------------------------------------------------------------- steps (one process each)


def _session(work: str):
    from mltraq import create_session, options

    os.chdir(os.path.join(work, "project"))
    options().set("tqdm.disable", True)
    return create_session(f"sqlite:///{DB}")


def step_alpha(work: str) -> None:
    import uuid

    import numpy as np
    import pandas as pd
    from mltraq.storage.archivestore import Archive, ArchiveStore
    from mltraq.storage.datastore import DataStore
    from mltraq.utils.bunch import Bunch

    src = os.path.join(work, "src")
    s = _session(work)
    e = s.create_experiment("alpha")
    e.fields.data = ArchiveStore(os.path.join(src, "data"), arc_dir="data")
    e.fields.other = ArchiveStore(os.path.join(src, "other"))
    e.fields.nested = Bunch(inputs=ArchiveStore(os.path.join(src, "data"), arc_dir="inputs", include="**/*.csv"),
                            note="nested")
    e.fields.array = np.arange(12).reshape(3, 4)
    e.fields.frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    e.fields.when = np.datetime64("2024-01-02T03:04:05")
    e.fields.store = DataStore(weights=np.ones(4), note="datastore")
    e.fields.inline = Archive.create(os.path.join(src, "other"))
    e.fields.tags = {"red", "green", "blue", "cyan", "magenta"}
    e.fields.params = {"lr": 0.1, "epochs": 3, "ids": [uuid.UUID(int=7)], "pair": (1, "x")}
    e.add_runs(i=[1, 2])
    for run in e.runs.values():
        run.fields.i = run.params.i
        run.fields.model = ArchiveStore(os.path.join(src, "data"), arc_dir="model", exclude=["*.bin", "sub/*"])
        run.fields.score = 0.5 * run.params.i
        run.fields.vec = np.full(3, run.params.i)
        run.fields.extra = DataStore(i=run.params.i)
    e.persist()


def step_beta(work: str) -> None:
    from mltraq.storage.archivestore import ArchiveStore

    src = os.path.join(work, "src")
    s = _session(work)
    e = s.create_experiment("beta")
    e.fields.data = ArchiveStore(os.path.join(src, "data"), arc_dir="data")
    e.fields.hidden = ArchiveStore(os.path.join(src, "data"), include=[".*", "**/.*", ".*/**"])
    e.fields.tags = {"alpha", "beta", "gamma", "delta"}
    e.persist()
    # Replaced with the same object: MLtraq deletes the experiment's folder and writes every
    # archive again.
    e.fields.version = 2
    e.persist(if_exists="replace")


def step_gamma(work: str) -> None:
    from mltraq.storage.archivestore import ArchiveStore

    src = os.path.join(work, "src")
    s = _session(work)
    s.create_experiment("gamma", data=ArchiveStore(os.path.join(src, "data_copy"), arc_dir="data")).persist()
    # Replaced by name with a new object: the old experiment's folder stays, orphaned.
    s.create_experiment("gamma", data=ArchiveStore(os.path.join(src, "data_copy"), arc_dir="data"),
                        version=2).persist(if_exists="replace")
    # Persisted, then deleted: nothing of it is left.
    gone = s.create_experiment("deleted", data=ArchiveStore(os.path.join(src, "other")))
    gone.persist()
    gone.delete()


def step_unsafe(work: str) -> None:
    from mltraq import options
    from mltraq.storage.archivestore import ArchiveStore, ArchiveStoreIO

    src = os.path.join(work, "src")
    s = _session(work)
    s.create_experiment("unsafe", ok=ArchiveStore(os.path.join(src, "other"), arc_dir="ok"),
                        bad=ArchiveStore(os.path.join(src, "badlinks"))).persist()
    # A standalone archive (datastore.relative_path_prefix "undefined"): no experiment
    # references it.
    assert options().get("datastore.relative_path_prefix") == "undefined"
    ArchiveStoreIO.create(os.path.join(src, "other"), arc_dir="standalone")


def step_inspect(work: str) -> None:
    """Load every experiment with MLtraq and record what it extracted."""
    from mltraq import options

    s = _session(work)
    extracted = os.path.join(work, "extracted")
    options().set("archivestore.url", "file:///" + extracted)
    experiments = {}
    for name in sorted(s.ls()["name"]):
        record = {"loaded": True, "error": None}
        try:
            e = s.load_experiment(name)
            record["id"] = str(e.id_experiment)
        except Exception as exc:  # noqa: BLE001 - recorded: MLtraq cannot load it
            record.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
        experiments[name] = record
    ids = _ids(os.path.join(work, "project", DB))
    for name, record in experiments.items():
        record["id"] = ids[name]
        record.update(tree_record(os.path.join(extracted, ids[name])))
    with open(os.path.join(work, "inspect.json"), "w") as f:
        json.dump(experiments, f)


def _ids(db: str) -> dict[str, str]:
    import sqlite3
    import uuid

    with sqlite3.connect(db) as conn:
        return {name: str(uuid.UUID(hex=i)) for i, name in conn.execute("SELECT id_experiment, name FROM experiments")}


def tree_record(root: str) -> dict:
    """Paths under `root` (target-relative, str with surrogateescape), kinds, sha256 of
    files, link targets, and groups of paths that are one inode."""
    tree, inodes = {}, {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = {"kind": "symlink", "target": os.readlink(path)}
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    tree[rel] = {"kind": "file", "sha256": hashlib.sha256(f.read()).hexdigest()}
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = {"kind": "dir"}
    return {"tree": tree, "hardlinks": sorted(sorted(g) for g in inodes.values() if len(g) > 1)}


STEPS = {"alpha": step_alpha, "beta": step_beta, "gamma": step_gamma, "unsafe": step_unsafe,
         "inspect": step_inspect}


# --------------------------------------------------------------------------- driver


def _run_step(name: str, work: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=str(SEEDS[name]))
    subprocess.run([sys.executable, os.path.abspath(__file__), "--step", name, "--work", work], env=env, check=True)


def _tar_members(path: str) -> list[list]:
    out = []
    with tarfile.open(path, "r:") as tar:
        for m in tar.getmembers():
            digest = ""
            if m.isfile():
                digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            out.append([m.name, m.type.decode(), m.mode, m.size, m.linkname, digest])
    return out


def _datastore_files(root: str) -> dict[str, dict]:
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            entry = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tar": tarfile.is_tarfile(path)}
            if entry["tar"]:
                entry["members"] = _tar_members(path)
            files[rel] = entry
    return files


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ["mltraq", "numpy", "pandas", "pyarrow", "SQLAlchemy", "cloudpickle", "joblib"]
    return {n: version(n) for n in names}


def build(out: str, work: str, data_mb: int = 0) -> dict:
    import mltraq

    if mltraq.__version__ != MLTRAQ_VERSION:
        raise SystemExit(f"this needs mltraq {MLTRAQ_VERSION}, found {mltraq.__version__}")
    os.makedirs(os.path.join(work, "project"))
    make_sources(work, data_mb)
    for name in ("alpha", "beta", "gamma", "unsafe"):
        _run_step(name, work)
    project = os.path.join(work, "project")
    with open(os.path.join(project, DATASTORE, "stray.txt"), "w") as f:
        f.write("a file nothing references\n")
    _run_step("inspect", work)
    with open(os.path.join(work, "inspect.json")) as f:
        experiments = json.load(f)
    manifest = {
        "generator": "tests/make_legacy_fixture.py",
        "versions": _versions(),
        "python": sys.version.split()[0],
        "seeds": SEEDS,
        "experiments": experiments,
        "datastore": _datastore_files(os.path.join(project, DATASTORE)),
    }
    _check(manifest)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    shutil.copy2(os.path.join(project, DB), os.path.join(out, DB))
    shutil.copytree(os.path.join(project, DATASTORE), os.path.join(out, OUT_DATASTORE))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def _check(manifest: dict) -> None:
    """The properties the tests rely on, which depend on the seeds: fail loudly if lost."""
    tars = {k: v for k, v in manifest["datastore"].items() if v["tar"]}
    by_listing: dict[str, list[str]] = {}
    for rel, t in tars.items():
        key = json.dumps(sorted([m[0], m[1], m[2] & 0o777, m[4], m[5]] for m in t["members"]))
        by_listing.setdefault(key, []).append(rel)
    same = [g for g in by_listing.values() if len({tars[r]["sha256"] for r in g}) > 1]
    if not same:
        raise SystemExit("no two legacy TARs hold the same content with different bytes: try other SEEDS")
    repointed = False
    for t in tars.values():
        groups: dict[str, list[str]] = {}
        for name, kind, _mode, _size, link, _digest in t["members"]:
            if kind == "1":
                groups.setdefault(link, [link]).append(name)
        repointed |= any(min(g) != g[0] for g in groups.values())
    if not repointed:
        raise SystemExit("no legacy TAR has a hardlink to a name that sorts after it: try other SEEDS")
    if manifest["experiments"]["unsafe"]["loaded"]:
        raise SystemExit("MLtraq loaded the experiment with an absolute symlink: unexpected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder to write the project and manifest.json into (replaced)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--data-mb", type=int, default=0,
                        help="add a file of that many MiB to the archived dataset (docs/migration.md's example)")
    parser.add_argument("--requirements", action="store_true",
                        help="print the pinned packages of the MLtraq venv (for pip install) and exit")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requirements:
        print(" ".join(REQUIREMENTS))
        return
    if args.step:
        STEPS[args.step](args.work)
        return
    if not args.out:
        parser.error("--out is required")
    out = os.path.abspath(args.out)
    if args.work:
        os.makedirs(args.work)
        manifest = build(out, os.path.abspath(args.work), args.data_mb)
    else:
        with tempfile.TemporaryDirectory(prefix="legacy-fixture-") as work:
            manifest = build(out, work, args.data_mb)
    files = manifest["datastore"]
    tars = [v for v in files.values() if v["tar"]]
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {len(manifest['experiments'])} experiments, {len(tars)} legacy TARs "
          f"({sum(t['size'] for t in tars)} bytes), {len(files) - len(tars)} other datastore files; "
          f"{total} bytes in all")


if __name__ == "__main__":
    main()
