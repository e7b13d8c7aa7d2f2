"""casstore's first schema: blob facts, references, project facts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "casstore_blobs",
        sa.Column("blob_id", sa.String(80), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("stored_size", sa.BigInteger, nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_table(
        "casstore_refs",
        sa.Column("id_experiment", sa.Uuid, primary_key=True),
        sa.Column("id_run", sa.String(32), primary_key=True),
        sa.Column("field", sa.String(512), primary_key=True),
        sa.Column("blob_id", sa.String(80), sa.ForeignKey("casstore_blobs.blob_id"), nullable=False),
        sa.Column("arc_dir", sa.String(1024), nullable=False),
    )
    op.create_index("ix_casstore_refs_blob_id", "casstore_refs", ["blob_id"])
    op.create_table(
        "casstore_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(4096), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("casstore_meta")
    op.drop_index("ix_casstore_refs_blob_id", "casstore_refs")
    op.drop_table("casstore_refs")
    op.drop_table("casstore_blobs")
