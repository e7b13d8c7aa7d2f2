"""SQLAlchemy models: MLtraq's `experiments` table, and casstore's own tables.

casstore's tables are prefixed `casstore_` and versioned by Alembic (migrations/) with their
own version table, so they live beside MLtraq's and other tools' tables in one database.
The `experiments` table is MLtraq's layout, created if missing as MLtraq does."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Float, ForeignKey, Index, LargeBinary, String, Table, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

VERSION_TABLE = "casstore_alembic_version"


class Base(DeclarativeBase):
    pass


class ExperimentRow(Base):
    """MLtraq's experiments table: fields and meta are DataPak bytes."""

    __tablename__ = "experiments"

    id_experiment: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String, nullable=False, unique=True)
    meta: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    fields: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    unsafe_pickle: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class BlobRow(Base):
    """Facts of a blob. `size` (of the canonical TAR) never changes; `stored_size` and `codec`
    follow the stored copy: a blob that gc deleted may be stored again in the other codec."""

    __tablename__ = "casstore_blobs"

    blob_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stored_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    codec: Mapped[str] = mapped_column(String(16), nullable=False)
    created: Mapped[float] = mapped_column(Float, nullable=False)


class RefRow(Base):
    """A field of an experiment (or of one of its runs) that references a blob.

    `field` is the dotted path of the value inside the fields (`data`, `inputs.train`);
    `id_run` is "" for experiment-level fields."""

    __tablename__ = "casstore_refs"

    id_experiment: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    id_run: Mapped[str] = mapped_column(String(32), primary_key=True, default="")
    field: Mapped[str] = mapped_column(String(512), primary_key=True)
    blob_id: Mapped[str] = mapped_column(ForeignKey("casstore_blobs.blob_id"), nullable=False)
    arc_dir: Mapped[str] = mapped_column(String(1024), nullable=False)

    __table_args__ = (Index("ix_casstore_refs_blob_id", "blob_id"),)


class MetaRow(Base):
    """Key/value facts of the project, such as the datastore it uses."""

    __tablename__ = "casstore_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(4096), nullable=False)


def table(row: type[Base]) -> Table:
    """The Table of a model (declarative typing says only FromClause of `__table__`)."""
    return Base.metadata.tables[row.__tablename__]


CASSTORE_TABLES = [table(BlobRow), table(RefRow), table(MetaRow)]
