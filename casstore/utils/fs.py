"""File-system helpers with the names and matching rules of MLtraq's `mltraq.utils.fs`."""

from __future__ import annotations

import fnmatch
import glob as _globmod
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import AnyStr, Optional, Union

from casstore.errors import InvalidInput, SourceNotFound

__all__ = ["glob", "globs", "tmpdir_ctx"]

StrPath = Union[str, "os.PathLike[str]"]
Patterns = Union[str, list[str], tuple[str, ...]]


def glob(
    pathname: AnyStr,
    *,
    root_dir: Optional[StrPath] = None,
    recursive: bool = False,
) -> list[AnyStr]:
    """`glob.glob(pathname, root_dir=..., recursive=...)`, with MLtraq's results.

    MLtraq chdir()s into `root_dir` to emulate the parameter on Python 3.9; that changes the
    working directory of every thread. Here the native parameter is used and the working
    directory is never touched. To keep MLtraq's behaviour when `root_dir` is not a folder
    (its chdir failed), raise SourceNotFound (a FileNotFoundError) if it does not exist and
    NotADirectoryError if it is not a directory, where plain glob.glob would return [].
    """
    if root_dir is not None and not os.path.isdir(root_dir):
        if not os.path.exists(root_dir):
            raise SourceNotFound(f"Directory '{os.fspath(root_dir)}' does not exist")
        raise NotADirectoryError(f"Not a directory: '{os.fspath(root_dir)}'")
    return _globmod.glob(pathname, root_dir=root_dir, recursive=recursive)


def as_patterns(value: object, what: str) -> list[str]:
    """Normalise a str / list of str argument to a list of str, or raise InvalidInput."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return list(value)
    raise InvalidInput(f"{what} must be a string or a list of strings, got {value!r}")


def check_src_dir(src_dir: StrPath) -> str:
    """`src_dir` as a str path; SourceNotFound if it does not exist, InvalidInput if it is
    not a folder (`globs`' checks, shared with `tarball.scan`'s fast path)."""
    src_dir = os.fspath(src_dir)
    if not os.path.isdir(src_dir):
        if not os.path.exists(src_dir):
            raise SourceNotFound(f"Source directory '{src_dir}' does not exist")
        raise InvalidInput(f"Source '{src_dir}' is not a directory")
    return src_dir


def globs(
    src_dir: StrPath,
    include: Patterns = "**",
    exclude: Optional[Patterns] = None,
    recursive: bool = True,
) -> list[str]:
    """Sorted paths, relative to `src_dir`, of the regular files matched by `include` and by
    no `exclude` pattern. Matching follows MLtraq's `globs`:

    - each `include` pattern is globbed inside `src_dir` (`recursive` enables `**`, which
      also matches zero folders); wildcards do not match names starting with "." unless the
      pattern spells the dot (e.g. [".*", "**/.*", ".*/**"]);
    - each `exclude` pattern is matched with fnmatch against the whole relative path, where
      "*" also matches "/": "*.x" excludes at any depth, while "**/tmp_*" needs a "/" and so
      does not exclude a top-level "tmp_x";
    - only names for which os.path.isfile is true are kept: symlinks are followed (linked
      files and folders are included), dangling links, folders, FIFOs and the like are not.

    MLtraq returns them in set order; here they are sorted, so results are deterministic.

    Raises SourceNotFound if `src_dir` does not exist, InvalidInput if it is not a folder,
    if `include`/`exclude` are not a string or a list of strings, or if an include pattern is
    absolute or contains a ".." part (it would name files outside `src_dir`).
    """
    src_dir = check_src_dir(src_dir)
    includes = as_patterns(include, "include")
    excludes = [] if exclude is None else as_patterns(exclude, "exclude")
    for pattern in includes:
        parts = pattern.replace(os.sep, "/").split("/")
        if os.path.isabs(pattern) or ".." in parts:
            raise InvalidInput(f"include pattern must stay inside src_dir, got {pattern!r}")

    candidates: set[str] = set()
    for pattern in includes:
        candidates.update(glob(pattern, root_dir=src_dir, recursive=recursive))

    return sorted(
        name
        for name in candidates
        if os.path.isfile(os.path.join(src_dir, name))
        and not any(fnmatch.fnmatch(name, pattern) for pattern in excludes)
    )


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
