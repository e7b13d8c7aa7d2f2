"""Which files of a folder an archive holds: MLtraq's include/exclude matching rules.

`globs` (any patterns, through `glob.glob`) is the reference; `scan`'s fast path for the
default `include="**"` applies the same exclude rule with `exclude_matchers` / `excluded`
(tests/test_scan_fast_path.py checks that the two agree). `casstore.utils.fs` re-exports
`glob` and `globs` under MLtraq's names (`mltraq.utils.fs`)."""

from __future__ import annotations

import fnmatch
import glob as _globmod
import os
import re
from typing import AnyStr, Callable, Optional, Union

from casstore.errors import InvalidInput, SourceNotFound

StrPath = Union[str, "os.PathLike[str]"]
Patterns = Union[str, list[str], tuple[str, ...]]
Matcher = Callable[[str], object]
"""A compiled exclude pattern: not None where it matches the whole relative path."""


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
    not a folder (`globs`' checks, shared with `scan`'s fast path)."""
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


def is_default_include(include: object) -> bool:
    """`include` is "**" (also as a one-item list or tuple): `scan` may take its fast path."""
    return include == "**" or (isinstance(include, (list, tuple)) and len(include) == 1 and include[0] == "**")


def exclude_matchers(exclude: Patterns | None) -> list[Matcher]:
    """The `exclude` patterns compiled once, each matching as `fnmatch` does in `globs`."""
    patterns = [] if exclude is None else as_patterns(exclude, "exclude")
    return [re.compile(fnmatch.translate(p)).match for p in patterns]


def excluded(relpath: str, matchers: list[Matcher]) -> bool:
    """Whether an exclude pattern matches `relpath` (the whole path, relative to src_dir)."""
    for match in matchers:
        if match(relpath) is not None:
            return True
    return False
