"""The stores that bench/dedup.py compares: casstore and the peers that dedup below the folder.

Each tool makes a fresh store in a run folder (`setup`, not timed), stores the folder `<work>/data`
as a new version (`store`, timed: wall seconds), and names the folder whose growth is the bytes it
added (`store_dir`). Peers run as subprocesses with their defaults; casstore runs in a worker
subprocess (`python bench/dedup.py --worker JSON`) timed in-process around `persist()`.
Installing a missing peer (`ensure_*`) says what it does and returns None when it cannot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Optional

from run import _first_line, run_child

HERE = os.path.dirname(os.path.abspath(__file__))
DVC_SPEC = "dvc>=3,<4"


def timed(cmds: list[list[str]], cwd: str, env: dict[str, str]) -> float:
    """Wall seconds of running `cmds` one after the other (each checked), after an untimed sync."""
    os.sync()
    seconds = 0.0
    for cmd in cmds:
        wall, _ = run_child_env(cmd, cwd, env)
        seconds += wall
    return seconds


def run_child_env(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[float, dict]:
    """run.py's run_child with extra environment variables for this child only."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_child(cmd, cwd=cwd)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tool:
    """One store under test: `name` as printed, `version` for the header."""

    name = "?"
    version = "?"
    settings = ""

    def setup(self, root: str, work: str) -> None:
        raise NotImplementedError

    def store(self, step: str, arc_dir: str) -> float:
        raise NotImplementedError

    def store_dir(self) -> str:
        raise NotImplementedError


class Casstore(Tool):
    name = "casstore"
    format = "chunked"  # the datastore's format: a new datastore's default

    def __init__(self) -> None:
        code = "import casstore; print(casstore.__version__, casstore.__file__)"
        version, path = _first_line([sys.executable, "-c", code]).split()
        commit = _first_line(["git", "-C", os.path.dirname(os.path.dirname(path)), "rev-parse", "--short", "HEAD"])
        self.version = f"{version} (git {commit})"
        self.settings = "codec none (its default), stat cache on, one new experiment per version"
        self.last_wall = 0.0

    def setup(self, root: str, work: str) -> None:
        self.root, self.src = root, os.path.join(work, "data")
        os.makedirs(root)

    def store(self, step: str, arc_dir: str) -> float:
        spec = {"root": self.root, "src": self.src, "name": step, "arc_dir": arc_dir, "format": self.format}
        os.sync()
        self.last_wall, out = run_child([sys.executable, os.path.join(HERE, "dedup.py"), "--worker", json.dumps(spec)],
                                        cwd=self.root)
        return float(out["seconds"])

    def store_dir(self) -> str:
        return os.path.join(self.root, "datastore")

    def load(self, step: str, target: str) -> float:
        """Load the experiment of `step` into the empty folder `target`; seconds around
        load_experiment() in a worker subprocess."""
        spec = {"root": self.root, "name": step, "load_into": target}
        _, out = run_child([sys.executable, os.path.join(HERE, "dedup.py"), "--worker", json.dumps(spec)],
                           cwd=self.root)
        return float(out["seconds"])


def cas_worker(spec: dict) -> dict:
    """In the worker process: persist `src` as a new experiment `name` (seconds around
    persist()), or, given `load_into`, load experiment `name` there (seconds around
    load_experiment())."""
    from casstore import ArchiveStore, create_session, options

    from casstore.cas.backends.local import LocalBlobStore

    root = spec["root"]
    if "load_into" in spec:
        options().set("datastore.url", os.path.join(root, "datastore"))
        options().set("archivestore.url", "file:///" + spec["load_into"])
        options().set("statcache.path", os.path.join(root, "statcache.sqlite"))
        session = create_session("sqlite:///" + os.path.join(root, "db.sqlite"))
        t0 = time.perf_counter()
        session.load_experiment(spec["name"])
        return {"seconds": time.perf_counter() - t0}
    blobs = LocalBlobStore(os.path.join(root, "datastore"))
    if not blobs.exists():
        os.makedirs(blobs.root, exist_ok=True)
        blobs.ensure_format()
        blobs.set_format(spec.get("format", "chunked"))
    options().set("datastore.url", os.path.join(root, "datastore"))
    options().set("archivestore.url", "file:///" + os.path.join(root, "archivestore"))
    options().set("statcache.path", os.path.join(root, "statcache.sqlite"))
    session = create_session("sqlite:///" + os.path.join(root, "db.sqlite"))
    experiment = session.create_experiment(spec["name"])
    experiment.fields.data = ArchiveStore(src_dir=spec["src"], arc_dir=spec["arc_dir"])
    t0 = time.perf_counter()
    experiment.persist()
    return {"seconds": time.perf_counter() - t0, "blob_id": experiment.fields.data.blob_id}


