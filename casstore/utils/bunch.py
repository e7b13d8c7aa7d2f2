"""Bunch: an ordered dict whose items are also attributes, as MLtraq's `mltraq.utils.bunch.Bunch`."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Bunch(OrderedDict[str, Any]):
    """Ordered dictionary whose elements can be accessed as object attributes.

    `b.x` reads `b["x"]`, `b.x = 1` sets it, `del b.x` deletes it; a missing key read or
    deleted as an attribute raises AttributeError (so `hasattr`, `getattr(b, k, default)`
    and pickling/copying behave as for ordinary objects).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Same signature as dict; `Bunch(None)` gives an empty Bunch (MLtraq accepts it)."""
        if args == (None,) and not kwargs:
            super().__init__()
        else:
            super().__init__(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        # Only called when normal attribute lookup fails, so methods (keys(), items()...)
        # always win over items with the same name, as in MLtraq.
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __str__(self) -> str:
        return str(Bunch.bunch_to_dict_deep(self))

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        return self.__str__()

    @classmethod
    def dict_to_bunch_deep(cls, d: Any) -> Any:
        """Convert a dict, and every dict nested in its values, to Bunch.

        Values that are not dicts (lists included) are returned unchanged."""
        if isinstance(d, dict):
            return Bunch({k: Bunch.dict_to_bunch_deep(v) for k, v in d.items()})
        return d

    @classmethod
    def bunch_to_dict_deep(cls, d: Any) -> Any:
        """Convert a Bunch, and every Bunch nested in its values, to a plain dict.

        As in MLtraq, recursion stops at values that are not Bunch: a plain dict holding a
        Bunch is returned as is."""
        if isinstance(d, Bunch):
            return {k: Bunch.bunch_to_dict_deep(v) for k, v in d.items()}
        return d
