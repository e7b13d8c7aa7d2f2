"""casstore.utils: file-system helpers with MLtraq's names."""
