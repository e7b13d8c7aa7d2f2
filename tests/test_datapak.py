"""Tests of casstore.mltraq.datapak: MLtraq's DataPak field encoding."""

from __future__ import annotations

import copyreg
import enum
import io
import os
import pickle
import struct
import uuid
import zlib
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casstore.errors import InvalidInput, UnsupportedValue
from casstore.mltraq import datapak
from casstore.mltraq.datapak import KEY_MAGIC, Opaque, decode, dumps, encode, loads, safe_unpickle
from casstore.utils.bunch import Bunch

# Written by MLtraq 0.1.165 (DataPakSerializer.serialize, cloudpickle 3.1.3) for
#   Bunch(a=1, b=[1.5, "x", None, True, b"\x00\x01"], c=(1, (2, 3)),
#         d={"k": {3, 4}, 7: uuid.UUID(int=5)}, arr=np.arange(3, dtype=np.int64),
#         t=np.datetime64("2024-01-02T17:16:15.12345", "us"), big=2**100, nested=Bunch(z="y"))
MLTRAQ_BYTES = bytes.fromhex(
    "800595c5010000000000007d94288c094441544150414b2d30948c0e6d6c747261712e42756e63682d30948c"
    "0576616c7565947d94288c0161944b018c0162945d9428473ff80000000000008c0178944e88430200019465"
    "8c0163944b014b024b03869486948c0164947d94288c016b948f94284b034b04904b077d942868018c0b7575"
    "69642e555549442d309468038c20303030303030303030303030303030303030303030303030303030303030"
    "30359475758c03617272947d942868018c0f6e756d70792e6e6461727261792d309468034398934e554d5059"
    "010076007b276465736372273a20273c6938272c2027666f727472616e5f6f72646572273a2046616c73652c"
    "20277368617065273a2028332c292c207d202020202020202020202020202020202020202020202020202020"
    "2020202020202020202020202020202020202020202020202020202020202020200a00000000000000000100"
    "000000000000020000000000000094758c0174947d942868018c126e756d70792e6461746574696d6536342d"
    "309468038a07fa97e5a7f90d06758c03626967948a0d000000000000000000000000108c066e657374656494"
    "7d94286801680268037d948c017a948c017994737575752e"
)

# Written by MLtraq 0.1.165 with serialization.compression.codec = "zlib" for
#   Bunch(a=1, u=uuid.UUID(int=7), s="hello" * 20)
MLTRAQ_ZLIB_BYTES = bytes.fromhex(
    "433031789c6b609d7a8701026aa768f470ba38863806387aeb1a4ce9e1cbcd29294a2cd4732acd4bce0009b0"
    "9625e694a64e01a9634c9ce2cdd8c3580ae26430f670979666a6e885867aba00d56530f72818e007e6534a7b"
    "188ba7f4a464a4e6e4e4d39898525aaa0700dc6f50f2"
)


def strict(value: Any) -> Any:
    """A comparable form of `value` that tells apart types that `==` mixes up
    (Bunch/dict, True/1, 0.0/-0.0) and that also compares dict order."""
    kind = type(value)
    if kind in (dict, Bunch, OrderedDict):
        return (kind.__name__, tuple((strict(k), strict(v)) for k, v in value.items()))
    if kind in (list, tuple):
        return (kind.__name__, tuple(strict(v) for v in value))
    if kind is set:
        return ("set", frozenset(strict(v) for v in value))
    if kind is float:
        return ("float", value.hex())
    return (kind.__name__, value)


class Tagged:
    """A rich object using the __datapak_encode__ protocol."""

    def __init__(self, payload: Any):
        self.payload = payload

    def __datapak_encode__(self) -> tuple[str, object]:
        return "test.Tagged-0", self.payload


# --------------------------------------------------------------------------- encode


def test_bunch_encodes_as_mltraq_bunch_tag():
    assert encode(Bunch(a=1, b="x")) == {KEY_MAGIC: "mltraq.Bunch-0", "value": {"a": 1, "b": "x"}}


def test_uuid_encodes_as_hex_string_tag():
    value = uuid.UUID(int=42)
    assert encode(value) == {KEY_MAGIC: "uuid.UUID-0", "value": value.hex}


def test_plain_containers_keep_their_type():
    encoded = encode({"l": [1], "t": (2,), "s": {3}})
    assert strict(encoded) == strict({"l": [1], "t": (2,), "s": {3}})


