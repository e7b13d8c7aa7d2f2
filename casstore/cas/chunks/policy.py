"""Where a writer cuts a blob into chunks. Only a writer's choice, never part of the format:
a chunk's id is the digest of its bytes and a manifest lists whatever chunks it was cut
into, so datastores and readers work with any policy, and two writers with the same policy
cut the same bytes the same way (which is what makes them share chunks).

The default, and why (docs/datastore.md, "Chunked blobs"):
- Blobs under `whole_below` (1 MiB) stay one object: cut with the sizes below they would be
  one chunk anyway, so a manifest would only add an object and a request.
- The data of a file of `large_file` (4 MiB) or more is cut in fixed `block`s (2 MiB) from
  the file's first byte, apart from its header: the same file under another name, path or
  `arc_dir`, or in another folder, gives the same chunks; a change in place or an append
  re-stores only the blocks it touches. Cutting costs nothing here (content-defined
  chunking costs about as much CPU as the disk write it saves on a first persist).
- Everything else (headers, small files, the padding and the end of the archive) is cut at
  member boundaries chosen by content (`cdc_min`..`cdc_max`, about `cdc_avg`; cutter.py):
  a small file added or removed changes the chunks around it only, not the ones after it.
  A stretch over `cdc_max` between two such cuts, and bytes that are no TAR, are cut by
  FastCDC with the same sizes."""

from __future__ import annotations

from dataclasses import dataclass

from casstore.errors import InvalidInput

MAX_CHUNK_BYTES = 16 << 20
"""The largest chunk a reader accepts (a manifest that names a larger one is corrupt)."""


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    whole_below: int = 1 << 20
    large_file: int = 4 << 20
    block: int = 2 << 20
    cdc_min: int = 256 << 10
    cdc_avg: int = 1 << 20
    cdc_max: int = 4 << 20

    def __post_init__(self) -> None:
        """Bounds of FastCDC (pyfastcdc) and of the readers (MAX_CHUNK_BYTES)."""
        if not 64 <= self.cdc_min <= self.cdc_avg <= self.cdc_max or self.cdc_max < 1024 or self.cdc_avg < 256:
            raise InvalidInput(f"chunk sizes need 64 <= min <= avg <= max, avg >= 256, max >= 1024: {self}")
        if self.cdc_min > 1 << 20 or self.cdc_avg > 4 << 20 or self.cdc_max > MAX_CHUNK_BYTES:
            raise InvalidInput(f"chunk sizes over FastCDC's bounds (min 1 MiB, avg 4 MiB, max 16 MiB): {self}")
        if not 512 <= self.block <= MAX_CHUNK_BYTES or self.large_file < self.block or self.whole_below < 0:
            raise InvalidInput(f"need 512 <= block <= 16 MiB <= ... and large_file >= block: {self}")


DEFAULT_POLICY = ChunkPolicy()


def policy_from(given: object, where: str = "option datastore.chunks") -> ChunkPolicy:
    """The policy a dict of some of ChunkPolicy's fields (byte counts) gives; {} or None: the
    default. InvalidInput names `where` for anything else."""
    if not given:
        return DEFAULT_POLICY
    known = set(ChunkPolicy.__dataclass_fields__)
    if not isinstance(given, dict) or set(given) - known or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in given.values()):
        raise InvalidInput(f"{where} must map some of {', '.join(sorted(known))} to byte counts, got {given!r}")
    return ChunkPolicy(**given)
