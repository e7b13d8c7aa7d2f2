"""A random subset of the stored objects for `verify --deep` to re-hash, for datastores too
large to re-read at once (as restic's `check --read-data-subset`).

The objects are those a deep verify reads: every referenced blob stored whole, and every
distinct chunk the manifests of the referenced chunked blobs name. A sample is a percentage
of their number (`10%`: the first tenth of them, rounded up, in a shuffled order) or a
budget of stored bytes (`2GiB`: objects in that order while they fit). The order is a
shuffle by `random.Random(seed)` of the objects sorted by id, so the same seed over the same
datastore picks the same objects: the report gives the seed to repeat a run, and a run
with another seed checks another part. The cheap checks (existence, sizes, manifests)
still cover every blob; only the re-reading is sampled."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from casstore.cas.backends.base import BlobStat, BlobStore
from casstore.cas.chunk_census import stored_chunks
from casstore.cas.chunks.manifest import ChunkRef, iter_manifest
from casstore.cas.store.chunk_io import chunk_store, read_chunk
from casstore.errors import BlobNotFound, CorruptBlob, InvalidInput

_SPEC = re.compile(r"(\d+(?:\.\d+)?)\s*(%|[KMGT]i?B|[KMGT]|B)?", re.IGNORECASE)
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


@dataclass(frozen=True)
class Sample:
    """Which part to re-hash: `percent` of the objects, or `budget` stored bytes; `seed`
    None draws one (the report gives it)."""

    percent: float | None = None
    budget: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.budget is None):
            raise InvalidInput("a sample is a percentage or a byte budget, one of them")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise InvalidInput(f"a sample's percentage must be over 0 and at most 100, got {self.percent}")
        if self.budget is not None and self.budget <= 0:
            raise InvalidInput(f"a sample's byte budget must be over 0, got {self.budget}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidInput(f"a sample's seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def parse(cls, text: str, seed: int | None = None) -> Sample:
        """'10%', '0.5%', '2GiB', '500MB', '2G' (K, M, G, T alone are binary) -> a Sample."""
        match = _SPEC.fullmatch(text.strip()) if isinstance(text, str) else None
        unit = (match.group(2) or "") if match else ""
        if match is None or not unit:
            raise InvalidInput(f"not a sample: {text!r} (examples: 10%, 0.5%, 2GiB, 500MB)")
        if unit == "%":
            return cls(percent=float(match.group(1)), seed=seed)
        return cls(budget=int(Decimal(match.group(1)) * _UNITS[unit.lower()]), seed=seed)

    def describe(self) -> str:
        """The part as `parse` reads it back: '10%', '2147483648B'."""
        if self.percent is None:
            return f"{self.budget}B"
        digits = format(Decimal(repr(self.percent)), "f")  # every digit that makes it this float, no exponent
        return f"{digits.removesuffix('.0')}%"


@dataclass(frozen=True)
class SampleReport:
    """Which part a sampled deep verify re-hashed: `objects` of `objects_total` (blobs stored
    whole and chunks), `bytes` of `bytes_total` stored bytes, picked with `seed`."""

    spec: str
    seed: int
    objects: int
    objects_total: int
    bytes: int
    bytes_total: int


@dataclass
class SamplePlan:
    """The objects picked: the blobs to re-hash whole (those stored whole, and chunked
    ones whose every chunk was picked), and the other picked chunks, each with the
    referenced blobs that use it."""

    report: SampleReport
    whole: set[str] = field(default_factory=set)
    chunks: dict[str, ChunkRef] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)  # chunk id -> blob ids


@dataclass(frozen=True)
class _Object:
    kind: str  # "blob" or "chunk"
    object_id: str
    stored: int


def plan_sample(blobs: BlobStore, sample: Sample, described: dict[str, BlobStat],
                stored: dict[str, BlobStat] | None = None) -> SamplePlan:
    """Pick the objects of the referenced blobs `described` (blob id -> the copy verify
    checks); `stored`: the stored chunks by id, if the caller listed them (ChunkCensus). A
    chunked blob's manifest that does not read names no chunk here (verify reports it)."""
    seed = sample.seed if sample.seed is not None else random.SystemRandom().randrange(1 << 32)
    stored = stored if stored is not None else stored_chunks(blobs)
    objects: dict[tuple[str, str], _Object] = {}
    refs: dict[str, ChunkRef] = {}
    users: dict[str, set[str]] = {}
    chunks_of: dict[str, set[str]] = {}
    for blob_id, copy in described.items():
        if copy.codec != "chunked":
            objects[("blob", blob_id)] = _Object("blob", blob_id, copy.stored_size)
            continue
        chunks_of[blob_id] = set()
        for ref in _manifest(blobs, copy):
            if ref.chunk_id in stored:
                refs.setdefault(ref.chunk_id, ref)
                users.setdefault(ref.chunk_id, set()).add(blob_id)
                chunks_of[blob_id].add(ref.chunk_id)
                objects[("chunk", ref.chunk_id)] = _Object("chunk", ref.chunk_id, stored[ref.chunk_id].stored_size)
    picked = _pick(sorted(objects.values(), key=lambda o: (o.kind, o.object_id)), sample, seed)
    picked_chunks = {o.object_id for o in picked if o.kind == "chunk"}
    whole = {o.object_id for o in picked if o.kind == "blob"}
    whole |= {b for b, ids in chunks_of.items() if ids and ids <= picked_chunks}
    covered = {c for b in whole for c in chunks_of.get(b, ())}
    report = SampleReport(sample.describe(), seed, len(picked), len(objects), sum(o.stored for o in picked),
                          sum(o.stored for o in objects.values()))
    return SamplePlan(report, whole, {c: refs[c] for c in sorted(picked_chunks - covered)},
                      {c: sorted(users[c]) for c in picked_chunks - covered})


def rehash_chunks(blobs: BlobStore, plan: SamplePlan, progress: Callable[[int], None] | None) -> dict[str, str]:
    """Re-hash each picked chunk no whole re-hash reads: blob id -> what is wrong with the
    first damaged chunk it uses (a chunk's damage is damage to every blob that uses it)."""
    chunks = chunk_store(blobs)
    damaged: dict[str, str] = {}
    for chunk_id, ref in sorted(plan.chunks.items()):
        users = plan.users[chunk_id]
        try:
            read_chunk(chunks, ref, users[0])
        except CorruptBlob as exc:
            detail = str(exc).removeprefix(f"blob {users[0]}: ")
            for blob_id in users:
                damaged.setdefault(blob_id, f"{detail} (a sampled chunk)")
        if progress is not None:
            progress(ref.size)
    return damaged


def _pick(ordered: list[_Object], sample: Sample, seed: int) -> list[_Object]:
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    if sample.percent is not None:
        return shuffled[:math.ceil(len(shuffled) * sample.percent / 100)]
    picked, spent = [], 0
    for obj in shuffled:
        if spent + obj.stored <= (sample.budget or 0):
            picked.append(obj)
            spent += obj.stored
    return picked


def _manifest(blobs: BlobStore, copy: BlobStat) -> list[ChunkRef]:
    try:
        f, _found = blobs.open_copy(copy.blob_id, "chunked")
    except (BlobNotFound, CorruptBlob):
        return []
    try:
        with f:
            return list(iter_manifest(f, copy.blob_id))
    except (CorruptBlob, OSError):
        return []
