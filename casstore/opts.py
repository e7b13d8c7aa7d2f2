"""Package options: a tree of dicts addressed by dotted paths ("archivestore.codec").

Same interface as MLtraq's `options()`: one process-wide object, read with `get`, changed
with `set`, or changed for a block with `ctx`. Like MLtraq's, it is a plain module-level
singleton with no locking: `ctx` changes the options seen by every thread for its duration,
so set options before starting threads rather than from inside them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

from casstore.cas.backends.urls import file_url_to_path
from casstore.errors import InvalidInput

__all__ = ["DEFAULT_VALUES", "Options", "file_url_to_path", "options"]

DEFAULT_VALUES: dict[str, Any] = {
    "database": {"url": "sqlite:///:memory:"},
    "datastore": {
        "url": "file:///mltraq.datastore",
        "relative_path_prefix": "undefined",
        # Passed to the object-store backend once there is one (credentials, endpoint...).
        "storage_options": {},
        # A blob read with no size recorded anywhere (index, field or named reference) stops
        # with CorruptBlob past this many uncompressed bytes: the bound on a zstd bomb.
        "max_unsized_bytes": 1 << 30,
        # Where a chunked datastore's writer cuts blobs (casstore/cas/chunks/policy.py): any of
        # whole_below, large_file, block, cdc_min, cdc_avg, cdc_max, in bytes; {} = defaults.
        # Only what is shared changes, never what is stored or read.
        "chunks": {},
    },
    "archivestore": {
        "url": "file:///mltraq.archivestore",
        "relative_path_prefix": "undefined",
        "codec": "none",  # "none" or "zstd"
        "level": 3,  # compression level, used when codec is "zstd"
    },
    "statcache": {
        "path": None,  # None: the per-user cache folder
        "disable": False,
    },
}

# Sentinel for "no `otherwise` given": None is a legitimate fallback value.
_RAISE = object()


class Options:
    """A tree of option values with defaults. Use the singleton returned by `options()`."""

    def __init__(self, default_values: Mapping[str, Any]):
        self.default_values: dict[str, Any] = copy.deepcopy(dict(default_values))
        self.values: dict[str, Any] = copy.deepcopy(self.default_values)

    def get(self, path: str, prefer: Optional[Any] = None, otherwise: Any = _RAISE) -> Any:
        """Value (or subtree, as a dict) at `path`.

        If `prefer` is not None it is returned right away, without lookup: callers pass their
        own argument as `prefer` so that an explicit argument beats the option. If `path` does
        not exist, return `otherwise` if given, else raise KeyError(path).

        A subtree is returned as a deep copy, so that changing it does not change the options.
        """
        if prefer is not None:
            return prefer
        node: Any = self.values
        for step in path.split("."):
            if not isinstance(node, dict) or step not in node:
                if otherwise is _RAISE:
                    raise KeyError(path)
                return otherwise
            node = node[step]
        return copy.deepcopy(node) if isinstance(node, dict) else node

    def set(self, path: str, value: Any) -> None:
        """Set `path` to `value`, creating the intermediate groups that do not exist."""
        *steps, last = path.split(".")
        node = self.values
        for step in steps:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                raise InvalidInput(f"Cannot set option {path!r}: {step!r} holds a value, not a group")
        node[last] = value

    @contextmanager
    def ctx(self, options: Mapping[str, Any]) -> Iterator[Options]:
        """Set the {dotted.path: value} pairs of `options` for the block, then restore every
        option to what it was before the block, also when the block raises."""
        saved = copy.deepcopy(self.values)
        try:
            for path, value in options.items():
                self.set(path, value)
            yield self
        finally:
            self.values = saved

    def reset(self, path: Optional[str] = None) -> None:
        """Reset `path` to its default value, or every option if `path` is None.

        Raises KeyError if `path` has no default (as MLtraq)."""
        if path is None:
            self.values = copy.deepcopy(self.default_values)
            return
        node: Any = self.default_values
        for step in path.split("."):
            if not isinstance(node, dict) or step not in node:
                raise KeyError(path)
            node = node[step]
        self.set(path, copy.deepcopy(node))

    def copy_from(self, values: Mapping[str, Any]) -> None:
        """Replace all values with a deep copy of `values` (e.g. ones from `copy_values()`)."""
        self.values = copy.deepcopy(dict(values))

    def copy_values(self) -> dict[str, Any]:
        """Deep copy of all current values, as nested dicts."""
        return copy.deepcopy(self.values)

    def flatten(self) -> dict[str, Any]:
        """{dotted.path: value} for every leaf. As in MLtraq, empty groups do not appear."""
        flat: dict[str, Any] = {}

        def traverse(node: Any, prefix: str) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    traverse(value, f"{prefix}.{key}" if prefix else str(key))
            else:
                flat[prefix] = node

        traverse(self.values, "")
        return flat


_OPTIONS = Options(DEFAULT_VALUES)


def options() -> Options:
    """The process-wide options object (always call this rather than keeping a reference
    to a copy, as MLtraq recommends)."""
    return _OPTIONS
