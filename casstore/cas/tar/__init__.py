"""The canonical TAR format (casstore-tar-1): scan a folder, write it, read it back safely."""
