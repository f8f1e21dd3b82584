"""The catalog engine interface every backend implements, and what it returns.

A :class:`CatalogEngine` runs ADQL against the catalog.  It translates the
query with :func:`skydm.catalog.adql.compile_query` for its own SQL dialect,
runs it, and streams the result as Arrow record batches with the VOTable
metadata of each column.  The DuckDB and PostgreSQL engines pass one contract
test suite (``tests/catalog/test_engine_contract.py``).
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa

from skydm.catalog.adql import OutputColumn, Translation, compile_query
from skydm.catalog.adql.cache import TranslationCache
from skydm.catalog.adql.functions import Dialect
from skydm.catalog.tapschema import UPLOAD_SCHEMA, TableRef, TapSchema
from skydm.catalog.uploads import UploadedTable
from skydm.errors import SkydmError, UserError

BATCH_ROWS = 65536


class QueryCancelledError(SkydmError):
    """The query was cancelled (its ``cancel`` event was set) before it finished."""


class QueryFailedError(UserError):
    """The engine refused a query that passed translation (a type mismatch, say)."""


@dataclass(frozen=True)
class ColumnInfo:
    """VOTable metadata of one result column."""

    name: str
    datatype: str
    arraysize: str | None = None
    unit: str = ""
    ucd: str = ""
    description: str = ""
    xtype: str | None = None


@dataclass
class QueryResult:
    """A complete query result.

    Attributes
    ----------
    table : pyarrow.Table
        The rows (at most maxrec).
    overflow : bool
        True when more rows existed than maxrec.
    columns : list of ColumnInfo
        Metadata of each column, for VOTable output.
    """

    table: pa.Table
    overflow: bool
    columns: list[ColumnInfo]


def votable_type(t: pa.DataType) -> tuple[str, str | None, str | None]:
    """(datatype, arraysize, xtype) of the VOTable field for an Arrow type."""
    if pa.types.is_boolean(t):
        return "boolean", None, None
    if pa.types.is_uint8(t):
        return "unsignedByte", None, None
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return "short", None, None
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "int", None, None
    if pa.types.is_integer(t):
        return "long", None, None
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return "float", None, None
    if pa.types.is_floating(t):
        return "double", None, None
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "char", "*", "timestamp"
    return "char", "*", None


def normalise_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type both engines return for a value of SQL type ``t``.

    Exact decimals (DuckDB HUGEINT sums and DECIMAL literals, PostgreSQL
    NUMERIC) become float64, as PostgreSQL's NUMERIC is read as float; unsigned
    64-bit integers become int64 (VOTable has no unsigned long).
    """
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_uint64(t) or pa.types.is_uint32(t):
        return pa.int64()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_null(t):
        return pa.string()
    return t


