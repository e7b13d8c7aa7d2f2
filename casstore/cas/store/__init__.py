"""The content store: folders in, canonical TAR blobs under their digests out.

content_store.py  the ContentStore: put_dir, put_tar_stream, extract, members, check
ingest.py         writing a canonical TAR stream into the blob store (plain or zstd)
reader.py         reading a blob back, hashed and checked against its id
copy_checks.py    is a stored copy what its id and the index's facts say it is
codecs.py         "none" and "zstd"; no_space.py: a full disk is NoSpace
statcache.py      an unchanged folder maps to its blob id without reading files"""
