"""The scale-out engine: PostgreSQL with q3c, loaded from the catalog's Parquet files.

On opening, every catalog table whose version differs from the one recorded
in the database (``skydm_fn.synced``) is (re)loaded with ``COPY`` and given a
q3c index on ``q3c_ang2ipix(ra, dec)``; tables no longer in the catalog are
dropped, and ``TAP_SCHEMA`` is rewritten.  An advisory lock keeps two
processes from syncing at once.  Queries run in read-only transactions through
server-side cursors, so large results stream.
"""

from __future__ import annotations

import io
import itertools
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from skydm.catalog.adql import Translation
from skydm.catalog.adql.functions import PG_HELPER_SCHEMA
from skydm.catalog.engine import (
    BATCH_ROWS,
    CatalogEngine,
    QueryCancelledError,
    QueryFailedError,
    watch_cancel,
)
from skydm.catalog.schema import CATALOG_SCHEMA, OBSLOC_SCHEMA, TAP_SCHEMA_NAME
from skydm.catalog.storage import TableInfo, list_tables
from skydm.catalog.tapschema import TAP_SCHEMA_TABLES, TapSchema
from skydm.catalog.uploads import UploadedTable
from skydm.errors import BadValueError, SkydmError, require_extra

_PG_TYPES = {
    "boolean": "boolean",
    "unsignedByte": "smallint",
    "short": "smallint",
    "int": "integer",
    "long": "bigint",
    "float": "real",
    "double": "double precision",
    "char": "text",
    "unicodeChar": "text",
}
# PostgreSQL type OID -> Arrow type of the result column.
_OID_ARROW = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    700: pa.float32(),
    701: pa.float64(),
    1700: pa.float64(),
    25: pa.string(),
    1042: pa.string(),
    1043: pa.string(),
    19: pa.string(),
    1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}
