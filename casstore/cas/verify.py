"""verify: is every referenced blob there and intact, and what could gc reclaim?

Damage (`problems`): a referenced blob missing; a stored size that disagrees with the index;
a second copy (the other codec) that disagrees with the facts; damage a load or an earlier
`--deep` recorded and no writer has repaired yet; with `deep`, content that does not hash
to its id or whose uncompressed size is wrong; an archive that does not read; an index row
without blob facts, or with facts no writer records; fields and reference rows that name
different blobs, and fields that do not decode; a file in the blobs folder whose name is
not a blob's, or in the chunks folder not a chunk's (`foreign`: gc never deletes it,
someone must look); a named reference that ArchiveStoreIO refuses (`reference`); a chunked
blob whose manifest does not read (`unreadable`) or names chunks that are not stored
(`chunk`; with `deep`, also chunks whose bytes do not match their ids), reported for every
blob that uses them. Reclaimable: blobs nothing references, chunks no manifest names,
temp files of interrupted writes, expired leases, damaged copies a repair moved into the
quarantine, reference rows of experiments that no longer exist."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from casstore.cas.backends.base import BlobStat, ObjectStat
from casstore.cas.backends.layout import CODEC_SUFFIX
from casstore.cas.damage import DAMAGE_PREFIX, DamageRecord, clear_damage, describes, parse_damage_key, read_damage
from casstore.cas.index.engine import cli_command
from casstore.cas.index.facts import BlobFacts, facts_of
from casstore.cas.index.queries import Index, RefListing, field_label
from casstore.cas.chunk_census import ChunkCensus, census
from casstore.cas.live.refs import named_refs
from casstore.cas.live.roots import FieldRoot, FieldRoots
from casstore.cas.reclaim import Reclaimable, reclaimable, stored_copies
from casstore.cas.store.chunk_io import chunk_store
from casstore.cas.store.content_store import ContentStore
from casstore.cas.store.copy_checks import StoredFacts, cheap_damage, rehash_damage
from casstore.cas.verify_sample import Sample, SamplePlan, SampleReport, plan_sample, rehash_chunks
from casstore.errors import CorruptBlob, FieldsUnreadable, InvalidInput, UnsafeArchive

log = logging.getLogger(__name__)
Referrer = tuple[str | None, str | None]  # (experiment id, field) or (None, named reference key)


@dataclass(frozen=True)
class _Commands:
    """The commands verify's messages suggest, on this database and datastore."""

    gc: str
    deep: str


@dataclass(frozen=True)
class Problem:
    kind: str
    blob: str
    experiment: str | None
    field: str | None
    detail: str


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    reclaimable: list[Reclaimable] = field(default_factory=list)
    blobs_checked: int = 0
    sample: SampleReport | None = None  # the part a sampled deep verify re-hashed


