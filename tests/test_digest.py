"""Blob ids (casstore/cas/digest.py): `<algorithm>:<hex digest>` of a blob's canonical TAR
bytes. What `parse_id` accepts, and that every way of hashing the same bytes gives one id."""

from __future__ import annotations

import hashlib

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from casstore.cas.digest import DigestSink, checked_id, digest_bytes, id_or_none, new_hasher, parse_id
from casstore.errors import InvalidInput

HEX_LENGTH = {"xxh128": 32, "sha256": 64}
algorithms = st.sampled_from(sorted(HEX_LENGTH))
lower_hex = st.text(alphabet="0123456789abcdef")


@given(algorithms, st.data())
def test_parse_id_splits_an_algorithm_and_its_length_of_lower_hex(algorithm, data):
    hexdigest = data.draw(st.text(alphabet="0123456789abcdef", min_size=HEX_LENGTH[algorithm],
                                  max_size=HEX_LENGTH[algorithm]))
    assert parse_id(f"{algorithm}:{hexdigest}") == (algorithm, hexdigest)


@given(st.text(max_size=80))
def test_parse_id_accepts_exactly_a_known_algorithm_colon_its_length_of_lower_hex(text):
    algorithm, _, hexdigest = text.partition(":")
    wanted = (algorithm in HEX_LENGTH and len(hexdigest) == HEX_LENGTH[algorithm]
              and all(c in "0123456789abcdef" for c in hexdigest))
    if wanted:
        assert parse_id(text) == (algorithm, hexdigest)
    else:
        with pytest.raises(InvalidInput):
            parse_id(text)


@given(algorithms, lower_hex)
def test_a_hex_digest_of_another_length_is_not_an_id(algorithm, hexdigest):
    if len(hexdigest) == HEX_LENGTH[algorithm]:
        hexdigest += "0"
    with pytest.raises(InvalidInput):
        parse_id(f"{algorithm}:{hexdigest}")


@pytest.mark.parametrize("value", [None, 128, b"xxh128:" + b"0" * 32, ["xxh128:" + "0" * 32],
                                   "XXH128:" + "0" * 32, "xxh128:" + "A" * 32])
def test_checked_id_refuses_what_is_not_an_id_string(value):
    with pytest.raises(InvalidInput):
        checked_id(value)


@given(st.binary())
def test_checked_id_returns_a_digest_as_it_is(data):
    blob_id = digest_bytes(data)
    assert checked_id(blob_id) is blob_id


@given(algorithms, lower_hex)
def test_id_or_none_is_the_id_exactly_when_parse_id_accepts_it(algorithm, hexdigest):
    blob_id = f"{algorithm}:{hexdigest}"
    expected = blob_id if len(hexdigest) == HEX_LENGTH[algorithm] else None
    assert id_or_none(algorithm, hexdigest) == expected


def test_id_or_none_of_an_unknown_algorithm_is_none():
    assert id_or_none("md5", "0" * 32) is None


@given(st.binary(max_size=4096))
def test_digest_bytes_is_the_algorithms_own_hex_digest(data):
    assert digest_bytes(data) == "xxh128:" + xxhash.xxh3_128(data).hexdigest()
    assert digest_bytes(data, "sha256") == "sha256:" + hashlib.sha256(data).hexdigest()


@given(algorithms, st.lists(st.binary(max_size=512), max_size=20))
def test_digest_sink_over_any_chunking_equals_digest_bytes_of_the_whole(algorithm, chunks):
    sink = DigestSink(algorithm)
    for n, chunk in enumerate(chunks):
        sink.write(memoryview(chunk) if n % 2 else chunk)
    assert sink.blob_id() == digest_bytes(b"".join(chunks), algorithm)


@given(st.binary(max_size=4096))
def test_every_digest_is_an_id(data):
    for algorithm in HEX_LENGTH:
        assert parse_id(digest_bytes(data, algorithm))[0] == algorithm


def test_an_unknown_algorithm_has_no_hasher():
    with pytest.raises(InvalidInput, match="unknown digest algorithm"):
        new_hasher("md5")
