"""numpy, pandas and pyarrow field values (casstore.mltraq.frames): encoded as MLtraq's
DataPak encodes them, decoded back on load, kept as Opaque values, byte for byte, by a
process where the packages are not installed. Interop with real MLtraq: test_frames_mltraq.py."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from casstore import create_session
from casstore.errors import InvalidInput, UnsupportedValue
from casstore.mltraq import datapak, frames
from casstore.mltraq.datapak import KEY_MAGIC, KEY_VALUE, Opaque
from casstore.session import FIELD_DECODERS
from casstore.utils.bunch import Bunch

ROOT = Path(__file__).resolve().parents[1]
DB = "sqlite:///frames.db"


def round_trip(value: object) -> object:
    """`value` through DataPak bytes, as a session persists and loads a field."""
    data = datapak.dumps(Bunch(v=value), fallback=frames.encode)
    return datapak.loads(data, FIELD_DECODERS).v


def tagged(value: object) -> dict:
    return datapak.encode(value, fallback=frames.encode)


# --------------------------------------------------------------------------- numpy arrays

_DTYPES = st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.complex_number_dtypes(), hnp.boolean_dtypes(), hnp.datetime64_dtypes(),
                    hnp.timedelta64_dtypes(), hnp.unicode_string_dtypes(), hnp.byte_string_dtypes())


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
def test_ndarray_round_trips_with_its_dtype_shape_and_values(array):
    back = round_trip(array)
    assert type(back) is np.ndarray
    assert (back.dtype, back.shape) == (array.dtype, array.shape)
    np.testing.assert_array_equal(back, array)


@given(hnp.arrays(hnp.floating_dtypes(), hnp.array_shapes(min_dims=1, max_dims=2)))
def test_ndarray_is_stored_as_the_npy_bytes_numpy_saves_without_pickle(array):
    expected = io.BytesIO()
    np.save(expected, array, allow_pickle=False)
    assert tagged(array) == {KEY_MAGIC: "numpy.ndarray-0", KEY_VALUE: expected.getvalue()}


def test_fortran_ordered_array_keeps_its_order():
    array = np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    back = round_trip(array)
    assert back.flags.f_contiguous and not back.flags.c_contiguous
    np.testing.assert_array_equal(back, array)


def test_decoded_array_is_writeable():
    back = round_trip(np.zeros(3))
    back[0] = 1.0
    assert back.tolist() == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------- datetime64

_UNITS = ["Y", "M", "W", "D", "h", "m", "s", "ms", "us"]


@st.composite
def datetimes(draw):
    """A datetime64 in one of the units microseconds can hold, floored to that unit."""
    micros = draw(st.integers(-(1 << 62), 1 << 62))
    return np.datetime64(micros, "us").astype(f"datetime64[{draw(st.sampled_from(_UNITS))}]")


@settings(max_examples=300, deadline=None)
@given(datetimes())
def test_datetime64_round_trips_as_the_same_instant_in_microseconds(value):
    back = round_trip(value)
    assert type(back) is np.datetime64 and back.dtype == np.dtype("datetime64[us]")
    assert back == value


@given(datetimes())
def test_datetime64_is_stored_as_mltraqs_int_of_microseconds(value):
    assert tagged(value) == {KEY_MAGIC: "numpy.datetime64-0",
                             KEY_VALUE: int(np.datetime64(value, "us").astype(np.int64))}


def test_nat_round_trips_as_nat():
    assert np.isnat(round_trip(np.datetime64("NaT")))


@pytest.mark.parametrize("value", [np.datetime64("2024-01-01T00:00:00.000000001"), np.datetime64(10**18, "D")],
                         ids=["nanoseconds", "out-of-range"])
def test_datetime64_that_microseconds_cannot_hold_is_refused_not_truncated(value):
    with pytest.raises(UnsupportedValue, match=r"fields\.t: numpy\.datetime64 .* microseconds"):
        datapak.encode(Bunch(t=value), path="fields", fallback=frames.encode)


# --------------------------------------------------------------------------- pandas

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_COLUMNS = {
    "int64": st.integers(-(1 << 63), (1 << 63) - 1),
    "float64": st.floats(allow_nan=True),
    "bool": st.booleans(),
    "str": _TEXT,
    "datetime64[ns]": st.integers(-(1 << 62), 1 << 62),
    "category": st.sampled_from(["low", "mid", "high"]),
}


@st.composite
def frames_of(draw, max_columns=4):
    rows = draw(st.integers(0, 6))
    kinds = draw(st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=1, max_size=max_columns))
    data = {f"c{i}_{kind}": pd.Series(draw(st.lists(_COLUMNS[kind], min_size=rows, max_size=rows)), dtype=kind)
            for i, kind in enumerate(kinds)}
    frame = pd.DataFrame(data)
    if draw(st.booleans()):
        frame.index = pd.Index(draw(st.lists(st.integers(-100, 100), min_size=rows, max_size=rows, unique=True)))
    return frame


@settings(max_examples=150, deadline=None)
@given(frames_of())
def test_dataframe_round_trips_with_its_columns_dtypes_and_index(frame):
    back = round_trip(frame)
    assert type(back) is pd.DataFrame
    pd.testing.assert_frame_equal(back, frame)


@settings(max_examples=150, deadline=None)
@given(frames_of(max_columns=1), st.one_of(st.none(), _TEXT))
def test_series_round_trips_named_as_mltraq_names_it(frame, name):
    series = frame.iloc[:, 0].rename(name)
    back = round_trip(series)
    assert type(back) is pd.Series
    # Feather stores series.to_frame(): an unnamed Series is its column 0, as in MLtraq.
    pd.testing.assert_series_equal(back, series.rename(0 if name is None else name))


@given(frames_of())
def test_dataframe_is_stored_as_uncompressed_feather(frame):
    raw = tagged(frame)[KEY_VALUE]
    assert raw[:6] == b"ARROW1"
    assert pa.ipc.open_file(pa.py_buffer(raw)).schema.names[:len(frame.columns)] == list(frame.columns)


def test_dataframe_feather_cannot_hold_is_refused_naming_the_field():
    with pytest.raises(UnsupportedValue, match=r"fields\.df: pandas\.DataFrame cannot be stored as Feather"):
        datapak.encode(Bunch(df=pd.DataFrame({"a": [1, "x"]})), path="fields", fallback=frames.encode)


# --------------------------------------------------------------------------- pyarrow

_ARROW = {
    "int64": (pa.int64(), st.integers(-(1 << 63), (1 << 63) - 1)),
    "float64": (pa.float64(), st.floats()),
    "string": (pa.string(), _TEXT),
    "bool": (pa.bool_(), st.booleans()),
    "timestamp": (pa.timestamp("us"), st.integers(-62135596800_000_000, 253402300799_999_999)),  # years 1-9999
    "list": (pa.list_(pa.int32()), st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=3)),
}


@st.composite
def tables(draw):
    rows = draw(st.integers(0, 6))
    kinds = draw(st.lists(st.sampled_from(sorted(_ARROW)), min_size=1, max_size=4))
    arrays = {}
    for i, kind in enumerate(kinds):
        kind_type, values = _ARROW[kind]
        arrays[f"c{i}"] = pa.array(draw(st.lists(st.one_of(st.none(), values), min_size=rows, max_size=rows)),
                                   type=kind_type)
    table = pa.table(arrays)
    return table.replace_schema_metadata({"origin": draw(_TEXT)}) if draw(st.booleans()) else table


@settings(max_examples=150, deadline=None)
@given(tables())
def test_pyarrow_table_round_trips_with_its_schema_and_metadata(table):
    back = round_trip(table)
    assert type(back) is pa.Table
    assert back.schema.equals(table.schema, check_metadata=True)
    assert repr(back.to_pylist()) == repr(table.to_pylist())  # repr: NaN equals NaN, -0.0 differs from 0.0


# --------------------------------------------------------------------------- refusals


def test_object_array_is_refused_on_persist_and_nothing_is_written(workdir):
    session = create_session(DB)
    experiment = session.create_experiment("e", arr=np.array([1, "a", None], dtype=object))
    with pytest.raises(UnsupportedValue, match=r"fields\.arr: numpy array of dtype object .* without pickle"):
        experiment.persist()
    assert session.ls().empty


class _Trap:
    """Unpickling it creates the folder `path`: the proof that something unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("dtype", [object, [("x", "i4"), ("o", "O")]], ids=["object", "structured-with-object"])
