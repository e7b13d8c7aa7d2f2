"""Experiments as MLtraq has them: an id, a name, and fields kept in a Bunch.

Thin: persisting, loading and deleting are the session's work (session.py), which this
module knows only as the three methods an experiment calls (`SessionLike`). MLtraq's
`ExperimentAlreadyExists` and `ExperimentNotFoundException` are importable from here, as
from `mltraq.experiment`: they are casstore's own errors under MLtraq's names."""

from __future__ import annotations

import copy
import re
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

from casstore.errors import ExperimentAlreadyExists as ExperimentAlreadyExists
from casstore.errors import ExperimentNotFoundException as ExperimentNotFoundException
from casstore.opts import options
from casstore.storage.archivestore import ArchiveStore
from casstore.utils.bunch import Bunch

if TYPE_CHECKING:
    from casstore.cas.progress import Report

_HASH_ALPHABET = "123456789ACEFHJKLMNPRTUVWXY"


def hash_uuid(value: uuid.UUID) -> str:
    """MLtraq's default experiment name: a 6-character hash of the id."""
    remain, result = value.int, ""
    while remain > 0:
        remain, pos = divmod(remain, len(_HASH_ALPHABET))
        result += _HASH_ALPHABET[pos]
    return (result + "000000")[:6].lower()


def table_name(name: str) -> str:
    """MLtraq's run table of experiment `name`: option database.experiment_tableprefix
    ("experiment_") and the name, each run of characters other than [0-9a-zA-Z] made one
    "_", stripped of "_" at both ends, lowercased."""
    prefix = options().get("database.experiment_tableprefix", otherwise="experiment_")
    return re.sub("[^0-9a-zA-Z]+", "_", f"{prefix}{name}").strip("_").lower()


class SessionLike(Protocol):
    """What an experiment asks of its session (casstore.session.Session has these)."""

    def save_experiment(self, experiment: Experiment, if_exists: str = "fail",
                        progress: Optional[Report] = None) -> None: ...

    def load_experiment(self, name: Optional[str] = None, id_experiment: Optional[uuid.UUID | str] = None,
                        progress: Optional[Report] = None) -> Experiment: ...

    def delete_experiment(self, experiment: Experiment) -> None: ...


class Experiment:
    """An experiment bound to a session."""

    __slots__ = ("session", "id_experiment", "name", "fields", "meta")

    def __init__(self, session: SessionLike, id_experiment: Optional[uuid.UUID] = None,
                 name: Optional[str] = None, fields: Optional[dict[str, Any]] = None, meta: Optional[bytes] = None):
        self.session = session
        self.id_experiment = id_experiment or uuid.uuid4()
        self.name = hash_uuid(self.id_experiment) if name is None else name
        self.fields = Bunch(fields)
        self.meta = meta

    def persist(self, if_exists: str = "fail", progress: Optional[Report] = None) -> Experiment:
        """Store the experiment; "fail" if the name exists, or "replace" it. `progress`, if
        given, is called with a casstore.cas.progress.Step as each archive field's bytes go."""
        self.session.save_experiment(self, if_exists, progress)
        return self

    def reload(self) -> Experiment:
        """A freshly loaded copy of the experiment stored under this one's name (archives
        extracted again). By name, as MLtraq: after a replace by name with another
        experiment, reload returns that one."""
        return self.session.load_experiment(name=self.name)

    def copy_to(self, name: Optional[str] = None, session: Optional[SessionLike] = None) -> Experiment:
        """A deep copy of the fields under a new id, bound to `session` (default: this one's),
        named `name` if given, else this experiment's name (as MLtraq's code does: its
        docstring promises a new default name for a default-named experiment, its code
        keeps the name). Not stored: `persist()` it, or use `Session.persist_experiment`."""
        return Experiment(session or self.session, name=name or self.name, fields=copy.deepcopy(self.fields))

    def get_tablename(self) -> str:
        """The name of MLtraq's run table for this experiment (`table_name`)."""
        return table_name(self.name)

    def delete(self) -> None:
        """Remove the experiment from the database and its extraction folder."""
        self.session.delete_experiment(self)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, id_experiment={str(self.id_experiment)!r})"


def archive_fields(value: Any, path: str = "") -> Iterator[tuple[str, ArchiveStore]]:
    """Every ArchiveStore inside `value`, with its dotted path (`data`, `inputs.train`, `runs.0`)."""
    if isinstance(value, ArchiveStore):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from archive_fields(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from archive_fields(item, f"{path}.{i}" if path else str(i))
