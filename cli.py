"""Launcher for a checkout: `python cli.py ...` runs the `casstore` command.

The click application lives in casstore/cli/, installed as the console script `casstore`
(pyproject.toml); this file is never installed (design.md §3)."""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from casstore.cli import main

    main(prog_name="casstore")
