"""Which blob store a datastore URL names: the one module that knows every backend.

A new backend is a module beside local.py, fsspec.py and s3.py, and one line here."""

from __future__ import annotations

from typing import Any

from casstore.cas.backends.base import BlobStore
from casstore.cas.backends.fsspec import FsspecBlobStore
from casstore.cas.backends.local import LocalBlobStore
from casstore.cas.backends.s3 import S3_PROTOCOLS, S3BlobStore
from casstore.cas.backends.urls import file_url_to_path


def open_blobstore(url: str, storage_options: dict[str, Any] | None = None) -> BlobStore:
    """The blob store at `url`: a local path, `file:///relative`, `file:////absolute`, or
    (with the `s3` extra) an fsspec URL such as `s3://bucket/prefix`."""
    if "://" not in url:
        return LocalBlobStore(url)
    scheme = url.split("://", 1)[0]
    if scheme == "file":
        return LocalBlobStore(file_url_to_path(url))
    if scheme in S3_PROTOCOLS:
        return S3BlobStore(url, storage_options)
    return FsspecBlobStore(url, storage_options)
