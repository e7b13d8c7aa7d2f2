"""Changing how a datastore stores blobs (`casstore format`, docs/datastore.md "Formats").

A datastore's format file says "whole" (format 1: every blob one `.tar`/`.tar.zst`, what
casstore 0.1.0 reads) or "chunked" (format 2: blobs may be manifests of chunks, P13). A new
datastore starts chunked; an existing one changes only here, so that one member of a team
upgrading casstore never locks the others out.

- To chunked: the format file is rewritten (nothing stored needs to change: every whole
  blob stays readable as it is). With `convert`, each whole blob of at least the policy's
  `whole_below` is re-stored as a manifest of chunks.
- To whole: the format file is rewritten first (writers read it before each write, so new
  blobs are written whole from then on); without `convert` this is refused while any blob
  is stored chunked; with it, each manifest is re-stored as one file.

A conversion is per blob and resumable (run it again: what is converted is skipped): the
new copy is published beside the old one (a reader may take either: both are the blob),
read back whole and checked against the id, and only then is the old copy deleted. The blob
is leased meanwhile, so gc leaves both alone. The index facts of this project are updated;
other projects sharing the datastore keep facts of the old copy, which readers and verify
accept for a converted blob (the copy they describe is gone, the new one checks out)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import zstandard

from casstore.cas.backends.base import BlobStat
from casstore.cas.backends.layout import MANIFESTS, WHOLES
from casstore.cas.chunks.manifest import iter_manifest
from casstore.cas.index.engine import cli_command
from casstore.cas.index.facts import BlobFacts
from casstore.cas.index.queries import Index
from casstore.cas.store.codecs import ZSTD_MAX_FRAME_HEADER
from casstore.cas.store.content_store import ContentStore
from casstore.cas.store.copy_checks import rehash_damage
from casstore.cas.progress import Progress
from casstore.cas.store.ingest import TarIngest
from casstore.cas.tar.header import CHUNK
from casstore.cas.tar.write import Sink
from casstore.errors import CasStoreError, CorruptBlob, DatastoreError, InvalidInput

log = logging.getLogger(__name__)

FORMATS = ("chunked", "whole")
ROUNDS = 3  # listings of manifests after switching to whole, for writers that had read "chunked"


@dataclass
class FormatReport:
    format: str
    whole: int = 0  # blobs stored as one file
    chunked: int = 0  # blobs stored as a manifest of chunks
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # blob id -> why it was not converted


def describe(store: ContentStore) -> FormatReport:
    """The datastore's format and how its blobs are stored."""
    store.check_readable()
    report = FormatReport(store.blobs.read_format() or "chunked (new: nothing written yet)")
    kinds: dict[str, set[str]] = {"whole": set(), "chunked": set()}
    for blob in store.blobs.iter_blobs():
        kinds["chunked" if blob.codec == "chunked" else "whole"].add(blob.blob_id)
    report.whole, report.chunked = len(kinds["whole"]), len(kinds["chunked"])
    return report


def change_format(store: ContentStore, target: str, *, convert: bool = False, index: Index | None = None,
                  progress: Callable[[str], None] | None = None) -> FormatReport:
    """Set the datastore's format to `target` ("chunked" or "whole"), converting the blobs
    stored the other way if `convert`. `progress` is told each blob id converted."""
    if target not in FORMATS:
        raise InvalidInput(f"a datastore's format is one of {', '.join(FORMATS)}, not {target!r}")
    store.check_readable()
    blobs = store.blobs
    if target == "whole" and not convert:
        chunked = [b.blob_id for b in blobs.iter_blobs() if b.codec == "chunked"]
        if chunked:
            convert_first = "`casstore format whole --convert`" if index is None else \
                f"`{cli_command(index.engine.url, 'format', 'whole', '--convert', datastore=blobs.url)}`"
            raise InvalidInput(f"{len(chunked)} blob(s) of {blobs.url} are stored chunked (e.g. {chunked[0]}): "
                               f"{convert_first} stores them whole first")
    blobs.ensure_format()
    blobs.set_format(target)
    report = FormatReport(target)
    for _round in range(ROUNDS if target == "whole" else 1):
        todo = [b for b in blobs.iter_blobs() if (b.codec == "chunked") == (target == "whole")]
        if not convert or not todo:
            break
        _convert_all(store, todo, target, index, report, progress)
    final = describe(store)
    report.whole, report.chunked = final.whole, final.chunked
    if target == "whole" and convert and final.chunked and not report.skipped:
        raise DatastoreError(f"{final.chunked} blob(s) were stored chunked while the format changed: a writer "
                             "that started before the change; run the command again once it is done")
    return report


