"""MLtraq's `mltraq.storage.serializers.datapak.UnsupportedObjectType` (a field value the
encoder cannot store) as an alias of casstore's UnsupportedValue. casstore's DataPak codec
itself is casstore.mltraq.datapak."""

from casstore.errors import UnsupportedValue

UnsupportedObjectType = UnsupportedValue

__all__ = ["UnsupportedObjectType"]
