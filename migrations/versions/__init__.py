"""Schema versions of casstore's tables, oldest first."""
