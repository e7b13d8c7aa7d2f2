"""The content store: folders in, canonical TAR blobs under their digests out."""