def verify(index: Index, store: ContentStore, *, field_roots: FieldRoots, deep: bool = False,
           progress: Callable[[int], None] | None = None, sample: Sample | None = None) -> VerifyReport:
    """`field_roots` decodes the fields (roots.FieldRoots): every archive value they hold is
    compared with the reference rows, and its blob checked. With `deep` and a `sample`
    (verify_sample.Sample), only a random part of the objects is re-hashed; every cheap
    check still covers every blob, and `report.sample` says which part."""
    if sample is not None and not deep:
        raise InvalidInput("a sample is a part to re-hash: it needs deep=True (`--deep`)")
    store.check_readable()
    report = VerifyReport()
    strangers: list[ObjectStat] = []
    copies = stored_copies(store, strangers)
    damaged: dict[str, str] = {}
    facts = {f.blob_id: f for f in index.iter_blob_facts(damaged)}
    orphaned = index.orphaned_refs()
    rows = list(index.iter_refs())  # the orphaned rows are not among them
    try:
        roots: list[FieldRoot] | None = list(field_roots(index))
    except FieldsUnreadable as exc:
        report.problems.append(Problem("fields", "-", None, None, str(exc)))
        roots = None
    if roots is not None:
        report.problems += _disagreements(rows, roots)
    referenced: dict[str, Referrer] = {}
    for ref in rows:
        referenced.setdefault(ref.blob_id, (str(ref.id_experiment), ref.label))
    for root in roots or []:
        referenced.setdefault(root.blob_id, (root.experiment, field_label(root.field, root.id_run)))
    refused: dict[str, str] = {}  # blob id -> why ArchiveStoreIO refuses a reference naming it
    for named in named_refs(store.blobs):
        if named.blob_id is None:
            continue
        referenced.setdefault(named.blob_id, (None, named.key))
        if named.problem is not None:
            refused.setdefault(named.blob_id, f"named reference {named.key} {named.problem}; ArchiveStoreIO refuses it")
        if named.blob_id not in facts and named.size is not None:
            _named_facts(facts, named.blob_id, named.size, named.facts, copies.get(named.blob_id))
    chunks = census(store.blobs, [c for found in copies.values() for c in found if c.codec == "chunked"])
    strangers += chunks.strangers
    trashed = {o.key.rsplit("/", 1)[-1] for o in store.blobs.iter_trash()}
    quarantined = {q.blob_id for q in store.blobs.iter_quarantine()}
    recorded = _damage_recorded(store)
    run = _Commands(cli_command(index.engine.url, "gc", datastore=store.blobs.url),
                    cli_command(index.engine.url, "verify", "--deep", datastore=store.blobs.url))
    plan = _plan(store, sample, deep, referenced, copies, facts, chunks)
    for blob_id, (experiment, fld) in sorted(referenced.items()):
        known = facts.get(blob_id)
        found = copies.get(blob_id, [])
        described = _described(found, known)
        rehash = deep and (plan is None or blob_id in plan.whole)
        problem = ("facts", damaged[blob_id]) if blob_id in damaged else \
            _check_blob(store, blob_id, described, known, rehash, progress, trashed, blob_id in quarantined, run) \
            or _check_chunks(chunks, blob_id, found, rehash, run) \
            or _check_other_copies(store, [c for c in found if c is not described], known, rehash) \
            or (None if rehash else _check_recorded(store, blob_id, described, recorded, run)) \
            or (("reference", refused[blob_id]) if blob_id in refused else None)
        if problem is not None:
            report.problems.append(Problem(problem[0], blob_id, experiment, fld, problem[1]))
        elif rehash:
            _drop_refuted_records(store, blob_id if blob_id in recorded else None, chunks.recorded.get(blob_id, []))
        report.blobs_checked += 1
    if plan is not None:
        report.sample = plan.report
        report.problems += _sampled_chunk_damage(store, plan, referenced, report.problems, progress)
    report.problems += [Problem("foreign", "", None, None, f"{o.key!r} is not a blob casstore wrote (a name no blob has, "
                                "or not a regular file): "
                                "it is never read and gc never deletes it; remove it once you know where it came from")
                        for o in strangers]
    if roots is not None:  # else gc refuses: nothing is reclaimable
        report.reclaimable = reclaimable(index, store, field_roots, copies, chunks)
        report.reclaimable += [Reclaimable("orphaned_ref", r.blob_id, None, 0, 0.0) for r in orphaned]
    return report


def _plan(store: ContentStore, sample: Sample | None, deep: bool, referenced: dict[str, Referrer],
          copies: dict[str, list[BlobStat]], facts: dict[str, BlobFacts], chunks: ChunkCensus) -> SamplePlan | None:
    if sample is None or not deep:
        return None
    described = {b: d for b in referenced if (d := _described(copies.get(b, []), facts.get(b))) is not None}
    return plan_sample(store.blobs, sample, described, chunks.stored)


