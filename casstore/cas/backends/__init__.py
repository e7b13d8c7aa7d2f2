"""Blob stores: the abstract store, its ingest, and one module per backend."""
