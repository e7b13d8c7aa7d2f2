"""MLtraq's archive classes on casstore's content store.

- `Archive`: a canonical TAR in memory, stored inline in the database (as MLtraq).
- `ArchiveStore`: a folder attached to an experiment field, archived at persist into a blob
  under its content digest, extracted at load into `<archivestore>/<experiment id>/<arc_dir>/`.
- `ArchiveStoreIO`: archives outside experiments, kept alive by a named reference in the
  datastore at `<datastore>/<datastore.relative_path_prefix>/<uuid hex>`."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable
from shutil import rmtree
from typing import TYPE_CHECKING, Any, BinaryIO, Optional, Union

from casstore import stores
from casstore.cas.backends.urls import file_url_to_path
from casstore.cas.digest import parse_id
from casstore.cas.index.facts import BlobFacts
from casstore.cas.live.refs import MAX_REF_BYTES, NamedRef, RefFacts, named_ref_data, parse_named_ref
from casstore.cas.store.no_space import no_space
from casstore.cas.tar.extract import Extraction
from casstore.cas.tar.read import list_members
from casstore.cas.tar.scan import Entry, check_arc_dir, check_extractable, scan
from casstore.cas.tar.write import tar_bytes
from casstore.errors import (BlobNotFound, CorruptBlob, CorruptReference, InvalidInput, UnreadableObject,
                             UnsafeArchive)
from casstore.mltraq import datapak
from casstore.opts import options
from casstore.utils.bunch import Bunch

ARCHIVE_TAG = "mltraq.Archive-0"
ARCHIVESTORE_TAG = datapak.TAG_CASSTORE_ARCHIVESTORE
SPOOL_IN_MEMORY = 8 << 20  # open(): archives up to this size are checked into memory, larger into a temp file
TARFILE_FILTERS = ("data", "tar", "fully_trusted")

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

Patterns = Union[str, list[str]]
Members = Optional[Iterable[Union[str, tarfile.TarInfo]]]


def member_names(members: Members, names_in_archive: Callable[[], Iterable[str]]) -> Optional[list[str]]:
    """The names of `members` as MLtraq's extract takes them (tarfile's `extractall`):
    names, or the TarInfo objects `open().getmembers()` returns. A name that is not in the
    archive raises KeyError, with tarfile's message, before anything is extracted (tarfile
    raises it when it reaches that name, after extracting the ones before)."""
    if members is None:
        return None
    names = [m.name if isinstance(m, tarfile.TarInfo) else m for m in members]
    if names:
        present = set(names_in_archive())
        missing = [n for n in names if not isinstance(n, str) or n.rstrip("/") not in present]
        if missing:
            raise KeyError(f"filename {missing[0]!r} not found")
    return names


def _names_of(stream: BinaryIO) -> list[str]:
    return [os.fsdecode(m.name) for m in list_members(stream)]


def _extract_stream(stream: BinaryIO, target: str, members: Optional[list[str]]) -> list[str]:
    """Extract TAR bytes that need no digest check (in memory, or already checked).
    `members=[]` extracts nothing and leaves `target` untouched, as tarfile does."""
    if members == []:
        return []
    with no_space(f"into {target}"), Extraction(target, members) as extraction:
        extraction.stage(stream)
        return extraction.publish()


class Archive:
    """An in-memory canonical TAR, stored inline in the database."""

    __slots__ = ("data",)
    data: bytes

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

    def extract(self, target: str = ".", members: Members = None) -> list[str]:
        """Extract into `target` (validated member by member, nothing written if one is unsafe);
        `members` as MLtraq takes them (`member_names`)."""
        names = member_names(members, lambda: _names_of(io.BytesIO(self.data)))
        return _extract_stream(io.BytesIO(self.data), target, names)

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
    def from_ref(cls, value: dict[str, Any]) -> ArchiveStore:
        """An ArchiveStore read back from the database: it holds its blob, not a folder."""
        obj = cls.__new__(cls)
        obj.params = Bunch(arc_dir=value["arc_dir"])
        obj.blob_id = value["blob"]
        obj.size = value.get("size")
        return obj

    @property
    def src_dir(self) -> Optional[str]:
        return self.params.get("src_dir")

    def scan_for(self, target: str) -> list[Entry]:
        """The members of the folder (`scan`), refused with InvalidInput if one could not be
        extracted into `target` (a name component over NAME_MAX, a path over PATH_MAX)."""
        entries = scan(self.params.src_dir, self.params.arc_dir, self.params.include, self.params.exclude)
        check_extractable(entries, target)
        return entries

    def stored(self, info: BlobFacts) -> None:
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


class _CheckedTarFile(tarfile.TarFile):
    """The TarFile of ArchiveStoreIO.open: it reads a temp copy of the archive whose digest
    was checked, and extracts with casstore's member validation (the Extraction of
    casstore/cas/tar/extract.py, as ArchiveStoreIO.extract), never with tarfile's own
    extraction code: its filters had bypasses until Python 3.11.13 (CVE-2025-4517 and
    siblings). The `filter` argument may name one of tarfile's filters, and is ignored:
    casstore's rules, at least as strict as "data", always apply."""

    spool: Any = None

    def extractall(self, path: StrOrBytesPath = ".", members: Optional[Iterable[Union[str, tarfile.TarInfo]]] = None, *,
                   numeric_owner: bool = False, filter: Any = None) -> None:
        names = None if members is None else [self._name(m) for m in members]
        self._extract(os.fsdecode(path or "."), names, filter)

    def extract(self, member: Union[str, tarfile.TarInfo], path: StrOrBytesPath = "", set_attrs: bool = True, *,
                numeric_owner: bool = False, filter: Any = None) -> None:
        self._extract(os.fsdecode(path or "."), [self._name(member)], filter)

    def _extract_member(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafeArchive("this TarFile extracts only through extract() and extractall(), with casstore's checks")

    def _name(self, member: Union[str, tarfile.TarInfo]) -> str:
        return self.getmember(member.name if isinstance(member, tarfile.TarInfo) else member).name

    def _extract(self, path: str, names: Optional[list[str]], filter: Any) -> None:
        if filter is not None and filter not in TARFILE_FILTERS:
            raise InvalidInput(f"filter must be None or one of {', '.join(TARFILE_FILTERS)} (casstore validates "
                               f"members itself), got {filter!r}")
        position = self.spool.tell()
        try:
            self.spool.seek(0)
            _extract_stream(self.spool, path, names)
        finally:
            self.spool.seek(position)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.spool is not None:
                self.spool.close()


class ArchiveStoreIO:
    """An archive outside experiments, named by `url` (`file:///<prefix>/<uuid hex>`, MLtraq's
    form) relative to the datastore of the options.

    The named reference at `url` is not authenticated: anyone who can write the datastore can
    point it at other content. Give `blob_id` (the `blob_id` of the object `create` returned)
    to pin the content: reads then refuse, with CorruptReference, a reference that names
    another blob. Without it, what is read is whatever blob the reference names now (its
    bytes always match that id)."""

    __slots__ = ("url", "_blob_id")

    def __init__(self, url: str, blob_id: Optional[str] = None):
        self.url = url
        if blob_id is not None:
            parse_id(blob_id)
        self._blob_id = blob_id

    @classmethod
    def create(cls, src_dir: str, arc_dir: str = ".", include: Patterns = "**",
               exclude: Optional[Patterns] = None) -> ArchiveStoreIO:
        """Archive `src_dir` now and name it with a new reference in the datastore. The
        object returned is pinned to the blob it stored. A folder with a member that could
        not be extracted into `get_target()` is refused (InvalidInput) before anything is written."""
        check_arc_dir(arc_dir)
        prefix = stores.checked_prefix("datastore.relative_path_prefix")
        codec, level = stores.codec_and_level()
        entries = scan(src_dir, arc_dir, include, exclude)
        check_extractable(entries, os.path.abspath(cls.get_target()))
        store = stores.content_store()
        key = f"{prefix.replace(os.sep, '/')}/{uuid.uuid4().hex}"
        with store.lease() as lease:
            info = store.put_dir(src_dir, arc_dir, include, exclude, lease=lease, codec=codec, level=level,
                                 scanned=entries)
            facts = RefFacts(info.stored_size, info.codec)
            store.blobs.put_object(key, named_ref_data(info.blob_id, info.size, facts, arc_dir))
        return cls(f"file:///{key}", blob_id=info.blob_id)

    def _ref(self) -> NamedRef:
        """The reference at `url`, as gc reads it (refs.parse_named_ref), refused unless it
        names a valid blob id (the pinned one, if pinned) with a valid size."""
        key = file_url_to_path(self.url).replace(os.sep, "/")
        store = stores.content_store()
        store.check_readable()
        blobs = store.blobs
        data = blobs.get_object(key, max_bytes=MAX_REF_BYTES)
        if data is None:
            raise BlobNotFound(f"no archive at {self.url} in datastore {stores.datastore_url()}")
        if blobs.through_symlink(key):
            raise UnreadableObject(f"{self.url} is reached through a symlinked folder of datastore "
                                   f"{stores.datastore_url()}, where gc never looks: its blob is not kept alive, "
                                   "so it is not read (move the reference into a real folder)")
        ref = parse_named_ref(key, data)
        if ref is None:
            raise InvalidInput(f"{self.url} is not a casstore archive reference (a legacy MLtraq TAR? "
                               "run `casstore migrate`)")
        if self._blob_id is not None and ref.blob_id is not None and ref.blob_id != self._blob_id:
            raise CorruptReference(f"named reference {self.url} names blob {ref.blob_id}, not {self._blob_id} that "
                                   "this archive is pinned to: someone who can write the datastore rewrote it")
        if ref.problem is not None:
            raise CorruptReference(f"named reference {self.url} {ref.problem}")
        return ref

    def _blob(self) -> tuple[str, int, Optional[RefFacts]]:
        """The blob id, size and stored-copy facts of the reference at `url` (`_ref`)."""
        ref = self._ref()
        assert ref.blob_id is not None and ref.size is not None  # else the reference has a problem
        return ref.blob_id, ref.size, ref.facts

    @property
    def blob_id(self) -> str:
        """The blob this archive reads: the pinned one, else the one its reference names."""
        return self._blob_id or self._blob()[0]

    @classmethod
    def get_target(cls, target: Optional[str] = None) -> str:
        if target:
            return target
        return stores.archivestore_root() + os.sep + str(options().get("archivestore.relative_path_prefix"))

    def extract(self, target: Optional[str] = None, members: Members = None) -> ArchiveStoreIO:
        """Extract into `target` (default: `get_target()`). `members` as MLtraq takes them:
        names or TarInfo objects, a name not in the archive raises KeyError before anything
        is extracted, and `[]` extracts nothing (no target is made)."""
        blob_id, size, facts = self._blob()
        store = stores.content_store()
        names = member_names(members, lambda: (os.fsdecode(m.name) for m in store.members(blob_id, size, facts)))
        if names != []:
            store.extract(blob_id, self.get_target(target), size=size, members=names, recorded=facts)
        return self

    def getnames(self, target: Optional[str] = None) -> list[str]:
        blob_id, size, facts = self._blob()
        target = self.get_target(target)
        members = stores.content_store().members(blob_id, size, facts)
        return [os.path.normpath(target + os.sep + os.fsdecode(m.name)) for m in members]

    def open(self) -> tarfile.TarFile:
        """A TarFile to read the archive, over a copy whose digest and size were checked
        first: in memory up to 8 MiB, beyond in a file of the system temp folder (TMPDIR),
        which needs room for the uncompressed archive. Its extract() and extractall()
        validate members as ArchiveStoreIO.extract does."""
        blob_id, size, facts = self._blob()
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            stores.content_store().copy_checked(blob_id, size, spool, facts)
            spool.seek(0)
            tar = _CheckedTarFile.open(fileobj=spool, mode="r:")
        except tarfile.TarError as exc:
            spool.close()
            raise CorruptBlob(f"blob {blob_id} does not read as a TAR: {exc}") from exc
        except BaseException:
            spool.close()
            raise
        tar.spool = spool
        return tar

    @classmethod
    def delete(cls, relative_path_prefix: str) -> None:
        """Remove the extraction folder `<archivestore>/<relative_path_prefix>` (MLtraq's API)."""
        rmtree(stores.archivestore_root() + os.sep + relative_path_prefix, ignore_errors=True)

    def __repr__(self) -> str:
        pinned = "" if self._blob_id is None else f", blob_id={self._blob_id!r}"
        return f"ArchiveStoreIO({self.url!r}{pinned})"