def _sampled_chunk_damage(store: ContentStore, plan: SamplePlan, referenced: dict[str, Referrer],
                          found: list[Problem], progress: Callable[[int], None] | None) -> list[Problem]:
    """The picked chunks no whole re-hash read, each re-hashed once: damage to every
    referenced blob that uses it and has no other problem."""
    reported = {p.blob for p in found}
    problems = []
    for blob_id, detail in sorted(rehash_chunks(store.blobs, plan, progress).items()):
        if blob_id not in reported:
            experiment, fld = referenced[blob_id]
            problems.append(Problem("chunk", blob_id, experiment, fld, detail))
    return problems


def _named_facts(facts: dict[str, BlobFacts], blob_id: str, size: int, named: StoredFacts | None,
                 found: list[BlobStat] | None) -> None:
    """The facts of a blob only a named reference (with a size) names, from the copy readers
    read: the one the reference records (codec and stored size, since issue 11) if it is
    there, else the first one, as readers fall back to it (a repair by a writer with another
    codec or level leaves the reference's facts stale, not the blob damaged)."""
    recorded = [c for c in found or [] if named is not None
                and (c.codec, c.stored_size) == (named.codec, named.stored_size)]
    copies = recorded or found
    if copies:
        facts[blob_id] = facts_of(copies[0], size)


def _disagreements(rows: list[RefListing], roots: list[FieldRoot]) -> list[Problem]:
    """Each (experiment, run, field) whose archive value in the fields and reference row
    do not name the same blob: a load reads the fields, gc and stats the rows."""
    named: dict[tuple[str, str, str], set[str]] = {}
    for root in roots:
        named.setdefault((root.experiment, root.id_run, root.field), set()).add(root.blob_id)
    recorded = {(str(r.id_experiment), r.id_run, r.field): r.blob_id for r in rows}
    problems = []
    for key in sorted(named.keys() | recorded.keys()):
        in_fields, in_row = sorted(named.get(key, ())), recorded.get(key)
        if in_fields == [in_row]:
            continue
        if in_row is None:
            blob, detail = in_fields[0], f"the fields name blob {in_fields[0]}; no reference row (casstore_refs) does"
        elif not in_fields:
            blob, detail = in_row, f"the reference row names blob {in_row}; the fields hold no archive there"
        else:
            blob = in_fields[0]
            detail = f"the fields name blob {', '.join(in_fields)}; the reference row names {in_row}"
        problems.append(Problem("refs", blob, key[0], field_label(key[2], key[1]), detail))
    return problems


def _described(copies: list[BlobStat], known: BlobFacts | None) -> BlobStat | None:
    """The copy the index facts describe (a writer records the copy it found or wrote), else
    the one readers use; None if there is none."""
    if known is not None:
        for copy in copies:
            if copy.codec == known.codec:
                return copy
    return copies[0] if copies else None


def _check_blob(store: ContentStore, blob_id: str, found: BlobStat | None, known: BlobFacts | None,
                deep: bool, progress: Callable[[int], None] | None, trashed: set[str],
                quarantined: bool, run: _Commands) -> tuple[str, str] | None:
    if found is None:
        hint = f" (it is in the trash of an interrupted gc: run `{run.gc}` to restore it)" \
            if any(blob_id.split(":")[1][2:] in t for t in trashed) else \
            " (a damaged copy of it is in casstore/quarantine: persist the folder again to store it)" \
            if quarantined else ""
        return "missing", f"blob not in the datastore{hint}"
    if known is None:
        return "facts", "the index has no facts (size, codec) for this referenced blob"
    if (known.codec == "chunked") != (found.codec == "chunked"):
        pass  # converted by `casstore format` since these facts were written (format_change.py)
    elif known.stored_size != found.stored_size:
        return "size", f"stored size {found.stored_size} bytes, index says {known.stored_size}"
    elif known.codec != found.codec:
        return "facts", f"stored as {found.codec}, index says {known.codec}"
    if deep:
        return _rehash(store, blob_id, known, progress)
    return None


