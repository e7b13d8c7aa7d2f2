"""Alembic environment: runs on the connection casstore passes in, never from an ini file."""

from alembic import context

from casstore.cas.index.models import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("casstore_"),
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
