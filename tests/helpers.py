"""Small helpers shared by several test modules."""

from __future__ import annotations

from pathlib import Path


def blob_files(datastore: str | Path = "mltraq.datastore") -> list[Path]:
    """The blob files of a local datastore, sorted."""
    root = Path(datastore) / "casstore" / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
