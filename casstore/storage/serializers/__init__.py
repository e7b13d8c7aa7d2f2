"""MLtraq's `mltraq.storage.serializers` import paths, for the errors its users catch."""
