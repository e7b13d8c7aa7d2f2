"""numpy, pandas and pyarrow fields between real MLtraq 0.1.165 and casstore, through one
SQLite database: what MLtraq writes loads in casstore as the same values, and what casstore
writes loads in MLtraq. MLtraq runs in its own interpreter, CASSTORE_MLTRAQ_PYTHON (as in
test_migrate.py; CI sets it)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers import MLTRAQ_PYTHON, NO_MLTRAQ

from casstore import create_session

pytestmark = pytest.mark.skipif(not MLTRAQ_PYTHON,
                                reason=NO_MLTRAQ)

DB = "sqlite:///interop.db"

# Run in both interpreters: the values each side writes, and how the other side checks them.
VALUES_SOURCE = textwrap.dedent("""
    import numpy as np, pandas as pd, pyarrow as pa

    VALUES = {
        "ints": np.arange(12, dtype=np.int16).reshape(3, 4),
        "floats": np.array([1.5, np.nan, -np.inf]),
        "text": np.array(["a", "\\u03b2\\u03b3"]),
        "record": np.array([(1, 2.5)], dtype=[("n", "<i4"), ("x", "<f8")]),
        "when": np.datetime64("2024-01-02T17:16:15.123456"),
        "day": np.datetime64("2024-01-02"),
        "nat": np.datetime64("NaT"),
        "df": pd.DataFrame({"i": [1, 2], "f": [0.5, None], "s": ["x", "y"],
                            "t": pd.to_datetime(["2024-01-01", "2024-01-02"])}, index=[10, 20]),
        "series": pd.Series([1.0, 2.0]),
        "table": pa.table({"a": [1, None], "b": ["x", "y"]}),
    }

    def check(name, got):
        want = VALUES[name]
        if isinstance(want, np.ndarray):
            assert type(got) is np.ndarray and got.dtype == want.dtype, (name, got)
            np.testing.assert_array_equal(got, want)
        elif isinstance(want, np.datetime64):
            assert type(got) is np.datetime64 and (got == want or np.isnat(got) and np.isnat(want)), (name, got)
        elif isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want)
        elif isinstance(want, pd.Series):
            pd.testing.assert_series_equal(got, want.rename(0))  # an unnamed Series is Feather's column 0
        else:
            assert type(got) is pa.Table and got.equals(want, check_metadata=True), (name, got)
""")
namespace: dict = {}
exec(VALUES_SOURCE, namespace)  # noqa: S102  # our own source, run here as in MLtraq's interpreter
VALUES, check = namespace["VALUES"], namespace["check"]


def mltraq(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `script` with real MLtraq, after VALUES_SOURCE, in `cwd`."""
    return subprocess.run([MLTRAQ_PYTHON, "-c", VALUES_SOURCE + textwrap.dedent(script)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_values_mltraq_writes_load_in_casstore_as_the_same_values(workdir):
    done = mltraq("""
        import mltraq
        mltraq.create_session("sqlite:///interop.db").create_experiment("from_mltraq", **VALUES).persist()
    """, workdir)
    assert done.returncode == 0, done.stderr
    fields = create_session(DB).load_experiment("from_mltraq").fields
    assert sorted(fields) == sorted(VALUES)
    for name in VALUES:
        check(name, fields[name])


def test_values_casstore_writes_load_in_mltraq_as_the_same_values(workdir):
    create_session(DB).create_experiment("from_casstore", **VALUES).persist()
    done = mltraq("""
        import mltraq
        fields = mltraq.create_session("sqlite:///interop.db").load_experiment("from_casstore").fields
        assert sorted(fields) == sorted(VALUES), sorted(fields)
        for name in VALUES:
            check(name, fields[name])
        print("checked", len(VALUES))
    """, workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"checked {len(VALUES)}"


def test_named_series_fails_in_mltraq_whoever_wrote_it(workdir):
    """MLtraq's decoder reads a Series as column 0 of its frame: a named Series does not load
    in MLtraq, whether MLtraq or casstore wrote it (casstore loads both)."""
    import pandas as pd

    create_session(DB).create_experiment("from_casstore", loss=pd.Series([0.5], name="loss")).persist()
    done = mltraq("""
        import mltraq
        session = mltraq.create_session("sqlite:///interop.db")
        session.create_experiment("from_mltraq", loss=pd.Series([0.5], name="loss")).persist()
        for name in ("from_mltraq", "from_casstore"):
            try:
                session.load_experiment(name)
            except KeyError:
                print(name, "KeyError")
    """, workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["from_mltraq KeyError", "from_casstore KeyError"]
    session = create_session(DB)
    for name in ("from_mltraq", "from_casstore"):
        pd.testing.assert_series_equal(session.load_experiment(name).fields.loss, pd.Series([0.5], name="loss"))
