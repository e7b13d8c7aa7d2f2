"""Time the start: `import casstore` and `casstore --help`, against `python -c pass`.

Each command is run --runs times as a fresh process (wall time around the whole process,
interpreter start included), interleaved so that a slow moment of the machine falls on all
of them alike; prints the median of each, its ratio to the bare interpreter, issue 15's
targets (printed, never asserted) and the modules the start imported that it should not.

    python bench/startup.py               # 21 runs
    python bench/startup.py --runs 51

`casstore --help` is run as `python -m casstore.cli --help`, and as the console script too
when one is installed beside the interpreter (bin/casstore). Run it with the python that has
casstore installed (the project's .venv), on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TARGETS = {"import casstore": 0.25, "casstore --help": 0.20}
HEAVY = ["sqlalchemy", "alembic", "zstandard", "casstore.cas.backends.local"]


def commands() -> dict[str, list[str]]:
    found = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import casstore": [sys.executable, "-c", "import casstore"],
        "casstore --help": [sys.executable, "-m", "casstore.cli", "--help"],
    }
    script = os.path.join(os.path.dirname(sys.executable), "casstore")
    if os.access(script, os.X_OK):
        found["casstore --help (script)"] = [script, "--help"]
    return found


def wall_time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def heavy_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    todo = commands()
    for argv in todo.values():  # warm-up: the page cache holds the interpreter and the modules
        wall_time(argv)
    samples: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(args.runs):
        for name, argv in todo.items():
            samples[name].append(wall_time(argv))
    base = statistics.median(samples["python -c pass"])
    print(f"{'command':<28} {'median':>8} {'min':>8} {'÷ pass':>7}  target")
    for name, values in samples.items():
        median = statistics.median(values)
        target = TARGETS.get(name.removesuffix(" (script)"))
        verdict = "" if target is None else f"≤ {target:.2f} s {'PASS' if median <= target else 'MISS'}"
        print(f"{name:<28} {median:>7.3f}s {min(values):>7.3f}s {median / base:>7.2f}  {verdict}")
    help_code = ("import sys\nfrom casstore.cli import main\nsys.argv = ['casstore', '--help']\n"
                 "try:\n    main()\nexcept SystemExit:\n    pass")
    print(f"imported by `import casstore`: {heavy_after('import casstore') or 'none of ' + ', '.join(HEAVY)}")
    print(f"imported by `casstore --help`: {heavy_after(help_code) or 'none of ' + ', '.join(HEAVY)}")
    print(f"({args.runs} runs each, {sys.executable}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
