"""Which blob store a datastore URL names: the one module that knows every backend.

A new backend is a module beside local.py, fsspec.py and s3.py, and one line here.
`open_existing_blobstore` opens only a datastore that is already there (what the CLI works
on): it creates nothing, so a typo in a URL never starts an empty datastore."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from casstore.cas.backends.layout import FORMAT_KEY, FORMATS, MAX_FORMAT_BYTES
from casstore.cas.backends.urls import file_url_to_path
from casstore.errors import CasStoreError, DatastoreError

# Each backend is imported when a datastore of its kind is opened (docs/performance.md, "Start-up").
if TYPE_CHECKING:
    from casstore.cas.backends.base import BlobStore


def open_blobstore(url: str, storage_options: dict[str, Any] | None = None) -> BlobStore:
    """The blob store at `url`: a local path, `file:///relative`, `file:////absolute`, or
    (with the `s3` extra) an fsspec URL such as `s3://bucket/prefix`."""
    from casstore.cas.backends.fsspec import FsspecBlobStore
    from casstore.cas.backends.local import LocalBlobStore
    from casstore.cas.backends.s3 import S3_PROTOCOLS, S3BlobStore

    if "://" not in url:
        return LocalBlobStore(url)
    scheme = url.split("://", 1)[0]
    if scheme == "file":
        return LocalBlobStore(file_url_to_path(url))
    if scheme in S3_PROTOCOLS:
        return S3BlobStore(url, storage_options)
    return FsspecBlobStore(url, storage_options)


def open_existing_blobstore(url: str, storage_options: dict[str, Any] | None = None,
                            named_by: str = "") -> BlobStore:
    """The blob store of the casstore datastore at `url`, read only to check it: DatastoreError
    if it cannot be opened, is a local folder that does not exist, has no FORMAT object or one
    that cannot be read, or is of another format. `named_by` (e.g. "--datastore") says in the
    messages where `url` came from."""
    from casstore.cas.backends.local import LocalBlobStore

    where = f" ({named_by})" if named_by else ""
    try:
        blobs = open_blobstore(url, storage_options)
    except CasStoreError as exc:
        raise DatastoreError(f"cannot open datastore {url}{where}: {exc}") from exc
    if isinstance(blobs, LocalBlobStore) and not os.path.isdir(blobs.root):
        raise DatastoreError(f"datastore {blobs.root} does not exist{where}")
    try:
        found = blobs.get_object(FORMAT_KEY, max_bytes=MAX_FORMAT_BYTES)
    except OSError as exc:
        raise DatastoreError(f"cannot read datastore {blobs.url}{where}: {exc}") from exc
    if found is None:
        raise DatastoreError(f"{blobs.url} is not a casstore datastore: no {FORMAT_KEY}{where}")
    if found not in FORMATS:
        raise DatastoreError(f"datastore {blobs.url} has an unsupported format {found.strip()!r}")
    return blobs
