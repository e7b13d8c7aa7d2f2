"""numpy, pandas and pyarrow values in DataPak, encoded as MLtraq 0.1.165 encodes them.

| tag                   | raw value                                              |
|-----------------------|--------------------------------------------------------|
| `numpy.ndarray-0`     | NPY bytes, written without pickle                      |
| `numpy.datetime64-0`  | the int of microseconds since the epoch (NaT: int64 min) |
| `pandas.DataFrame-0`  | uncompressed Feather (Arrow IPC) bytes                 |
| `pandas.Series-0`     | the Feather bytes of `series.to_frame()`               |
| `pyarrow.Table-0`     | uncompressed Feather bytes                             |

The packages are optional (`casstore[frames]`) and imported only when such a value is
encoded or decoded, so `import casstore` stays light. A value whose package is not installed
decodes to a `datapak.Opaque`, which persists back byte for byte.

Where MLtraq would lose data silently, these codecs refuse instead (`UnsupportedValue`): a
datetime64 that microseconds cannot hold, an array subclass (a masked array would lose its
mask). Nothing here ever unpickles: an NPY object array is refused on both sides, as MLtraq
refuses it.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from typing import Any, Optional

from casstore.errors import InvalidInput, UnsupportedValue
from casstore.mltraq.datapak import Opaque

TAG_NDARRAY = "numpy.ndarray-0"
TAG_DATETIME64 = "numpy.datetime64-0"
TAG_DATAFRAME = "pandas.DataFrame-0"
TAG_SERIES = "pandas.Series-0"
TAG_TABLE = "pyarrow.Table-0"

_PACKAGES = frozenset({"numpy", "pandas", "pyarrow"})
_INT64_MIN = -(1 << 63)
INSTALL_HINT = "pip install 'casstore[frames]'"


# --------------------------------------------------------------------------- encoding


def encode(obj: object, path: str) -> Optional[tuple[str, Any]]:
    """The (tag, raw value) of a numpy, pandas or pyarrow value, None for any other value.

    Only the exact types MLtraq stores are accepted; any other type of these packages
    raises UnsupportedValue, naming `path`. The packages are only imported here when `obj`
    comes from one of them (which means it is already imported)."""
    root = type(obj).__module__.partition(".")[0]
    if root not in _PACKAGES:
        return None
    if root == "numpy":
        return _encode_numpy(obj, path)
    if root == "pandas":
        return _encode_pandas(obj, path)
    return _encode_pyarrow(obj, path)


def _encode_numpy(obj: object, path: str) -> tuple[str, Any]:
    import numpy as np

    if type(obj) is np.ndarray:
        return TAG_NDARRAY, _npy_bytes(obj, path)
    if type(obj) is np.datetime64:
        return TAG_DATETIME64, _microseconds(obj, path)
    if isinstance(obj, np.generic):
        raise UnsupportedValue(f"{path}: numpy scalar of type {type(obj).__name__} cannot be stored "
                               "(MLtraq refuses it too): convert it with .item()")
    raise _unsupported(obj, path, "only numpy.ndarray and numpy.datetime64 are")


def _npy_bytes(array: Any, path: str) -> bytes:
    import numpy as np

    if array.dtype.hasobject:
        raise UnsupportedValue(f"{path}: numpy array of dtype {array.dtype} holds Python objects, which NPY "
                               "can only store as a pickle: casstore (like MLtraq) stores arrays without "
                               "pickle; convert it to a fixed dtype (e.g. str or float) or to a list")
    buffer = io.BytesIO()
    try:
        np.save(buffer, array, allow_pickle=False)
    except (ValueError, TypeError) as exc:
        raise UnsupportedValue(f"{path}: numpy array of dtype {array.dtype} cannot be stored as NPY: {exc}") from exc
    return buffer.getvalue()


def _microseconds(value: Any, path: str) -> int:
    """MLtraq's int for a datetime64, refusing a value that microseconds cannot hold (MLtraq
    truncates nanoseconds and wraps years out of range without a word)."""
    import numpy as np

    if np.isnat(value):
        return _INT64_MIN
    try:
        micros = int(np.datetime64(value, "us").astype(np.int64))
        fits = bool(np.datetime64(micros, "us").astype(value.dtype) == value)
    except (OverflowError, ValueError):
        fits = False
    if not fits:
        raise UnsupportedValue(f"{path}: numpy.datetime64 {value} is stored in microseconds, as MLtraq stores "
                               "it, and this value does not fit in them (finer than a microsecond, or beyond "
                               "about 290,000 years from 1970): round it with .astype('datetime64[us]')")
    return micros


def _encode_pandas(obj: Any, path: str) -> tuple[str, Any]:
    import pandas as pd  # type: ignore[import-untyped]  # no stubs installed; optional dependency

    if type(obj) is pd.DataFrame:
        return TAG_DATAFRAME, _feather_bytes(obj, path)
    if type(obj) is pd.Series:
        return TAG_SERIES, _feather_bytes(obj.to_frame(), path)
    raise _unsupported(obj, path, "only pandas.DataFrame and pandas.Series are")


def _encode_pyarrow(obj: object, path: str) -> tuple[str, Any]:
    import pyarrow as pa  # type: ignore[import-untyped]  # no stubs installed; optional dependency

    if type(obj) is pa.Table:
        return TAG_TABLE, _feather_bytes(obj, path)
    raise _unsupported(obj, path, "only pyarrow.Table is")


def _feather_bytes(frame: Any, path: str) -> bytes:
    try:
        import pyarrow as pa
        from pyarrow import feather
    except ImportError:
        raise UnsupportedValue(f"{path}: {_type_name(frame)} is stored as Feather, which needs pyarrow: "
                               f"{INSTALL_HINT}") from None
    buffer = io.BytesIO()
    try:
        feather.write_feather(frame, buffer, compression="uncompressed")
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise UnsupportedValue(f"{path}: {_type_name(frame)} cannot be stored as Feather: {exc}") from exc
    return buffer.getvalue()


def _unsupported(obj: object, path: str, what: str) -> UnsupportedValue:
    return UnsupportedValue(f"{path}: type {_type_name(obj)} cannot be stored ({what})")


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


# --------------------------------------------------------------------------- decoding


def _decoder(tag: str, packages: tuple[str, ...], read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A DataPak decoder for `tag`: `read(raw)` when `packages` import, else an Opaque."""

    def decode(raw: Any) -> Any:
        if not all(_importable(name) for name in packages):
            return Opaque(tag, raw)
        try:
            return read(raw)
        except (InvalidInput, MemoryError):
            raise
        except Exception as exc:  # the readers of numpy and pyarrow document no closed list
            raise InvalidInput(f"{tag} value does not decode: {exc}") from exc

    return decode


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _bytes(raw: Any, tag: str) -> bytes:
    if type(raw) is not bytes:
        raise InvalidInput(f"{tag} holds {type(raw).__name__}, not bytes")
    return raw