def _convert_all(store: ContentStore, todo: list[BlobStat], target: str, index: Index | None,
                 report: FormatReport, progress: Callable[[str], None] | None) -> None:
    for blob in todo:
        try:
            facts = _to_chunked(store, blob) if target == "chunked" else _to_whole(store, blob)
        except (CasStoreError, OSError) as exc:
            report.skipped[blob.blob_id] = str(exc)
            log.warning("blob %s not converted: %s", blob.blob_id, exc)
            continue
        if facts is None:
            continue
        if index is not None and index.blob_facts(blob.blob_id) is not None:
            index.put_blob_facts(None, [facts])
        report.converted.append(blob.blob_id)
        if progress is not None:
            progress(blob.blob_id)


def _size_of(store: ContentStore, blob: BlobStat) -> int:
    """The TAR size of a stored copy, from the copy itself (other projects' blobs have no
    facts in this index): a `.tar`'s size, the size a `.tar.zst`'s frame records, or a
    manifest's end line."""
    if blob.codec == "none":
        return blob.stored_size
    f, copy = store.blobs.open_copy(blob.blob_id, blob.codec)
    with f:
        if copy.codec == "zstd":
            size = zstandard.get_frame_parameters(f.read(ZSTD_MAX_FRAME_HEADER)).content_size
            if size == zstandard.CONTENTSIZE_UNKNOWN:
                raise CorruptBlob(f"blob {blob.blob_id}: its zstd frame does not record its size")
            return int(size)
        return sum(ref.size for ref in iter_manifest(f, blob.blob_id))


def _to_chunked(store: ContentStore, blob: BlobStat) -> BlobFacts | None:
    size = _size_of(store, blob)
    if size < store.policy.whole_below:
        return None  # under the line a blob stays whole (policy.py)
    with store.lease() as lease:
        lease.add(blob.blob_id)
        chunks_codec = "zstd" if blob.codec == "zstd" else "none"
        ingest = TarIngest(store.blobs.view(MANIFESTS), store.algorithm, lease, None, f"blob {blob.blob_id}")
        facts = ingest.chunked(_copy_of(store, blob.blob_id, size), chunks_codec, 3, store.policy)
        return _checked_then_drop_old(store, facts, blob)


def _to_whole(store: ContentStore, blob: BlobStat) -> BlobFacts | None:
    size = _size_of(store, blob)
    with store.lease() as lease:
        lease.add(blob.blob_id)
        with store.blobs.open_copy(blob.blob_id, "chunked")[0] as f:
            codecs = {ref.codec for ref in iter_manifest(f, blob.blob_id, size)}
        ingest = TarIngest(store.blobs.view(WHOLES), store.algorithm, lease, None, f"blob {blob.blob_id}")
        write = _copy_of(store, blob.blob_id, size)
        facts = ingest.zstd(write, 3) if codecs == {"zstd"} else ingest.plain(write)
        return _checked_then_drop_old(store, facts, blob)


def _checked_then_drop_old(store: ContentStore, facts: BlobFacts, old: BlobStat) -> BlobFacts:
    """Read the new copy back whole; only if it is the blob, delete the old one."""
    if facts.blob_id != old.blob_id:
        raise CorruptBlob(f"blob {old.blob_id} read back as {facts.blob_id}: not converted")
    f, copy = store.blobs.open_copy(facts.blob_id, facts.codec)
    with f:
        wrong = rehash_damage(f, copy, facts.size, store.blobs)
    if wrong is not None:
        raise CorruptBlob(f"blob {old.blob_id}: its new {facts.codec} copy does not check out ({wrong}); "
                          "the old copy is kept")
    store.blobs.delete_blob(old.blob_id, old.codec)
    return facts


def _copy_of(store: ContentStore, blob_id: str, size: int) -> Callable[[Sequence[Sink], Progress | None], int]:
    """A TarWriter that writes the blob's bytes as they are stored now, checked (the copy
    the readers pick; a chunked one through its chunks)."""
    def write(sinks: Sequence[Sink], progress: Progress | None) -> int:
        with store.open_tar(blob_id, size) as reader:
            while data := reader.read(CHUNK):
                for sink in sinks:
                    sink.write(data)
                if progress is not None:
                    progress(len(data))
            reader.verify()
            return reader.count
    return write
