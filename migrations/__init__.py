"""Alembic scripts of casstore's own tables, shipped inside the wheel as casstore.migrations."""
