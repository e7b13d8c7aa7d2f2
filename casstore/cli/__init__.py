"""The `casstore` command: click commands over the library, nothing else.

app.py holds the group (`main`), the options every command takes and the exit codes;
project.py opens the database and the datastore; output.py formats what is printed. The
commands, grouped by what they touch, register themselves on `main` when imported here:
archives.py (cat, extract, export), experiments.py (ls, show, rm, du), maintenance.py (stats, verify, gc), registry.py
(registry and trust), schema.py (db current, db upgrade), migrate.py (migrate)."""

from casstore.cli import archives, experiments, formats, maintenance, migrate, registry, schema  # noqa: F401  (register the commands)
from casstore.cli.app import main

__all__ = ["main"]
