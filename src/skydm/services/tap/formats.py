"""Output formats of query results and the stream that encodes a result in one.

A :class:`ResultStream` pulls the engine's record batches and yields encoded
bytes; the same stream feeds a sync HTTP response and an async job's result
file, so both write results of any size with bounded memory.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from skydm.services.tap import votable
from skydm.services.tap.errors import TapParameterError


class Encoder(Protocol):
    """Turns a result into bytes: a header, each batch, then a footer."""

    def begin(self) -> bytes: ...
    def batch(self, batch: pa.RecordBatch) -> bytes: ...
    def end(self, *, overflow: bool, error: str | None = None) -> bytes: ...


class VOTableEncoder:
    """VOTable in BINARY2 or TABLEDATA serialization."""

    in_band_errors = True

    def __init__(
        self,
        specs: Sequence[votable.FieldSpec],
        schema: pa.Schema,
        *,
        query: str | None,
        encoding: str,
    ) -> None:
        self.specs = specs
        self.query = query
        self.body: votable.Binary2Encoder | votable.TabledataEncoder = (
            votable.Binary2Encoder(specs)
            if encoding == "BINARY2"
            else votable.TabledataEncoder(specs)
        )

    def begin(self) -> bytes:
        return votable.header(self.specs, query=self.query, encoding=self.body.encoding)

    def batch(self, batch: pa.RecordBatch) -> bytes:
        return self.body.batch(batch)

    def end(self, *, overflow: bool, error: str | None = None) -> bytes:
        return self.body.flush() + votable.footer(
            encoding=self.body.encoding, overflow=overflow, error=error
        )


def _flatten_lists(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Array columns as space-separated text (CSV has no arrays)."""
    columns = []
    for col in batch.columns:
        if (
            pa.types.is_list(col.type)
            or pa.types.is_fixed_size_list(col.type)
            or (pa.types.is_large_list(col.type))
        ):
            col = pc.binary_join(col.cast(pa.list_(pa.string())), " ")
        columns.append(col)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


class CsvEncoder:
    """Comma-separated values with a header line (RFC 4180 quoting where needed).

    CSV has nowhere to say that a result overflowed: clients that need to know
    ask for VOTable or Parquet (whose footer metadata carries it).
    """

    in_band_errors = False

    def __init__(
        self, specs: Sequence[votable.FieldSpec], schema: pa.Schema, *, query: str | None
    ) -> None:
        self.names = [spec.name for spec in specs]

    def begin(self) -> bytes:
        out = io.StringIO()
        import csv

        csv.writer(out, lineterminator="\r\n").writerow(self.names)
        return out.getvalue().encode()

    def batch(self, batch: pa.RecordBatch) -> bytes:
        import pyarrow.csv as pacsv

        if batch.num_rows == 0:
            return b""
        sink = pa.BufferOutputStream()
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        pacsv.write_csv(_flatten_lists(batch), sink, write_options=options)
        return bytes(sink.getvalue())

    def end(self, *, overflow: bool, error: str | None = None) -> bytes:
        return b""


