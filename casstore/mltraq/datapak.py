"""DataPak: the bytes MLtraq 0.1.165 stores for each experiment field value.

Format, as written by MLtraq (`mltraq.storage.serializers.datapak`):

* The value is first *encoded* into plain containers only (dict, list, tuple, set, str,
  bytes, int, float, bool, None). Richer values become *tagged dicts*
  ``{"DATAPAK-0": tag, "value": raw}``, e.g. ``{"DATAPAK-0": "uuid.UUID-0", "value": "<hex>"}``.
* The plain structure is pickled with protocol 5. When compression is on, the pickle is
  stored as ``b"C01" + zlib.compress(pickle)``.

Reading never runs pickle's object machinery: the opcodes are checked against a list of
container/scalar opcodes first, and the unpickler refuses every global anyway, so hostile
bytes can at worst raise `InvalidInput`.

Only Bunch, uuid.UUID and the tags passed in `decoders` are decoded into objects (the
session passes frames.DECODERS for numpy, pandas and pyarrow values). Every other tag
(numpy etc. when not asked for, Sequence, DataStore, unknown tags...) is kept as an
`Opaque` holding the raw value as read, which encodes back to the very same tagged dict:
fields casstore does not understand survive a load/persist cycle byte for byte.

One limit of that guarantee, from pickle itself: pickle shares repeated *objects* through its
memo, and unpickling returns CPython's shared one-character strings. A pickle whose writer
held two distinct but equal strings of one character re-dumps with a memo reference instead
of a second copy: the same value, other bytes. Pickles written from unpickled values (as
MLtraq's rows are) are not affected; migration re-checks every rewritten cell anyway.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import reprlib
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Optional

from casstore.errors import CasStoreError, InvalidInput, UnsupportedValue
from casstore.utils.bunch import Bunch

KEY_MAGIC = "DATAPAK-0"
KEY_VALUE = "value"

TAG_BUNCH = "mltraq.Bunch-0"
TAG_UUID = "uuid.UUID-0"
TAG_ARCHIVE = "mltraq.Archive-0"
TAG_ARCHIVESTORE = "mltraq.ArchiveStore-0"
TAG_DATASTORE = "mltraq.DataStore-0"
TAG_CASSTORE_ARCHIVESTORE = "casstore.ArchiveStore-0"  # casstore's reference to a blob (storage/archivestore.py)

PICKLE_PROTOCOL = 5
COMPRESSION_PREFIX = b"C01"
# The most a compressed DataPak may inflate to. Fields are metadata (their archives are
# blobs), and gc and verify decode the fields of every project sharing a datastore: a few
# KB of zlib that inflate to gigabytes must be refused, not exhaust memory.
MAX_DECOMPRESSED_BYTES = 512 << 20

Decoders = Mapping[str, Callable[[Any], Any]]
# Called on a value of a type the codec does not know: its (tag, raw value), or None when
# it does not know the type either (frames.encode, for numpy, pandas and pyarrow values).
Fallback = Callable[[object, str], Optional[tuple[str, Any]]]

_SCALAR_TYPES = frozenset({bool, int, float, str, bytes, type(None)})

# Opcodes that only build scalars and containers or manage the stack/memo. This is
# MLtraq's whitelist (pickle_opcodes_whitelist.py), which every DataPak it wrote passed,
# plus LONG4 and BINPUT (harmless; the stdlib pickler emits LONG4 for huge ints) and
# minus BYTEARRAY8 and FROZENSET (types MLtraq's encoder never produces).
_SAFE_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP",
        "NONE", "NEWTRUE", "NEWFALSE",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING",
        "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
        "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "EMPTY_SET", "ADDITEMS",
        "POP", "DUP", "MARK", "POP_MARK",
        "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    }
)  # fmt: skip

_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


class Opaque:
    """A tagged value that was decoded but not understood: its tag and raw value as read.

    `encode()` returns the original tagged dict, so re-pickling gives the original bytes
    (the raw values MLtraq writes are bytes, str, int or nested tagged dicts; a raw value
    holding a set of str could be re-pickled in another order, as str hashes differ
    between processes).
    """

    __slots__ = ("tag", "value")

    def __init__(self, tag: str, value: Any) -> None:
        self.tag = tag
        self.value = value

    def encode(self) -> dict[str, Any]:
        """The tagged dict this value was decoded from."""
        return {KEY_MAGIC: self.tag, KEY_VALUE: self.value}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Opaque):
            return NotImplemented
        return self.tag == other.tag and self.value == other.value

    __hash__ = None  # type: ignore[assignment]  # the raw value may be unhashable

    def __repr__(self) -> str:
        return f"Opaque({self.tag!r})"


# --------------------------------------------------------------------------- encoding


def encode(obj: object, *, path: str = "value", fallback: Optional[Fallback] = None) -> Any:
    """Encode `obj` into plain containers, rich values becoming tagged dicts.

    `path` names `obj` in error messages ("fields.model.weights: type decimal.Decimal
    cannot be stored"); `fallback` encodes the types the codec does not know. Raises
    UnsupportedValue for anything that cannot be stored.
    """
    try:
        return _encode(obj, path, fallback)
    except RecursionError:
        raise UnsupportedValue(f"{path}: value is nested too deeply (or contains itself)") from None


def dumps(obj: object, *, path: str = "value", fallback: Optional[Fallback] = None) -> bytes:
    """Encode `obj` and pickle it (protocol 5, uncompressed), as MLtraq writes a DataPak."""
    plain = encode(obj, path=path, fallback=fallback)
    try:
        return pickle.dumps(plain, protocol=PICKLE_PROTOCOL)
    except RecursionError:
        raise UnsupportedValue(f"{path}: value is nested too deeply") from None


def _encode(obj: object, path: str, fallback: Optional[Fallback]) -> Any:
    kind = type(obj)
    # Exact types: a subclass (IntEnum, numpy.float64...) would be pickled by reference to
    # its class, which no reader accepts.
    if kind in _SCALAR_TYPES:
        return obj
    if isinstance(obj, Opaque):
        return obj.encode()
    hook = getattr(kind, "__datapak_encode__", None)
    if hook is not None:
        tag, value = hook(obj)
        if type(tag) is not str:
            raise UnsupportedValue(f"{path}: {_type_name(kind)}.__datapak_encode__ returned a non-str tag {tag!r}")
        return {KEY_MAGIC: tag, KEY_VALUE: _encode(value, path, fallback)}
    if isinstance(obj, Bunch):
        return {KEY_MAGIC: TAG_BUNCH, KEY_VALUE: _encode_dict(obj, path, fallback)}
    if isinstance(obj, uuid.UUID):
        return {KEY_MAGIC: TAG_UUID, KEY_VALUE: obj.hex}
    if isinstance(obj, dict):
        return _encode_dict(obj, path, fallback)
    if isinstance(obj, list):
        return [_encode(item, f"{path}[{i}]", fallback) for i, item in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple([_encode(item, f"{path}[{i}]", fallback) for i, item in enumerate(obj)])
    if isinstance(obj, set):
        return {_check_key(item, path, "set item", UnsupportedValue) for item in obj}
    tagged = fallback(obj, path) if fallback is not None else None
    if tagged is not None:
        return {KEY_MAGIC: tagged[0], KEY_VALUE: tagged[1]}
    raise UnsupportedValue(f"{path}: type {_type_name(kind)} cannot be stored")


def _encode_dict(obj: dict[Any, Any], path: str, fallback: Optional[Fallback]) -> dict[Any, Any]:
    out = {}
    for key, value in obj.items():
        _check_key(key, path, "dict key", UnsupportedValue)
        if type(key) is str and key == KEY_MAGIC:
            # Reading would take the dict for a tagged value.
            raise UnsupportedValue(f"{path}: dict key {KEY_MAGIC!r} is reserved by the DataPak format")
        out[key] = _encode(value, _child(path, key), fallback)
    return out


def _check_key(key: Any, path: str, what: str, error: type[CasStoreError]) -> Any:
    """Return `key` if it is a plain hashable (scalar, or tuple of them), else raise `error`."""
    kind = type(key)
    if kind in _SCALAR_TYPES:
        return key
    if kind is tuple:
        for item in key:
            _check_key(item, path, what, error)
        return key
    raise error(f"{path}: {what} {_short_repr.repr(key)} of type {_type_name(kind)} cannot be stored")


def _child(path: str, key: Any) -> str:
    if type(key) is str and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{_short_repr.repr(key)}]"


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    if module in (None, "builtins"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


# --------------------------------------------------------------------------- decoding


def decode(plain: Any, decoders: Decoders | None = None) -> Any:
    """Decode a plain structure as produced by `encode` (or read by `safe_unpickle`).

    A tagged dict becomes `decoders[tag](raw)` when its tag is in `decoders`, a Bunch or a
    uuid.UUID for the built-in tags, and an `Opaque` otherwise. Raises InvalidInput for
    anything that is not a well-formed plain structure.
    """
    try:
        return _decode(plain, decoders or {}, "value")
    except RecursionError:
        raise InvalidInput("value is nested too deeply to be decoded") from None


def _decode(plain: Any, decoders: Decoders, path: str) -> Any:
    kind = type(plain)
    if kind in _SCALAR_TYPES:
        return plain
    if kind is dict:
        if KEY_MAGIC in plain:
            return _decode_tagged(plain, decoders, path)
        return _decode_items(plain, decoders, path)
    if kind is list:
        return [_decode(item, decoders, f"{path}[{i}]") for i, item in enumerate(plain)]
    if kind is tuple:
        return tuple([_decode(item, decoders, f"{path}[{i}]") for i, item in enumerate(plain)])
    if kind is set:
        return {_check_key(item, path, "set item", InvalidInput) for item in plain}
    raise InvalidInput(f"{path}: type {_type_name(kind)} is not a DataPak value")


def _decode_items(plain: dict[Any, Any], decoders: Decoders, path: str) -> dict[Any, Any]:
    out = {}
    for key, value in plain.items():
        _check_key(key, path, "dict key", InvalidInput)
        out[key] = _decode(value, decoders, _child(path, key))
    return out


def _decode_tagged(plain: dict[Any, Any], decoders: Decoders, path: str) -> Any:
    tag = plain[KEY_MAGIC]
    if type(tag) is not str or plain.keys() != {KEY_MAGIC, KEY_VALUE}:
        raise InvalidInput(f"{path}: malformed tagged value with keys {_short_repr.repr(list(plain))}")
    raw = plain[KEY_VALUE]
    decoder = decoders.get(tag)
    if decoder is not None:
        return decoder(raw)
    if tag == TAG_BUNCH:
        if type(raw) is not dict:
            raise InvalidInput(f"{path}: {TAG_BUNCH} holds {_type_name(type(raw))}, not dict")
        return Bunch(_decode_items(raw, decoders, path))
    if tag == TAG_UUID:
        try:
            return uuid.UUID(hex=raw)
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"{path}: {TAG_UUID} holds an invalid UUID {_short_repr.repr(raw)}") from exc
    return Opaque(tag, raw)


# --------------------------------------------------------------------------- bytes


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all: a DataPak holds plain containers only."""

    def find_class(self, module: str, name: str) -> Any:
        raise InvalidInput(f"DataPak data references the global {module}.{name}: refusing to load it")

    def persistent_load(self, pid: Any) -> Any:
        raise InvalidInput("DataPak data references a persistent id: refusing to load it")


def loads(data: bytes, decoders: Decoders | None = None) -> Any:
    """Read DataPak bytes (compressed or not) and decode them; see `decode`."""
    return decode(safe_unpickle(data), decoders)


def safe_unpickle(data: bytes) -> Any:
    """Read DataPak bytes into the plain structure they hold, without decoding tags.

    Raises InvalidInput for bytes that are not a pickle of plain containers. The opcodes
    allowed can only build the plain types (an unhashable key or set item makes the
    unpickler fail), so the result needs no further check.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"DataPak data must be bytes, not {_type_name(type(data))}")
    raw = _decompress(bytes(data))
    _check_opcodes(raw)
    try:
        plain = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
    except (CasStoreError, MemoryError):
        raise
    except Exception as exc:  # pickle documents no closed list of what load() may raise
        raise InvalidInput(f"DataPak data is not a valid pickle: {exc}") from exc
    return plain


def _decompress(data: bytes) -> bytes:
    """Strip MLtraq's b"C01" + zlib compression, if present.

    MLtraq's own reader compares only 2 bytes against the 3-byte prefix and so never
    decompresses; we read the prefix properly. As MLtraq does, data that has the prefix
    but does not decompress is read as a plain pickle (a pickle may start with b"C01").
    Data that would inflate past MAX_DECOMPRESSED_BYTES raises InvalidInput.
    """
    if not data.startswith(COMPRESSION_PREFIX):
        return data
    limit = MAX_DECOMPRESSED_BYTES
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data[len(COMPRESSION_PREFIX) :], limit + 1)
    except zlib.error:
        return data
    if len(raw) > limit:
        raise InvalidInput(f"DataPak data decompresses to more than {limit} bytes, the limit for fields "
                           "(datapak.MAX_DECOMPRESSED_BYTES): refusing to load it")
    return raw if inflater.eof else data  # a truncated stream does not decompress


def _check_opcodes(raw: bytes) -> None:
    """Refuse a pickle using any opcode outside `_SAFE_OPCODES`, before unpickling it.

    This is on top of `_NoGlobalsUnpickler`: EXT1/2/4 can fetch objects from copyreg's
    process-wide extension cache without calling find_class.
    """
    try:
        for opcode, arg, pos in pickletools.genops(raw):
            if opcode.name not in _SAFE_OPCODES:
                detail = f" {_short_repr.repr(arg)}" if arg is not None else ""
                raise InvalidInput(
                    f"DataPak data uses the pickle opcode {opcode.name}{detail} at byte {pos}: "
                    "only plain containers are allowed, refusing to load it"
                )
    except InvalidInput:
        raise
    except Exception as exc:  # genops raises ValueError mostly, but is not documented
        raise InvalidInput(f"DataPak data is not a valid pickle: {exc}") from exc
