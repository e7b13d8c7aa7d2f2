"""Where the user API meets the content store: options turned into stores and folders.

The content store knows nothing of options; this module reads them, once per call, so that
`options().ctx(...)` blocks behave as in MLtraq."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Literal

from casstore.cas.backends.urls import file_url_to_path
from casstore.errors import DatastoreError, InvalidInput
from casstore.opts import options

# The index (SQLAlchemy), the content store (zstandard) and the backends are imported when a
# store or a project's datastore is asked for, not when the user API is imported
# (docs/performance.md, "Start-up").
if TYPE_CHECKING:
    from casstore.cas.chunks.policy import ChunkPolicy
    from casstore.cas.index.queries import Index
    from casstore.cas.store.content_store import ContentStore

_stores: dict[tuple[str, str | None], ContentStore] = {}
_lock = threading.Lock()

# Where a project's datastore came from (project_datastore).
DatastoreSource = Literal["given", "recorded", "option"]


def datastore_url() -> str:
    """The datastore named by the options, as an absolute path or a remote URL."""
    url = options().get("datastore.url")
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"option datastore.url must be a path or URL, got {url!r}")
    if url.startswith("file://") or "://" not in url:
        path = file_url_to_path(url) if url.startswith("file://") else url
        return os.path.abspath(path)
    return url


def project_datastore(index: Index, given: str | None = None) -> tuple[str, DatastoreSource]:
    """The datastore of the project whose database `index` opens, and where it came from:
    `given` (the caller's override: --datastore, `Session(datastore=...)`; an empty one names
    the options'), else the one the database records, else option datastore.url (which the
    first persist with archives records). A database in a folder that holds its datastore
    records it relative to itself too, and that record is read first (cas/live/moves.py)."""
    from casstore.cas.index.queries import DATASTORE_KEY
    from casstore.cas.live.moves import recorded_datastore

    if given is not None:
        return given or datastore_url(), "given"
    recorded = recorded_datastore(index)
    if recorded == "":  # casstore never records one: damage, and guessing could split the project
        raise DatastoreError(f"this database records an empty datastore ({DATASTORE_KEY!r} in casstore_meta): "
                             "name the datastore explicitly (--datastore, Session(datastore=...))")
    if recorded is not None:
        return recorded, "recorded"
    return datastore_url(), "option"


def content_store(url: str | None = None) -> ContentStore:
    """The (per-process, cached) content store of datastore `url` (default: the options')."""
    from casstore.cas.backends.factory import open_blobstore
    from casstore.cas.store.content_store import ContentStore
    from casstore.cas.store.statcache import StatCache

    url = url or datastore_url()
    cache = None if options().get("statcache.disable", otherwise=False) else options().get("statcache.path", otherwise=None) or ""
    with _lock:
        store = _stores.get((url, cache))
        if store is None:
            blobs = open_blobstore(url, options().get("datastore.storage_options", otherwise={}))
            store = ContentStore(blobs, None if cache is None else StatCache(cache or None))
            _stores[(url, cache)] = store
        store.unsized_limit = unsized_limit()
        store.policy = chunk_policy()
        return store


def existing_content_store(url: str, named_by: str = "") -> ContentStore:
    """A content store, with no stat cache, on the casstore datastore already at `url`
    (DatastoreError if there is none: `open_existing_blobstore`)."""
    from casstore.cas.backends.factory import open_existing_blobstore
    from casstore.cas.store.content_store import ContentStore

    return ContentStore(open_existing_blobstore(url, options().get("datastore.storage_options", otherwise={}),
                                                named_by), policy=chunk_policy())


def unsized_limit() -> int:
    """Option datastore.max_unsized_bytes: how far a blob with no recorded size is read."""
    from casstore.cas.store.reader import UNSIZED_LIMIT

    limit = options().get("datastore.max_unsized_bytes", otherwise=UNSIZED_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInput(f"option datastore.max_unsized_bytes must be a number of bytes, got {limit!r}")
    return limit


def chunk_policy() -> ChunkPolicy:
    """Option datastore.chunks: the sizes a chunked write cuts at (chunks/policy.py)."""
    from casstore.cas.chunks.policy import policy_from

    return policy_from(options().get("datastore.chunks", otherwise={}))


def codec_and_level() -> tuple[str, int]:
    from casstore.cas.store.codecs import check_codec

    codec, level = options().get("archivestore.codec"), options().get("archivestore.level")
    check_codec(codec, level, "option archivestore.")
    return codec, level


def archivestore_root() -> str:
    """The extraction root as MLtraq spells it (relative to the current folder by default)."""
    return file_url_to_path(options().get("archivestore.url"))


def checked_prefix(option: str) -> str:
    """A relative_path_prefix option, refused if it escapes or names casstore's own folder."""
    prefix = str(options().get(option))
    norm = os.path.normpath(prefix)
    if os.path.isabs(norm) or norm.startswith("..") or norm.split(os.sep)[0] == "casstore":
        raise InvalidInput(f"option {option} = {prefix!r} must be a relative folder, not '..' or 'casstore'")
    return norm