class CasstoreWhole(Casstore):
    """casstore with a whole datastore (format 1: each blob one file): today's storage, the
    reference issue 13's speed targets are ratios of."""

    name = "casstore whole"
    format = "whole"


class Restic(Tool):
    name = "restic"

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.version = _first_line([exe, "version"])
        self.settings = "repository format 'stable' and compression 'auto' (its defaults), cache in the run folder"

    def setup(self, root: str, work: str) -> None:
        self.work, self.repo = work, os.path.join(root, "repo")
        os.makedirs(root)
        # The password is in this child's environment only (never on a command line).
        self.env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(root, "cache")}
        run_child_env([self.exe, "init", "-q", "--repo", self.repo], root, self.env)

    def store(self, step: str, arc_dir: str) -> float:
        return timed([[self.exe, "backup", "-q", "--repo", self.repo, "--host", "bench", "data"]], self.work, self.env)

    def store_dir(self) -> str:
        return self.repo


class Borg(Tool):
    name = "borg"

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.version = _first_line([exe, "--version"])
        self.settings = "--encryption none, compression lz4 and chunker (its defaults), cache in the run folder"

    def setup(self, root: str, work: str) -> None:
        self.work, self.repo = work, os.path.join(root, "repo")
        os.makedirs(root)
        self.env = {"BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                    "BORG_BASE_DIR": os.path.join(root, "home")}
        run_child_env([self.exe, "init", "--encryption", "none", self.repo], root, self.env)

    def store(self, step: str, arc_dir: str) -> float:
        return timed([[self.exe, "create", f"{self.repo}::{step}", "data"]], self.work, self.env)

    def store_dir(self) -> str:
        return self.repo


class Dvc(Tool):
    """DVC in a git repository whose work tree is the scenario's work folder; the cache is the
    default local one (`.dvc/cache`), and its growth is the bytes added."""

    name = "DVC 3"

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.version = "DVC " + _first_line([exe, "--version"])
        self.settings = "local cache .dvc/cache, cache.type default (reflink,copy); `dvc add` + `git commit` timed"

    def setup(self, root: str, work: str) -> None:
        self.work = work
        os.makedirs(root)
        self.env = {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": os.path.join(root, "site"),
                    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
        for cmd in (["git", "init", "-q"], [self.exe, "init", "-q"], ["git", "add", ".dvc", ".dvcignore"],
                    ["git", "commit", "-q", "-m", "dvc init"]):
            run_child_env(cmd, work, self.env)

    def store(self, step: str, arc_dir: str) -> float:
        return timed([[self.exe, "add", "-q", "data"], ["git", "add", "data.dvc", ".gitignore"],
                      ["git", "commit", "-q", "--allow-empty", "-m", step]], self.work, self.env)

    def store_dir(self) -> str:
        return os.path.join(self.work, ".dvc", "cache")


# --------------------------------------------------------------------------- installs

def _apt_install(package: str, exe: str, log: Callable[[str], None]) -> Optional[str]:
    found = shutil.which(exe)
    if found:
        return found
    log(f"{exe} not found: apt-get install -y {package} ...")
    for cmd in (["apt-get", "install", "-y", "-q", package], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", package]):
        if shutil.which(exe):
            break
        try:
            subprocess.run(cmd, capture_output=True, check=False)
        except OSError as e:
            log(f"  {' '.join(cmd)}: {e}")
            break
    found = shutil.which(exe)
    if not found:
        log(f"  could not install {package}: going on without {exe}")
    return found


def ensure_restic(log: Callable[[str], None]) -> Optional[Tool]:
    exe = _apt_install("restic", "restic", log)
    return Restic(exe) if exe else None


def ensure_borg(log: Callable[[str], None]) -> Optional[Tool]:
    exe = _apt_install("borgbackup", "borg", log)
    return Borg(exe) if exe else None


def ensure_dvc(venv: str, log: Callable[[str], None]) -> Optional[Tool]:
    """DVC 3 in its own venv (made on first use with `pip install 'dvc>=3,<4'`)."""
    exe = os.path.join(venv, "bin", "dvc")
    if os.path.exists(exe) and _first_line([exe, "--version"]).startswith("3."):
        return Dvc(exe)
    log(f"creating the DVC 3 environment in {venv} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        with open(os.path.join(venv, ".gitignore"), "w") as f:
            f.write("*\n")  # keep the venv out of git
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", DVC_SPEC],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"  could not install DVC ({e}): going on without it")
        return None
    return Dvc(exe) if _first_line([exe, "--version"]).startswith("3.") else None
