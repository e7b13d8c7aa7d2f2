"""The house (docs/design.md): the rules the package's structure keeps, checked.

- No import cycle among casstore's modules. Imports under `if TYPE_CHECKING:` do not count;
  an import inside a function does (it runs, and it ties the two modules together).
- No module of casstore/ over MAX_LINES lines: a module that long does more than one job.
- `import casstore` stays light: it never imports MLtraq, pandas, numpy, fsspec or s3fs.
- The layering check (`lint-imports`, contracts in pyproject.toml) holds on this tree, and it
  can fail: a planted import from the content store up to the CLI makes it fail, naming the
  import, whether the import is at the top of the module or inside a function.
- The wheel is complete: pyproject.toml lists the packages by hand, so the wheel built from
  this checkout is installed into a fresh venv, and `casstore --help`, a persist and a load
  run there, away from the checkout's sources.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "casstore"
MAX_LINES = 400
HEAVY = ("mltraq", "pandas", "numpy", "pyarrow", "fsspec", "s3fs")
BIN = Path(sys.executable).parent  # the venv's bin/: lint-imports and casstore live there


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH, so a subprocess
    imports the sources under test whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def module_path(root: Path, module: str) -> Path:
    """The file of a dotted module under `root`: `a/b.py`, or `a/b/__init__.py` for a package."""
    base = root.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


# ---------------------------------------------------------------------------------------
# (a) No import cycles.

def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def import_graph() -> grimp.ImportGraph:
    spec = importlib.util.find_spec("casstore")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent == PACKAGE, (
        f"casstore resolves to {spec.origin}, not this checkout: run with PYTHONPATH={ROOT}")
    return grimp.build_graph("casstore", exclude_type_checking_imports=True, cache_dir=None)


def describe_cycle(graph: grimp.ImportGraph, component: list[str]) -> str:
    """The modules of a cycle, and each import between them with its line."""
    members = set(component)
    lines = [" ⇄ ".join(component)]
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer} -> {imported} (l.{detail['line_number']}: "
                             f"{detail['line_contents']})")
    return "\n".join(lines)


def test_no_import_cycles() -> None:
    graph = import_graph()
    edges = {m: graph.find_modules_directly_imported_by(m) - {m} for m in graph.modules}
    cycles = strongly_connected(edges)
    assert not cycles, "import cycles among casstore's modules:\n" + "\n".join(
        describe_cycle(graph, c) for c in cycles)


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a three-module loop is one component, a chain is none."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


# ---------------------------------------------------------------------------------------
# (b) Small modules.

def test_no_module_over_the_line_limit() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): path.read_bytes().count(b"\n")
             for path in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name} ({n})" for name, n in over.items())


# ---------------------------------------------------------------------------------------
# (c) `import casstore` stays light.

def test_import_casstore_stays_light() -> None:
    probe = textwrap.dedent(f"""
        import sys
        import casstore
        print(casstore.__file__)
        print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=checkout_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    origin, heavy = (done.stdout.splitlines() + ["", ""])[:2]
    assert Path(origin).resolve().parent == PACKAGE
    assert heavy == "", f"`import casstore` imported {heavy}"


# ---------------------------------------------------------------------------------------
# (d) The layering check holds, and it can fail.

def lint_imports(cwd: Path, config: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    exe = BIN / "lint-imports"
    assert exe.exists(), f"{exe} not found: the test extra installs import-linter"
    return subprocess.run([str(exe), str(config), "--no-cache", "--no-logo"], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env=checkout_env(PYTHONPATH=str(pythonpath)))


def test_layering_holds() -> None:
    done = lint_imports(ROOT, ROOT / "pyproject.toml", ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def bottom_of_content_store() -> str:
    """The lowest layer of the content store's own contract in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "layers" and contract["layers"][0].startswith("casstore.cas."):
            return contract["layers"][-1].split("|")[0].split(":")[0].strip()
    raise AssertionError("pyproject.toml has no layers contract for casstore.cas")


PLANTED = {
    "at the top": ("import casstore.cli\n", True),
    "inside a function": ("def _climb() -> None:\n    import casstore.cli\n", True),
    "for typing only": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    import casstore.cli\n", False),
}


@pytest.mark.parametrize("where", list(PLANTED))
def test_layering_check_catches_a_planted_import(where: str, tmp_path: Path) -> None:
    """A copy of the package with `import casstore.cli` planted in the content store's lowest
    module: lint-imports fails and names it, unless the import is for typing only."""
    planted_code, counts = PLANTED[where]
    shutil.copytree(PACKAGE, tmp_path / "casstore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    module = bottom_of_content_store()
    target = module_path(tmp_path, module)
    source = target.read_text(encoding="utf-8")
    # After the docstring and `from __future__` lines, so the module stays valid Python.
    lines = source.splitlines(keepends=True)
    cut = max((i + 1 for i, line in enumerate(lines) if line.startswith("from __future__")),
              default=0)
    target.write_text("".join(lines[:cut]) + planted_code + "".join(lines[cut:]), encoding="utf-8")

    done = lint_imports(tmp_path, tmp_path / "pyproject.toml", tmp_path)
    report = done.stdout + done.stderr
    named = f"{module} -> casstore.cli"
    if counts:
        assert done.returncode != 0 and named in report, report
    else:
        assert named not in report, report


# ---------------------------------------------------------------------------------------
# (e) The wheel has every subpackage.

PERSIST_AND_LOAD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import casstore
    from casstore import create_session
    from casstore.storage.archivestore import ArchiveStore

    assert Path(casstore.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), casstore.__file__
    files = {"a.txt": b"alpha\\n", "sub/b.bin": bytes(range(256)) * 64, "sub/deeper/c": b""}
    for name, data in files.items():
        Path("src", name).parent.mkdir(parents=True, exist_ok=True)
        Path("src", name).write_bytes(data)

    e = create_session("sqlite:///runs.db").create_experiment("wheel")
    e.fields.data = ArchiveStore(src_dir="src", arc_dir="data")
    e.persist()
    loaded = create_session("sqlite:///runs.db").load_experiment("wheel")
    target = Path(loaded.fields.data.get_target())
    got = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    # MLtraq's documented layout: <archivestore>/<experiment id>/<arc_dir>/<relpath>.
    assert target.resolve() == Path("mltraq.archivestore", str(loaded.id_experiment)).resolve(), target
    assert got == {"data/" + name: data for name, data in files.items()}, sorted(got)
    print("persisted and loaded", len(got), "files")
""")

# What the wheel build reads from the checkout (pyproject: readme, packages, package-dir).
BUILD_INPUTS = ("pyproject.toml", "README.md", "casstore", "migrations")


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    # The build runs on a copy: a build/ folder left in the checkout by an earlier build keeps
    # its files, and would hide a package missing from pyproject's list.
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("casstore-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, env=env)

    work = tmp_path / "work"
    work.mkdir()
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    assert "Usage: casstore" in run([str(venv / "bin" / "casstore"), "--help"], cwd=work, env=env)
    out = run([str(venv / "bin" / "python"), "-c", PERSIST_AND_LOAD], cwd=work, env=env)
    assert "persisted and loaded 3 files" in out
