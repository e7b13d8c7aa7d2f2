"""casstore as MLtraq's archive backend: `casstore.mltraq.enable()` (docs/mltraq-integration.md).

enable() replaces five methods of MLtraq's own `mltraq.storage.archivestore.ArchiveStoreIO`
and one function of its DataPak decoder; everything else MLtraq does stays MLtraq's code:

- `create` (what MLtraq's `ArchiveStore.to_url` calls at persist, for experiment fields and for
  the run fields `execute` filled) stores the folder in casstore's content store and writes, at
  MLtraq's own path `<datastore>/<relative_path_prefix>/<uuid hex>`, the named reference
  casstore's `ArchiveStoreIO.create` writes. The field keeps MLtraq's tag and URL form.
- `open`, `extract`, `getnames`: a URL naming a named reference is read by casstore (digest
  checked, casstore's member validation); one naming a legacy TAR runs MLtraq's code.
- `delete`: MLtraq's, and, when enable(datastore=...) put the references in another
  datastore, the experiment's references there too (MLtraq removes only its own folder).
- `mltraq.experiment.Experiment.delete` (MLtraq's persist with if_exists="replace" calls it):
  MLtraq's, then, when the row it deleted by name had another id (a new object replacing
  an experiment), that experiment's references too. MLtraq removes only the folders of the
  new id, so without this the old archives would stay referenced, kept by gc forever.
- `decode_magic_key` learns `casstore.ArchiveStore-0`, the value `casstore migrate` writes
  by default, and extracts its blob where MLtraq extracts its archives.

Each patched call runs with MLtraq's datastore and archivestore options copied into casstore's
(a different singleton), so MLtraq's per-experiment `options().ctx` blocks apply."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Optional

from casstore import stores
from casstore.cas.backends.urls import file_url_to_path
from casstore.cas.digest import checked_id
from casstore.cas.live.refs import MAX_REF_BYTES, parse_named_ref
from casstore.errors import InvalidInput, UnreadableObject
from casstore.mltraq import datapak
from casstore.opts import options
from casstore.storage.archivestore import ArchiveStore, ArchiveStoreIO

# The options a patched call copies from MLtraq's options() into casstore's.
BRIDGED = ("datastore.url", "datastore.relative_path_prefix", "archivestore.url", "archivestore.relative_path_prefix")
METHODS = ("create", "open", "extract", "getnames", "delete")


@dataclass
class _State:
    """What enable() replaced (restored exactly by disable()) and the datastore it chose."""

    methods: dict[str, Any] = field(default_factory=dict)  # ArchiveStoreIO attribute -> original
    decode: Any = None  # the original mltraq.storage.serializers.datapak.decode_magic_key
    delete_experiment: Any = None  # the original mltraq.experiment.Experiment.delete
    datastore: Optional[str] = None  # enable(datastore=...), None: MLtraq's datastore.url

    @property
    def on(self) -> bool:
        return bool(self.methods)


_state = _State()


class Enabled:
    """What enable() returns: leaving its `with` block restores the state before that enable()
    (off, or the datastore an outer enable() chose)."""

    def __init__(self, was_on: bool, was_datastore: Optional[str]):
        self._was_on = was_on
        self._was_datastore = was_datastore

    def __enter__(self) -> Enabled:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self._was_on:
            _state.datastore = self._was_datastore
        else:
            disable()


def enable(datastore: Optional[str] = None) -> Enabled:
    """Make MLtraq store and read its ArchiveStore archives through casstore, until disable()
    (or the end of the `with enable():` block). `datastore` (a folder or a datastore URL)
    puts blobs and references there instead of MLtraq's datastore folder (option
    datastore.url at each call); a relative folder is taken from the current folder now.
    Calling it again while enabled changes only the datastore. Needs MLtraq installed."""
    from mltraq import experiment as mltraq_experiment
    from mltraq.storage import archivestore as mltraq_archivestore
    from mltraq.storage.serializers import datapak as mltraq_datapak

    before = Enabled(_state.on, _state.datastore)
    _state.datastore = _absolute(datastore)
    if _state.on:
        return before
    cls = mltraq_archivestore.ArchiveStoreIO
    missing = [name for name in METHODS if name not in cls.__dict__]
    if missing or "delete" not in mltraq_experiment.Experiment.__dict__:
        raise InvalidInput(f"this MLtraq has no ArchiveStoreIO.{(missing or ['?'])[0]} or Experiment.delete of its own: "
                           "casstore.mltraq.enable() is made for MLtraq 0.1.165")
    _state.methods = {name: cls.__dict__[name] for name in METHODS}
    _state.decode = mltraq_datapak.decode_magic_key
    _state.delete_experiment = mltraq_experiment.Experiment.__dict__["delete"]
    mltraq_experiment.Experiment.delete = _delete_experiment
    cls.create = classmethod(_create)
    cls.open = _open
    cls.extract = _extract
    cls.getnames = _getnames
    cls.delete = classmethod(_delete)
    mltraq_datapak.decode_magic_key = _decode_magic_key
    return before


def disable() -> None:
    """Put MLtraq's own methods back, exactly as they were; harmless when not enabled."""
    if not _state.on:
        return
    from mltraq import experiment as mltraq_experiment
    from mltraq.storage import archivestore as mltraq_archivestore
    from mltraq.storage.serializers import datapak as mltraq_datapak

    for name, original in _state.methods.items():
        setattr(mltraq_archivestore.ArchiveStoreIO, name, original)
    mltraq_datapak.decode_magic_key = _state.decode
    mltraq_experiment.Experiment.delete = _state.delete_experiment
    _state.methods, _state.decode, _state.delete_experiment, _state.datastore = {}, None, None, None


