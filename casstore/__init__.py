"""casstore: a content-addressed archive store with a dedup index (public API filled in below)."""
