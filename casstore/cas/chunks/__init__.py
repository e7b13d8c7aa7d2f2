"""Chunked blobs (P13): where a blob's canonical TAR is cut into chunks (cutter.py, after the
sizes of policy.py) and the manifest that lists them (manifest.py). Formats only: storing and
reading chunks is the store's (casstore/cas/store/chunk_io.py)."""
