"""MLtraq's `mltraq.utils.exceptions` names that casstore raises, as aliases of its typed
errors (casstore.errors), so that `except InvalidInput` written for MLtraq catches what
casstore raises. `ExceptionWithMessage`, the base of MLtraq's errors, is casstore's base;
both carry `.message`."""

from casstore.errors import CasStoreError
from casstore.errors import InvalidInput as InvalidInput

ExceptionWithMessage = CasStoreError

__all__ = ["ExceptionWithMessage", "InvalidInput"]
