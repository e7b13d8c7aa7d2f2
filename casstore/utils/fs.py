"""File-system helpers with the names and matching rules of MLtraq's `mltraq.utils.fs`.

`glob` and `globs` (and the helpers `as_patterns`, `check_src_dir`) are the content store's
include/exclude matching, defined in `casstore.cas.tar.match` and re-exported here under
MLtraq's names; `tmpdir_ctx` is MLtraq's test helper."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from casstore.cas.tar.match import Patterns as Patterns
from casstore.cas.tar.match import StrPath as StrPath
from casstore.cas.tar.match import as_patterns as as_patterns
from casstore.cas.tar.match import check_src_dir as check_src_dir
from casstore.cas.tar.match import glob as glob
from casstore.cas.tar.match import globs as globs

__all__ = ["glob", "globs", "tmpdir_ctx"]


@contextmanager
def tmpdir_ctx() -> Iterator[str]:
    """Create a temporary folder, make it the working directory and yield its path; on exit
    (also on exception) go back to the previous working directory and delete the folder.

    Changes the working directory of the whole process: not for use by library code that
    may run in threads (tests and examples only, as in MLtraq)."""
    old_cwd = os.getcwd()
    tmp_dir = tempfile.mkdtemp()
    try:
        os.chdir(tmp_dir)
        yield tmp_dir
    finally:
        os.chdir(old_cwd)
        try:
            shutil.rmtree(tmp_dir)
        except FileNotFoundError:
            pass  # The block removed it already.
