"""The embedded engine: DuckDB over the catalog's Parquet files.

Each catalog table is a view over its Hive-partitioned Parquet files
(``_npix=<p>/part-0.parquet``), so a query sees a table reloaded by
``skydm catalog load`` at once.  Cone and polygon searches use ``_healpix``
ranges, which DuckDB answers from Parquet row-group statistics (the files are
sorted by ``_healpix``), and ``_npix`` partition filters, which skip files.

The connection is locked down after the views are made: external access is
off except to the catalog directory, extensions cannot be installed or
loaded, and the configuration is locked, so that even a translation bug could
not read other files or change settings.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa

from skydm.catalog import healpix
from skydm.catalog.adql import Translation
from skydm.catalog.engine import (
    BATCH_ROWS,
    CatalogEngine,
    ColumnInfo,
    QueryCancelledError,
    QueryFailedError,
    watch_cancel,
)
from skydm.catalog.engines.conereader import INDEX_BYTES, ConeReader
from skydm.catalog.schema import CATALOG_SCHEMA, OBSLOC_SCHEMA, TAP_SCHEMA_NAME
from skydm.catalog.storage import PARTITION_COL, TableInfo, list_tables
from skydm.catalog.tapschema import TapSchema
from skydm.catalog.uploads import UploadedTable
from skydm.errors import BadValueError, SkydmError, require_extra

#: Results limited to this many rows are fetched through the faster DB-API path.
SMALL_RESULT_ROWS = 200_001
# That path warns that it copies the rows: known, and cheap at that size.
warnings.filterwarnings("ignore", "Arrow output on a DB-API result", UserWarning)


def _env_megabytes(name: str, default: int) -> int:
    """A non-negative whole number of megabytes from the environment variable ``name``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise BadValueError(name, text, "give a whole number of megabytes (0 or more)")
    return int(text)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class DuckDBEngine(CatalogEngine):
    """DuckDB over the Parquet tables of ``catalog_dir``.

    Parameters
    ----------
    catalog_dir : Path or str
        The catalog directory (it may be empty or not exist yet).
    threads : int, optional
        DuckDB worker threads (default: ``SKYDM_CATALOG_THREADS`` if set, else
        DuckDB's, one per core).
    direct_cones : bool
        Answer plain cone searches by reading the Parquet row groups directly
        (:mod:`skydm.catalog.engines.conereader`) instead of through DuckDB;
        ``SKYDM_CATALOG_DIRECT_CONES=0`` turns it off by default.
    cone_index_mb : int, optional
        Megabytes of decoded ``_healpix`` columns the direct cone reader keeps
        in memory (8 bytes a row; 0 keeps none).  Default:
        ``SKYDM_CATALOG_CONE_INDEX_MB`` if set, else 256.
    """

    name = "duckdb"
    dialect = "duckdb"

    def __init__(
        self,
        catalog_dir: Path | str,
        *,
        threads: int | None = None,
        direct_cones: bool | None = None,
        cone_index_mb: int | None = None,
    ) -> None:
        duckdb = require_extra("duckdb", "catalog")
        if direct_cones is None:
            direct_cones = os.environ.get("SKYDM_CATALOG_DIRECT_CONES", "1").strip() != "0"
        self.direct_cones = direct_cones
        if cone_index_mb is None:
            cone_index_mb = _env_megabytes("SKYDM_CATALOG_CONE_INDEX_MB", INDEX_BYTES >> 20)
        if cone_index_mb < 0:
            raise BadValueError("cone_index_mb", cone_index_mb, "give 0 or more megabytes")
        self._index_bytes = cone_index_mb << 20
        self._cones = ConeReader([], {}, index_bytes=self._index_bytes)
        # astropy_healpix imports astropy.coordinates (half a second): at open,
        # not in the first cone search.
        importlib.import_module("astropy_healpix")
        healpix.warm_up()
        self.catalog_dir = Path(catalog_dir).resolve()
        self._lock = threading.Lock()
        self._con = duckdb.connect(":memory:")
        self._con.execute(
            "SET GLOBAL integer_division = true"
        )  # ADQL/SQL: INTEGER / INTEGER is exact
        self._con.execute("SET GLOBAL autoinstall_known_extensions = false")
        self._con.execute("SET GLOBAL autoload_known_extensions = false")
        self._con.execute("SET GLOBAL parquet_metadata_cache = true")
        if threads is None and os.environ.get("SKYDM_CATALOG_THREADS", "").strip().isdigit():
            threads = int(os.environ["SKYDM_CATALOG_THREADS"])
        if threads:
            self._con.execute(f"SET GLOBAL threads = {int(threads)}")
        self._con.execute(f"CREATE SCHEMA {_quote(CATALOG_SCHEMA)}")
        self._con.execute(f"CREATE SCHEMA {_quote(TAP_SCHEMA_NAME)}")
        self._con.execute(f"CREATE SCHEMA {_quote(OBSLOC_SCHEMA)}")
        root = str(self.catalog_dir).rstrip("/") + "/"
        self._con.execute(f"SET GLOBAL allowed_directories = [{_literal(root)}]")
        self._con.execute("SET GLOBAL enable_external_access = false")
        self._con.execute("SET GLOBAL lock_configuration = true")
        self._tables: list[TableInfo] = []
        self._schema = TapSchema([])
        self._stamp: tuple[object, ...] | None = None
        self.refresh()

    # --- metadata --------------------------------------------------------------------

    def _current_stamp(self) -> tuple[object, ...]:
        try:
            return (os.stat(self.catalog_dir).st_mtime_ns,)
        except FileNotFoundError:
            return (None,)

    def refresh(self) -> None:
        """Re-read the catalog's tables if any were loaded, replaced or dropped."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            tables = [
                t
                for t in list_tables(self.catalog_dir)
                if t.definition.schema in (CATALOG_SCHEMA, OBSLOC_SCHEMA)
            ]
            new = {(t.definition.schema, t.name) for t in tables}
            view_files: dict[tuple[str, str], list[Path]] = {}
            for schema_name, name in {(t.definition.schema, t.name) for t in self._tables} - new:
                self._con.execute(f"DROP VIEW IF EXISTS {_quote(schema_name)}.{_quote(name)}")
            for t in tables:
                # An explicit file list spares every query a directory listing (a glob).
                view_files[(t.definition.schema, t.name)] = t.files
                files = ", ".join(
                    _literal(str(f)) for f in view_files[(t.definition.schema, t.name)]
                )
                view = f"{_quote(t.definition.schema)}.{_quote(t.name)}"
                self._con.execute(
                    f"CREATE OR REPLACE VIEW {view} AS "
                    f"SELECT * FROM read_parquet([{files}], hive_partitioning = true, "
                    f"hive_types = {{'{PARTITION_COL}': BIGINT}})"
                )
            schema = TapSchema([t.definition for t in tables])
            for name, arrow in schema.tap_tables().items():
                self._con.register("_skydm_tap_rows", arrow)
                self._con.execute(
                    f"CREATE OR REPLACE TABLE {_quote(TAP_SCHEMA_NAME)}.{_quote(name)} AS "
                    "SELECT * FROM _skydm_tap_rows"
                )
                self._con.unregister("_skydm_tap_rows")
            self._cones.close()
            self._cones = ConeReader(tables, view_files, index_bytes=self._index_bytes)
            self._tables, self._schema, self._stamp = tables, schema, stamp

    def tap_schema(self) -> TapSchema:
        self.refresh()
        return self._schema

    def _partition_orders(self) -> dict[str, int]:
        return {t.definition.qualified: t.partition_order for t in self._tables}

    # --- queries ---------------------------------------------------------------------

    def answer_from_memory(
        self, adql: str, *, maxrec: int | None = None
    ) -> tuple[list[ColumnInfo], Iterator[pa.RecordBatch], Callable[[], bool]] | None:
        """A cone search of a cached shape that memory shows to hold no row; else None.

        See :meth:`CatalogEngine.answer_from_memory` and
        :meth:`ConeReader.read_from_memory`: the catalog must not have
        changed since it was last read, the query's shape must be in the
        translation cache, and the files the cone may hit must have their
        ``_healpix`` columns in memory.
        """
        if not self.direct_cones or self._translations is None:
            return None
        if self._current_stamp() != self._stamp:
            return None  # reloaded: refresh() (in iter_batches) reads it again
        translation = self._translations.lookup(
            adql,
            dialect=self.dialect,
            schema=self._schema,
            maxrec=maxrec,
            partition_orders=self._partition_orders(),
        )
        if translation is None or translation.cone is None:
            return None
        table = self._cones.read_from_memory(translation.cone)
        if table is None:
            return None
        raw = iter(table.to_batches(max_chunksize=BATCH_ROWS))
        _, columns, batches, overflow = self._shape(translation, table.schema, raw, maxrec)
        return columns, batches, overflow

    def _run(
        self,
        translation: Translation,
        cancel: threading.Event | None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        import duckdb

        if translation.cone is not None and self.direct_cones and not uploads:
            if cancel is not None and cancel.is_set():
                raise QueryCancelledError("the query was cancelled")
            table = self._cones.read(translation.cone, translation.limit)
            if table is not None:
                return table.schema, iter(table.to_batches(max_chunksize=BATCH_ROWS))
        cursor = self._con.cursor()
        for name, upload in (uploads or {}).items():
            # Registered on this query's own cursor: no other query can see it.
            cursor.register(self._upload_name(name)[1], upload.data)
        done = threading.Event()
        watch_cancel(cancel, cursor.interrupt, done)
        try:
            if translation.limit is not None and translation.limit <= SMALL_RESULT_ROWS:
                # The DB-API path costs ~2 ms less per query than the relational
                # one, but materialises the result first: for bounded results only.
                reader = cursor.execute(translation.sql).to_arrow_reader(BATCH_ROWS)
            else:
                reader = cursor.sql(translation.sql).to_arrow_reader(BATCH_ROWS)
        except duckdb.InterruptException:
            done.set()
            cursor.close()
            raise QueryCancelledError("the query was cancelled") from None
        except duckdb.Error as exc:
            done.set()
            cursor.close()
            raise QueryFailedError(f"DuckDB could not run the query: {exc}") from exc

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    yield batch
            except (duckdb.InterruptException, pa.ArrowInvalid) as exc:
                if cancel is not None and cancel.is_set():
                    raise QueryCancelledError("the query was cancelled") from None
                raise SkydmError(f"DuckDB failed while reading the result: {exc}") from exc
            finally:
                done.set()
                cursor.close()

        return reader.schema, batches()

    def close(self) -> None:
        self._cones.close()
        self._con.close()