def test_dict_subclass_other_than_bunch_encodes_as_plain_dict():
    encoded = encode(OrderedDict(a=1))
    assert type(encoded) is dict and encoded == {"a": 1}


def test_values_nested_in_containers_are_encoded():
    value = uuid.UUID(int=1)
    assert encode([(value,)]) == [({KEY_MAGIC: "uuid.UUID-0", "value": value.hex},)]


def test_object_with_datapak_encode_is_tagged_and_its_value_encoded():
    encoded = encode(Tagged(Bunch(x=1)))
    assert encoded == {KEY_MAGIC: "test.Tagged-0", "value": {KEY_MAGIC: "mltraq.Bunch-0", "value": {"x": 1}}}


def test_unsupported_value_names_its_path():
    fields = Bunch(model={"weights": complex(1, 2)})
    with pytest.raises(UnsupportedValue, match=r"^fields\.model\.weights: type complex cannot be stored$"):
        encode(fields, path="fields")


def test_unsupported_value_path_goes_through_lists_and_odd_keys():
    with pytest.raises(UnsupportedValue, match=r"^value\.runs\[1\]\['a b'\]: type object cannot be stored$"):
        encode({"runs": [1, {"a b": object()}]})


def test_unsupported_value_names_the_dotted_type():
    with pytest.raises(UnsupportedValue, match=r"type fractions\.Fraction cannot be stored"):
        dumps({"x": __import__("fractions").Fraction(1, 3)})


def test_scalar_subclass_is_refused():
    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(UnsupportedValue, match="Color cannot be stored"):
        encode([Color.RED])


def test_dict_key_that_is_not_plain_is_refused():
    with pytest.raises(UnsupportedValue, match=r"value\.x: dict key frozenset\(\{1\}\) of type frozenset"):
        encode({"x": {frozenset({1}): 1}})


def test_tuple_dict_key_with_non_plain_item_is_refused():
    with pytest.raises(UnsupportedValue, match="dict key"):
        encode({(1, uuid.UUID(int=1)): 1})


def test_set_item_that_is_not_plain_is_refused():
    with pytest.raises(UnsupportedValue, match="set item"):
        encode({uuid.UUID(int=1)})


def test_magic_key_in_a_dict_is_refused():
    with pytest.raises(UnsupportedValue, match="reserved"):
        encode(Bunch({KEY_MAGIC: "x", "value": 1}))


def test_self_containing_list_is_refused():
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(UnsupportedValue, match="nested too deeply"):
        encode(looped)


# --------------------------------------------------------------------------- decode


def test_bunch_and_uuid_tags_decode_to_objects():
    value = uuid.UUID(int=9)
    decoded = decode({KEY_MAGIC: "mltraq.Bunch-0", "value": {"u": {KEY_MAGIC: "uuid.UUID-0", "value": value.hex}}})
    assert type(decoded) is Bunch and decoded.u == value


def test_other_tags_decode_as_opaque():
    decoded = decode({KEY_MAGIC: "numpy.ndarray-0", "value": b"\x93NUMPY"})
    assert decoded == Opaque("numpy.ndarray-0", b"\x93NUMPY")


def test_decoders_mapping_decodes_its_tag_from_the_raw_value():
    seen = []

    def decoder(raw: Any) -> str:
        seen.append(raw)
        return "decoded"

    raw = {KEY_MAGIC: "mltraq.Bunch-0", "value": {}}
    decoded = decode([{KEY_MAGIC: "mltraq.ArchiveStore-0", "value": raw}], {"mltraq.ArchiveStore-0": decoder})
    assert decoded == ["decoded"] and seen == [raw]


def test_decoders_mapping_takes_precedence_over_builtin_tags():
    decoded = decode({KEY_MAGIC: "uuid.UUID-0", "value": "00"}, {"uuid.UUID-0": str.upper})
    assert decoded == "00"


def test_malformed_tagged_dict_is_invalid():
    with pytest.raises(InvalidInput, match="malformed tagged value"):
        decode({KEY_MAGIC: "mltraq.Bunch-0"})


def test_bunch_tag_holding_a_non_dict_is_invalid():
    with pytest.raises(InvalidInput, match="not dict"):
        decode({KEY_MAGIC: "mltraq.Bunch-0", "value": [1]})


def test_invalid_uuid_hex_is_invalid():
    with pytest.raises(InvalidInput, match="invalid UUID"):
        decode({KEY_MAGIC: "uuid.UUID-0", "value": "not-hex"})


