"""The content store: canonical TARs, digests, blobs, the SQL index, gc, verify. Knows nothing of sessions or options."""
