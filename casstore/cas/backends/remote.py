"""Blobs in an object store, through fsspec: `s3://bucket/prefix` (AWS S3 and S3-protocol
servers, via s3fs) and, with weaker publishing, any other fsspec URL.

The layout is the local folder's (blobs.py), under the URL's prefix. What differs from a
local folder, and how each property is kept (docs/teams.md):

- No atomic rename. A blob that fits in one upload part (8 MiB) is published with a single
  PutObject carrying `If-None-Match: *`: an S3 PUT is atomic, and the condition makes it fail
  instead of overwriting an id already there. A larger blob is uploaded (multipart) to
  `casstore/tmp/<uuid>.partial`, then published by a server-side copy that is itself a
  multipart upload (UploadPartCopy) completed with `If-None-Match: *`, then the temp key is
  deleted. A multipart upload is invisible until it completes, so no reader ever sees part
  of a blob under its id, and a blob is never overwritten.
- No locks. A temp key of an interrupted write is told from a live one by its age
  (LastModified) alone: gc only offers keys older than its grace period and a minute.
- Listing costs one request per 1000 keys: listings are paged and streamed.
- Reads stream through fsspec file objects with a bounded read-ahead block.

Other fsspec protocols (gcs://, memory://, ...) get the same layout, but their publish is
check-then-copy: two writers of the same id can both copy, and since ids name content the
second copy holds the same TAR (see docs/teams.md)."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from typing import Any, BinaryIO, Iterator

from casstore.cas.backends.base import (BULK_PREFIXES, CODEC_SUFFIX, INTERNAL, BlobStat, BlobStore, DamageCheck, Ingest,
                                ObjectStat, Outcome, blob_key, checked_blob_key, quarantine_key, trash_key,
                                trash_key_blob)
from casstore.errors import BlobNotFound, DatastoreError, UnreadableObject

TMP_PREFIX = f"{INTERNAL}/tmp"
MiB = 1 << 20
PART_SIZE = 8 * MiB             # upload part: what one ingest holds in memory
READ_BLOCK = 8 * MiB            # read-ahead of a blob being read
MIN_PART = 5 * MiB              # S3's smallest part but the last
COPY_PART = 1 << 30             # server-side copy in 1 GiB parts (S3 allows up to 5 GiB)
MAX_PARTS = 10_000
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
S3_PROTOCOLS = ("s3", "s3a")


class FsspecBlobStore(BlobStore):
    """A datastore below an fsspec URL; S3 gets conditional publishing."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *,
                 part_size: int = PART_SIZE, read_block: int = READ_BLOCK):
        if "://" not in url:
            raise DatastoreError(f"not an fsspec URL: {url}")
        protocol, rest = url.split("://", 1)
        self.url = url
        self.protocol = protocol
        self.s3 = protocol in S3_PROTOCOLS
        self._root = rest.strip("/")
        if not self._root:
            raise DatastoreError(f"datastore URL {url} names no bucket (expected {protocol}://bucket/prefix)")
        self._bucket, _, self._prefix = self._root.partition("/")
        if part_size < MIN_PART:
            raise DatastoreError(f"part_size must be at least {MIN_PART} bytes (S3's smallest part)")
        self.part_size = part_size
        self.read_block = read_block
        self._options = dict(storage_options or {})
        self._fs: Any = None
        self._pid = 0
        _filesystem_class(protocol, url)  # fails now, with the extra to install, if missing

    def __repr__(self) -> str:
        return f"FsspecBlobStore({self.url!r})"

    # -- plumbing ----------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; made again in a forked child (fsspec's loops are not
        fork-safe)."""
        if self._fs is None or self._pid != os.getpid():
            options = dict(self._options)
            options.setdefault("skip_instance_cache", True)
            if self.s3:
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                if endpoint and "endpoint_url" not in options \
                        and "endpoint_url" not in options.get("client_kwargs", {}):
                    options["endpoint_url"] = endpoint
                options.setdefault("use_listings_cache", False)  # gc must never see a stale listing
            try:
                self._fs = _filesystem_class(self.protocol, self.url)(**options)
            except (TypeError, ValueError) as exc:
                raise DatastoreError(f"cannot open datastore {self.url}: {exc}") from exc
            self._pid = os.getpid()
        return self._fs

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if key else self._root

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

    def _generic(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OSError:
            raise
        except Exception as exc:
            raise DatastoreError(f"datastore {self.url}: {exc.__class__.__name__}: {exc}") from exc

    def _head(self, key: str) -> tuple[int, float] | None:
        """(size, mtime) of an object, None if there is none."""
        if self.s3:
            try:
                found = self._call("head_object", Key=self._key(key))
            except FileNotFoundError:
                return None
            return found["ContentLength"], found["LastModified"].timestamp()
        try:
            info = self._generic(self.fs.info, self._path(key))
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return int(info["size"]), _mtime(info)

    # -- the interface -----------------------------------------------------------------

    def exists(self) -> bool:
        from casstore.cas.backends.base import FORMAT_KEY

        return self._head(FORMAT_KEY) is not None

    def find(self, blob_id: str) -> BlobStat | None:
        for codec in CODEC_SUFFIX:
            found = self._head(blob_key(blob_id, codec))
            if found is not None:
                return BlobStat(blob_id, found[0], codec, found[1])
        return None

    def open_copy(self, blob_id: str, codec: str) -> tuple[BinaryIO, BlobStat]:
        key = blob_key(blob_id, codec)
        found = self._head(key)
        if found is None:
            raise BlobNotFound(f"blob {blob_id} is not in the datastore {self.url}")
        stat = BlobStat(blob_id, found[0], codec, found[1])
        return self._open_key(key, stat), stat

    def _open_key(self, key: str, found: BlobStat) -> BinaryIO:
        path = self._path(key)
        kwargs: dict[str, Any] = {"block_size": self.read_block, "cache_type": "readahead"}
        if self.s3:
            kwargs["size"] = found.stored_size  # blobs never change: no second HEAD
        try:
            f = self._generic(self.fs.open, path, "rb", **kwargs)
        except FileNotFoundError as exc:
            raise BlobNotFound(f"blob {found.blob_id} is not in the datastore {self.url}") from exc
        if self.s3:
            f.details = {"name": path, "size": found.stored_size, "type": "file"}  # spares a HEAD at first read
        return f

    def quarantine(self, blob: BlobStat, damaged: DamageCheck) -> Outcome:
        """Read the object and check it; only if it is damaged, and is still the object that
        was read (same ETag before and after the read), copy it into the quarantine and
        delete it on condition that it is still that object (DeleteObject If-Match). The
        caller then publishes create-only (If-None-Match), so nothing but an object a read
        has shown damaged is ever replaced. Safe with others at work, as on a local folder
        (blobs.LocalBlobStore.quarantine): a concurrent repair or writer changes the ETag
        and this one says "gone" (look again); gc's trash deletes the object and the
        conditional delete then fails the same way; the writer's lease keeps gc from
        deleting the id for good. Other fsspec backends have no conditions: check, copy,
        delete (see the module's docstring)."""
        key = blob_key(blob.blob_id, blob.codec)
        before = self._identity(key)
        if before is None:
            return "gone"
        found = BlobStat(blob.blob_id, before[0], blob.codec, before[1])
        try:
            with self._open_key(key, found) as f:
                if not damaged(f, found):
                    return "sound"
        except (BlobNotFound, FileNotFoundError):
            return "gone"
        if self._identity(key) != before:
            return "gone"
        target = quarantine_key(blob.blob_id, blob.codec, time.time_ns())
        try:
            self._copy(key, target, found.stored_size, exclusive=False)
        except FileNotFoundError:
            return "gone"
        if not self._delete_if_unchanged(key, before[2]):
            self.delete_object(target)
            return "gone"
        return "moved"

    def _identity(self, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, ETag) of an object. Other fsspec backends: the size alone (their
        mtimes may be missing, and then read as now)."""
        if not self.s3:
            found = self._head(key)
            return None if found is None else (found[0], 0.0, "")
        try:
            head = self._call("head_object", Key=self._key(key))
        except FileNotFoundError:
            return None
        return head["ContentLength"], head["LastModified"].timestamp(), head.get("ETag", "")

    def _delete_if_unchanged(self, key: str, etag: str) -> bool:
        if not self.s3:
            self.delete_object(key)
            return True
        try:
            self._call("delete_object", Key=self._key(key), IfMatch=etag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _s3_code(exc) in _EXISTS_CODES:
                return False
            raise
        return True

    def begin_ingest(self) -> Ingest:
        return _S3Ingest(self) if self.s3 else _FsspecIngest(self)

    def delete_blob(self, blob_id: str, codec: str) -> None:
        self.delete_object(blob_key(blob_id, codec))

    def put_object(self, key: str, data: bytes) -> None:
        """One PUT: S3 replaces an object atomically (readers see the old or the new)."""
        if self.s3:
            self._call("put_object", Key=self._key(key), Body=bytes(data))
        else:
            self._generic(self.fs.pipe_file, self._path(key), bytes(data))

    def get_object(self, key: str, *, max_bytes: int) -> bytes | None:
        """One GET of at most `max_bytes` + 1 bytes (a ranged read): a larger object is
        refused, and no more of it than that is ever transferred."""
        data = self._get_range(key, max_bytes + 1)
        if data is not None and len(data) > max_bytes:
            raise UnreadableObject(f"{key!r} is larger than the {max_bytes} bytes its reader trusts: not read")
        return data

    def _get_range(self, key: str, limit: int) -> bytes | None:
        """The first `limit` bytes of an object, None if there is none."""
        if self.s3:
            try:
                return self.fs.cat_file(f"{self._bucket}/{self._key(key)}", start=0, end=limit, max_concurrency=1)
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
        try:
            return self._generic(self.fs.cat_file, self._path(key), start=0, end=limit)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def delete_object(self, key: str) -> None:
        if self.s3:
            self._call("delete_object", Key=self._key(key))  # deleting a missing key is fine
            return
        try:
            self._generic(self.fs.rm_file, self._path(key))
        except FileNotFoundError:
            pass

    def list_objects(self, prefix: str, specials: list[ObjectStat] | None = None) -> Iterator[ObjectStat]:
        """Every object below `prefix`, recursively, in key order. On S3 one ListObjectsV2
        request per 1000 keys, streamed page by page. `specials` is never filled: an object
        store holds objects only (and fsspec's other entries are not followed)."""
        prefix = prefix.strip("/")
        if self.s3:
            yield from self._list_s3(prefix)
            return
        try:
            found = self._generic(self.fs.find, self._path(prefix), detail=True)
        except FileNotFoundError:
            return
        skip = len(self._root) + 1
        for name, info in sorted(found.items()):
            name = name.split("://", 1)[-1].lstrip("/")
            if info.get("type", "file") == "file" and name.startswith(self._root + "/"):
                yield ObjectStat(name[skip:], int(info.get("size") or 0), _mtime(info))

    def list_small_objects(self) -> Iterator[ObjectStat]:
        """On S3, listed one level at a time (Delimiter "/") down to `casstore/`, whose
        blobs and trash are not listed at all; everything else recursively. Other fsspec
        backends list everything in one call and filter."""
        if not self.s3:
            yield from super().list_small_objects()
            return
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

    def _s3_pages(self, prefix: str, **extra: Any) -> Iterator[dict]:
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
                page = self._call("list_objects_v2", **kwargs)
            except FileNotFoundError:
                return
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _s3_objects(self, page: dict) -> Iterator[ObjectStat]:
        strip = len(self._prefix) + 1 if self._prefix else 0
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                yield ObjectStat(item["Key"][strip:], item["Size"], item["LastModified"].timestamp())

    def move_to_trash(self, blob: BlobStat) -> str | None:
        """Copy to the trash key, then delete the blob (S3 has no rename). gc re-reads leases
        afterwards, so a writer that found the blob between the two steps gets it back."""
        source = checked_blob_key(blob)
        key = trash_key(blob.blob_id, blob.codec)
        try:
            self._copy(source, key, blob.stored_size, exclusive=False)
        except FileNotFoundError:
            return None
        self.delete_object(source)
        return key

    def restore_from_trash(self, key: str) -> None:
        """As the interface says; a key that is not a trash key is left alone."""
        parsed = trash_key_blob(key)
        if parsed is None:
            return
        found = self._head(key)
        if found is not None and self.find(parsed[0]) is None:
            try:
                self._copy(key, blob_key(*parsed), found[0], exclusive=True)
            except (FileExistsError, FileNotFoundError):  # put back by another, or gc deleted it
                pass
        self.delete_object(key)

    def delete_leftover(self, key: str) -> bool:
        """No locks on an object store: a temp key is taken for abandoned by its age alone.
        gc offers only keys whose LastModified is older than its grace period (and than a
        minute); a live write holds its temp key only while it copies it to its id."""
        self.delete_object(key)
        return True

    # -- copies and publishing ---------------------------------------------------------

    def _copy(self, source: str, target: str, size: int, *, exclusive: bool) -> None:
        """Server-side copy. `exclusive`: fail with FileExistsError rather than overwrite
        `target` (S3: a multipart copy completed with If-None-Match: *)."""
        if not self.s3:
            if exclusive and self._head(target) is not None:
                raise FileExistsError(target)
            self._generic(self.fs.copy, self._path(source), self._path(target))
            return
        src = {"Bucket": self._bucket, "Key": self._key(source)}
        if not exclusive and size <= COPY_PART:
            self._call("copy_object", Key=self._key(target), CopySource=src)
            return
        upload = self._call("create_multipart_upload", Key=self._key(target))["UploadId"]
        try:
            parts, offset = [], 0
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

    def _complete(self, key: str, upload: str, parts: list[dict], exclusive: bool) -> None:
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

    def _published(self, blob_id: str, codec: str) -> BlobStat:
        """The blob that won a publish race we lost (the caller holds a lease on it)."""
        found = self.find_leased(blob_id)
        if found is None:
            raise DatastoreError(f"blob {blob_id}: the datastore refused to overwrite it, yet it is not there "
                                 f"(deleted meanwhile?); write it again")
        return found


class _S3Ingest(Ingest):
    """Holds up to one part in memory. A blob that never fills a part is published with one
    conditional PUT; a larger one is a multipart upload to a temp key, then a conditional
    multipart copy to its id."""

    def __init__(self, store: FsspecBlobStore):
        self._store = store
        self.key = f"{TMP_PREFIX}/{uuid.uuid4().hex}.partial"
        self._buffer: bytearray | None = bytearray()
        self._upload: str | None = None
        self._parts: list[dict] = []
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
        if self._buffer is None:
            raise ValueError("commit of an ingest that was committed or aborted")
        try:
            return store.publish_unless_stored(
                blob_id, damaged,
                lambda: BlobStat(blob_id, self._size, codec, time.time()) if self._publish(blob_id, codec) else None)
        finally:
            self.abort()

    def _publish(self, blob_id: str, codec: str) -> bool:
        """One create-only publish under the id; False if the id was taken meanwhile (by
        another writer, or put back by gc): the caller looks again."""
        store = self._store
        final = blob_key(blob_id, codec)
        if self._upload is None and not self._tmp_done:
            try:
                store._call("put_object", Key=store._key(final), Body=bytes(self._buffer), IfNoneMatch="*")
            except OSError as exc:
                if isinstance(exc, FileExistsError) or _s3_code(exc) in _EXISTS_CODES:
                    return False
                raise
            return True
        if self._upload is not None:
            if self._buffer:
                self._upload_part(bytes(self._buffer))
                self._buffer.clear()
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


class _FsspecIngest(Ingest):
    """Streams into a temp file of the filesystem, then copies it to its id unless the id is
    there (check-then-copy: see the module's docstring)."""

    def __init__(self, store: FsspecBlobStore):
        self._store = store
        self.key = f"{TMP_PREFIX}/{uuid.uuid4().hex}.partial"
        self._file: Any = store._generic(store.fs.open, store._path(self.key), "wb")
        self._size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError("write to an ingest that was committed or aborted")
        self._file.write(bytes(data))
        self._size += len(data)

    def commit(self, blob_id: str, codec: str, damaged: DamageCheck | None = None) -> tuple[BlobStat, bool]:
        store = self._store
        if self._file is None:
            raise ValueError("commit of an ingest that was committed or aborted")
        try:
            self._file.close()
            self._file = False
            return store.publish_unless_stored(blob_id, damaged, lambda: self._copy_to(blob_id, codec))
        finally:
            self.abort()

    def _copy_to(self, blob_id: str, codec: str) -> BlobStat | None:
        """Copy the uploaded temp key to the blob's key, create-only; None if it is taken."""
        try:
            self._store._copy(self.key, blob_key(blob_id, codec), self._size, exclusive=True)
        except FileExistsError:
            return None
        return self._store._published(blob_id, codec)

    def abort(self) -> None:
        if self._file:
            try:
                self._file.discard() if hasattr(self._file, "discard") else self._file.close()
            except Exception:
                pass
        self._file = None
        try:
            self._store.delete_object(self.key)
        except Exception:
            pass


def _filesystem_class(protocol: str, url: str) -> Any:
    extra = "s3" if protocol in S3_PROTOCOLS else None
    hint = f"pip install 'casstore[{extra}]'" if extra else "install fsspec and the package for this protocol"
    try:
        import fsspec
    except ImportError as exc:
        raise DatastoreError(f"datastore {url} needs fsspec: {hint}") from exc
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise DatastoreError(f"datastore {url} needs the {protocol!r} filesystem: {hint} ({exc})") from exc
    except ValueError as exc:
        raise DatastoreError(f"datastore URL scheme {protocol!r} is not supported: {url}") from exc


def _s3_code(exc: BaseException | None) -> str | None:
    """The S3 error code behind an s3fs exception (s3fs keeps botocore's as the cause)."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _mtime(info: dict) -> float:
    """Modification time of an fsspec info dict; unknown counts as now (gc keeps it)."""
    for name in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return time.time()