def test_decode_refuses_non_plain_types():
    with pytest.raises(InvalidInput, match=r"value\[0\]: type bytearray is not a DataPak value"):
        decode([bytearray(b"x")])


# --------------------------------------------------------------------------- Opaque


def test_opaque_encodes_back_to_the_tagged_dict_it_came_from():
    raw = {KEY_MAGIC: "pandas.DataFrame-0", "value": b"feather"}
    assert encode(Opaque("mltraq.Sequence-0", raw)) == {KEY_MAGIC: "mltraq.Sequence-0", "value": raw}


def test_opaque_repr_names_the_tag():
    assert repr(Opaque("numpy.ndarray-0", b"")) == "Opaque('numpy.ndarray-0')"


def test_opaque_equality_compares_tag_and_value():
    assert Opaque("a", 1) == Opaque("a", 1)
    assert Opaque("a", 1) != Opaque("a", 2)
    assert Opaque("a", 1) != Opaque("b", 1)


# --------------------------------------------------------------------------- bytes


def test_dumps_is_an_uncompressed_protocol_5_pickle_of_the_encoding():
    value = Bunch(a=[1, 2], u=uuid.UUID(int=3))
    data = dumps(value)
    assert data[:2] == b"\x80\x05" and data == pickle.dumps(encode(value), protocol=5)


def test_loads_reads_what_mltraq_wrote():
    value = loads(MLTRAQ_BYTES)
    assert strict(value) == strict(
        Bunch(
            a=1,
            b=[1.5, "x", None, True, b"\x00\x01"],
            c=(1, (2, 3)),
            d={"k": {3, 4}, 7: uuid.UUID(int=5)},
            arr=value.arr,
            t=value.t,
            big=2**100,
            nested=Bunch(z="y"),
        )
    )
    assert value.arr.tag == "numpy.ndarray-0" and value.t == Opaque("numpy.datetime64-0", 1704215775123450)


def test_dumps_writes_mltraq_bytes_back_identically():
    assert dumps(loads(MLTRAQ_BYTES)) == MLTRAQ_BYTES


def test_loads_reads_mltraq_zlib_compressed_bytes():
    assert loads(MLTRAQ_ZLIB_BYTES) == Bunch(a=1, u=uuid.UUID(int=7), s="hello" * 20)


def test_loads_decompresses_c01_zlib_prefix():
    value = Bunch(a=[1, 2, 3], b="x" * 100)
    assert loads(b"C01" + zlib.compress(dumps(value))) == value


def test_c01_prefix_that_is_not_zlib_is_read_as_plain_pickle():
    # SHORT_BINBYTES ("C") of 0x30 bytes, then STOP: a pickle that starts with b"C01".
    data = b"C0" + b"1" + b"x" * 47 + b"."
    assert loads(data) == b"1" + b"x" * 47


