"""Everything that knows MLtraq: the DataPak codec (datapak.py), how runs are named
(runs.py), legacy TARs (legacy.py), and the migration of a project (migrate/).

`enable()`, `disable()` and `is_enabled()` (casstore as MLtraq's archive backend) are defined
in casstore.mltraq_backend, above the user API this package sits under, and looked up here
on first use. Nothing here imports MLtraq at import time: `import casstore` stays light."""

from typing import Any

__all__ = ["disable", "enable", "is_enabled"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from casstore import mltraq_backend

        return getattr(mltraq_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
