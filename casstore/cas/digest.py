"""Blob ids: `<algorithm>:<hex digest>` of a blob's canonical, uncompressed TAR bytes.

The default is XXH3-128 (fast: the hash must never be what a user waits on). Its prefix
leaves room for `sha256`, collision-resistant, for datastores shared with writers one does
not trust."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import xxhash

from casstore.errors import InvalidInput

DEFAULT_ALGORITHM = "xxh128"

_HEX_LENGTH = {"xxh128": 32, "sha256": 64}
_ID_RE = re.compile(r"(xxh128|sha256):([0-9a-f]+)")


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Hasher:
    """A fresh hasher for `algorithm`."""
    if algorithm == "xxh128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise InvalidInput(f"unknown digest algorithm {algorithm!r} (known: {', '.join(_HEX_LENGTH)})")


def format_id(algorithm: str, hexdigest: str) -> str:
    return f"{algorithm}:{hexdigest}"


def hasher_id(hasher: Hasher, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The blob id of what `hasher` has seen."""
    return format_id(algorithm, hasher.hexdigest())


def parse_id(blob_id: object) -> tuple[str, str]:
    """Split and validate a blob id, matched whole (a trailing newline is not part of an id);
    InvalidInput if it is not one."""
    match = _ID_RE.fullmatch(blob_id) if isinstance(blob_id, str) else None
    if match is None or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
        raise InvalidInput(f"not a blob id: {blob_id!r} (expected e.g. 'xxh128:' + 32 hex digits)")
    return match.group(1), match.group(2)


def checked_id(value: object) -> str:
    """`value` if it is a blob id (a value read from a field or a reference may be anything);
    InvalidInput if not."""
    parse_id(value)
    assert isinstance(value, str)  # parse_id accepts only a str
    return value


def id_or_none(algorithm: str, hexdigest: str) -> str | None:
    """The blob id of an algorithm and hex digest found in a key, None if they make none."""
    blob_id = format_id(algorithm, hexdigest)
    try:
        parse_id(blob_id)
    except InvalidInput:
        return None
    return blob_id


def digest_bytes(data: bytes | bytearray | memoryview, algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The blob id of `data` (in-memory archives)."""
    hasher = new_hasher(algorithm)
    hasher.update(memoryview(data))
    return hasher_id(hasher, algorithm)


class DigestSink:
    """A writable sink that hashes what it is given: put it beside a file in a tee."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM):
        self.algorithm = algorithm
        self._hasher = new_hasher(algorithm)

    def write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def blob_id(self) -> str:
        return hasher_id(self._hasher, self.algorithm)
