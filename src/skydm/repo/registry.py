"""The dataset registry: which datasets exist and where their files are.

:class:`Registry` is the abstract interface; :class:`SqlRegistry` implements
it with SQLAlchemy Core on any database SQLAlchemy speaks to.  It is tested
on an SQLite file (the default, no set-up) and on PostgreSQL (when one machine
is not enough, or many writers share a repository) by one contract suite.
"""

from __future__ import annotations

import abc
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from skydm._sqlite import use_wal
from skydm.errors import ConflictError, SkydmError
from skydm.repo.dataid import DataId, DatasetRef, check_dataset_type

# An empty string stands for "no sky cell" in the table: SQL treats NULLs as
# distinct in unique constraints, which would let a visit dataset be
# registered twice.
_NO_SKYCELL = ""

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_type", sa.String(64), nullable=False),
    sa.Column("instrument", sa.String(64), nullable=False),
    sa.Column("detector", sa.Integer, nullable=False),
    sa.Column("visit", sa.BigInteger, nullable=False),
    sa.Column("band", sa.String(64), nullable=False),
    sa.Column("skycell", sa.String(64), nullable=False, server_default=_NO_SKYCELL),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.UniqueConstraint(
        "dataset_type", "instrument", "detector", "visit", "band", "skycell", name="uq_data_id"
    ),
    sa.Index("ix_datasets_type_visit", "dataset_type", "instrument", "visit"),
    sa.Index("ix_datasets_path", "path"),
)


