"""The two seed programs of MLtraq's "Archive files" page run on casstore with only their
imports changed, and print the documented layout (lines 0-7 of MLtraq's output) as a set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PYTHON = sys.executable  # the venv's interpreter running the tests

# The programs exactly as they ran against MLtraq 0.1.165 (docs/seed README).
SEED_ARCHIVESTORE = '''\
from os import mkdir

import pandas as pd

from mltraq import create_session
from mltraq.storage.archivestore import ArchiveStore
from mltraq.utils.fs import glob, tmpdir_ctx

with tmpdir_ctx():
    # Work in a temporary directory

    # Create a directory with two files
    mkdir("datasets")
    pd.Series([1, 2, 3]).to_csv("datasets/first.csv")
    pd.Series([4, 5, 6]).to_csv("datasets/second.csv")

    # Create an experiment
    s = create_session()
    e = s.create_experiment("test")

    # Define an archive (no tar file created!)
    e.fields.archived = ArchiveStore(src_dir="datasets", arc_dir="e")

    # Persist the experiment, creating the tar file
    e.persist()

    # Load the experiment, unarchiving the tar file
    e = s.load_experiment("test")

    print(f"Destination directory: '{e.fields.archived.get_target()}'")

    # Print contents of current directory
    print("Contents of current directory:")
    for idx, name in enumerate(glob("**", root_dir=".", recursive=True)):
        print(f"[{idx:2d}] {name}")
'''

SEED_ARCHIVESTOREIO = '''\
from os import mkdir

import pandas as pd

from mltraq.opts import options
from mltraq.storage.archivestore import ArchiveStoreIO
from mltraq.utils.fs import glob, tmpdir_ctx

with tmpdir_ctx():
    mkdir("datasets")
    pd.Series([1, 2, 3]).to_csv("datasets/first.csv")
    pd.Series([4, 5, 6]).to_csv("datasets/second.csv")

    with options().ctx({"datastore.relative_path_prefix": "archives",
                        "archivestore.relative_path_prefix": "all"}):
        # Create an archive and extract it
        archive = ArchiveStoreIO.create(src_dir="datasets", arc_dir="assets")
        archive.extract()

    print("Contents of current directory:")
    for idx, name in enumerate(glob("**", root_dir=".", recursive=True)):
        print(f"[{idx:2d}] {name}")
'''

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
LINE_RE = re.compile(r"^\[\s*(\d+)\] (.+)$")

# Lines 0-7 of MLtraq's outputs; {id} is the experiment id.
ARCHIVESTORE_LAYOUT = {
    "mltraq.archivestore",
    "mltraq.archivestore/{id}",
    "mltraq.archivestore/{id}/e",
    "mltraq.archivestore/{id}/e/first.csv",
    "mltraq.archivestore/{id}/e/second.csv",
    "datasets",
    "datasets/first.csv",
    "datasets/second.csv",
}
ARCHIVESTOREIO_LAYOUT = {
    "mltraq.archivestore",
    "mltraq.archivestore/all",
    "mltraq.archivestore/all/assets",
    "mltraq.archivestore/all/assets/first.csv",
    "mltraq.archivestore/all/assets/second.csv",
    "datasets",
    "datasets/first.csv",
    "datasets/second.csv",
}


def swap_imports(source: str) -> str:
    """Replace the word `mltraq` by `casstore` in import lines only (the migration rule)."""
    out = []
    for line in source.splitlines(keepends=True):
        if re.match(r"\s*(from|import)\s", line):
            line = re.sub(r"\bmltraq\b", "casstore", line)
        out.append(line)
    return "".join(out)


def run_program(path: Path, cwd: Path) -> str:
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / ".cache"), PYTHONHASHSEED="random")
    proc = subprocess.run([PYTHON, str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def listing(stdout: str) -> list[tuple[int, str]]:
    """The `[idx] name` lines after "Contents of current directory:"."""
    lines = stdout.splitlines()
    start = lines.index("Contents of current directory:") + 1
    found = []
    for line in lines[start:]:
        m = LINE_RE.match(line)
        assert m, f"unexpected output line {line!r}"
        found.append((int(m.group(1)), m.group(2)))
    return found


def check_archivestore_output(stdout: str) -> None:
    first = stdout.splitlines()[0]
    m = re.fullmatch(rf"Destination directory: 'mltraq\.archivestore/({UUID_RE})'", first)
    assert m, first
    id_experiment = m.group(1)
    assert str(uuid.UUID(id_experiment)) == id_experiment
    rows = listing(stdout)
    assert [i for i, _ in rows] == list(range(len(rows)))
    names = {name for _, name in rows}
    expected = {line.format(id=id_experiment) for line in ARCHIVESTORE_LAYOUT}
    assert expected <= names
    # Everything else is the datastore, and the folder is stored there as one blob.
    others = names - expected
    assert others and all(n == "mltraq.datastore" or n.startswith("mltraq.datastore/") for n in others)
    assert len([n for n in others if n.startswith("mltraq.datastore/casstore/blobs/") and n.endswith(".tar")]) == 1


def check_archivestoreio_output(stdout: str) -> None:
    rows = listing(stdout)
    assert [i for i, _ in rows] == list(range(len(rows)))
    names = {name for _, name in rows}
    assert ARCHIVESTOREIO_LAYOUT <= names
    others = names - ARCHIVESTOREIO_LAYOUT
    assert all(n == "mltraq.datastore" or n.startswith("mltraq.datastore/") for n in others)
    # The named reference sits where MLtraq put its TAR: mltraq.datastore/archives/<uuid hex>.
    refs = [n for n in others if re.fullmatch(r"mltraq\.datastore/archives/[0-9a-f]{32}", n)]
    assert len(refs) == 1
    assert len([n for n in others if n.startswith("mltraq.datastore/casstore/blobs/") and n.endswith(".tar")]) == 1


@pytest.mark.parametrize(("example", "seed"), [
    ("seed_archivestore.py", SEED_ARCHIVESTORE),
    ("seed_archivestoreio.py", SEED_ARCHIVESTOREIO),
])
def test_example_file_is_the_seed_program_with_only_imports_changed(example, seed):
    assert (EXAMPLES / example).read_text() == swap_imports(seed)


def test_seed_archivestore_example_prints_documented_layout(tmp_path):
    check_archivestore_output(run_program(EXAMPLES / "seed_archivestore.py", tmp_path))


def test_seed_archivestoreio_example_prints_documented_layout(tmp_path):
    check_archivestoreio_output(run_program(EXAMPLES / "seed_archivestoreio.py", tmp_path))


def test_seed_archivestore_program_with_swapped_imports_prints_documented_layout(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(swap_imports(SEED_ARCHIVESTORE))
    check_archivestore_output(run_program(program, tmp_path))


def test_seed_archivestoreio_program_with_swapped_imports_prints_documented_layout(tmp_path):
    program = tmp_path / "program.py"
    program.write_text(swap_imports(SEED_ARCHIVESTOREIO))
    check_archivestoreio_output(run_program(program, tmp_path))


def test_seed_examples_leave_nothing_in_the_current_directory(tmp_path):
    run_program(EXAMPLES / "seed_archivestore.py", tmp_path)
    run_program(EXAMPLES / "seed_archivestoreio.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache") == []