_SYNC_LOCK_KEY = 0x5C7D_0CA7
_HELPERS = f"""
CREATE OR REPLACE FUNCTION {PG_HELPER_SCHEMA}.mod(a double precision, b double precision)
  RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS 'SELECT a - b * trunc(a / b)';
CREATE OR REPLACE FUNCTION {PG_HELPER_SCHEMA}.mod(a bigint, b bigint)
  RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT mod(a, b)';
CREATE OR REPLACE FUNCTION {PG_HELPER_SCHEMA}.round(a double precision, n integer DEFAULT 0)
  RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS 'SELECT round(a::numeric, n)::double precision';
CREATE OR REPLACE FUNCTION {PG_HELPER_SCHEMA}.truncate(a double precision, n integer DEFAULT 0)
  RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS 'SELECT trunc(a::numeric, n)::double precision';
"""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy-style ``postgresql+psycopg://`` URL."""
    for prefix in (
        "postgresql+psycopg://",
        "postgresql+psycopg2://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    raise BadValueError("url", url, "a postgresql:// or postgresql+psycopg:// URL")


class PostgresEngine(CatalogEngine):
    """PostgreSQL (with the q3c extension) serving the tables of ``catalog_dir``.

    Parameters
    ----------
    catalog_dir : Path or str
        The catalog directory whose tables are loaded into the database.
    url : str
        ``postgresql+psycopg://user@host:port/dbname``.
    pool_size : int
        Connections kept open for queries.
    """

    name = "postgresql"
    dialect = "postgres"

    def __init__(self, catalog_dir: Path | str, url: str, *, pool_size: int = 8) -> None:
        self._psycopg = require_extra("psycopg", "postgres")
        self.catalog_dir = Path(catalog_dir)
        self._conninfo = conninfo(url)
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._pool_size = pool_size
        self._closed = False
        self._schema = TapSchema([])
        self.sync()

    # --- loading ---------------------------------------------------------------------

    def _connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self._conninfo)
        except self._psycopg.Error as exc:
            raise SkydmError(
                f"cannot connect to PostgreSQL at {self._conninfo}: {exc}; check "
                "that the server runs and the URL is right"
            ) from exc
        from psycopg.types.numeric import FloatLoader

        conn.adapters.register_loader("numeric", FloatLoader)
        return conn

    def sync(self) -> None:
        """Load tables that changed in the catalog, drop removed ones, rewrite TAP_SCHEMA."""
        tables = [
            t
            for t in list_tables(self.catalog_dir)
            if t.definition.schema in (CATALOG_SCHEMA, OBSLOC_SCHEMA)
        ]
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SYNC_LOCK_KEY,))
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS q3c")
            except self._psycopg.Error as exc:
                raise SkydmError(
                    f"PostgreSQL cannot create extension q3c ({exc}); install the "
                    "Debian package postgresql-15-q3c on the server"
                ) from exc
            for schema_name in (CATALOG_SCHEMA, OBSLOC_SCHEMA, TAP_SCHEMA_NAME, PG_HELPER_SCHEMA):
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema_name)}")
            cur.execute(_HELPERS)
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {PG_HELPER_SCHEMA}.synced "
                "(table_name text PRIMARY KEY, version text NOT NULL)"
            )
            cur.execute(f"SELECT table_name, version FROM {PG_HELPER_SCHEMA}.synced")
            synced = dict(cur.fetchall())
            # Tables are recorded by qualified name: "Object", "ivoa.obsplan".
            for name in set(synced) - {t.definition.qualified for t in tables}:
                schema_name, _, table_name = name.rpartition(".")
                target = f"{_q(schema_name or CATALOG_SCHEMA)}.{_q(table_name)}"
                cur.execute(f"DROP TABLE IF EXISTS {target}")
                cur.execute(f"DELETE FROM {PG_HELPER_SCHEMA}.synced WHERE table_name = %s", (name,))
            for t in tables:
                if synced.get(t.definition.qualified) != t.version:
                    self._load(cur, t)
            schema = TapSchema([t.definition for t in tables])
            self._write_tap_schema(cur, schema)
        self._schema = schema

    def _load(self, cur: Any, info: TableInfo) -> None:
        t = info.definition
        target = f"{_q(t.schema)}.{_q(t.name)}"
        cols = ", ".join(f"{_q(c.name)} {_PG_TYPES[c.datatype]}" for c in t.columns)
        cur.execute(f"DROP TABLE IF EXISTS {target}")
        cur.execute(f"CREATE TABLE {target} ({cols})")
        names = [c.name for c in t.columns]
        batches = (
            pa.Table.from_batches([batch])
            for path in info.files
            for batch in pq.ParquetFile(path).iter_batches(batch_size=200_000, columns=names)
        )
        _copy_in(cur, target, names, batches)
        if t.ra_col is not None and t.dec_col is not None:
            cur.execute(f"CREATE INDEX ON {target} (q3c_ang2ipix({_q(t.ra_col)}, {_q(t.dec_col)}))")
        if t.key is not None:
            cur.execute(f"CREATE INDEX ON {target} ({_q(t.key)})")
        cur.execute(f"ANALYZE {target}")
        cur.execute(
            f"INSERT INTO {PG_HELPER_SCHEMA}.synced VALUES (%s, %s) ON CONFLICT "
            "(table_name) DO UPDATE SET version = EXCLUDED.version",
            (t.qualified, info.version),
        )

    def _write_tap_schema(self, cur: Any, schema: TapSchema) -> None:
        rows = schema.tap_tables()
        for tdef in TAP_SCHEMA_TABLES:
            target = f"{_q(TAP_SCHEMA_NAME)}.{_q(tdef.name)}"
            cols = ", ".join(f"{_q(c.name)} {_PG_TYPES[c.datatype]}" for c in tdef.columns)
            cur.execute(f"DROP TABLE IF EXISTS {target}")
            cur.execute(f"CREATE TABLE {target} ({cols})")
            data = rows[tdef.name].to_pylist()
            if data:
                marks = ", ".join(["%s"] * len(tdef.columns))
                cur.executemany(
                    f"INSERT INTO {target} VALUES ({marks})",
                    [tuple(r[c.name] for c in tdef.columns) for r in data],
                )

    def tap_schema(self) -> TapSchema:
        return self._schema

    # --- queries ---------------------------------------------------------------------

    def _get(self) -> Any:
        if self._closed:
            raise SkydmError("the PostgreSQL engine is closed")
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            conn = self._connect()
            conn.read_only = True  # belt and braces: translation already allows only SELECT
            return conn

    def _put(self, conn: Any) -> None:
        if self._closed or conn.closed or self._pool.qsize() >= self._pool_size:
            conn.close()
        else:
            self._pool.put(conn)

    def _upload_name(self, name: str) -> tuple[str | None, str]:
        return "pg_temp", f"tap_upload_{name}"

    def _create_uploads(self, conn: Any, uploads: Mapping[str, UploadedTable]) -> None:
        # Temporary tables belong to this session alone; the query itself then
        # runs read-only as usual, and DISCARD TEMP removes them afterwards.
        conn.read_only = False
        with conn.transaction(), conn.cursor() as cur:
            for name, upload in uploads.items():
                target = f"pg_temp.{_q(self._upload_name(name)[1])}"
                cols = ", ".join(
                    f"{_q(c.name)} {_PG_TYPES[c.datatype]}" for c in upload.definition.columns
                )
                cur.execute(f"CREATE TEMP TABLE {target} ({cols})")
                _copy_in(cur, target, upload.data.column_names, [upload.data])
                cur.execute(f"ANALYZE {target}")
        conn.read_only = True

    def _drop_uploads(self, conn: Any) -> None:
        conn.read_only = False
        conn.execute("DISCARD TEMP")
        conn.commit()
        conn.read_only = True

    def _run(
        self,
        translation: Translation,
        cancel: threading.Event | None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        psycopg = self._psycopg
        conn = self._get()
        if uploads:
            try:
                self._create_uploads(conn, uploads)
            except psycopg.Error as exc:
                conn.close()
                raise QueryFailedError(
                    f"PostgreSQL could not store the uploaded tables: {str(exc).splitlines()[0]}"
                ) from exc
        # Rows are streamed in chunks (libpq chunked mode) rather than through a
        # server-side cursor: PostgreSQL never plans a cursor's query in
        # parallel, which made full scans several times slower.
        cur = conn.cursor()
        rows_iter: Iterator[Any] = iter(())
        done = threading.Event()
        cancel_fn = getattr(conn, "cancel_safe", conn.cancel)
        watch_cancel(cancel, cancel_fn, done)

        def release() -> None:
            done.set()
            try:
                close = getattr(rows_iter, "close", None)
                if close is not None:
                    close()  # an unfinished stream: psycopg cancels the rest
                cur.close()
                conn.rollback()
                if uploads:
                    self._drop_uploads(conn)
            except psycopg.Error:
                conn.close()
            self._put(conn)

        def fail(exc: Exception) -> Exception:
            if isinstance(exc, psycopg.errors.QueryCanceled) or (
                cancel is not None and cancel.is_set()
            ):
                return QueryCancelledError("the query was cancelled")
            return QueryFailedError(
                f"PostgreSQL could not run the query: {str(exc).splitlines()[0]}"
            )

        try:
            rows_iter = cur.stream(translation.sql, size=BATCH_ROWS)
            first = list(itertools.islice(rows_iter, BATCH_ROWS))
            desc = cur.description
            if desc is None:  # no row came: ask for the columns alone
                cur.execute(f"SELECT * FROM ({translation.sql}) AS skydm_q LIMIT 0")
                desc = cur.description
        except psycopg.Error as exc:
            release()
            raise fail(exc) from exc
        schema = pa.schema(
            [pa.field(d.name, _OID_ARROW.get(d.type_code, pa.string())) for d in desc]
        )

        def batches() -> Iterator[pa.RecordBatch]:
            rows = first
            try:
                while True:
                    yield _to_batch(rows, schema)
                    if len(rows) < BATCH_ROWS:
                        return
                    rows = list(itertools.islice(rows_iter, BATCH_ROWS))
            except psycopg.Error as exc:
                raise fail(exc) from exc
            finally:
                release()

        return schema, batches()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return


def _copy_in(cur: Any, target: str, names: list[str], tables: Iterable[pa.Table]) -> None:
    """COPY Arrow tables into ``target`` as CSV (Arrow writes floats that round-trip)."""
    col_list = ", ".join(_q(n) for n in names)
    options = pacsv.WriteOptions(include_header=False)
    with cur.copy(f"COPY {target} ({col_list}) FROM STDIN (FORMAT csv)") as copy:
        for table in tables:
            buf = io.BytesIO()
            pacsv.write_csv(table, buf, options)
            copy.write(buf.getvalue())


def _to_batch(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for values, f in zip(columns, schema, strict=True):
        if pa.types.is_string(f.type):
            values = tuple(v if v is None or isinstance(v, str) else _text(v) for v in values)
        arrays.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
