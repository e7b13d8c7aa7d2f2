"""The `casstore` command: click commands over the library, nothing else."""

from casstore.cli.app import main

__all__ = ["main"]