def test_zlib_data_that_inflates_past_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(datapak, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    bomb = b"C01" + zlib.compress(dumps(bytes(4 << 20)), 9)  # a few KB that inflate to 4 MiB
    with pytest.raises(InvalidInput, match="decompresses to more than 1048576 bytes"):
        loads(bomb)


def test_loads_accepts_bytearray_and_memoryview():
    data = dumps({"a": 1})
    assert loads(bytearray(data)) == loads(memoryview(data)) == {"a": 1}


def test_huge_int_round_trips():
    # Pickled with LONG4, an opcode MLtraq's own whitelist forgets.
    assert loads(dumps(2**5000)) == 2**5000


def test_loads_passes_decoders_on():
    data = dumps(Bunch(store=Opaque("mltraq.ArchiveStore-0", "file:///x/ab")))
    assert loads(data, {"mltraq.ArchiveStore-0": lambda url: ("store", url)}).store == ("store", "file:///x/ab")


def test_safe_unpickle_returns_the_plain_structure_undecoded():
    data = dumps(Bunch(u=uuid.UUID(int=1)))
    assert safe_unpickle(data) == {KEY_MAGIC: "mltraq.Bunch-0", "value": {"u": encode(uuid.UUID(int=1))}}


def test_pickle_referencing_os_system_is_refused(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", calls.append)
    data = b"\x80\x05cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(InvalidInput, match="refusing"):
        loads(data)
    assert calls == []


def test_pickle_of_a_class_instance_is_refused():
    with pytest.raises(InvalidInput, match="refusing"):
        safe_unpickle(pickle.dumps({"x": Tagged(1)}, protocol=5))


def test_unpickler_refuses_globals_on_its_own(monkeypatch):
    # The same hostile pickle, given straight to the unpickler (no opcode check first).
    calls = []
    monkeypatch.setattr(os, "system", calls.append)
    data = b"\x80\x05cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(InvalidInput, match=r"global os\.system"):
        datapak._NoGlobalsUnpickler(io.BytesIO(data)).load()
    assert calls == []


def test_pickle_using_a_cached_copyreg_extension_is_refused():
    # EXT2 fetches objects from copyreg's process-wide cache without calling find_class.
    calls = []
    code = 0x7A7A
    copyreg.add_extension("casstore_test_module", "casstore_test_name", code)
    copyreg._extension_cache[code] = calls.append  # type: ignore[attr-defined]
    try:
        data = b"\x80\x05\x83" + struct.pack("<H", code) + b"K\x01\x85R."
        with pytest.raises(InvalidInput, match="EXT2"):
            loads(data)
    finally:
        copyreg.remove_extension("casstore_test_module", "casstore_test_name", code)
    assert calls == []


@pytest.mark.parametrize("value", [bytearray(b"x"), frozenset({1})])
def test_pickle_of_non_plain_builtin_types_is_refused(value):
    with pytest.raises(InvalidInput):
        loads(pickle.dumps([value], protocol=5))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x80\x05\x95",
        dumps({"a": [1, 2, 3]})[:-3],
        b"C01" + zlib.compress(dumps({"a": 1}))[:-4],
        b"\x80\x05h\x07.",  # BINGET of a memo entry that does not exist
        b"\x80\x05}]K\x01s.",  # a dict with a list as key
    ],
    ids=["empty", "garbage", "truncated-frame", "truncated", "truncated-zlib", "bad-memo", "unhashable-key"],
)
def test_corrupt_bytes_raise_invalid_input(data):
    with pytest.raises(InvalidInput, match="DataPak data"):
        loads(data)


def test_non_bytes_input_is_invalid():
    with pytest.raises(InvalidInput, match="must be bytes"):
        loads("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_text = st.text(max_size=8).filter(lambda s: s != KEY_MAGIC)
_keys = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _text, st.binary(max_size=8)),
    lambda inner: st.tuples(inner, inner),
    max_leaves=4,
)


def _values(with_sets: bool) -> st.SearchStrategy[Any]:
    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        options = [
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(_keys, inner, max_size=4),
            st.dictionaries(_text, inner, max_size=4).map(Bunch),
        ]
        if with_sets:
            options.append(st.sets(_keys, max_size=4))
        return st.one_of(options)

    return st.recursive(st.one_of(_keys, st.uuids()), containers, max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_values(with_sets=True))
def test_encode_then_decode_gives_back_the_value(value):
    assert strict(decode(encode(value))) == strict(value)


@settings(max_examples=300, deadline=None)
@given(_values(with_sets=True))
def test_dumps_then_loads_gives_back_the_value(value):
    assert strict(loads(dumps(value))) == strict(value)


@settings(max_examples=300, deadline=None)
@given(_values(with_sets=False))
def test_loaded_values_dump_to_the_same_bytes(value):
    # Sets are left out: the order a set is pickled in may change when it is rebuilt.
    data = dumps(value)
    assert dumps(loads(data)) == data


_plain = st.recursive(
    _keys,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: t not in ("mltraq.Bunch-0", "uuid.UUID-0")), _plain)
def test_opaque_values_dump_to_the_same_bytes(tag, raw):
    # As MLtraq's rows are: written from values whose equal one-character strings are
    # CPython's shared objects (see the memo limit in datapak's docstring), hence the
    # loads/dumps normalisation of the original before it is compared.
    data = pickle.dumps(pickle.loads(pickle.dumps({"f": {KEY_MAGIC: tag, "value": raw}}, protocol=5)), protocol=5)
    loaded = loads(data)
    assert loaded == {"f": Opaque(tag, raw)}
    assert dumps(loaded) == data


def test_opaque_value_equal_to_a_key_may_redump_with_a_memo_reference():
    """The limit, shown: a pickle holding two distinct but equal strings re-dumps sharing
    one (pickle memo); the value is the same, the bytes differ."""
    distinct_f = "".join(["f"])[:]  # an equal string, possibly another object
    data = pickle.dumps({"f": {KEY_MAGIC: "", "value": distinct_f}}, protocol=5)
    loaded = loads(data)
    assert loaded == {"f": Opaque("", "f")}
    assert pickle.loads(dumps(loaded)) == pickle.loads(data)