class _Drain(io.RawIOBase):
    """A write-only file that hands out what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class ParquetEncoder:
    """Apache Parquet; column units, UCDs and descriptions go into field metadata.

    The file's key-value metadata gets ``QUERY_STATUS`` = ``OK`` or ``OVERFLOW``.
    """

    in_band_errors = False

    def __init__(
        self, specs: Sequence[votable.FieldSpec], schema: pa.Schema, *, query: str | None
    ) -> None:
        import pyarrow.parquet as pq

        fields = []
        for spec, fld in zip(specs, schema, strict=True):
            meta = {k: getattr(spec, k) for k in ("unit", "ucd", "description", "xtype")}
            fields.append(fld.with_metadata({k: v for k, v in meta.items() if v}))
        self.schema = pa.schema(fields)
        self.sink = _Drain()
        self.writer = pq.ParquetWriter(self.sink, self.schema, compression="zstd")
        self.query = query

    def begin(self) -> bytes:
        return self.sink.drain()

    def batch(self, batch: pa.RecordBatch) -> bytes:
        if batch.num_rows:
            if batch.schema != self.schema:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
            self.writer.write_batch(batch)
        return self.sink.drain()

    def end(self, *, overflow: bool, error: str | None = None) -> bytes:
        meta = {"QUERY_STATUS": "OVERFLOW" if overflow else "OK"}
        if self.query is not None:
            meta["QUERY"] = self.query
        self.writer.add_key_value_metadata(meta)
        self.writer.close()
        return self.sink.drain()


EncoderFactory = Callable[..., Encoder]


@dataclass(frozen=True)
class OutputFormat:
    """One output format the service offers.

    Attributes
    ----------
    key : str
        Short name, also the ``RESPONSEFORMAT`` value advertised first.
    mime : str
        MIME type declared in the capabilities and sent as ``Content-Type``.
    extension : str
        File name extension of stored results.
    aliases : tuple of str
        Further ``RESPONSEFORMAT`` values that select this format (lower case).
    make : callable
        ``make(specs, schema, query=...)`` builds the encoder.
    """

    key: str
    mime: str
    extension: str
    aliases: tuple[str, ...]
    make: EncoderFactory = field(repr=False)

    @property
    def is_votable(self) -> bool:
        """Whether this is a VOTable serialization."""
        return self.key.startswith("votable")


def _votable_b2(
    specs: Sequence[votable.FieldSpec], schema: pa.Schema, *, query: str | None
) -> Encoder:
    return VOTableEncoder(specs, schema, query=query, encoding="BINARY2")


def _votable_td(
    specs: Sequence[votable.FieldSpec], schema: pa.Schema, *, query: str | None
) -> Encoder:
    return VOTableEncoder(specs, schema, query=query, encoding="TABLEDATA")


FORMATS: tuple[OutputFormat, ...] = (
    OutputFormat(
        "votable",
        "application/x-votable+xml",
        "xml",
        (
            "application/x-votable+xml",
            "text/xml",
            "votable/b2",
            "votable/binary2",
            "application/x-votable+xml;serialization=binary2",
        ),
        _votable_b2,
    ),
    OutputFormat(
        "votable/td",
        "application/x-votable+xml;serialization=TABLEDATA",
        "xml",
        ("votable/tabledata", "application/x-votable+xml;serialization=tabledata"),
        _votable_td,
    ),
    OutputFormat("csv", "text/csv;header=present", "csv", ("text/csv",), CsvEncoder),
    OutputFormat(
        "parquet",
        "application/vnd.apache.parquet",
        "parquet",
        ("application/x-parquet",),
        ParquetEncoder,
    ),
)

_BY_NAME = {name: fmt for fmt in FORMATS for name in (fmt.key, fmt.mime.lower(), *fmt.aliases)}


def find_format(value: str | None) -> OutputFormat:
    """The output format that ``value`` (a ``RESPONSEFORMAT``) names; VOTable when ``None``.

    Raises
    ------
    TapParameterError
        When the value names no format offered.
    """
    if value is None or not value.strip():
        return FORMATS[0]
    key = value.strip().lower().replace(" ", "")
    fmt = _BY_NAME.get(key)
    if fmt is None:
        offered = ", ".join(f.key for f in FORMATS)
        raise TapParameterError("RESPONSEFORMAT", value, f"formats offered are {offered}")
    return fmt


def arrow_schema(columns: Sequence[Any], first: pa.RecordBatch | None) -> pa.Schema:
    """The result's Arrow schema: the first batch's, or strings when there is no data."""
    if first is not None:
        return first.schema
    return pa.schema([pa.field(col.name, pa.string()) for col in columns])


class ResultStream:
    """A query result on its way out, encoded in one output format.

    The constructor pulls the first batch, so errors the engine raises on
    starting the query surface before any byte is sent (and can still be
    answered with an error status).

    Parameters
    ----------
    output : OutputFormat
        The format to encode in.
    columns : list of ColumnInfo
        The engine's description of the result columns.
    batches : iterator of pyarrow.RecordBatch
        The result data.
    overflow : callable
        Says, once ``batches`` is exhausted, whether rows were cut by MAXREC.
    query : str, optional
        The query text, recorded in the output's metadata.
    """

    def __init__(
        self,
        output: OutputFormat,
        columns: Sequence[Any],
        batches: Iterator[pa.RecordBatch],
        overflow: Callable[[], bool],
        *,
        query: str | None = None,
    ) -> None:
        self.output = output
        self._batches = batches
        self._overflow = overflow
        self._first = next(batches, None)
        schema = arrow_schema(columns, self._first)
        self.specs = votable.field_specs(columns, schema)
        self.encoder = output.make(self.specs, schema, query=query)
        self.rows = 0
        self.overflow = False
        self.error: str | None = None

    def chunks(self) -> Iterator[bytes]:
        """The encoded result, piece by piece.

        An engine error after the first batch ends a VOTable with a trailing
        ``QUERY_STATUS`` ``ERROR`` (and sets :attr:`error`); other formats
        cannot say so in-band, so the error propagates and the transfer breaks.
        """
        yield self.encoder.begin()
        try:
            if self._first is not None:
                self.rows += self._first.num_rows
                yield self.encoder.batch(self._first)
                self._first = None
            for batch in self._batches:
                self.rows += batch.num_rows
                yield self.encoder.batch(batch)
        except Exception as exc:
            if not getattr(self.encoder, "in_band_errors", False):
                raise
            self.error = f"query failed after {self.rows} rows: {exc}"
            yield self.encoder.end(overflow=False, error=self.error)
            return
        self.overflow = bool(self._overflow())
        yield self.encoder.end(overflow=self.overflow)