def test_stored_object_array_is_refused_on_load_and_never_unpickled(workdir, dtype):
    trap = workdir / "unpickled"
    array = np.empty(1, dtype=dtype)
    array[0] = _Trap(str(trap)) if dtype is object else (1, _Trap(str(trap)))
    npy = io.BytesIO()
    np.save(npy, array, allow_pickle=True)
    session = create_session(DB)
    session.create_experiment("e", arr=Opaque("numpy.ndarray-0", npy.getvalue())).persist()
    with pytest.raises(InvalidInput, match="numpy.ndarray-0 holds an array of Python objects.*refusing to unpickle"):
        session.load_experiment("e")
    assert not trap.exists()


def test_numpy_scalar_is_refused_with_the_conversion_to_use():
    with pytest.raises(UnsupportedValue, match=r"fields\.lr: numpy scalar of type float64 .*\.item\(\)"):
        datapak.encode(Bunch(lr=np.float64(0.1)), path="fields", fallback=frames.encode)


def test_ndarray_subclass_is_refused_not_stored_as_a_plain_array():
    with pytest.raises(UnsupportedValue, match=r"numpy\.ma\.MaskedArray cannot be stored"):
        datapak.encode(np.ma.masked_array([1, 2], mask=[0, 1]), fallback=frames.encode)


