"""Short ids, as git takes them: a blob or an experiment named by the first 8 or more hex
digits of its id, when no other blob (among those the index names) or experiment starts
with them. Resolved here, by a query of the index; the library's id parser
(casstore.cas.digest.parse_id) takes only whole ids. Unknown or ambiguous: one line, exit 3."""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING, Iterable

from casstore.cli.app import Unusable

if TYPE_CHECKING:
    from casstore.cas.index.queries import ExperimentRecord, Index

MIN_DIGITS = 8
ALGORITHMS = ("xxh128", "sha256")
_SHORT = re.compile(r"(?:(xxh128|sha256):)?([0-9a-f]{%d,})" % MIN_DIGITS)
_FULL = re.compile(r"(xxh128:[0-9a-f]{32}|sha256:[0-9a-f]{64})")


def resolve_blob(index: Index, text: str) -> str:
    """The whole blob id `text` names: a whole id as it is, else the one blob the index
    names whose id starts with it (`08f8e669`, `xxh128:08f8e669`)."""
    if _FULL.fullmatch(text):
        return text
    match = _SHORT.fullmatch(text.lower())
    if match is None:
        raise Unusable(f"not a blob id: {text!r} (expected 'xxh128:' + 32 hex digits, or its first "
                       f"{MIN_DIGITS} or more hex digits)")
    algorithms = [match.group(1)] if match.group(1) else list(ALGORITHMS)
    found = [b for a in algorithms for b in index.blob_ids_with_prefix(f"{a}:{match.group(2)}")]
    return _one(found, text, "blob")


def is_blob_id(text: str) -> bool:
    """Whether `text` reads as a blob id or a prefixed short one (`xxh128:08f8e669`)."""
    match = _SHORT.fullmatch(text.lower())
    return _FULL.fullmatch(text) is not None or (match is not None and match.group(1) is not None)


def resolve_experiment(index: Index, text: str) -> ExperimentRecord:
    """The experiment named `text`, else the one with that id, else the one whose id starts
    with its 8 or more hex digits (dashes aside)."""
    from casstore.errors import ExperimentNotFound
    from casstore.session import find_experiment

    try:
        return find_experiment(index, text)
    except ExperimentNotFound as exc:
        digits = text.lower().replace("-", "")
        if not re.fullmatch(r"[0-9a-f]{%d,32}" % MIN_DIGITS, digits):
            raise Unusable(str(exc)) from exc
        found = [str(i) for i, _ in index.list_experiments() if i.hex.startswith(digits)]
        if not found:
            raise Unusable(str(exc)) from exc
    import uuid

    record = index.get_experiment(id_experiment=uuid.UUID(_one(found, text, "experiment")))
    assert record is not None  # listed just now; a delete meanwhile reads as not found
    return record


def short_ids(ids: Iterable[str], known: Iterable[str]) -> dict[str, str]:
    """For each of `ids` (blob or experiment ids), its shortest hex prefix of at least
    MIN_DIGITS digits that no other of `known` shares."""
    digits = sorted({_hex(k) for k in known} | {_hex(i) for i in ids})
    result: dict[str, str] = {}
    for value in ids:
        h = _hex(value)
        at = bisect.bisect_left(digits, h)
        neighbours = [digits[j] for j in (at - 1, at + 1) if 0 <= j < len(digits)]
        length = max([MIN_DIGITS] + [_common(h, n) + 1 for n in neighbours])
        result[value] = h[:length]
    return result


def _hex(value: str) -> str:
    return value.split(":", 1)[-1].replace("-", "")


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _one(found: list[str], text: str, kind: str) -> str:
    if not found:
        raise Unusable(f"no {kind} in the index has an id that starts with {text!r}")
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise Unusable(f"{text!r} is ambiguous: {len(found)} {kind}s' ids start with it ({shown}); give more digits")
    return found[0]