def _read_ndarray(raw: Any) -> Any:
    """The array of NPY bytes, refusing an object array before anything reads its pickle."""
    from numpy.lib import format as npy

    fp = io.BytesIO(_bytes(raw, TAG_NDARRAY))
    version = npy.read_magic(fp)
    header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if header is not None and header(fp)[2].hasobject:
        raise InvalidInput(f"{TAG_NDARRAY} holds an array of Python objects, stored as a pickle: "
                           "refusing to unpickle it")
    fp.seek(0)
    return npy.read_array(fp, allow_pickle=False)  # allow_pickle=False refuses NPY 3.0 object arrays too


def _read_datetime64(raw: Any) -> Any:
    import numpy as np

    if type(raw) is not int:
        raise InvalidInput(f"{TAG_DATETIME64} holds {type(raw).__name__}, not int")
    return np.datetime64(raw, "us")


def _read_table(raw: Any, tag: str = TAG_TABLE) -> Any:
    import pyarrow as pa
    from pyarrow import feather

    return feather.read_table(pa.py_buffer(_bytes(raw, tag)))


def _read_dataframe(raw: Any) -> Any:
    return _read_table(raw, TAG_DATAFRAME).to_pandas()


def _read_series(raw: Any) -> Any:
    """The one column of the frame, as MLtraq reads it: an unnamed Series comes back named 0
    (to_frame names its column 0). MLtraq itself fails on a named Series (it reads column 0)."""
    frame = _read_table(raw, TAG_SERIES).to_pandas()
    if len(frame.columns) != 1:
        raise InvalidInput(f"{TAG_SERIES} holds a frame of {len(frame.columns)} columns, not 1")
    return frame.iloc[:, 0]


DECODERS: dict[str, Callable[[Any], Any]] = {
    TAG_NDARRAY: _decoder(TAG_NDARRAY, ("numpy",), _read_ndarray),
    TAG_DATETIME64: _decoder(TAG_DATETIME64, ("numpy",), _read_datetime64),
    TAG_DATAFRAME: _decoder(TAG_DATAFRAME, ("pandas", "pyarrow"), _read_dataframe),
    TAG_SERIES: _decoder(TAG_SERIES, ("pandas", "pyarrow"), _read_series),
    TAG_TABLE: _decoder(TAG_TABLE, ("pyarrow",), _read_table),
}
