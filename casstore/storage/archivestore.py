"""MLtraq's archive classes on casstore's content store.

- `Archive`: a canonical TAR in memory, stored inline in the database (as MLtraq).
- `ArchiveStore`: a folder attached to an experiment field, archived at persist into a blob
  under its content digest, extracted at load into `<archivestore>/<experiment id>/<arc_dir>/`.
- `ArchiveStoreIO`: archives outside experiments, kept alive by a named reference in the
  datastore at `<datastore>/<datastore.relative_path_prefix>/<uuid hex>`."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from shutil import rmtree
from typing import Any, Optional, Union

import zstandard

from casstore import runtime
from casstore.cas.contentstore import BlobInfo
from casstore.cas.extract import Extraction
from casstore.cas.roots import MAX_REF_BYTES
from casstore.cas.tarball import check_arc_dir, scan, tar_bytes
from casstore.errors import BlobNotFound, InvalidInput
from casstore.opts import file_url_to_path, options
from casstore.utils.bunch import Bunch

ARCHIVE_TAG = "mltraq.Archive-0"
ARCHIVESTORE_TAG = "casstore.ArchiveStore-0"
REF_FORMAT = "casstore-ref-1"

Patterns = Union[str, list[str]]


class Archive:
    """An in-memory canonical TAR, stored inline in the database."""

    __slots__ = ("data",)

    @classmethod
    def from_bytes(cls, data: bytes) -> Archive:
        archive = cls.__new__(cls)
        archive.data = bytes(data)
        return archive

    def to_bytes(self) -> bytes:
        return self.data

    @classmethod
    def create(cls, src_dir: str, arc_dir: str = ".", include: Patterns = "**",
               exclude: Optional[Patterns] = None) -> Archive:
        return cls.from_bytes(tar_bytes(scan(src_dir, arc_dir, include, exclude)))

    def extract(self, target: str = ".", members: Optional[list[str]] = None) -> list[str]:
        """Extract into `target` (validated member by member, nothing written if one is unsafe)."""
        with Extraction(target, members) as extraction:
            extraction.stage(io.BytesIO(self.data))
            return extraction.publish()

    def __datapak_encode__(self) -> tuple[str, Any]:
        return ARCHIVE_TAG, self.data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Archive) and other.data == self.data

    def __repr__(self) -> str:
        return f"Archive({len(self.data)} bytes)"


class ArchiveStore:
    """A folder attached to an experiment field. Lazy: nothing is read until persist."""

    __slots__ = ("params", "blob_id", "size")

    def __init__(self, src_dir: str, arc_dir: str = ".", include: Patterns = "**",
                 exclude: Optional[Patterns] = None):
        check_arc_dir(arc_dir)
        if not isinstance(src_dir, (str, os.PathLike)):
            raise InvalidInput(f"src_dir must be a path, got {type(src_dir).__name__}")
        self.params = Bunch(src_dir=os.fspath(src_dir), arc_dir=arc_dir, include=include, exclude=exclude)
        self.blob_id: Optional[str] = None
        self.size: Optional[int] = None

    @classmethod
    def from_ref(cls, value: dict) -> ArchiveStore:
        """An ArchiveStore read back from the database: it holds its blob, not a folder."""
        obj = cls.__new__(cls)
        obj.params = Bunch(arc_dir=value["arc_dir"])
        obj.blob_id = value["blob"]
        obj.size = value.get("size")
        return obj

    @property
    def src_dir(self) -> Optional[str]:
        return self.params.get("src_dir")

    def stored(self, info: BlobInfo) -> None:
        self.blob_id = info.blob_id
        self.size = info.size

    def get_target(self) -> Optional[str]:
        """The folder the archive was extracted into at load (None before a load)."""
        return self.params.get("target", None)

    def __datapak_encode__(self) -> tuple[str, Any]:
        return ARCHIVESTORE_TAG, {"blob": self.blob_id, "arc_dir": self.params.arc_dir, "size": self.size}

    def __repr__(self) -> str:
        where = self.blob_id or self.params.get("src_dir")
        return f"ArchiveStore({where!r}, arc_dir={self.params.arc_dir!r})"


class _BlobTarFile(tarfile.TarFile):
    """A TarFile that also closes the blob file it reads."""

    blob_file: Any = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.blob_file is not None:
                self.blob_file.close()


class ArchiveStoreIO:
    """An archive outside experiments, named by `url` (`file:///<prefix>/<uuid hex>`, MLtraq's
    form) relative to the datastore of the options."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        self.url = url

    @classmethod
    def create(cls, src_dir: str, arc_dir: str = ".", include: Patterns = "**",
               exclude: Optional[Patterns] = None) -> ArchiveStoreIO:
        """Archive `src_dir` now and name it with a new reference in the datastore."""
        check_arc_dir(arc_dir)
        prefix = runtime.checked_prefix("datastore.relative_path_prefix")
        codec, level = runtime.codec_and_level()
        store = runtime.content_store()
        key = f"{prefix.replace(os.sep, '/')}/{uuid.uuid4().hex}"
        with store.lease() as lease:
            info = store.put_dir(src_dir, arc_dir, include, exclude, lease=lease, codec=codec, level=level)
            body = {"format": REF_FORMAT, "blob": info.blob_id, "size": info.size, "arc_dir": arc_dir}
            store.blobs.put_object(key, json.dumps(body).encode())
        return cls(f"file:///{key}")

    def _ref(self) -> dict:
        key = file_url_to_path(self.url).replace(os.sep, "/")
        data = runtime.content_store().blobs.get_object(key, max_bytes=MAX_REF_BYTES)
        if data is None:
            raise BlobNotFound(f"no archive at {self.url} in datastore {runtime.datastore_url()}")
        try:
            body = json.loads(data)
            if body.get("format") != REF_FORMAT:
                raise ValueError(body.get("format"))
            return body
        except (ValueError, AttributeError) as exc:
            raise InvalidInput(f"{self.url} is not a casstore archive reference (a legacy MLtraq TAR? "
                               "run `casstore migrate`)") from exc

    @property
    def blob_id(self) -> str:
        return self._ref()["blob"]

    @classmethod
    def get_target(cls, target: Optional[str] = None) -> str:
        if target:
            return target
        return runtime.archivestore_root() + os.sep + str(options().get("archivestore.relative_path_prefix"))

    def extract(self, target: Optional[str] = None, members: Optional[list[str]] = None) -> ArchiveStoreIO:
        ref = self._ref()
        runtime.content_store().extract(ref["blob"], self.get_target(target), size=ref.get("size"), members=members)
        return self

    def getnames(self, target: Optional[str] = None) -> list[str]:
        ref = self._ref()
        target = self.get_target(target)
        members = runtime.content_store().members(ref["blob"], ref.get("size"))
        return [os.path.normpath(target + os.sep + os.fsdecode(m.name)) for m in members]

    def open(self) -> tarfile.TarFile:
        """A TarFile to read the archive. For zstd blobs it is a stream-mode TarFile
        (mode "r|"): members must be read in order, as with `tar` on a pipe."""
        ref = self._ref()
        f, found = runtime.content_store().blobs.open_blob(ref["blob"])
        if found.codec == "zstd":
            tar = _BlobTarFile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(f), mode="r|")
        else:
            tar = _BlobTarFile.open(fileobj=f, mode="r")
        tar.blob_file = f
        return tar

    @classmethod
    def delete(cls, relative_path_prefix: str) -> None:
        """Remove the extraction folder `<archivestore>/<relative_path_prefix>` (MLtraq's API)."""
        rmtree(runtime.archivestore_root() + os.sep + relative_path_prefix, ignore_errors=True)

    def __repr__(self) -> str:
        return f"ArchiveStoreIO({self.url!r})"
