"""MLtraq's runs: the table an experiment's meta names for them, and how a run id is spelled
in casstore's reference rows. Read by the session (the field roots of run tables) and by the
migration (the run-level references it rewrites)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from casstore.errors import CasStoreError
from casstore.mltraq import datapak


@dataclass(frozen=True)
class RunsMeta:
    """What an experiment's meta says of its runs."""

    table_name: str
    count: int
    serialized: list[str]  # in the meta's order: the order MLtraq decodes (and extracts) the columns in
    fields: list[str]  # every field of the runs (none for the default run MLtraq adds to an experiment)


def read_runs_meta(meta: bytes | None) -> RunsMeta | None:
    """The runs part of an experiment's meta, None if there is no meta or its table name and
    serialized columns are unreadable (a count or field types it lacks read as none)."""
    if meta is None:
        return None
    try:
        plain = datapak.safe_unpickle(bytes(meta))
        runs = _bunch(_bunch(plain).get("runs"))
        columns = _bunch(runs.get("columns"))
        table_name, serialized = runs.get("table_name"), columns.get("serialized", [])
    except (CasStoreError, AttributeError):
        return None
    if type(table_name) is not str or not isinstance(serialized, (list, tuple, set)):
        return None
    count = runs.get("count")
    return RunsMeta(table_name, count if type(count) is int else 0,
                    list(dict.fromkeys(c for c in serialized if type(c) is str)), _field_names(columns.get("types")))


def _field_names(types: Any) -> list[str]:
    try:
        return [str(k) for k in _bunch(types)]
    except AttributeError:
        return []


def runs_meta(meta: bytes | None) -> tuple[str, list[str]] | None:
    """(run table name, serialized columns, sorted) from an experiment's meta, None if unreadable."""
    runs = read_runs_meta(meta)
    return None if runs is None else (runs.table_name, sorted(runs.serialized))


def _bunch(value: Any) -> dict[Any, Any]:
    """The dict inside a DataPak Bunch (or a plain dict); AttributeError if it is neither."""
    if type(value) is dict and value.get(datapak.KEY_MAGIC) == datapak.TAG_BUNCH:
        value = value.get(datapak.KEY_VALUE)
    if type(value) is not dict:
        raise AttributeError("not a Bunch")
    return value


def run_hex(raw: Any) -> str:
    """A run id as `casstore_refs.id_run` holds it: 32 hex digits."""
    if isinstance(raw, uuid.UUID):
        return raw.hex
    return str(raw).replace("-", "").lower()
