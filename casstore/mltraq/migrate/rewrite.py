"""The byte-exact rewrite of a DataPak value: each `mltraq.ArchiveStore-0` reference it holds
becomes casstore's `{"DATAPAK-0": "casstore.ArchiveStore-0", "value": {"blob", "arc_dir",
"size"}}`, and every other value keeps its bytes.

A DataPak is a pickle of plain containers; it is re-read by an unpickler that keeps sets in
their pickled order and is re-pickled only if that round trip gives the very same bytes. A
value that does not round-trip is left unmigrated (InvalidInput, which the executor reports)."""

from __future__ import annotations

import io
import pickle
import zlib
from typing import Any

from casstore.errors import InvalidInput
from casstore.mltraq import datapak

LEGACY_TAG = datapak.TAG_ARCHIVESTORE
CASSTORE_TAG = datapak.TAG_CASSTORE_ARCHIVESTORE


class _PickledSet(list[Any]):
    """A set as it was pickled: its items in the pickle's order. (A set of str comes back
    in another order in another process, so re-pickling a real set would move bytes.)"""

    __slots__ = ()


class _OrderedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, refusing every global, with sets kept as `_PickledSet`.

    Only ever run on bytes `datapak.safe_unpickle` accepted (plain containers only). The
    dispatch entries take `self: Any`: they use the pure-Python unpickler's internals
    (`append`, `pop_mark`, `stack`), which typeshed does not declare."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        raise InvalidInput(f"DataPak data references the global {module}.{name}: refusing to load it")

    def persistent_load(self, pid: Any) -> Any:
        raise InvalidInput("DataPak data references a persistent id: refusing to load it")

    def _load_empty_set(self: Any) -> None:
        self.append(_PickledSet())

    def _load_additems(self: Any) -> None:
        items = self.pop_mark()
        self.stack[-1].extend(items)

    dispatch[pickle.EMPTY_SET[0]] = _load_empty_set
    dispatch[pickle.ADDITEMS[0]] = _load_additems


class _OrderedPickler(pickle._Pickler):
    """The pure-Python pickler, writing a `_PickledSet` exactly as a set is pickled (its
    dispatch entry takes `self: Any` for the internals typeshed does not declare)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_pickled_set(self: Any, obj: _PickledSet) -> None:
        self.write(pickle.EMPTY_SET)
        self.memoize(obj)
        for start in range(0, len(obj), self._BATCHSIZE):
            self.write(pickle.MARK)
            for item in obj[start:start + self._BATCHSIZE]:
                self.save(item)
            self.write(pickle.ADDITEMS)

    dispatch[_PickledSet] = _save_pickled_set


def _ordered_loads(raw: bytes) -> Any:
    return _OrderedUnpickler(io.BytesIO(raw)).load()


def _ordered_dumps(tree: Any) -> bytes:
    buf = io.BytesIO()
    _OrderedPickler(buf, protocol=datapak.PICKLE_PROTOCOL).dump(tree)
    return buf.getvalue()


def _decompress(data: bytes) -> tuple[bytes, bool]:
    """As datapak reads it: (pickle bytes, whether it had MLtraq's b"C01" + zlib form)."""
    if data.startswith(datapak.COMPRESSION_PREFIX):
        try:
            return zlib.decompress(data[len(datapak.COMPRESSION_PREFIX):]), True
        except zlib.error:
            pass
    return data, False


def rewrite_datapak(data: bytes, replacements: list[tuple[tuple[Any, ...], Any]]) -> bytes:
    """DataPak `data` with the tagged value at each key path turned into casstore's
    ArchiveStore tag holding the given value; every other value keeps its bytes.

    Raises InvalidInput if `data` is not a DataPak, if its pickle does not re-pickle to the
    same bytes (then nothing could be promised about the other values), if a path does not
    lead to an `mltraq.ArchiveStore-0` value, or if the result does not read back as
    expected."""
    before = datapak.safe_unpickle(data)  # the safety check: plain containers only
    raw, compressed = _decompress(bytes(data))
    tree = _ordered_loads(raw)
    if _ordered_dumps(tree) != raw:
        raise InvalidInput("its DataPak does not re-pickle to the same bytes, so it is left as it was")
    for keys, value in replacements:
        for target in (_follow(tree, keys), _follow(before, keys)):
            if type(target) is not dict or target.get(datapak.KEY_MAGIC) != LEGACY_TAG:
                raise InvalidInput(f"no {LEGACY_TAG} value at {keys!r}")
            # Assigning to existing keys keeps the key objects and their order: only the
            # tag string and the value change in the pickle.
            target[datapak.KEY_MAGIC] = CASSTORE_TAG
            target[datapak.KEY_VALUE] = dict(value)
    new = _ordered_dumps(tree)
    if compressed:
        new = datapak.COMPRESSION_PREFIX + zlib.compress(new)
    if not same(datapak.safe_unpickle(new), before):
        raise InvalidInput("the rewritten DataPak does not read back as expected")
    return new


def _follow(tree: Any, keys: tuple[Any, ...]) -> Any:
    node = tree
    for key in keys:
        node = node[key]
    return node


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down and dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is float and a != a:
        return b != b
    return a == b
