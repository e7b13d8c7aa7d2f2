"""casstore.storage: the MLtraq-shaped storage API (Archive, ArchiveStore, ArchiveStoreIO) and field encoding."""
