"""Blobs in S3 (`s3://bucket/prefix`: AWS S3 and S3-protocol servers, via s3fs): the fsspec
store (fsspec.py) with S3's own requests where they keep a property the generic store can
only approximate (docs/teams.md):

- No atomic rename. A blob that fits in one upload part (8 MiB) is published with a single
  PutObject carrying `If-None-Match: *`: an S3 PUT is atomic, and the condition makes it fail
  instead of overwriting an id already there. A larger blob is uploaded (multipart) to
  `casstore/tmp/<uuid>.partial`, then published by a server-side copy that is itself a
  multipart upload (UploadPartCopy) completed with `If-None-Match: *`, then the temp key is
  deleted. A multipart upload is invisible until it completes, so no reader ever sees part
  of a blob under its id, and a blob is never overwritten.
- A repair replaces only the object a read showed damaged: same ETag before and after the
  read, then DeleteObject If-Match.
- No locks. A temp key of an interrupted write is told from a live one by its age
  (LastModified) alone: gc only offers keys older than its grace period and a minute.
- Listing costs one request per 1000 keys: listings are paged and streamed, and the small
  objects are listed without listing the blobs.
- Reads stream through fsspec file objects with a bounded read-ahead block."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, BinaryIO, Iterator

from casstore.cas.backends.base import BlobStat, DamageCheck, Ingest, ObjectStat
from casstore.cas.backends.fsspec import READ_BLOCK, FsspecBlobStore, MiB
from casstore.cas.backends.layout import BULK_PREFIXES, TMP_PREFIX
from casstore.errors import DatastoreError

S3_PROTOCOLS = ("s3", "s3a")
PART_SIZE = 8 * MiB             # upload part: what one ingest holds in memory
MIN_PART = 5 * MiB              # S3's smallest part but the last
COPY_PART = 1 << 30             # server-side copy in 1 GiB parts (S3 allows up to 5 GiB)
MAX_PARTS = 10_000
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


class S3BlobStore(FsspecBlobStore):
    """A datastore below an S3 URL, with conditional publishing."""

    extra = "s3"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 part_size: int = PART_SIZE, read_block: int = READ_BLOCK):
        super().__init__(url, storage_options, read_block=read_block)
        self._bucket, _, self._prefix = self._root.partition("/")
        if part_size < MIN_PART:
            raise DatastoreError(f"part_size must be at least {MIN_PART} bytes (S3's smallest part)")
        self.part_size = part_size

    # -- plumbing ----------------------------------------------------------------------

    def _fs_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Also the endpoint of the AWS variables, and no listings cache: gc must never see
        a stale listing."""
        options = super()._fs_options(options)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
        options.setdefault("use_listings_cache", False)
        return options

    def _key(self, key: str) -> str:
        """The S3 object key of a datastore key."""
        return f"{self._prefix}/{key}" if self._prefix else key

    def _call(self, method: str, **kwargs: Any) -> Any:
        """One S3 API call through s3fs's client (its endpoint, credentials and retries)."""
        try:
            return self.fs.call_s3(method, Bucket=self._bucket, **kwargs)
        except OSError as exc:
            self._raise_if_no_bucket(exc)
            raise
        except Exception as exc:  # botocore's NoCredentialsError, EndpointConnectionError...
            raise DatastoreError(f"datastore {self.url}: {exc.__class__.__name__}: {exc}") from exc

    def _raise_if_no_bucket(self, exc: BaseException) -> None:
        if _s3_code(exc) == "NoSuchBucket" or "bucket does not exist" in str(exc):
            raise DatastoreError(f"bucket {self._bucket!r} does not exist (datastore {self.url})") from exc

    def _head(self, key: str) -> tuple[int, float] | None:
        found = self._identity(key)
        return None if found is None else (found[0], found[1])

    def _open_key(self, key: str, found: BlobStat, **options: Any) -> BinaryIO:
        """Opened with the size known (blobs never change: no second HEAD), and the file's
        details set, which spares a HEAD at the first read."""
        f = super()._open_key(key, found, size=found.stored_size, **options)
        setattr(f, "details", {"name": self._path(key), "size": found.stored_size, "type": "file"})
        return f

    # -- the interface, where S3 has its own request ----------------------------------

    def _identity(self, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, ETag) of an object, from one HeadObject."""
        try:
            head = self._call("head_object", Key=self._key(key))
        except FileNotFoundError:
            return None
        return head["ContentLength"], head["LastModified"].timestamp(), head.get("ETag", "")

    def _delete_if_unchanged(self, key: str, tag: str) -> bool:
        """DeleteObject If-Match the ETag the repair read (`quarantine`): the caller then
        publishes create-only (If-None-Match), so nothing but an object a read has shown
        damaged is ever replaced. Safe with others at work, as on a local folder
        (LocalBlobStore.quarantine): a concurrent repair or writer changes the ETag and this
        one says "gone" (look again); gc's trash deletes the object and the conditional
        delete then fails the same way; the writer's lease keeps gc from deleting the id for
        good."""
        try:
            self._call("delete_object", Key=self._key(key), IfMatch=tag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _s3_code(exc) in _EXISTS_CODES:
                return False
            raise
        return True

    def begin_ingest(self) -> Ingest:
        return _S3Ingest(self)

    def put_object(self, key: str, data: bytes, durable: bool = True) -> None:
        """One PUT: S3 replaces an object atomically (readers see the old or the new)."""
        self._call("put_object", Key=self._key(key), Body=bytes(data))

    def _get_range(self, key: str, limit: int) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(f"{self._bucket}/{self._key(key)}", start=0, end=limit, max_concurrency=1)
        except FileNotFoundError as exc:
            self._raise_if_no_bucket(exc)
            return None
        except (IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            self._raise_if_no_bucket(exc)
            if _s3_code(exc) == "InvalidRange":  # S3 refuses any range of an empty object (416)
                return b""
            raise
        except Exception as exc:
            raise DatastoreError(f"datastore {self.url}: {exc.__class__.__name__}: {exc}") from exc
        return data

    def delete_object(self, key: str) -> None:
        self._call("delete_object", Key=self._key(key))  # deleting a missing key is fine

    def list_objects(self, prefix: str, specials: list[ObjectStat] | None = None) -> Iterator[ObjectStat]:
        """As the generic store's; one ListObjectsV2 request per 1000 keys, streamed page by
        page."""
        yield from self._list_s3(prefix.strip("/"))

    def list_small_objects(self) -> Iterator[ObjectStat]:
        """Listed one level at a time (Delimiter "/") down to `casstore/`, whose blobs and
        trash are not listed at all; everything else recursively."""
        yield from self._list_s3_skipping("", {self._key(p) for p in BULK_PREFIXES})

    def _list_s3_skipping(self, prefix: str, skip: set[str]) -> Iterator[ObjectStat]:
        strip = len(self._prefix) + 1 if self._prefix else 0
        for page in self._s3_pages(prefix, Delimiter="/"):
            yield from self._s3_objects(page)
            for common in page.get("CommonPrefixes", []):
                sub = common["Prefix"]
                if sub in skip:
                    continue
                if any(s.startswith(sub) for s in skip):
                    yield from self._list_s3_skipping(sub[strip:].rstrip("/"), skip)
                else:
                    yield from self._list_s3(sub[strip:].rstrip("/"))

    def _list_s3(self, prefix: str) -> Iterator[ObjectStat]:
        for page in self._s3_pages(prefix):
            yield from self._s3_objects(page)

    def _s3_pages(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        """The ListObjectsV2 pages (1000 keys each) below datastore key `prefix`."""
        base = self._key(f"{prefix}/" if prefix else "")
        if base == "/":
            base = ""
        token = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": base, **extra}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page: dict[str, Any] = self._call("list_objects_v2", **kwargs)
            except FileNotFoundError:
                return
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _s3_objects(self, page: dict[str, Any]) -> Iterator[ObjectStat]:
        strip = len(self._prefix) + 1 if self._prefix else 0
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                yield ObjectStat(item["Key"][strip:], item["Size"], item["LastModified"].timestamp())

    # -- copies and publishing ---------------------------------------------------------

    def _copy(self, source: str, target: str, size: int, *, exclusive: bool) -> None:
        """Server-side copy; `exclusive`: a multipart copy completed with If-None-Match: *."""
        src = {"Bucket": self._bucket, "Key": self._key(source)}
        if not exclusive and size <= COPY_PART:
            self._call("copy_object", Key=self._key(target), CopySource=src)
            return
        upload = self._call("create_multipart_upload", Key=self._key(target))["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            offset = 0
            while True:
                kwargs: dict[str, Any] = {}
                if size > COPY_PART:
                    end = min(size, offset + COPY_PART) - 1
                    kwargs["CopySourceRange"] = f"bytes={offset}-{end}"
                    offset = end + 1
                else:
                    offset = size
                done = self._call("upload_part_copy", Key=self._key(target), UploadId=upload,
                                  PartNumber=len(parts) + 1, CopySource=src, **kwargs)
                parts.append({"PartNumber": len(parts) + 1, "ETag": done["CopyPartResult"]["ETag"]})
                if offset >= size:
                    break
            self._complete(target, upload, parts, exclusive)
        except BaseException:
            self._abort_upload(target, upload)
            raise

    def _complete(self, key: str, upload: str, parts: list[dict[str, Any]], exclusive: bool) -> None:
        condition = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self._call("complete_multipart_upload", Key=self._key(key), UploadId=upload,
                       MultipartUpload={"Parts": parts}, **condition)
        except OSError as exc:
            if exclusive and (isinstance(exc, FileExistsError) or _s3_code(exc) in _EXISTS_CODES):
                raise FileExistsError(key) from exc
            raise

    def _abort_upload(self, key: str, upload: str) -> None:
        try:
            self._call("abort_multipart_upload", Key=self._key(key), UploadId=upload)
        except Exception:  # best effort: a bucket lifecycle rule reaps what is left
            pass


class _S3Ingest(Ingest):
    """Holds up to one part in memory. A blob that never fills a part is published with one
    conditional PUT; a larger one is a multipart upload to a temp key, then a conditional
    multipart copy to its id."""

    def __init__(self, store: S3BlobStore):
        self._store = store
        self.key = f"{TMP_PREFIX}/{uuid.uuid4().hex}.partial"
        self._buffer: bytearray | None = bytearray()
        self._upload: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0
        self._tmp_done = False

    def _part_size(self) -> int:
        # grows every 1000 parts, so 10,000 parts hold ~430 GiB at the default part size
        return self._store.part_size * (1 + len(self._parts) // 1000)

    def write(self, data: bytes | memoryview) -> None:
        if self._buffer is None:
            raise ValueError("write to an ingest that was committed or aborted")
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= self._part_size():
            size = self._part_size()
            self._upload_part(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _upload_part(self, data: bytes) -> None:
        store = self._store
        if self._upload is None:
            self._upload = store._call("create_multipart_upload", Key=store._key(self.key))["UploadId"]
        if len(self._parts) >= MAX_PARTS:
            raise DatastoreError(f"blob too large for one upload ({self._size} bytes so far)")
        done = store._call("upload_part", Key=store._key(self.key), UploadId=self._upload,
                           PartNumber=len(self._parts) + 1, Body=data)
        self._parts.append({"PartNumber": len(self._parts) + 1, "ETag": done["ETag"]})

    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        store = self._store
        buffer = self._buffer
        if buffer is None:
            raise ValueError("commit of an ingest that was committed or aborted")
        try:
            return store.publish_unless_stored(
                blob_id, damaged,
                lambda: store.stat_of(blob_id, self._size, codec, time.time()) if self._publish(blob_id, codec, buffer)
                else None)
        finally:
            self.abort()

    def _publish(self, blob_id: str, codec: str, buffer: bytearray) -> bool:
        """One create-only publish under the id; False if the id was taken meanwhile (by
        another writer, or put back by gc): the caller looks again. `buffer` holds what
        `write` has not uploaded yet."""
        store = self._store
        final = store.ns.blob_key(blob_id, codec)
        if self._upload is None and not self._tmp_done:
            try:
                store._call("put_object", Key=store._key(final), Body=bytes(buffer), IfNoneMatch="*")
            except OSError as exc:
                if isinstance(exc, FileExistsError) or _s3_code(exc) in _EXISTS_CODES:
                    return False
                raise
            return True
        if self._upload is not None:
            if buffer:
                self._upload_part(bytes(buffer))
                buffer.clear()
            store._complete(self.key, self._upload, self._parts, exclusive=False)
            self._upload, self._tmp_done = None, True
        try:
            store._copy(self.key, final, self._size, exclusive=True)
        except FileExistsError:
            return False
        except FileNotFoundError as exc:
            raise DatastoreError(f"the temp upload {self.key} vanished before it was published (gc with a "
                                 f"grace period shorter than the upload?); write it again") from exc
        return True

    def abort(self) -> None:
        self._buffer = None
        store = self._store
        if self._upload is not None:
            store._abort_upload(self.key, self._upload)
            self._upload = None
        if self._tmp_done:
            self._tmp_done = False
            try:
                store.delete_object(self.key)
            except Exception:  # a leftover; gc reclaims it by age
                pass


def _s3_code(exc: BaseException | None) -> str | None:
    """The S3 error code behind an s3fs exception (s3fs keeps botocore's as the cause)."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            return code if isinstance(code, str) else None
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
