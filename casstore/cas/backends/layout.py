"""Where everything lives in a datastore: the object keys and prefixes, and their parsers.

Layout of a datastore (docs/datastore.md), the same on every backend:

    casstore/FORMAT                              "casstore-datastore 2" (1: whole blobs only)
    casstore/blobs/<algo>/<hex[:2]>/<hex[2:]>.tar[.zst]   read-only blobs, one file each
    casstore/blobs/<algo>/<hex[:2]>/<hex[2:]>.chunks      read-only blobs, as a manifest of chunks
    casstore/chunks/<algo>/<hex[:2]>/<hex[2:]>[.zst]      read-only chunks (manifest.py)
    casstore/tmp/<random>.partial                ingests in progress (or interrupted)
    casstore/leases/<lease id>.json              blobs a writer is about to reference
    casstore/registry/<key>.json                 databases that reference blobs here
    casstore/damaged/<algo>/<hex>.json           damage a reader saw in a blob (damage.py)
    casstore/trash/<algo>-<hex[:2]>-<hex[2:]><suffix>   blobs gc moved out of sight
    casstore/quarantine/<algo>-<hex><suffix>.<ns>.<uuid hex>   damaged copies a repair moved aside
    casstore/chunk-trash/..., casstore/chunk-quarantine/...     the same for chunks
    <prefix>/<uuid hex>                          named references (ArchiveStoreIO.create)

Every parser matches a key whole: a key is a blob's (or a trash or quarantine key) only if
it is exactly the key of what it parses to, so a planted look-alike is a stranger."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from casstore.cas.digest import id_or_none, parse_id

FORMAT_KEY = "casstore/FORMAT"
WHOLE_FORMAT = b"casstore-datastore 1\n"
CHUNKED_FORMAT = b"casstore-datastore 2\n"
FORMATS = {WHOLE_FORMAT: "whole", CHUNKED_FORMAT: "chunked"}
"""The formats this casstore reads, and how each stores a blob: "whole" (format 1, what
casstore 0.1.0 writes and reads: every blob one `.tar`/`.tar.zst`) or "chunked" (format 2:
blobs may also be manifests of chunks; casstore 0.1.0 refuses to write it)."""
FORMAT_TEXT = CHUNKED_FORMAT  # what a new datastore starts as
MAX_FORMAT_BYTES = 4096
INTERNAL = "casstore"
TMP_PREFIX = f"{INTERNAL}/tmp"
TORN_SUFFIX = ".tmp"
_TORN_INSIDE = re.compile(rf"{INTERNAL}/.+\.[0-9a-f]{{32}}\.tmp")
_TORN_REF = re.compile(r"(?:[^/]+/)*[0-9a-f]{32}\.[0-9a-f]{32}\.tmp")


def is_torn_object(key: str) -> bool:
    """A small object's temp file (`<key>.<uuid hex>.tmp`) that a crash left behind, where
    casstore writes one: anywhere below casstore/ (leases, registry entries, the format
    file), and outside it only a named reference's `<prefix>/<uuid hex>.<uuid hex>.tmp`.
    Anything else outside casstore/ (a user's `notes/results.<hex>.tmp`) is not casstore's."""
    if key.startswith(f"{INTERNAL}/"):
        return _TORN_INSIDE.fullmatch(key) is not None
    return _TORN_REF.fullmatch(key) is not None


@dataclass(frozen=True, slots=True)
class Quarantined:
    key: str
    blob_id: str
    codec: str
    moved: float  # unix time the copy was moved aside
    size: int


@dataclass(frozen=True)
class Namespace:
    """A family of content-addressed objects and where they, their trash and their
    quarantine live: the blobs (`.tar`, `.tar.zst`, and a manifest of chunks `.chunks`) and
    the chunks that manifests name (raw, or one zstd frame `.zst`). Every backend works on
    one namespace (`BlobStore.ns`); the same code publishes, finds, trashes and
    quarantines both."""

    prefix: str
    trash_prefix: str
    quarantine_prefix: str
    suffixes: dict[str, str]
    what: str  # "blob" or "chunk", for messages

    def blob_key(self, blob_id: str, codec: str) -> str:
        algorithm, hexdigest = parse_id(blob_id)
        return f"{self.prefix}/{algorithm}/{hexdigest[:2]}/{hexdigest[2:]}{self.suffixes[codec]}"

    def parse_blob_key(self, key: str) -> tuple[str, str] | None:
        """(id, codec) of a key, None for anything else found under the prefix. A key is
        an object's only if it is exactly the key of what it parses to (`blob_key(...) ==
        key`): `<hex>\\n.tar` or a three-digit shard folder is a stranger, not another name."""
        parts = key.split("/")
        if len(parts) != 5 or "/".join(parts[:2]) != self.prefix:
            return None
        for codec, suffix in sorted(self.suffixes.items(), key=lambda kv: -len(kv[1])):
            if parts[4].endswith(suffix):
                candidate = f"{parts[2]}:{parts[3]}{parts[4][:len(parts[4]) - len(suffix)]}"
                try:
                    canonical = self.blob_key(candidate, codec)
                except ValueError:
                    return None
                return (candidate, codec) if canonical == key else None
        return None

    def trash_key(self, blob_id: str, codec: str) -> str:
        """Where gc keeps an object between moving it out of sight and deleting it."""
        return f"{self.trash_prefix}/{self.blob_key(blob_id, codec).split('/', 2)[2].replace('/', '-')}"

    def trash_key_blob(self, key: str) -> tuple[str, str] | None:
        """(id, codec) of a trash key `<trash>/<algo>-<hex[:2]>-<hex[2:]><suffix>`."""
        name = key.rsplit("/", 1)[-1]
        parts = name.split("-", 2)
        if len(parts) != 3:
            return None
        parsed = self.parse_blob_key(f"{self.prefix}/{parts[0]}/{parts[1]}/{parts[2]}")
        return parsed if parsed is not None and self.trash_key(*parsed) == key else None

    def quarantine_key(self, blob_id: str, codec: str, now_ns: int) -> str:
        """Where a repair keeps a damaged copy it moved aside: the id, the codec and the time it
        was moved (gc's grace period runs from then: a rename keeps the object's old mtime), and
        a random part, so two repairs of one id never collide."""
        algorithm, hexdigest = parse_id(blob_id)
        return f"{self.quarantine_prefix}/{algorithm}-{hexdigest}{self.suffixes[codec]}.{now_ns}.{uuid.uuid4().hex}"

    def parse_quarantine_key(self, key: str, size: int = 0) -> Quarantined | None:
        """The quarantined copy a key names, None for anything else (the whole name must match)."""
        prefix, _, name = key.rpartition("/")
        match = _QUARANTINE_NAME.fullmatch(name) if prefix == self.quarantine_prefix else None
        if match is None:
            return None
        blob_id = id_or_none(match.group(1), match.group(2))
        codecs = [c for c, suffix in self.suffixes.items() if suffix == match.group(3)]
        if blob_id is None or not codecs:
            return None
        return Quarantined(key, blob_id, codecs[0], int(match.group(4)) / 1e9, size)


_QUARANTINE_NAME = re.compile(r"(xxh128|sha256)-([0-9a-f]{32,64})((?:\.[a-z]+){0,2})\.([0-9]{1,20})\.[0-9a-f]{32}")

BLOBS = Namespace(f"{INTERNAL}/blobs", f"{INTERNAL}/trash", f"{INTERNAL}/quarantine",
                  {"none": ".tar", "zstd": ".tar.zst", "chunked": ".chunks"}, "blob")
CHUNKS = Namespace(f"{INTERNAL}/chunks", f"{INTERNAL}/chunk-trash", f"{INTERNAL}/chunk-quarantine",
                   {"none": "", "zstd": ".zst"}, "chunk")
MANIFESTS = Namespace(BLOBS.prefix, BLOBS.trash_prefix, BLOBS.quarantine_prefix, {"chunked": ".chunks"}, "blob")
WHOLES = Namespace(BLOBS.prefix, BLOBS.trash_prefix, BLOBS.quarantine_prefix,
                   {c: s for c, s in BLOBS.suffixes.items() if c != "chunked"}, "blob")
"""The blobs seen through one kind of copy only: a format change publishes a blob's new
copy beside the old one (a publish that looks only at its own kind), checks it, and only
then deletes the old one (format_change.py)."""
BLOBS_PREFIX = BLOBS.prefix
TRASH_PREFIX = BLOBS.trash_prefix
QUARANTINE_PREFIX = BLOBS.quarantine_prefix
CODEC_SUFFIX = BLOBS.suffixes
BULK_PREFIXES = tuple(f"{p}/" for ns in (BLOBS, CHUNKS) for p in (ns.prefix, ns.trash_prefix, ns.quarantine_prefix))
"""What list_small_objects skips: the content-addressed objects, their trash and quarantine."""
blob_key = BLOBS.blob_key
parse_blob_key = BLOBS.parse_blob_key
trash_key = BLOBS.trash_key
trash_key_blob = BLOBS.trash_key_blob
quarantine_key = BLOBS.quarantine_key
parse_quarantine_key = BLOBS.parse_quarantine_key