def is_enabled() -> bool:
    return _state.on


def _absolute(datastore: Optional[str]) -> Optional[str]:
    if datastore is None:
        return None
    if not isinstance(datastore, (str, os.PathLike)) or not os.fspath(datastore):
        raise InvalidInput(f"datastore must be a folder or a datastore URL, got {datastore!r}")
    path = os.fspath(datastore)
    if path.startswith("file://"):
        path = file_url_to_path(path)
    elif "://" in path:
        return path
    return os.path.abspath(path)


@contextmanager
def _bridged() -> Iterator[None]:
    """casstore's options set from MLtraq's for the duration of one patched call."""
    from mltraq.opts import options as mltraq_options

    values = {name: mltraq_options().get(name) for name in BRIDGED}
    if _state.datastore is not None:
        values["datastore.url"] = _state.datastore
    with options().ctx(values):
        yield


def _is_reference(url: str) -> bool:
    """Whether `url` names a casstore named reference in the datastore (else: a legacy TAR,
    or nothing, which MLtraq's own code reports as it always did)."""
    try:
        key = file_url_to_path(url).replace(os.sep, "/")
        data = stores.content_store().blobs.get_object(key, max_bytes=MAX_REF_BYTES)
    except (UnreadableObject, InvalidInput):
        return False
    return data is not None and parse_named_ref(key, data) is not None


def _create(cls: Any, src_dir: str, arc_dir: str = ".", include: Any = "**", exclude: Any = None) -> Any:
    with _bridged():
        url = ArchiveStoreIO.create(src_dir, arc_dir, include, exclude).url
    return cls(url)


def _open(self: Any) -> Any:
    with _bridged():
        if _is_reference(self.url):
            return ArchiveStoreIO(self.url).open()
    return _state.methods["open"](self)


def _extract(self: Any, target: Optional[str] = None, members: Any = None) -> Any:
    with _bridged():
        if _is_reference(self.url):
            ArchiveStoreIO(self.url).extract(target, members)
            return self
    return _state.methods["extract"](self, target, members)


def _getnames(self: Any, target: Optional[str] = None) -> list[str]:
    with _bridged():
        if _is_reference(self.url):
            return ArchiveStoreIO(self.url).getnames(target)
    names: list[str] = _state.methods["getnames"](self, target)
    return names


def _delete(cls: Any, relative_path_prefix: str) -> None:
    _state.methods["delete"].__get__(None, cls)(relative_path_prefix)
    if _state.datastore is not None:  # else they are in MLtraq's datastore folder, which MLtraq removed
        _remove_references(relative_path_prefix)


def _delete_experiment(self: Any, *args: Any, **kwargs: Any) -> None:
    stored = _stored_id(self)
    _state.delete_experiment(self, *args, **kwargs)
    if stored is not None and str(stored) != str(self.id_experiment):
        _remove_references(str(stored))


def _stored_id(experiment: Any) -> Any:
    """The id of the experiment row named like `experiment` (None if there is none)."""
    from sqlalchemy.orm import load_only

    model = experiment.model_cls
    with experiment.db.session() as session:
        record = session.query(model).options(load_only(model.id_experiment)).filter_by(name=experiment.name).first()
        return None if record is None else record.id_experiment


def _remove_references(relative_path_prefix: str) -> None:
    """Delete the named references under `<datastore>/<relative_path_prefix>/`, and nothing
    else there (MLtraq's own files are MLtraq's to keep or remove)."""
    with _bridged(), options().ctx({"datastore.relative_path_prefix": relative_path_prefix}):
        prefix = stores.checked_prefix("datastore.relative_path_prefix").replace(os.sep, "/")
        blobs = stores.content_store().blobs
        for obj in list(blobs.list_objects(prefix + "/")):
            try:
                data = blobs.get_object(obj.key, max_bytes=MAX_REF_BYTES)
            except UnreadableObject:
                continue  # larger than a reference, or not a regular file: not casstore's
            if data is not None and parse_named_ref(obj.key, data) is not None:
                blobs.delete_object(obj.key)


def _decode_magic_key(cls: Any, obj: dict[str, Any]) -> Any:
    """MLtraq's decoder, which also reads `casstore.ArchiveStore-0` (a migrated field)."""
    if obj.get(datapak.KEY_MAGIC) != datapak.TAG_CASSTORE_ARCHIVESTORE:
        return _state.decode(cls, obj)
    return _load_casstore_value(obj.get(datapak.KEY_VALUE))


def _load_casstore_value(value: Any) -> Any:
    """Extract a casstore archive value where MLtraq extracts its ArchiveStore (the
    experiment's folder of the archivestore) and return MLtraq's loaded ArchiveStore."""
    from mltraq.storage.archivestore import ArchiveStore as MLtraqArchiveStore
    from mltraq.utils.bunch import Bunch as MLtraqBunch

    if not isinstance(value, dict):
        raise InvalidInput(f"{datapak.TAG_CASSTORE_ARCHIVESTORE} holds {type(value).__name__}, not dict")
    try:
        archive = ArchiveStore.from_ref(value)
    except KeyError as exc:
        raise InvalidInput(f"{datapak.TAG_CASSTORE_ARCHIVESTORE} value has no {exc}") from exc
    with _bridged():
        target = ArchiveStoreIO.get_target()
        stores.content_store().extract(checked_id(archive.blob_id), target, size=archive.size)
    loaded = MLtraqArchiveStore.__new__(MLtraqArchiveStore)
    loaded.params = MLtraqBunch(target=target)
    return loaded
