"""du: per experiment, the datastore bytes its archives take, shared and exclusive.

An experiment's blobs are the blobs its reference rows name, and those of the named
references in its folder of the datastore (an MLtraq-form project's archives, refs.owned_refs). What they take in the
datastore is counted in stored units: a blob stored whole is one unit (its file); a
chunked blob is its manifest plus each of its chunks, counted once however many blobs use
a chunk (P13, as stats counts them). A unit is exclusive to an experiment when no other
experiment of the project and no named reference (ArchiveStoreIO) uses it: the exclusive
bytes are what deleting the experiment would free, once gc ran. Other projects sharing the
datastore are not read here (gc reads them, and keeps what they reference). Knows nothing
of printing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, select

from casstore.cas.chunk_census import chunks_of, stored_chunks
from casstore.cas.index.models import BlobRow, RefRow
from casstore.cas.index.queries import Index
from casstore.cas.live.refs import owned_refs
from casstore.cas.store.content_store import ContentStore

Unit = tuple[str, str]  # ("blob", blob id) for a whole blob or a manifest, ("chunk", chunk id)
STANDALONE = "standalone"  # the holder of the named references' units


@dataclass(frozen=True)
class ExperimentUsage:
    id_experiment: uuid.UUID
    name: str
    archives: int  # reference rows (archive fields, its runs' included)
    logical_bytes: int  # uncompressed archive bytes summed over its references
    stored_bytes: int  # datastore bytes of the units its blobs use, each once
    shared_bytes: int  # of stored_bytes, the units something else uses too
    exclusive_bytes: int  # of stored_bytes, the units only it uses: what deleting it would free
    missing_blobs: int  # its blobs the datastore does not hold
    blobs: list[str] = field(default_factory=list)  # the distinct blob ids it references


@dataclass(frozen=True)
class Usage:
    experiments: list[ExperimentUsage]  # by name
    stored_bytes: int  # the project's units, each once
    exclusive_bytes: int  # summed over experiments: what deleting every one would free of it


def project_usage(index: Index, store: ContentStore) -> Usage:
    """The usage of every experiment of the project at `index`, read from `store`."""
    names: dict[uuid.UUID, str] = {i: n for i, n in index.list_experiments()}
    archives: dict[uuid.UUID, int] = dict.fromkeys(names, 0)
    logical: dict[uuid.UUID, int] = dict.fromkeys(names, 0)
    blobs: dict[uuid.UUID, set[str]] = {i: set() for i in names}
    for ref in index.iter_refs():
        archives[ref.id_experiment] += 1
        logical[ref.id_experiment] += ref.size or 0
        blobs[ref.id_experiment].add(ref.blob_id)
    owned, others = owned_refs(store.blobs, set(names))
    for owner, named in owned:  # an MLtraq-form project's archives (refs.owned_refs)
        if named.blob_id is not None and named.blob_id not in blobs[owner]:
            archives[owner] += 1
            logical[owner] += named.size or 0
            blobs[owner].add(named.blob_id)
    standalone = {r.blob_id for r in others if r.blob_id is not None}
    sizes, units = _units(store, set().union(standalone, *blobs.values()))
    holders: dict[Unit, set[str]] = {}
    for holder, held in [(STANDALONE, standalone)] + [(str(i), b) for i, b in blobs.items()]:
        for unit in {u for blob_id in held for u in units.get(blob_id, ())}:
            holders.setdefault(unit, set()).add(holder)
    found = [_usage(i, names[i], archives[i], logical[i], blobs[i], units, sizes, holders)
             for i in sorted(names, key=lambda i: (names[i], str(i)))]
    project = {u for b in blobs.values() for blob_id in b for u in units.get(blob_id, ())}
    return Usage(found, sum(sizes[u] for u in project), sum(u.exclusive_bytes for u in found))


def first_stored(index: Index) -> dict[uuid.UUID, float]:
    """Per experiment, when the first of the blobs its references name was stored (the facts
    rows' creation time, epoch seconds); experiments without archives are left out."""
    query = (select(RefRow.id_experiment, func.min(BlobRow.created))
             .join(BlobRow, BlobRow.blob_id == RefRow.blob_id).group_by(RefRow.id_experiment))
    with index.engine.connect() as conn:
        return {r[0]: float(r[1]) for r in conn.execute(query) if r[1] is not None}


def _usage(id_experiment: uuid.UUID, name: str, archives: int, logical: int, blobs: set[str],
           units: dict[str, set[Unit]], sizes: dict[Unit, int], holders: dict[Unit, set[str]]) -> ExperimentUsage:
    used = {u for blob_id in blobs for u in units.get(blob_id, ())}
    stored = sum(sizes[u] for u in used)
    exclusive = sum(sizes[u] for u in used if holders[u] == {str(id_experiment)})
    return ExperimentUsage(id_experiment, name, archives, logical, stored, stored - exclusive, exclusive,
                           missing_blobs=sum(1 for b in blobs if b not in units), blobs=sorted(blobs))


def _units(store: ContentStore, blob_ids: set[str]) -> tuple[dict[Unit, int], dict[str, set[Unit]]]:
    """The stored bytes of each unit, and the units of each stored blob (missing ones left out)."""
    sizes: dict[Unit, int] = {}
    units: dict[str, set[Unit]] = {}
    chunks = None
    for blob_id in sorted(blob_ids):
        found = store.blobs.find(blob_id)
        if found is None:
            continue
        sizes[("blob", blob_id)] = found.stored_size
        units[blob_id] = {("blob", blob_id)}
        if found.codec == "chunked":
            chunks = stored_chunks(store.blobs) if chunks is None else chunks
            for chunk_id in chunks_of(store.blobs, found) & chunks.keys():
                sizes[("chunk", chunk_id)] = chunks[chunk_id].stored_size
                units[blob_id].add(("chunk", chunk_id))
    return sizes, units
