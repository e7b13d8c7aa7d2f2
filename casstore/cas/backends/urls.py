"""File URLs (`file:///relative`, `file:////absolute`) and the local paths they name, with
MLtraq's rule. `casstore.opts.file_url_to_path` is this function (its public name)."""

from __future__ import annotations

from urllib.parse import urlparse

from casstore.errors import InvalidInput


def file_url_to_path(url: str) -> str:
    """Local path named by a file URL, with MLtraq's rule.

    "file:///X" names "X" relative to the current directory; "file:////abs/path" names the
    absolute "/abs/path". The path is taken as `urlparse` sees it (as MLtraq does), so a
    "?query" or "#fragment" is not part of it and %-escapes are not decoded.

    Raises InvalidInput for any other scheme or form (including "file://host/..."), and for
    "file:///" alone, which names no folder.
    """
    if not isinstance(url, str):
        raise InvalidInput(f"URL must be a string, got {type(url).__name__}: {url!r}")
    if urlparse(url).scheme != "file":
        raise InvalidInput(f"Not a file URL (scheme must be file:///): {url!r}")
    if not url.startswith("file:///"):
        raise InvalidInput(f"Invalid file URL, it must start with file:/// : {url!r}")
    path = urlparse(url).path[1:]
    if not path:
        raise InvalidInput(f"File URL names no path: {url!r}")
    return path