def test_npz_bytes_under_the_ndarray_tag_are_refused():
    npz = io.BytesIO()
    np.savez(npz, a=np.arange(2))
    with pytest.raises(InvalidInput, match="numpy.ndarray-0 value does not decode"):
        datapak.decode({KEY_MAGIC: "numpy.ndarray-0", KEY_VALUE: npz.getvalue()}, FIELD_DECODERS)


def test_series_tag_holding_two_columns_is_refused():
    raw = tagged(pd.DataFrame({"a": [1], "b": [2]}))[KEY_VALUE]
    with pytest.raises(InvalidInput, match="pandas.Series-0 holds a frame of 2 columns"):
        datapak.decode({KEY_MAGIC: "pandas.Series-0", KEY_VALUE: raw}, FIELD_DECODERS)


# --------------------------------------------------------------------------- sessions


def test_session_persists_and_loads_every_frame_type(workdir):
    values = dict(arr=np.arange(6).reshape(2, 3), when=np.datetime64("2024-01-02T17:16:15.123456"),
                  df=pd.DataFrame({"a": [1, 2], "s": ["x", "y"]}), series=pd.Series([1.5, 2.5], name="loss"),
                  table=pa.table({"q": [1, 2]}))
    create_session(DB).create_experiment("e", nested={"in": [values["arr"]]}, **values).persist()
    fields = create_session(DB).load_experiment("e").fields
    np.testing.assert_array_equal(fields.nested["in"][0], values["arr"])
    np.testing.assert_array_equal(fields.arr, values["arr"])
    assert fields.when == values["when"]
    pd.testing.assert_frame_equal(fields.df, values["df"])
    pd.testing.assert_series_equal(fields.series, values["series"])
    assert fields.table.equals(values["table"])


def _run_without(packages: tuple[str, ...], script: str, cwd: Path) -> str:
    """Run `script` in a fresh interpreter where importing any of `packages` fails, as it
    does when they are not installed (a None entry in sys.modules makes `import` raise)."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in packages)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fields_bytes(name: str) -> bytes:
    with sqlite3.connect("frames.db") as conn:
        return conn.execute("SELECT fields FROM experiments WHERE name = ?", (name,)).fetchone()[0]


_ALL_TYPES = dict(arr=np.arange(4.0), when=np.datetime64("2024-05-06T07:08:09"), df=pd.DataFrame({"a": [1]}),
                  series=pd.Series(["s"]), table=pa.table({"t": [True]}))
_RELOAD_AND_REPLACE = """
    from casstore import create_session
    session = create_session("sqlite:///frames.db")
    experiment = session.load_experiment("e")
    print(sorted((k, type(v).__name__) for k, v in experiment.fields.items()))
    experiment.persist(if_exists="replace")
"""


def test_frame_values_persist_byte_for_byte_where_no_frame_package_is_installed(workdir):
    create_session(DB).create_experiment("e", n=1, **_ALL_TYPES).persist()
    before = _fields_bytes("e")
    out = _run_without(("numpy", "pandas", "pyarrow"), _RELOAD_AND_REPLACE, workdir)
    assert out.strip() == str(sorted([(name, "Opaque") for name in _ALL_TYPES] + [("n", "int")]))
    assert _fields_bytes("e") == before


def test_only_the_values_whose_package_is_missing_stay_opaque(workdir):
    create_session(DB).create_experiment("e", **_ALL_TYPES).persist()
    before = _fields_bytes("e")
    out = _run_without(("pyarrow",), _RELOAD_AND_REPLACE, workdir)
    opaque = {"df", "series", "table"}
    assert out.strip() == str(sorted((k, "Opaque" if k in opaque else v) for k, v in
                                     dict(arr="ndarray", when="datetime64", df="", series="", table="").items()))
    assert _fields_bytes("e") == before


def test_dataframe_without_pyarrow_is_refused_with_the_extra_to_install(workdir):
    out = _run_without(("pyarrow",), """
        import pandas as pd
        from casstore import create_session, UnsupportedValue
        try:
            create_session("sqlite:///frames.db").create_experiment("e", df=pd.DataFrame({"a": [1]})).persist()
        except UnsupportedValue as exc:
            print(exc)
    """, workdir)
    assert out.strip() == "fields.df: pandas.DataFrame is stored as Feather, which needs pyarrow: " \
                          "pip install 'casstore[frames]'"


def test_plain_fields_persist_and_load_without_importing_any_frame_package(workdir):
    out = _run_without((), """
        from casstore import create_session
        session = create_session("sqlite:///frames.db")
        session.create_experiment("e", lr=0.1, tags=["a"]).persist()
        session.load_experiment("e")
        print(sorted(name for name in ("numpy", "pandas", "pyarrow") if name in sys.modules))
    """, workdir)
    assert out.strip() == "[]"
