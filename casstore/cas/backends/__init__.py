"""Blob stores: where a datastore keeps its blobs and small objects, one module per job.

    layout.py        the keys (where each thing lives in a datastore) and their parsers
    base.py          the interface every backend implements (BlobStore, Ingest), its records
    local.py         a local folder; local_ingest.py writes its blobs, localfs.py its file primitives
    fsspec.py        any fsspec filesystem; s3.py is S3, with conditional requests
    factory.py       open_blobstore: which store a URL names (the only module that knows them all)
    urls.py          file URLs and the local paths they name"""
