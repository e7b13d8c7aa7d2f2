"""The SQL index: experiments, the blobs their fields reference, and the project's facts.

Every change of an experiment is one transaction: its row, its reference rows and the facts
of new blobs commit together or not at all (P6). On SQLite, write transactions start with
BEGIN IMMEDIATE and wait on a busy timeout, so concurrent writers queue instead of failing
with "database is locked"; reads start with a plain BEGIN and, with WAL, never wait."""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sqlalchemy import Connection, Engine, MetaData, Table, delete, insert, inspect, or_, select, union
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from casstore.cas.index.engine import is_read_only, make_engine, sqlite_file, write_transaction
from casstore.cas.index.facts import BlobFacts, checked_facts
from casstore.cas.index.models import BlobRow, ExperimentRow, MetaRow, RefRow
from casstore.cas.index.schema import check_schema, ensure_schema, upgrade
from casstore.errors import DamagedIndex, DatabaseFailure, ExperimentAlreadyExists, InvalidInput

log = logging.getLogger(__name__)

DATASTORE_KEY = "datastore"
PROJECT_KEY = "project"  # the project's identity, a UUID (migrations/versions/0002_project_identity.py)


def _checked(engine: Engine, check: Callable[[Engine], None]) -> Engine:
    """`engine` once `check` passed on it; disposed of if it did not."""
    try:
        check(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise InvalidInput(f"cannot open database {engine.url.render_as_string(hide_password=True)}: "
                           f"{exc.orig}") from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def field_label(field: str, id_run: str = "") -> str:
    """A referencing field as the session, verify and the CLI name it: `data`,
    `inputs.train`, or `runs[<id_run>].<field>` for a field of one of MLtraq's runs."""
    return f"runs[{id_run}].{field}" if id_run else field


@dataclass(frozen=True, slots=True)
class Ref:
    """A field that references a blob."""

    field: str
    blob_id: str
    arc_dir: str
    id_run: str = ""

    @property
    def label(self) -> str:
        return field_label(self.field, self.id_run)


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    id_experiment: uuid.UUID
    name: str
    fields: bytes
    meta: bytes | None = None


@dataclass(frozen=True, slots=True)
class RefListing:
    id_experiment: uuid.UUID
    name: str
    field: str
    id_run: str
    blob_id: str
    size: int | None
    stored_size: int | None
    codec: str | None

    @property
    def label(self) -> str:
        return field_label(self.field, self.id_run)


class Index:
    """Queries and changes of the index. Knows nothing of sessions, options or blobs' bytes."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._project: str | None = None

    @classmethod
    def open(cls, url: str, read_only: bool = False) -> Index:
        """The index of the database at `url`. Its schema is checked by reading only, so a
        database casstore refuses is left as it was (not even switched to WAL); then a new
        database gets its tables. `read_only` never writes: the schema must be in force. A
        SQLite file this process may not write is opened read-only too (`read_only` tells):
        loads work, a write fails."""
        found = sqlite_file(url)
        path = found.path if found is not None and found.exists() else None
        if read_only or (path is not None and not os.access(path, os.W_OK)):
            return cls(_checked(make_engine(url, read_only=True), check_schema))
        if path is not None:
            _checked(make_engine(url, read_only=True), lambda e: check_schema(e, creatable=True)).dispose()
        return cls(_checked(make_engine(url), ensure_schema))

    @property
    def read_only(self) -> bool:
        """True if the engine never writes (make_engine(read_only=True))."""
        return is_read_only(self.engine)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    # project facts

    def get_fact(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(MetaRow.value).where(MetaRow.key == key))

    def set_fact(self, key: str, value: str, conn: Connection | None = None) -> None:
        """In the caller's write transaction `conn` if given, else in one of its own."""
        if conn is None:
            with write_transaction(self.engine) as own:
                self.set_fact(key, value, own)
            return
        conn.execute(delete(MetaRow).where(MetaRow.key == key))
        conn.execute(insert(MetaRow).values(key=key, value=value))

    def facts_with_prefix(self, prefix: str, conn: Connection) -> dict[str, str]:
        """The facts whose key starts with `prefix`, read on the caller's `conn` (none if the
        database has no casstore tables: it may be a plain MLtraq one)."""
        if not inspect(conn).has_table(MetaRow.__tablename__):
            return {}
        rows = conn.execute(select(MetaRow.key, MetaRow.value).where(MetaRow.key.startswith(prefix)))
        return {row[0]: row[1] for row in rows}

    def forget_facts(self, keys: list[str]) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(delete(MetaRow).where(MetaRow.key.in_(keys)))

    def project_id(self) -> str:
        """This project's identity, created once. A database at schema 0001 gets it here, at
        its first write that needs it (upgrading to 0002 adds only this row)."""
        if self._project is None:
            self._project = self.get_fact(PROJECT_KEY) or self._create_project_id()
        return self._project

    def _create_project_id(self) -> str:
        upgrade(self.engine)
        with write_transaction(self.engine) as conn:
            found = conn.scalar(select(MetaRow.value).where(MetaRow.key == PROJECT_KEY))
            if found is None:  # the row was deleted from a database already at 0002
                found = str(uuid.uuid4())
                conn.execute(insert(MetaRow).values(key=PROJECT_KEY, value=found))
            return found

    # experiments

    def get_experiment(self, name: str | None = None, id_experiment: uuid.UUID | None = None) -> ExperimentRecord | None:
        query = select(ExperimentRow.id_experiment, ExperimentRow.name, ExperimentRow.fields, ExperimentRow.meta)
        if id_experiment is not None:
            query = query.where(ExperimentRow.id_experiment == id_experiment)
        elif name is not None:
            query = query.where(ExperimentRow.name == name)
        else:
            raise InvalidInput("give the experiment's name or id_experiment")
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else ExperimentRecord(row[0], row[1], row[2], row[3])

    def iter_fields(self) -> Iterator[tuple[uuid.UUID, str, bytes, bytes | None]]:
        """(id_experiment, name, fields, meta) of every experiment: DataPak bytes, for the
        layer that decodes them."""
        query = select(ExperimentRow.id_experiment, ExperimentRow.name, ExperimentRow.fields, ExperimentRow.meta)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield row[0], row[1], row[2], row[3]

    def iter_run_cells(self, table_name: str, columns: list[str]) -> Iterator[tuple[Any, str, bytes]]:
        """(id_run as read, column, value) of every non-null cell of `columns` in MLtraq's run
        table `table_name`; nothing if the table, its id_run or the columns are not there."""
        with self.engine.connect() as conn:
            if table_name not in inspect(conn).get_table_names():
                return
            table = Table(table_name, MetaData(), autoload_with=conn)
            present = [c for c in columns if c in table.c]
            if "id_run" not in table.c or not present:
                return
            for row in conn.execute(select(table.c.id_run, *[table.c[c] for c in present])):
                for column, value in zip(present, row[1:]):
                    if row[0] is not None and value is not None:
                        yield row[0], column, value

    def list_experiments(self) -> list[tuple[uuid.UUID, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(ExperimentRow.id_experiment, ExperimentRow.name).order_by(ExperimentRow.name))
            return [(r[0], r[1]) for r in rows]

    def save_experiment(self, record: ExperimentRecord, refs: list[Ref], blobs: list[BlobFacts],
                        if_exists: str) -> list[uuid.UUID]:
        """Store `record` with its references in one transaction.

        An experiment with the same name or id is an existing one: "fail" raises
        ExperimentAlreadyExists, "replace" swaps it out in the same transaction. Run-level
        references of the same experiment (migrated from MLtraq's run tables, which casstore
        keeps as they are) survive a replace. Returns the ids of the replaced experiments."""
        try:
            return self._save(record, refs, blobs, if_exists)
        except SQLAlchemyError as exc:
            raise DatabaseFailure(f"storing experiment {record.name!r} failed, nothing changed: "
                                  f"{getattr(exc, 'orig', exc)}") from exc

    def _save(self, record: ExperimentRecord, refs: list[Ref], blobs: list[BlobFacts],
              if_exists: str) -> list[uuid.UUID]:
        with write_transaction(self.engine) as conn:
            existing = self._existing_ids(conn, record)
            if existing and if_exists != "replace":
                raise ExperimentAlreadyExists(
                    f"experiment {record.name!r} already exists, pass if_exists=\"replace\" to overwrite it")
            self.put_blob_facts(conn, blobs)
            for old in existing:
                refs_gone = delete(RefRow).where(RefRow.id_experiment == old)
                if old == record.id_experiment:
                    refs_gone = refs_gone.where(RefRow.id_run == "")
                conn.execute(refs_gone)
                conn.execute(delete(ExperimentRow).where(ExperimentRow.id_experiment == old))
            conn.execute(insert(ExperimentRow).values(
                id_experiment=record.id_experiment, name=record.name, fields=record.fields, meta=record.meta))
            if refs:
                conn.execute(insert(RefRow), [
                    {"id_experiment": record.id_experiment, "id_run": r.id_run, "field": r.field,
                     "blob_id": r.blob_id, "arc_dir": r.arc_dir} for r in refs])
        return [old for old in existing if old != record.id_experiment]

    def _existing_ids(self, conn: Connection, record: ExperimentRecord) -> list[uuid.UUID]:
        query = select(ExperimentRow.id_experiment).where(
            or_(ExperimentRow.name == record.name, ExperimentRow.id_experiment == record.id_experiment))
        return list(conn.scalars(query))

    def put_blob_facts(self, conn: Connection | None, blobs: list[BlobFacts]) -> None:
        """The facts row of each of `blobs`, written over the one there (it describes the copy
        a write just found or published), in the caller's write transaction `conn` if given,
        else in one of its own."""
        if not blobs:
            return
        if conn is None:
            with write_transaction(self.engine) as own:
                self.put_blob_facts(own, blobs)
            return
        rows = [{"blob_id": b.blob_id, "size": b.size, "stored_size": b.stored_size, "codec": b.codec,
                 "created": time.time()} for b in {b.blob_id: b for b in blobs}.values()]
        if self._sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            lite = sqlite_insert(BlobRow)
            conn.execute(lite.on_conflict_do_update(index_elements=["blob_id"], set_=_new_facts(lite.excluded)), rows)
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(BlobRow)
            conn.execute(pg.on_conflict_do_update(index_elements=["blob_id"], set_=_new_facts(pg.excluded)), rows)

    def forget_blob_facts(self, blob_ids: list[str]) -> None:
        """Drop the facts of deleted blobs that no reference of this database names."""
        if not blob_ids:
            return
        with write_transaction(self.engine) as conn:
            referenced = select(RefRow.blob_id).where(RefRow.blob_id.in_(blob_ids))
            conn.execute(delete(BlobRow).where(BlobRow.blob_id.in_(blob_ids), BlobRow.blob_id.not_in(referenced)))

    def orphaned_refs(self) -> list[RefListing]:
        """Reference rows of experiments that no longer exist (deleted by another tool)."""
        with self.engine.connect() as conn:
            return _orphaned_rows(conn)

    def delete_orphaned_refs(self) -> list[RefListing]:
        """Delete the reference rows of experiments that no longer exist; one write
        transaction, so a persist committing its experiment with its rows is never touched.
        Writes nothing (and so works on a read-only database) when there are none."""
        if not self.orphaned_refs():
            return []
        with write_transaction(self.engine) as conn:
            rows = _orphaned_rows(conn)
            conn.execute(delete(RefRow).where(_orphaned()))
        return rows

    def delete_experiment(self, id_experiment: uuid.UUID) -> bool:
        with write_transaction(self.engine) as conn:
            conn.execute(delete(RefRow).where(RefRow.id_experiment == id_experiment))
            result = conn.execute(delete(ExperimentRow).where(ExperimentRow.id_experiment == id_experiment))
            return result.rowcount > 0

    def put_refs(self, conn: Connection, id_experiment: uuid.UUID, refs: list[Ref]) -> None:
        """Each of `refs` as the one reference row of its (run, field), in the caller's write
        transaction `conn` (the migration's, which rewrites MLtraq's rows in it)."""
        for r in refs:
            conn.execute(delete(RefRow).where(RefRow.id_experiment == id_experiment, RefRow.id_run == r.id_run,
                                              RefRow.field == r.field))
            conn.execute(insert(RefRow).values(id_experiment=id_experiment, id_run=r.id_run, field=r.field,
                                               blob_id=r.blob_id, arc_dir=r.arc_dir))

    # references and blobs

    def refs_of(self, id_experiment: uuid.UUID) -> list[Ref]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(RefRow).where(RefRow.id_experiment == id_experiment))
            return [Ref(r.field, r.blob_id, r.arc_dir, r.id_run) for r in rows]

    def blob_facts(self, blob_id: str) -> BlobFacts | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(BlobRow).where(BlobRow.blob_id == blob_id)).first()
        return None if row is None else checked_facts(row.blob_id, row.size, row.stored_size, row.codec)

    def facts_hint(self, blob_id: str) -> BlobFacts | None:
        """The facts of `blob_id` where they are only a hint (the size to expect, the copy to
        prefer): a damaged row is logged and read as none, so that it blocks no load or persist
        of intact content; the blob is then read by its own digest, a persist rewrites the row,
        and verify reports the row until then."""
        try:
            return self.blob_facts(blob_id)
        except DamagedIndex as exc:
            log.warning("facts ignored: %s", exc)
            return None

    def referenced_blob_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(RefRow.blob_id).distinct()))

    def iter_refs(self) -> Iterator[RefListing]:
        """The reference rows of the experiments there are, with their names and facts; the
        rows of an experiment that is gone are `orphaned_refs` (reclaimable), never listed
        here with a blank name."""
        query = (select(RefRow.id_experiment, ExperimentRow.name, RefRow.field, RefRow.id_run, RefRow.blob_id,
                        BlobRow.size, BlobRow.stored_size, BlobRow.codec)
                 .join(BlobRow, BlobRow.blob_id == RefRow.blob_id, isouter=True)
                 .join(ExperimentRow, ExperimentRow.id_experiment == RefRow.id_experiment)
                 .order_by(ExperimentRow.name, RefRow.id_run, RefRow.field))
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                facts = _facts_or_none(r[4], r[5], r[6], r[7])
                yield RefListing(r[0], r[1], r[2], r[3], r[4], *(
                    (facts.size, facts.stored_size, facts.codec) if facts else (None, None, None)))

    def blob_ids_with_prefix(self, prefix: str) -> list[str]:
        """The blob ids of reference and facts rows starting with `prefix` ('' for all), sorted."""
        query = union(*[select(c).where(c.startswith(prefix, autoescape=True)) for c in (RefRow.blob_id, BlobRow.blob_id)])
        with self.engine.connect() as conn:
            return sorted(conn.scalars(query))

    def iter_blob_facts(self, damaged: dict[str, str] | None = None) -> Iterator[BlobFacts]:
        """Every facts row; a damaged one raises DamagedIndex, or is put into `damaged`
        (blob id -> why) if given."""
        with self.engine.connect() as conn:
            for r in conn.execute(select(BlobRow)):
                try:
                    yield checked_facts(r.blob_id, r.size, r.stored_size, r.codec)
                except DamagedIndex as exc:
                    if damaged is None:
                        raise
                    damaged[r.blob_id] = str(exc)

    def dispose(self) -> None:
        self.engine.dispose()


def _new_facts(excluded: Any) -> dict[str, Any]:
    """What an upsert of facts rows writes over a row already there: the new copy's facts."""
    return {"size": excluded.size, "stored_size": excluded.stored_size, "codec": excluded.codec}


def _orphaned() -> Any:
    return RefRow.id_experiment.not_in(select(ExperimentRow.id_experiment))


def _orphaned_rows(conn: Connection) -> list[RefListing]:
    query = select(RefRow.id_experiment, RefRow.field, RefRow.id_run, RefRow.blob_id).where(_orphaned())
    return [RefListing(r[0], "", r[1], r[2], r[3], None, None, None) for r in conn.execute(query)]


def _facts_or_none(blob_id: str, size: Any, stored_size: Any, codec: Any) -> BlobFacts | None:
    """A listing's facts, None if there is no row or a damaged one (verify reports it)."""
    if size is None and stored_size is None and codec is None:
        return None
    try:
        return checked_facts(blob_id, size, stored_size, codec)
    except DamagedIndex:
        return None
