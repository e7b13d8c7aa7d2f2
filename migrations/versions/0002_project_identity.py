"""The project's identity: a UUID created once, in casstore_meta under the key `project`.

Registry entries name it (docs/datastore.md), so that a project is recognised whatever URL
reaches its database. No table changes: this revision adds one row, so casstore applies it
by itself at the first write that needs the identity (casstore/cas/index/schema.py).

Revision ID: 0002
Revises: 0001
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_meta = sa.table("casstore_meta", sa.column("key", sa.String), sa.column("value", sa.String))


def upgrade() -> None:
    connection = op.get_bind()
    if connection.scalar(sa.select(_meta.c.value).where(_meta.c.key == "project")) is None:
        op.execute(_meta.insert().values(key="project", value=str(uuid.uuid4())))


def downgrade() -> None:
    op.execute(_meta.delete().where(_meta.c.key == "project"))
