"""What the commands print: sizes and ages for people, aligned tables, one JSON document on
stdout, warnings on stderr, and whether stderr is a terminal (progress is shown only there,
so that a log or a pipe stays clean)."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Sequence

import click


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None (a size nobody recorded) -> '?'."""
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def human_age(seconds: float) -> str:
    if seconds < 0:
        return f"in {human_age(-seconds)}"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def printable(value: str) -> str:
    """Printable whatever the bytes of a name (non-UTF-8 names come as surrogates)."""
    return os.fsencode(value).decode("utf-8", "backslashreplace")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns aligned; `right` lists the columns aligned right (numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def key_values(rows: Sequence[tuple[str, Any]], indent: str = "") -> list[str]:
    """One line per (key, value), the values aligned after the longest key."""
    width = max(len(k) for k, _ in rows)
    return [f"{indent}{k.ljust(width)}  {v}" for k, v in rows]


# The stable schemas of the JSON documents (docs/cli.md "JSON schemas"): every document
# starts with "schema": "casstore.<name>/<version>". A version changes only when a key is
# removed or changes meaning; new keys may appear within a version.
SCHEMAS = {"ls": 2, "ls-refs": 1, "show": 1, "rm": 1, "du": 1, "stats": 1, "verify": 1, "gc": 1, "extract": 1,
           "export": 1, "format": 1, "registry": 1, "registry-trust": 1, "relocate": 1, "db-current": 1,
           "db-upgrade": 1, "migrate": 1}


def schema_id(name: str) -> str:
    """`casstore.ls/2`: the value of a document's "schema" key."""
    return f"casstore.{name}/{SCHEMAS[name]}"


def emit_json(schema: str, document: dict[str, Any]) -> None:
    """The command's one JSON document on stdout, its schema key first."""
    import json  # imported when needed: `casstore --help` does not print JSON

    click.echo(json.dumps({"schema": schema_id(schema), **document}, indent=2, sort_keys=False))


def warn(message: str) -> None:
    click.echo(f"casstore: warning: {message}", err=True)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def stdin_is_terminal() -> bool:
    """Whether a question can be asked (rm's confirmation)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
