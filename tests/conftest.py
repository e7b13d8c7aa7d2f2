"""Shared fixtures for the casstore test suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder (`tmp_path/work`) as the current directory, with every option
    reset to its default and restored afterwards; the stat cache and XDG cache live in
    `tmp_path/cache`, outside the working folder and outside the user's home."""
    from casstore.opts import options

    saved = options().copy_values()
    options().reset()
    cache = tmp_path / "cache"
    options().set("statcache.path", str(cache / "statcache.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        yield work
    finally:
        options().copy_from(saved)