def normalise_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` cast to the normalised ``schema``."""
    if batch.schema.equals(schema):
        return batch
    arrays = [batch.column(i).cast(schema.field(i).type) for i in range(batch.num_columns)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def column_infos(outputs: list[OutputColumn], schema: pa.Schema) -> list[ColumnInfo]:
    """VOTable metadata of result columns: from TAP_SCHEMA where known, else from the type."""
    infos = []
    for out, f in zip(outputs, schema, strict=True):
        datatype, arraysize, xtype = votable_type(f.type)
        c = out.column
        if c is not None:
            infos.append(
                ColumnInfo(out.name, datatype, arraysize, c.unit, c.ucd, c.description, c.xtype)
            )
        else:
            infos.append(ColumnInfo(out.name, datatype, arraysize, xtype=xtype))
    return infos


#: Result shapes remembered: id(output columns) -> (those columns, raw schema, schema, infos).
_SHAPES: dict[int, tuple[list[OutputColumn], pa.Schema, pa.Schema, list[ColumnInfo]]] = {}
_SHAPES_SIZE = 256


def _result_shape(
    outputs: list[OutputColumn], raw_schema: pa.Schema
) -> tuple[pa.Schema, list[ColumnInfo]]:
    """The output schema and column metadata of a result, remembered per query shape.

    Every query of a cached shape shares its translation's ``columns`` list,
    so that list's identity (kept alive by the entry, so its id is not
    reused) and the engine's schema key a shape; rebuilding both per query
    cost a tenth of a cone search.
    """
    found = _SHAPES.get(id(outputs))
    if found is not None and found[0] is outputs and found[1].equals(raw_schema):
        return found[2], list(found[3])  # a copy: callers own their list
    schema = pa.schema(
        [
            pa.field(out.name, normalise_type(f.type))
            for out, f in zip(outputs, raw_schema, strict=True)
        ]
    )
    columns = column_infos(outputs, schema)
    if len(_SHAPES) >= _SHAPES_SIZE:
        _SHAPES.clear()  # rare: a service sees few shapes
    _SHAPES[id(outputs)] = (outputs, raw_schema, schema, columns)
    return schema, list(columns)


class CatalogEngine(abc.ABC):
    """Runs ADQL queries on a catalog.

    Subclasses implement :meth:`tap_schema`, :meth:`_run` and :meth:`close`;
    :meth:`execute` and :meth:`iter_batches` are shared, so that maxrec and
    overflow mean the same on every engine.
    """

    name: str
    dialect: Dialect

    @abc.abstractmethod
    def tap_schema(self) -> TapSchema:
        """The queryable tables (catalog tables and TAP_SCHEMA)."""

    @abc.abstractmethod
    def _run(
        self,
        translation: Translation,
        cancel: threading.Event | None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run translated SQL (with ``uploads`` visible): the result's schema and batches."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine's connections."""

    _translations: TranslationCache | None = None

    def _partition_orders(self) -> dict[str, int]:
        return {}

    def _upload_name(self, name: str) -> tuple[str | None, str]:
        """Engine (schema, table) under which upload ``name`` is visible to its query."""
        return None, f"tap_upload_{name}"

    def translate(
        self,
        adql: str,
        *,
        maxrec: int | None = None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> Translation:
        """Validate and translate ``adql`` for this engine (raises AdqlError).

        ``uploads`` (name -> table) are queryable as ``TAP_UPLOAD.<name>``.
        Queries without uploads go through a cache of query shapes
        (:mod:`skydm.catalog.adql.cache`).
        """
        if uploads:
            refs = [
                TableRef(UPLOAD_SCHEMA, u.definition, self._upload_name(name))
                for name, u in uploads.items()
            ]
            return compile_query(
                adql,
                dialect=self.dialect,
                schema=self.tap_schema().with_uploads(refs),
                maxrec=maxrec,
                partition_orders=self._partition_orders(),
                upload_data={name: u.data for name, u in uploads.items()},
            )
        if self._translations is None:
            self._translations = TranslationCache()
        return self._translations.compile(
            adql,
            dialect=self.dialect,
            schema=self.tap_schema(),
            maxrec=maxrec,
            partition_orders=self._partition_orders(),
        )

    def answer_from_memory(
        self, adql: str, *, maxrec: int | None = None
    ) -> tuple[list[ColumnInfo], Iterator[pa.RecordBatch], Callable[[], bool]] | None:
        """The result of a query this engine answers from memory alone, at once; else None.

        For callers that must not wait (an event loop): a query answered here
        opens no file, starts no thread and compiles nothing, so it costs a
        fraction of a millisecond; None means "run it with
        :meth:`iter_batches`" (which answers every query).  This engine
        answers none from memory.
        """
        return None

    def iter_batches(
        self,
        adql: str,
        *,
        maxrec: int | None = None,
        cancel: threading.Event | None = None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> tuple[list[ColumnInfo], Iterator[pa.RecordBatch], Callable[[], bool]]:
        """Run a query and stream its result.

        Parameters
        ----------
        adql : str
            The ADQL query.
        maxrec : int, optional
            Most rows to return.
        cancel : threading.Event, optional
            Setting it interrupts the query; the iterator then raises
            :class:`QueryCancelledError`.
        uploads : mapping of str to UploadedTable, optional
            Tables the query may read as ``TAP_UPLOAD.<name>``, visible to this
            query only (see :func:`skydm.catalog.uploads.read_upload`).

        Returns
        -------
        columns : list of ColumnInfo
            Metadata of the result columns.
        batches : iterator of pyarrow.RecordBatch
            The rows, at most ``maxrec`` in all.
        overflow : callable
            After the batches are exhausted, whether more rows existed than maxrec.

        Raises
        ------
        AdqlError
            When the query is not valid ADQL on this catalog (before anything runs).
        """
        _, columns, batches, overflow = self._stream(adql, maxrec, cancel, uploads)
        return columns, batches, overflow

    def _stream(
        self,
        adql: str,
        maxrec: int | None,
        cancel: threading.Event | None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> tuple[pa.Schema, list[ColumnInfo], Iterator[pa.RecordBatch], Callable[[], bool]]:
        translation = self.translate(adql, maxrec=maxrec, uploads=uploads)
        raw_schema, raw = self._run(translation, cancel, uploads or None)
        return self._shape(translation, raw_schema, raw, maxrec)

    def _shape(
        self,
        translation: Translation,
        raw_schema: pa.Schema,
        raw: Iterator[pa.RecordBatch],
        maxrec: int | None,
    ) -> tuple[pa.Schema, list[ColumnInfo], Iterator[pa.RecordBatch], Callable[[], bool]]:
        """The result of ``translation`` with the output names, normalised types and maxrec."""
        schema, columns = _result_shape(translation.columns, raw_schema)
        state = {"overflow": False}

        def batches() -> Iterator[pa.RecordBatch]:
            seen = 0
            for batch in raw:
                batch = normalise_batch(batch.rename_columns(schema.names), schema)
                if maxrec is not None and seen + batch.num_rows > maxrec:
                    state["overflow"] = True
                    batch = batch.slice(0, maxrec - seen)
                seen += batch.num_rows
                if batch.num_rows:
                    yield batch
                if state["overflow"]:
                    break

        return schema, columns, batches(), lambda: state["overflow"]

    def execute(
        self,
        adql: str,
        *,
        maxrec: int | None = None,
        cancel: threading.Event | None = None,
        uploads: Mapping[str, UploadedTable] | None = None,
    ) -> QueryResult:
        """Run a query and return its whole result (see :meth:`iter_batches`)."""
        schema, columns, batches, overflow = self._stream(adql, maxrec, cancel, uploads)
        table = pa.Table.from_batches(list(batches), schema=schema)
        return QueryResult(table, overflow(), columns)

    def __enter__(self) -> CatalogEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Watcher:
    """One daemon thread that watches every running query's cancel event.

    A thread per query (polling its event) costs a thread start per query and
    dozens of wake-ups every 50 ms under load; one shared thread does the same
    for all of them.  Entries are (cancel, interrupt, done, deadline): at the
    deadline the cancel event is set; when it is set before ``done``,
    ``interrupt`` is called once.
    """

    PERIOD = 0.05

    def __init__(self) -> None:
        self._entries: list[
            tuple[threading.Event, Callable[[], None] | None, threading.Event, float | None]
        ] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(
        self,
        cancel: threading.Event,
        interrupt: Callable[[], None] | None,
        done: threading.Event,
        deadline: float | None = None,
    ) -> None:
        with self._lock:
            self._entries.append((cancel, interrupt, done, deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="skydm-query-cancel"
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.PERIOD)
            now = time.monotonic()
            fire = []
            with self._lock:
                keep = []
                for entry in self._entries:
                    cancel, interrupt, done, deadline = entry
                    if done.is_set():
                        continue
                    if deadline is not None and now >= deadline:
                        cancel.set()
                    if cancel.is_set():
                        if interrupt is not None:
                            fire.append(interrupt)
                        if interrupt is not None or deadline is not None:
                            continue
                    keep.append(entry)
                self._entries = keep
            for interrupt in fire:
                with contextlib.suppress(Exception):  # the query may have just finished
                    interrupt()


_WATCHER = _Watcher()


def watch_cancel(
    cancel: threading.Event | None, interrupt: Callable[[], None], done: threading.Event
) -> None:
    """Call ``interrupt`` if ``cancel`` is set before ``done`` (checked every 50 ms)."""
    if cancel is not None:
        _WATCHER.add(cancel, interrupt, done)


def cancel_after(cancel: threading.Event, seconds: float, done: threading.Event) -> None:
    """Set ``cancel`` after ``seconds`` unless ``done`` is set first."""
    _WATCHER.add(cancel, None, done, time.monotonic() + seconds)