class Registry(abc.ABC):
    """Where datasets are recorded.  Paths are stored relative to the repository root."""

    @abc.abstractmethod
    def insert(self, ref: DatasetRef) -> DatasetRef:
        """Register a new dataset.

        Raises
        ------
        ConflictError
            When a dataset of that type and data ID is already registered.
        """

    @abc.abstractmethod
    def replace(self, ref: DatasetRef) -> DatasetRef | None:
        """Register ``ref``, replacing any dataset of the same type and data ID.

        Returns the replaced reference, or ``None`` if there was none.  The
        read of the old row and the write of the new one are one transaction.
        """

    @abc.abstractmethod
    def find(self, dataset_type: str, data_id: DataId) -> DatasetRef | None:
        """The dataset of that type and data ID, or ``None``."""

    @abc.abstractmethod
    def query(
        self,
        *,
        dataset_type: str | None = None,
        instrument: str | None = None,
        band: str | None = None,
        visit: int | None = None,
        detector: int | None = None,
        skycell: str | None = None,
    ) -> list[DatasetRef]:
        """Datasets matching every given constraint, ordered by type and data ID."""

    @abc.abstractmethod
    def remove(self, dataset_type: str, data_id: DataId) -> DatasetRef | None:
        """Unregister a dataset; returns what was removed, or ``None``."""

    @abc.abstractmethod
    def paths(self) -> set[str]:
        """Every registered path (relative, POSIX form)."""

    def close(self) -> None:  # noqa: B027 (optional hook: nothing to release by default)
        """Release connections."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


T = TypeVar("T")

#: How long one SQLite statement waits for another process's lock (ms).
BUSY_TIMEOUT_MS = 30_000
#: Attempts of a whole transaction that still found the database locked.
LOCK_RETRIES = 8


class RegistryBusyError(SkydmError):
    """The registry stayed locked by other writers through every retry."""


def _locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text or "locked" in text


class SqlRegistry(Registry):
    """A :class:`Registry` in any SQLAlchemy database (SQLite file or PostgreSQL).

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:////path/registry.sqlite3`` or
        ``postgresql+psycopg://user@host/db``.  The table is created if it
        does not exist.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            # Several processes (ingests, pipeline workers, a service) share
            # the file: each statement waits for another's lock.
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = sa.create_engine(url, **kwargs)
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        self._retry(self._create)

    def __repr__(self) -> str:
        return f"SqlRegistry({self.engine.url.render_as_string(hide_password=True)!r})"

    def _create(self) -> None:
        # Processes opening a new repository at once would both find no table
        # and both create it; under the write lock only the first does.
        if self.sqlite:
            with self._write() as conn:
                metadata.create_all(conn)
        else:
            metadata.create_all(self.engine)

    # -- transactions ------------------------------------------------------
    def _retry(self, work: Callable[[], T]) -> T:
        """Run ``work`` (one whole transaction), again if SQLite says the database is locked.

        The busy timeout already waits inside SQLite; a lock can still be
        reported at once when a read transaction must become a write one
        that another process got first, so the whole transaction is retried
        after a randomised, growing pause.
        """
        for attempt in range(LOCK_RETRIES):
            try:
                return work()
            except OperationalError as exc:
                if not (self.sqlite and _locked(exc)) or attempt == LOCK_RETRIES - 1:
                    if self.sqlite and _locked(exc):
                        raise RegistryBusyError(
                            f"{self.url}: the registry stayed locked by other processes "
                            f"through {LOCK_RETRIES} tries; too many concurrent writers for "
                            "SQLite: use fewer, or a PostgreSQL registry (registry_url)"
                        ) from exc
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite: the write lock up front)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(skydm_write=True)
            with conn.begin():
                yield conn

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _where(dataset_type: str, data_id: DataId) -> sa.ColumnElement[bool]:
        c = datasets.c
        return sa.and_(
            c.dataset_type == dataset_type,
            c.instrument == data_id.instrument,
            c.detector == data_id.detector,
            c.visit == data_id.visit,
            c.band == data_id.band,
            c.skycell == (data_id.skycell if data_id.skycell is not None else _NO_SKYCELL),
        )

    @staticmethod
    def _row_values(ref: DatasetRef) -> dict[str, Any]:
        check_dataset_type(ref.dataset_type)
        d = ref.data_id
        return {
            "dataset_type": ref.dataset_type,
            "instrument": d.instrument,
            "detector": d.detector,
            "visit": d.visit,
            "band": d.band,
            "skycell": d.skycell if d.skycell is not None else _NO_SKYCELL,
            "path": Path(ref.path).as_posix(),
            "checksum": ref.checksum,
            "size": int(ref.size),
            "created": ref.created or _utcnow(),
            "meta": dict(ref.meta),
        }

    @staticmethod
    def _to_ref(row: sa.Row[Any]) -> DatasetRef:
        created = row.created
        if isinstance(created, str):  # SQLite's text, read raw by query() (see there)
            created = datetime.fromisoformat(created)
        meta = row.meta
        if isinstance(meta, str):
            meta = json.loads(meta) if meta != "{}" else {}
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)  # SQLite drops the zone; we store UTC
        return DatasetRef(
            dataset_type=row.dataset_type,
            # Rows were validated when registered; re-checking every data ID
            # would dominate reading a registry of 100,000 datasets.
            data_id=DataId.unchecked(
                row.instrument, int(row.detector), int(row.visit), row.band, row.skycell or None
            ),
            path=Path(row.path),
            checksum=row.checksum,
            size=int(row.size),
            created=created,
            meta=dict(meta or {}),
        )

    # -- interface -----------------------------------------------------------
    def insert(self, ref: DatasetRef) -> DatasetRef:
        values = self._row_values(ref)

        def insert() -> None:
            with self._write() as conn:
                conn.execute(datasets.insert().values(**values))

        try:
            self._retry(insert)
        except IntegrityError as exc:
            raise ConflictError(
                f"a {ref.dataset_type!r} dataset with data ID {ref.data_id} is already "
                "registered; pass replace=True (--replace) to replace it"
            ) from exc
        return self._with(ref, values)

    def replace(self, ref: DatasetRef) -> DatasetRef | None:
        values = self._row_values(ref)
        where = self._where(ref.dataset_type, ref.data_id)

        def replace() -> sa.Row[Any] | None:
            with self._write() as conn:
                # SELECT ... FOR UPDATE serialises concurrent replacements on
                # PostgreSQL; on SQLite BEGIN IMMEDIATE holds the write lock.
                old = conn.execute(sa.select(datasets).where(where).with_for_update()).first()
                if old is None:
                    conn.execute(datasets.insert().values(**values))
                else:
                    conn.execute(datasets.update().where(datasets.c.id == old.id).values(**values))
                return old

        old = self._retry(replace)
        return self._to_ref(old) if old is not None else None

    @staticmethod
    def _with(ref: DatasetRef, values: dict[str, Any]) -> DatasetRef:
        return DatasetRef(
            ref.dataset_type,
            ref.data_id,
            ref.path,
            ref.checksum,
            ref.size,
            values["created"],
            ref.meta,
        )

    def find(self, dataset_type: str, data_id: DataId) -> DatasetRef | None:
        def find() -> sa.Row[Any] | None:
            with self.engine.connect() as conn:
                return conn.execute(
                    sa.select(datasets).where(self._where(dataset_type, data_id))
                ).first()

        row = self._retry(find)
        return self._to_ref(row) if row is not None else None

    def query(
        self,
        *,
        dataset_type: str | None = None,
        instrument: str | None = None,
        band: str | None = None,
        visit: int | None = None,
        detector: int | None = None,
        skycell: str | None = None,
    ) -> list[DatasetRef]:
        c = datasets.c
        stmt = sa.select(datasets)
        if self.sqlite:
            # SQLAlchemy's per-row parsing of SQLite's date text and JSON is
            # most of the time of reading a large registry (a graph of 100,000
            # units reads every row): read them as text, parse in _to_ref.
            stmt = sa.select(
                *(col for col in datasets.c if col.name not in ("created", "meta")),
                sa.type_coerce(c.created, sa.Text).label("created"),
                sa.type_coerce(c.meta, sa.Text).label("meta"),
            )
        for column, value in (
            (c.dataset_type, dataset_type),
            (c.instrument, instrument),
            (c.band, band),
            (c.visit, visit),
            (c.detector, detector),
            (c.skycell, skycell),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        stmt = stmt.order_by(c.dataset_type, c.instrument, c.band, c.skycell, c.visit, c.detector)

        def query() -> list[sa.Row[Any]]:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).all())  # one fetchall, not a fetch per row

        return [self._to_ref(row) for row in self._retry(query)]

    def remove(self, dataset_type: str, data_id: DataId) -> DatasetRef | None:
        where = self._where(dataset_type, data_id)

        def remove() -> sa.Row[Any] | None:
            with self._write() as conn:
                old = conn.execute(sa.select(datasets).where(where).with_for_update()).first()
                if old is not None:
                    conn.execute(datasets.delete().where(datasets.c.id == old.id))
                return old

        old = self._retry(remove)
        return self._to_ref(old) if old is not None else None

    def paths(self) -> set[str]:
        def paths() -> set[str]:
            with self.engine.connect() as conn:
                return {row.path for row in conn.execute(sa.select(datasets.c.path))}

        return self._retry(paths)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own implicit BEGIN would defer the write lock to the first
    # write, where a lost race fails at once instead of waiting: the "begin"
    # hook below issues the BEGIN itself.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # WAL lets readers (verify, a service) run beside one writer (ingest);
    # synchronous=FULL makes a committed registration survive a power cut.
    use_wal(dbapi_conn)
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # Write transactions take the write lock at BEGIN (waiting up to the busy
    # timeout for other writers); reads take a WAL snapshot and never block.
    immediate = conn.get_execution_options().get("skydm_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
