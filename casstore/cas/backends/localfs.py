"""The file primitives of a datastore in a local folder: open only a regular file, never
following a symlink nor waiting on a FIFO (the hostile-datastore rules, docs/reliability.md),
and fsync a folder so that a link or rename in it is on disk."""

from __future__ import annotations

import errno
import os
import stat

from casstore.errors import UnreadableObject


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at `path`, never following a symlink and
    never blocking (a FIFO opens at once and is refused): UnreadableObject for anything but a
    regular file, FileNotFoundError if there is nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableObject(f"{path} is a symlink, not a regular file: not read") from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        raise UnreadableObject(f"{path} is not a regular file (mode {stat.filemode(mode)}): not read")
    os.set_blocking(fd, True)
    return fd


def fsync_dir(path: str) -> None:
    """Make the names in folder `path` durable (a link or rename in it); a file system that
    cannot fsync a folder (EINVAL) is taken as it is."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
