"""Bunch: an OrderedDict whose items are also attributes (MLtraq's mltraq.utils.bunch.Bunch)."""

import copy
import pickle
from collections import OrderedDict

import pytest

from casstore.utils.bunch import Bunch


def test_item_is_readable_as_attribute():
    assert Bunch(a=1).a == 1


def test_attribute_assignment_sets_item():
    b = Bunch()
    b.a = 1
    assert b["a"] == 1


def test_attribute_deletion_removes_item():
    b = Bunch(a=1)
    del b.a
    assert "a" not in b


def test_missing_attribute_raises_attribute_error():
    with pytest.raises(AttributeError):
        Bunch().missing


def test_deleting_missing_attribute_raises_attribute_error():
    b = Bunch()
    with pytest.raises(AttributeError):
        del b.missing


def test_hasattr_is_false_for_missing_key():
    assert not hasattr(Bunch(), "missing")


def test_getattr_default_is_used_for_missing_key():
    assert getattr(Bunch(), "missing", 7) == 7


def test_bunch_of_none_is_empty():
    assert Bunch(None) == {} and len(Bunch(None)) == 0


def test_constructor_accepts_dict_arguments():
    assert Bunch({"a": 1}, b=2) == {"a": 1, "b": 2}


def test_is_an_ordered_dict_keeping_insertion_order():
    b = Bunch()
    b.z = 1
    b.a = 2
    assert isinstance(b, OrderedDict) and list(b) == ["z", "a"]


def test_methods_win_over_items_with_the_same_name():
    b = Bunch(keys=1)
    assert callable(b.keys) and b["keys"] == 1


def test_dict_to_bunch_deep_converts_nested_dicts():
    b = Bunch.dict_to_bunch_deep({"a": {"b": {"c": 1}}})
    assert isinstance(b.a, Bunch) and isinstance(b.a.b, Bunch) and b.a.b.c == 1


def test_dict_to_bunch_deep_leaves_lists_unchanged():
    b = Bunch.dict_to_bunch_deep({"a": [{"b": 1}]})
    assert type(b.a[0]) is dict


def test_dict_to_bunch_deep_returns_non_dicts_as_is():
    assert Bunch.dict_to_bunch_deep(5) == 5


def test_bunch_to_dict_deep_converts_nested_bunches():
    d = Bunch.bunch_to_dict_deep(Bunch(a=Bunch(b=Bunch(c=1))))
    assert type(d) is dict and type(d["a"]) is dict and type(d["a"]["b"]) is dict


def test_bunch_to_dict_deep_stops_at_plain_dicts():
    inner = Bunch(c=1)
    d = Bunch.bunch_to_dict_deep(Bunch(a={"b": inner}))
    assert d["a"]["b"] is inner


def test_str_is_the_str_of_the_deep_dict():
    assert str(Bunch(a=Bunch(b=1))) == str({"a": {"b": 1}})


def test_repr_equals_str():
    b = Bunch(a=Bunch(b=1))
    assert repr(b) == str(b)


def test_pickle_round_trip_keeps_type_and_items():
    b = pickle.loads(pickle.dumps(Bunch(a=Bunch(b=1))))
    assert isinstance(b, Bunch) and isinstance(b.a, Bunch) and b.a.b == 1


def test_deepcopy_is_independent():
    b = Bunch(a=Bunch(b=1))
    c = copy.deepcopy(b)
    c.a.b = 2
    assert b.a.b == 1