def _damage_recorded(store: ContentStore) -> set[str]:
    """The ids with a damage record, from one listing of the records' folder."""
    return {b for o in store.blobs.list_objects(DAMAGE_PREFIX) if (b := parse_damage_key(o.key)) is not None}


def _drop_refuted_records(store: ContentStore, blob_id: str | None, chunk_ids: list[str]) -> None:
    """`--deep` re-read every copy of the blob, through every chunk of a chunked one, and
    each read correctly: the damage recorded for the blob and for those chunks (a false
    record, or a repair interrupted before it dropped it) is refuted."""
    targets = [(store.blobs, blob_id)] if blob_id is not None else []
    targets += [(chunk_store(store.blobs), chunk_id) for chunk_id in chunk_ids]
    for namespace, key in targets:
        try:
            clear_damage(namespace, key)
        except OSError as exc:  # a read-only datastore: the record stays, verify says so again
            log.warning("could not drop the damage record of %s: %s", key, exc)


def _check_recorded(store: ContentStore, blob_id: str, copy: BlobStat | None,
                    recorded: set[str], run: _Commands) -> tuple[str, str] | None:
    """Damage a load or an earlier `--deep` recorded for the copy that is there now."""
    record: DamageRecord | None = read_damage(store.blobs, blob_id) if blob_id in recorded and copy else None
    if record is None or copy is None or not describes(record, copy):
        return None
    return "damaged", (f"a read found it damaged ({record.reason}: {record.detail}); persisting the folder "
                       f"again repairs it, `{run.deep}` checks it again")


def _check_other_copies(store: ContentStore, others: list[BlobStat], known: BlobFacts | None,
                        deep: bool) -> tuple[str, str] | None:
    """A second copy of a referenced blob (the other codec, left by two writers racing or
    planted) that fails the facts: readers that do not know the facts could take it."""
    for copy in others:
        try:
            f, copy = store.blobs.open_copy(copy.blob_id, copy.codec)
        except CorruptBlob as exc:
            return "copy", f"second copy ({CODEC_SUFFIX[copy.codec]}): {exc}"
        except FileNotFoundError:
            continue
        size = known.size if known else None
        with f:
            wrong = cheap_damage(f, copy, size, None, store.blobs) or (rehash_damage(f, copy, size, store.blobs) if deep else None)
        if wrong is not None:
            return "copy", f"second copy ({CODEC_SUFFIX[copy.codec]}) is damaged: {wrong}"
    return None


def _rehash(store: ContentStore, blob_id: str, known: BlobFacts,
            progress: Callable[[int], None] | None) -> tuple[str, str] | None:
    size = known.size
    try:
        with store.open_tar(blob_id, size, known) as reader:
            reader.verify()
            if progress is not None:
                progress(reader.count)
    except CorruptBlob as exc:
        return exc.reason, str(exc)
    try:
        store.members(blob_id, size, known)
    except (CorruptBlob, UnsafeArchive) as exc:
        return "unreadable", str(exc)
    return None


def _check_chunks(chunks: ChunkCensus, blob_id: str, copies: list[BlobStat], deep: bool,
                  run: _Commands) -> tuple[str, str] | None:
    """A manifest of the blob that does not read, or names chunks that are not stored (or
    not of the size it gives), or (without `deep`, whose re-read decides) chunks a read
    found damaged: damage to the blob, though its manifest is intact."""
    if not any(c.codec == "chunked" for c in copies):
        return None
    if blob_id in chunks.unreadable:
        return "unreadable", chunks.unreadable[blob_id]
    lacking = chunks.missing.get(blob_id)
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        return "chunk", (f"its manifest names {len(lacking)} chunk(s) not stored (or not of the size it gives): "
                         f"{', '.join(lacking[:3])}{more}; persisting the folder again stores them")
    recorded = chunks.recorded.get(blob_id)
    if recorded and not deep:
        return "chunk", (f"a read found its chunk(s) {', '.join(recorded[:3])} damaged; persisting the folder again "
                         f"repairs them, `{run.deep}` checks them again")
    return None
