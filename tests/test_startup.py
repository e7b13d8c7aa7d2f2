"""A fast start: `import casstore` and `casstore --help` import neither SQLAlchemy nor Alembic
(nor zstandard or a blob store backend); the user API's names still resolve, and a session
imports what it needs. Each check runs in a fresh interpreter. (How long the start takes is
printed by bench/startup.py, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import casstore

HEAVY = ["sqlalchemy", "alembic", "zstandard", "casstore.cas.backends.local", "casstore.cas.backends.s3"]


def modules_after(code: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_import_casstore_imports_no_sqlalchemy_alembic_zstandard_or_backend():
    assert modules_after("import casstore") == []


def test_casstore_help_imports_no_sqlalchemy_alembic_zstandard_or_backend():
    code = ("import sys\nfrom casstore.cli import main\nsys.argv = ['casstore', '--help']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code")
    assert modules_after(code) == []


def test_python_m_casstore_cli_help_prints_the_commands():
    done = subprocess.run([sys.executable, "-m", "casstore.cli", "--help"], capture_output=True, text=True, check=True)
    assert "verify" in done.stdout and "gc" in done.stdout


def test_a_subcommand_help_imports_no_sqlalchemy():
    code = ("import sys\nfrom casstore.cli import main\nsys.argv = ['casstore', 'gc', '--help']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code")
    assert modules_after(code) == []


def test_importing_the_archive_classes_imports_no_sqlalchemy():
    assert modules_after("from casstore import Archive, ArchiveStore, ArchiveStoreIO") == []


@pytest.mark.parametrize("name", casstore.__all__)
def test_every_public_name_resolves(name):
    done = subprocess.run([sys.executable, "-c", f"import casstore; print(repr(casstore.{name}))"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_public_name_is_listed_by_dir():
    assert set(casstore.__all__) <= set(dir(casstore))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        casstore.no_such_name  # noqa: B018


def test_a_session_imports_sqlalchemy_when_it_is_made():
    assert "sqlalchemy" in modules_after("import casstore\ncasstore.create_session()")


def test_the_cli_still_turns_a_database_error_into_one_line():
    from sqlalchemy.exc import OperationalError

    from casstore.cli.app import Failure, one_line_errors

    with pytest.raises(Failure, match="database error: disk I/O error"):
        with one_line_errors():
            raise OperationalError("SELECT 1", {}, Exception("disk I/O error"))


def test_the_cli_lets_an_error_that_is_no_library_error_through():
    from casstore.cli.app import one_line_errors

    with pytest.raises(KeyError):
        with one_line_errors():
            raise KeyError("a bug")
