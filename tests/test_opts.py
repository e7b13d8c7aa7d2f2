"""options(): the process-wide tree of options, and file_url_to_path."""

import pytest

from casstore.errors import InvalidInput
from casstore.opts import DEFAULT_VALUES, file_url_to_path, options


@pytest.fixture(autouse=True)
def _restore_options():
    """Tests change the singleton: put every value back afterwards."""
    saved = options().copy_values()
    yield
    options().copy_from(saved)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("database.url", "sqlite:///:memory:"),
        ("datastore.url", "file:///mltraq.datastore"),
        ("datastore.relative_path_prefix", "undefined"),
        ("datastore.storage_options", {}),
        ("datastore.max_unsized_bytes", 1 << 30),
        ("archivestore.url", "file:///mltraq.archivestore"),
        ("archivestore.relative_path_prefix", "undefined"),
        ("archivestore.codec", "none"),
        ("archivestore.level", 3),
        ("statcache.path", None),
        ("statcache.disable", False),
    ],
)
def test_default_value(path, value):
    options().reset()
    assert options().get(path) == value


def test_options_returns_the_same_object():
    assert options() is options()


def test_get_missing_path_raises_key_error():
    with pytest.raises(KeyError):
        options().get("archivestore.nope")


def test_get_missing_path_returns_otherwise():
    assert options().get("archivestore.nope", otherwise=5) == 5


def test_get_missing_path_returns_otherwise_none():
    assert options().get("archivestore.nope", otherwise=None) is None


def test_get_below_a_leaf_returns_otherwise():
    assert options().get("archivestore.level.deeper", otherwise="x") == "x"


def test_get_below_a_leaf_raises_key_error():
    with pytest.raises(KeyError):
        options().get("archivestore.url.deeper")


def test_get_prefer_wins_over_option():
    assert options().get("archivestore.codec", prefer="zstd") == "zstd"


def test_get_prefer_none_is_ignored():
    options().set("archivestore.codec", "zstd")
    assert options().get("archivestore.codec", prefer=None) == "zstd"


def test_get_group_returns_subtree_dict():
    assert options().get("statcache") == {"path": None, "disable": False}


def test_changing_returned_subtree_does_not_change_options():
    options().get("datastore.storage_options")["key"] = "secret"
    assert options().get("datastore.storage_options") == {}


def test_set_changes_value():
    options().set("archivestore.level", 19)
    assert options().get("archivestore.level") == 19


def test_set_creates_missing_groups():
    options().set("app.group.value", 1)
    assert options().get("app") == {"group": {"value": 1}}


def test_set_below_a_leaf_raises_invalid_input():
    with pytest.raises(InvalidInput):
        options().set("archivestore.level.deeper", 1)


def test_ctx_sets_values_inside_block():
    with options().ctx({"archivestore.codec": "zstd", "archivestore.level": 9}):
        assert options().get("archivestore.codec") == "zstd"
        assert options().get("archivestore.level") == 9


def test_ctx_restores_values_after_block():
    with options().ctx({"archivestore.codec": "zstd"}):
        options().set("database.url", "sqlite:///other.db")
    assert options().get("archivestore.codec") == "none"
    assert options().get("database.url") == "sqlite:///:memory:"


def test_ctx_restores_values_on_exception():
    with pytest.raises(RuntimeError), options().ctx({"archivestore.codec": "zstd"}):
        raise RuntimeError("boom")
    assert options().get("archivestore.codec") == "none"


def test_ctx_removes_paths_it_created():
    with options().ctx({"app.x": 1}):
        pass
    assert options().get("app", otherwise=None) is None


def test_ctx_restores_when_a_path_cannot_be_set():
    with pytest.raises(InvalidInput), options().ctx({"archivestore.codec": "zstd", "archivestore.level.x": 1}):
        pass
    assert options().get("archivestore.codec") == "none"


def test_nested_ctx_restores_outer_values():
    with options().ctx({"archivestore.level": 5}):
        with options().ctx({"archivestore.level": 7}):
            pass
        assert options().get("archivestore.level") == 5


def test_reset_path_restores_default():
    options().set("archivestore.level", 19)
    options().set("archivestore.codec", "zstd")
    options().reset("archivestore.level")
    assert options().get("archivestore.level") == 3
    assert options().get("archivestore.codec") == "zstd"


def test_reset_all_restores_every_default():
    options().set("archivestore.level", 19)
    options().set("app.x", 1)
    options().reset()
    assert options().copy_values() == DEFAULT_VALUES


def test_reset_path_without_default_raises_key_error():
    with pytest.raises(KeyError):
        options().reset("archivestore.nope")


def test_reset_group_does_not_share_the_default_object():
    options().reset("datastore")
    options().set("datastore.storage_options.key", "v")
    options().reset("datastore.storage_options")
    assert options().get("datastore.storage_options") == {}


def test_copy_values_is_a_deep_copy():
    values = options().copy_values()
    values["archivestore"]["level"] = 99
    assert options().get("archivestore.level") == 3


def test_flatten_returns_dotted_leaves():
    flat = options().flatten()
    assert flat["archivestore.level"] == 3 and flat["statcache.path"] is None


def test_flatten_omits_empty_groups():
    assert "datastore.storage_options" not in options().flatten()


def test_file_url_relative_path():
    assert file_url_to_path("file:///mltraq.archivestore") == "mltraq.archivestore"


def test_file_url_absolute_path():
    assert file_url_to_path("file:////abs/path") == "/abs/path"


def test_file_url_ignores_fragment_like_mltraq():
    assert file_url_to_path("file:///a/b#c") == "a/b"


@pytest.mark.parametrize("url", ["s3://bucket/key", "sqlite:///x.db", "mltraq.archivestore", "/abs/path"])
def test_non_file_url_raises_invalid_input_naming_it(url):
    with pytest.raises(InvalidInput, match=url):
        file_url_to_path(url)


def test_file_url_with_host_raises_invalid_input():
    with pytest.raises(InvalidInput):
        file_url_to_path("file://host/path")


def test_file_url_without_path_raises_invalid_input():
    with pytest.raises(InvalidInput):
        file_url_to_path("file:///")


def test_file_url_not_a_string_raises_invalid_input():
    with pytest.raises(InvalidInput):
        file_url_to_path(None)
