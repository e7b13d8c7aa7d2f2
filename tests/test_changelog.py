"""CHANGELOG.md follows the releases: its newest entry is the version casstore reports, in
Keep a Changelog's form, and it names every command the CLI has."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from casstore import __version__
from casstore.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.M)


def test_the_newest_entry_is_the_version_casstore_reports():
    releases = RELEASE.findall(CHANGELOG)
    assert releases and releases[0][0] == __version__
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_releases_are_listed_newest_first_with_dates_in_order():
    releases = RELEASE.findall(CHANGELOG)
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in releases]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    dates = [d for _, d in releases]
    assert dates == sorted(dates, reverse=True)


def test_each_entry_uses_only_keep_a_changelogs_sections():
    sections = set(re.findall(r"^### (.+)$", CHANGELOG, re.M))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security", "Datastore format"}


def test_every_command_of_the_cli_is_named():
    missing = [name for name in main.commands if f"casstore {name}" not in CHANGELOG and f"`{name}`" not in CHANGELOG]
    assert missing == []
