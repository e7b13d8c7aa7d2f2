"""glob, globs and tmpdir_ctx: MLtraq's file matching, without changing the working directory."""

import os
import threading
from pathlib import Path

import pytest

from casstore.errors import InvalidInput, SourceNotFound
from casstore.utils.fs import glob, globs, tmpdir_ctx


def make_files(root, *names):
    """Create empty files (and their folders) at the relative `names` under `root`."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return root


@pytest.fixture
def src(tmp_path):
    return make_files(tmp_path / "src", "a.txt", "b.x", "d/e.txt", "d/f/g.x", "tmp_a", "d/tmp_b")


# globs: what is included


def test_globs_default_returns_all_files_at_any_depth(src):
    assert globs(src) == ["a.txt", "b.x", "d/e.txt", "d/f/g.x", "d/tmp_b", "tmp_a"]


def test_globs_returns_paths_sorted(tmp_path):
    make_files(tmp_path, "c", "a", "b/z", "b/a")
    assert globs(tmp_path) == ["a", "b/a", "b/z", "c"]


def test_globs_accepts_str_src_dir(src):
    assert globs(str(src), "*.txt") == ["a.txt"]


def test_globs_default_excludes_hidden_files(tmp_path):
    make_files(tmp_path, "a", ".h", "d/.h")
    assert globs(tmp_path) == ["a"]


def test_globs_default_excludes_hidden_folders(tmp_path):
    make_files(tmp_path, "a", ".hd/x", "d/.hd/y")
    assert globs(tmp_path) == ["a"]


def test_globs_hidden_patterns_include_hidden_files_and_folders(tmp_path):
    make_files(tmp_path, "a", ".h", "d/.h", ".hd/x", ".hd/sub/y")
    assert globs(tmp_path, [".*", "**/.*", ".*/**"]) == [".h", ".hd/sub/y", ".hd/x", "d/.h"]


def test_globs_double_star_matches_zero_folders(src):
    assert globs(src, "**/*.txt") == ["a.txt", "d/e.txt"]


def test_globs_include_list_is_a_union_without_duplicates(src):
    assert globs(src, ["*.txt", "**/*.txt", "b.x"]) == ["a.txt", "b.x", "d/e.txt"]


def test_globs_empty_include_list_matches_nothing(src):
    assert globs(src, []) == []


def test_globs_non_recursive_double_star_matches_top_level_only(src):
    assert globs(src, "**", recursive=False) == ["a.txt", "b.x", "tmp_a"]


# globs: what is excluded


def test_globs_exclude_extension_excludes_at_any_depth(src):
    assert globs(src, exclude="*.x") == ["a.txt", "d/e.txt", "d/tmp_b", "tmp_a"]


def test_globs_exclude_double_star_prefix_keeps_top_level_match(src):
    # MLtraq's meaning: fnmatch on the relative path, "**/tmp_*" needs a "/".
    assert globs(src, exclude="**/tmp_*") == ["a.txt", "b.x", "d/e.txt", "d/f/g.x", "tmp_a"]


def test_globs_exclude_list_applies_every_pattern(src):
    assert globs(src, exclude=["*.x", "tmp_*"]) == ["a.txt", "d/e.txt", "d/tmp_b"]


def test_globs_exclude_folder_prefix_excludes_its_files(src):
    assert globs(src, exclude="d/*") == ["a.txt", "b.x", "tmp_a"]


# globs: what kind of entries are kept


def test_globs_follows_symlinked_folders(tmp_path):
    make_files(tmp_path, "real/x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "link").symlink_to(tmp_path / "real")
    assert globs(tmp_path / "src") == ["link/x"]


def test_globs_includes_symlinked_files(tmp_path):
    make_files(tmp_path, "real")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "link").symlink_to(tmp_path / "real")
    assert globs(tmp_path / "src") == ["link"]


def test_globs_drops_dangling_symlinks(tmp_path):
    make_files(tmp_path, "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    assert globs(tmp_path) == ["a"]


def test_globs_drops_empty_folders(tmp_path):
    make_files(tmp_path, "a")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    assert globs(tmp_path) == ["a"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_globs_drops_fifos(tmp_path):
    make_files(tmp_path, "a")
    os.mkfifo(tmp_path / "fifo")
    assert globs(tmp_path) == ["a"]


# globs: errors


def test_globs_missing_src_dir_raises_source_not_found_naming_it(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(SourceNotFound, match="missing"):
        globs(missing)


def test_globs_missing_src_dir_error_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        globs(tmp_path / "missing")


def test_globs_src_dir_that_is_a_file_raises_invalid_input(tmp_path):
    make_files(tmp_path, "f")
    with pytest.raises(InvalidInput):
        globs(tmp_path / "f")


@pytest.mark.parametrize("include", [None, 3, b"**", ["*", 3], {"*"}])
def test_globs_include_of_wrong_type_raises_invalid_input(src, include):
    with pytest.raises(InvalidInput):
        globs(src, include=include)


@pytest.mark.parametrize("exclude", [3, b"*", ["*", None], {"*"}])
def test_globs_exclude_of_wrong_type_raises_invalid_input(src, exclude):
    with pytest.raises(InvalidInput):
        globs(src, exclude=exclude)


@pytest.mark.parametrize("include", ["/etc/*", "../*", "d/../../*"])
def test_globs_include_outside_src_dir_raises_invalid_input(src, include):
    with pytest.raises(InvalidInput):
        globs(src, include)


# glob


def test_glob_returns_paths_relative_to_root_dir(src):
    assert sorted(glob("*", root_dir=src)) == ["a.txt", "b.x", "d", "tmp_a"]


def test_glob_recursive_matches_nested_paths(src):
    assert sorted(glob("**/*.x", root_dir=src, recursive=True)) == ["b.x", "d/f/g.x"]


def test_glob_without_root_dir_uses_working_directory(src, monkeypatch):
    monkeypatch.chdir(src / "d")
    assert sorted(glob("*")) == ["e.txt", "f", "tmp_b"]


def test_glob_does_not_change_working_directory(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    real_scandir = os.scandir

    def spy_scandir(*args, **kwargs):
        seen.append(os.getcwd())
        return real_scandir(*args, **kwargs)

    monkeypatch.setattr(os, "scandir", spy_scandir)
    glob("**", root_dir=src, recursive=True)
    assert seen and set(seen) == {str(tmp_path)}


def test_glob_keeps_working_directory_while_another_thread_globs(src, tmp_path, monkeypatch):
    make_files(src, *(f"many/{i}/{j}" for i in range(20) for j in range(20)))
    monkeypatch.chdir(tmp_path)
    done = threading.Event()
    other_cwds = set()

    def globber():
        try:
            for _ in range(20):
                glob("**", root_dir=src, recursive=True)
        finally:
            done.set()

    thread = threading.Thread(target=globber)
    thread.start()
    while not done.is_set():
        other_cwds.add(os.getcwd())
    thread.join()
    assert other_cwds == {str(tmp_path)}


def test_glob_missing_root_dir_raises_source_not_found(tmp_path):
    with pytest.raises(SourceNotFound):
        glob("*", root_dir=tmp_path / "missing")


def test_glob_root_dir_that_is_a_file_raises_not_a_directory_error(tmp_path):
    make_files(tmp_path, "f")
    with pytest.raises(NotADirectoryError):
        glob("*", root_dir=tmp_path / "f")


# tmpdir_ctx


def test_tmpdir_ctx_enters_an_empty_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tmpdir_ctx() as path:
        assert os.path.samefile(os.getcwd(), path) and os.listdir(path) == []


def test_tmpdir_ctx_returns_to_previous_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tmpdir_ctx():
        pass
    assert os.getcwd() == str(tmp_path)


def test_tmpdir_ctx_removes_folder_and_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tmpdir_ctx() as path:
        make_files(Path(path), "x/y")
    assert not os.path.exists(path)


def test_tmpdir_ctx_restores_and_removes_on_exception(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), tmpdir_ctx() as path:
        raise RuntimeError("boom")
    assert os.getcwd() == str(tmp_path) and not os.path.exists(path)


def test_tmpdir_ctx_tolerates_block_removing_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tmpdir_ctx() as path:
        os.chdir(tmp_path)
        os.rmdir(path)
    assert os.getcwd() == str(tmp_path)
