"""Server databases the user has confirmed, kept outside every datastore.

Anyone who can write a datastore can write a registry entry, so an entry alone never makes
gc connect to a server: libpq would send it the user's credentials. The user confirms a
server URL once (`casstore registry --trust URL`); the list lives in
`$XDG_CONFIG_HOME/casstore/trusted-databases.json` (default `~/.config/...`), which only the
user writes. SQLite files need no confirmation: they are opened as files (docs/teams.md).

Here too: what gc would find of each registry entry (`entry_statuses`: an SQLite file there
or not, a server confirmed or not), and the database a registry key names (`database_url`,
so that `--trust` takes the key gc's refusal shows)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid

from dataclasses import dataclass
from typing import Callable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from casstore.cas.backends.base import BlobStore
from casstore.cas.live.registry import Entry, read_registry, registry_url, url_problem
from casstore.errors import InvalidInput

TRUST_FORMAT = "casstore-trust-1"
MAX_TRUST_BYTES = 1 << 20


def trust_file() -> str:
    config = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config):  # unset, empty or relative: the XDG default
        config = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "casstore", "trusted-databases.json")


def trusted_urls() -> dict[str, float]:
    """Every confirmed URL with the time it was confirmed; none if the file does not exist."""
    path = trust_file()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidInput(f"cannot read the list of confirmed databases {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidInput(f"the list of confirmed databases {path} is not a regular file")
        data = f.read(MAX_TRUST_BYTES + 1)
    return _parse(path, data)


def _parse(path: str, data: bytes) -> dict[str, float]:
    try:
        body = json.loads(data) if len(data) <= MAX_TRUST_BYTES else None
    except ValueError:
        body = None
    items = body.get("databases") if isinstance(body, dict) and body.get("format") == TRUST_FORMAT else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("url"), str)
                                              and isinstance(i.get("confirmed"), (int, float)) for i in items):
        raise InvalidInput(f"the list of confirmed databases {path} is damaged: fix it, or delete it and "
                           "confirm each server database again with `casstore registry --trust`, its URL and "
                           "--db (the project's database)")
    return {i["url"]: float(i["confirmed"]) for i in items}


def server_url(url: str) -> str:
    """`url` as the registry writes it, refused unless it is a server database's."""
    try:
        normalized = registry_url(url)
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        raise InvalidInput(f"{url} is an SQLite file: gc opens those as files, they need no confirmation")
    problem = url_problem(normalized)
    if problem is not None:
        raise InvalidInput(f"{url} cannot be confirmed: {problem.removeprefix('its url ')}")
    assert normalized is not None  # only an in-memory SQLite URL has none, refused above
    return normalized


def trust(url: str) -> str:
    """Confirm the server database at `url` (its password, if given, is not kept)."""
    normalized = server_url(url)
    confirmed = trusted_urls()
    if normalized not in confirmed:
        confirmed[normalized] = time.time()
        _write(confirmed)
    return normalized


def revoke(url: str) -> bool:
    """Withdraw a confirmation; False if `url` was not confirmed."""
    normalized = server_url(url)
    confirmed = trusted_urls()
    if confirmed.pop(normalized, None) is None:
        return False
    _write(confirmed)
    return True


def database_url(url_or_key: str, datastore: Callable[[], BlobStore]) -> str:
    """The database `url_or_key` names: itself if it is a URL, else the URL of the entry with
    that key (as gc's refusal names it) in the registry of `datastore()`; InvalidInput if
    there is none. `datastore` is called only for a key: a URL needs no datastore."""
    if "://" in url_or_key:
        return url_or_key
    blobs = datastore()
    by_key = {e.key: e.url for e in read_registry(blobs)[0]}
    if url_or_key not in by_key:
        raise InvalidInput(f"{url_or_key} is neither a database URL nor the key of an entry in the registry of "
                           f"datastore {blobs.url}")
    return by_key[url_or_key]


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """What gc would find of a registry entry: `exists`, whether an SQLite entry's file is
    there (None for a server database); `trusted`, whether a server database is confirmed
    or is the one asking (None for an SQLite file, which needs no confirmation)."""

    entry: Entry
    exists: bool | None
    trusted: bool | None


def entry_statuses(entries: list[Entry], mine: str | None) -> list[EntryStatus]:
    """The status of each of `entries`, for the database whose registry URL is `mine`."""
    confirmed = trusted_urls()
    return [EntryStatus(e, exists, None if exists is not None else (e.url in confirmed or e.url == mine))
            for e in entries for exists in [e.file_exists]]


def _write(confirmed: dict[str, float]) -> None:
    path = trust_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    body = {"format": TRUST_FORMAT, "databases": [{"url": u, "confirmed": t} for u, t in sorted(confirmed.items())]}
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(body, indent=2).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
