"""The examples in docs/ and the README run as written.

A fenced ```bash or ```python block preceded by the line `<!-- doctest -->` is an example:
it is run in a fresh, empty folder (bash blocks with `bash -e`, python blocks with this
interpreter), with this interpreter's folder (the venv's bin/, where `casstore` lives) first
on PATH, and must exit 0. A ```text block preceded by `<!-- doctest-output -->` right after
an example is that example's expected stdout, compared exactly (trailing spaces and blank
lines aside). Only self-contained, fast blocks are marked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/tar-format.md", "docs/datastore.md", "docs/gc.md", "docs/cli.md", "README.md")
MUST_HAVE_EXAMPLES = ("docs/tar-format.md", "docs/datastore.md", "docs/cli.md", "README.md")
EXAMPLE_MARK = "<!-- doctest -->"
OUTPUT_MARK = "<!-- doctest-output -->"
LANGUAGES = ("bash", "python")
FENCE = re.compile(r"^```([\w-]*)\s*$")
TIMEOUT_S = 120


@dataclass
class Example:
    doc: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    expected: Optional[str] = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(doc: str) -> list[Example]:
    """The marked examples of `doc`, with their expected output if one is marked."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    last: Optional[Example] = None  # the example right before, if the last block was one
    mark: Optional[tuple[str, int]] = None
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        fence = FENCE.match(lines[i])
        if stripped in (EXAMPLE_MARK, OUTPUT_MARK):
            mark = (stripped, i + 1)
        elif fence:
            end = next((k for k in range(i + 1, len(lines)) if lines[k].strip() == "```"), None)
            if end is None:
                raise ValueError(f"{doc}:{i + 1}: code block never closed")
            body = "\n".join(lines[i + 1:end]) + "\n"
            if mark is None:
                last = None
            elif mark[0] == EXAMPLE_MARK:
                if fence.group(1) not in LANGUAGES:
                    raise ValueError(f"{doc}:{mark[1]}: {EXAMPLE_MARK} marks a {fence.group(1)!r} block; "
                                     f"only {', '.join(LANGUAGES)} blocks run")
                last = Example(doc, i + 1, fence.group(1), body)
                examples.append(last)
            else:
                if last is None:
                    raise ValueError(f"{doc}:{mark[1]}: {OUTPUT_MARK} must follow a {EXAMPLE_MARK} block")
                last.expected = body
                last = None
            mark = None
            i = end + 1
            continue
        elif stripped and mark is not None:
            raise ValueError(f"{doc}:{mark[1]}: {mark[0]} must be followed by a fenced code block")
        i += 1
    if mark is not None:
        raise ValueError(f"{doc}:{mark[1]}: {mark[0]} at the end of the file")
    return examples


EXAMPLES = [example for doc in DOCS for example in parse(doc)]


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)  # the venv's bin/, not resolved through symlinks
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the stat cache stays out of the user's home
    env["TZ"] = "UTC"
    for name in ("CASSTORE_DB", "CASSTORE_DATASTORE", "PYTHONPATH"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("doc", MUST_HAVE_EXAMPLES)
def test_doc_has_examples(doc: str) -> None:
    assert parse(doc), f"{doc} has no {EXAMPLE_MARK} block"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example_runs(example: Example, tmp_path: Path, command_server) -> None:
    """A bash example's `casstore` commands, and a python example, are processes forked from a
    server that imported casstore once (tests/fork_runner.py), not new interpreters that import
    it each time."""
    scripts = tmp_path / "scripts"
    work = tmp_path / "work"
    scripts.mkdir()
    work.mkdir()
    env = _environment(tmp_path)
    script = scripts / f"example.{'sh' if example.language == 'bash' else 'py'}"
    script.write_text(example.code, encoding="utf-8")
    if example.language == "bash":
        result = subprocess.run(["bash", "-e", str(script)], cwd=work, env=command_server.path_env(env),
                                capture_output=True, text=True, timeout=TIMEOUT_S)
    else:
        result = command_server.run_script(example.code, cwd=str(work), env=env, timeout=TIMEOUT_S)
    assert result.returncode == 0, (
        f"example at {example.id} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    if example.expected is not None:
        assert _normalize(result.stdout) == _normalize(example.expected), (
            f"example at {example.id}: output differs from the documented output\n"
            f"--- documented ---\n{example.expected}\n--- got ---\n{result.stdout}\n"
            f"--- stderr ---\n{result.stderr}")
