"""A write that fails for lack of room (a full disk, a quota, a file size limit) is NoSpace,
whoever writes: a blob into the datastore, an extraction into its target."""

from __future__ import annotations

import contextlib
import errno
from typing import Iterator

from casstore.errors import CasStoreError, NoSpace

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def no_space(where: str) -> Iterator[None]:
    """Turn a write failing for lack of room into NoSpace (an OSError with the same errno)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, CasStoreError) or exc.errno not in NO_SPACE:
            raise
        raise NoSpace(exc.errno, f"no room left to write {where} ({exc.strerror})") from exc
