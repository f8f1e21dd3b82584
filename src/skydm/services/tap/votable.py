"""VOTable output: streaming BINARY2 and TABLEDATA writers, and error documents.

Results are written batch by batch, so a result of any size streams out with
bounded memory: the header (``RESOURCE``, the leading ``QUERY_STATUS`` INFO and
the ``FIELD`` list) first, then each Arrow record batch encoded on its own,
then the footer, which carries the trailing ``QUERY_STATUS`` INFO saying
``OVERFLOW`` (TAP 1.1 §4.9.1) or ``ERROR`` when the query failed part-way.

Both encoders are vectorised over whole batches (numpy for BINARY2, Arrow
compute kernels for TABLEDATA); no Python loop runs per row except for the
rare ``unicodeChar`` columns.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VOTABLE_NS = "http://www.ivoa.net/xml/VOTable/v1.3"
XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
VOTABLE_OPEN = (
    f'<VOTABLE version="1.4" xmlns="{VOTABLE_NS}" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
)

#: VOTable numeric datatypes and the Arrow type their values are cast to.
_NUMERIC: dict[str, pa.DataType] = {
    "unsignedByte": pa.uint8(),
    "short": pa.int16(),
    "int": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
}
_BIG_ENDIAN = {
    "unsignedByte": ">u1",
    "short": ">i2",
    "int": ">i4",
    "long": ">i8",
    "float": ">f4",
    "double": ">f8",
}
#: TAP 1.0 (``adql:``) datatypes as VOTable (datatype, arraysize, xtype).
_ADQL_TYPES: dict[str, tuple[str, str | None, str | None]] = {
    "SMALLINT": ("short", None, None),
    "INTEGER": ("int", None, None),
    "BIGINT": ("long", None, None),
    "REAL": ("float", None, None),
    "DOUBLE": ("double", None, None),
    "BOOLEAN": ("boolean", None, None),
    "CHAR": ("char", "*", None),
    "VARCHAR": ("char", "*", None),
    "CLOB": ("char", "*", None),
    "TIMESTAMP": ("char", "*", "timestamp"),
    "POINT": ("double", "2", "point"),
    "CIRCLE": ("double", "3", "circle"),
    "POLYGON": ("double", "*", "polygon"),
    "REGION": ("char", "*", "adql:REGION"),
    "BINARY": ("unsignedByte", "*", None),
    "VARBINARY": ("unsignedByte", "*", None),
    "BLOB": ("unsignedByte", "*", None),
}
_VOTABLE_TYPES = {*_NUMERIC, "boolean", "char", "unicodeChar"}


@dataclass(frozen=True)
class FieldSpec:
    """One output column as it is declared in the VOTable ``FIELD``.

    Attributes
    ----------
    name : str
        Column name.
    datatype : str
        VOTable datatype (``double``, ``long``, ``char``, ``boolean``...).
    arraysize : str or None
        VOTable arraysize: ``None`` for a scalar, ``"*"`` or ``"n*"`` for a
        variable-length array, ``"n"`` for a fixed one.
    xtype, unit, ucd, description : str or None
        Further metadata carried over from the engine's column description.
    """

    name: str
    datatype: str
    arraysize: str | None = None
    xtype: str | None = None
    unit: str | None = None
    ucd: str | None = None
    description: str | None = None

    @property
    def fixed_size(self) -> int | None:
        """The element count of a fixed-size array, else ``None``."""
        if self.arraysize is None or self.arraysize.endswith("*"):
            return None
        return int(np.prod([int(d) for d in self.arraysize.split("x")]))

    def field_xml(self) -> str:
        """The ``FIELD`` element."""
        attrs = f"name={quoteattr(self.name)} datatype={quoteattr(self.datatype)}"
        for key in ("arraysize", "xtype", "unit", "ucd"):
            value = getattr(self, key)
            if value:
                attrs += f" {key}={quoteattr(value)}"
        if self.description:
            return f"<FIELD {attrs}><DESCRIPTION>{escape(self.description)}</DESCRIPTION></FIELD>"
        return f"<FIELD {attrs}/>"


def _spec_from_arrow(name: str, dtype: pa.DataType) -> tuple[str, str | None, str | None]:
    """VOTable (datatype, arraysize, xtype) that represents Arrow type ``dtype``."""
    if pa.types.is_boolean(dtype):
        return "boolean", None, None
    if pa.types.is_int8(dtype) or pa.types.is_int16(dtype):
        return "short", None, None
    if pa.types.is_uint8(dtype):
        return "unsignedByte", None, None
    if pa.types.is_int32(dtype) or pa.types.is_uint16(dtype):
        return "int", None, None
    if pa.types.is_integer(dtype):
        return "long", None, None
    if pa.types.is_float16(dtype) or pa.types.is_float32(dtype):
        return "float", None, None
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "double", None, None
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "char", "*", "timestamp"
    if pa.types.is_fixed_size_list(dtype):
        inner, _, _ = _spec_from_arrow(name, dtype.value_type)
        return inner, str(dtype.list_size), None
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        inner, _, _ = _spec_from_arrow(name, dtype.value_type)
        return inner, "*", None
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        return "unsignedByte", "*", None
    return "char", "*", None


def field_specs(columns: Sequence[Any], schema: pa.Schema | None) -> list[FieldSpec]:
    """Declare the output columns from the engine's metadata and the data's Arrow types.

    The engine's ``datatype``/``arraysize`` win where they name a VOTable (or
    TAP 1.0 ``adql:``) type, so that results agree with ``TAP_SCHEMA``; the
    Arrow type of the first batch decides otherwise.  A ``char`` without an
    arraysize is declared ``*`` because ADQL strings have no fixed length.
    """
    try:
        key = (tuple(columns), schema)
        hash(key)
    except TypeError:  # column descriptions that cannot be keyed: made each time
        return _field_specs(columns, schema)
    return list(_remembered_specs(*key))


@functools.lru_cache(maxsize=256)
def _remembered_specs(columns: tuple[Any, ...], schema: pa.Schema | None) -> tuple[FieldSpec, ...]:
    """One result shape's specs (the same columns and types come back query after query)."""
    return tuple(_field_specs(columns, schema))


def _field_specs(columns: Sequence[Any], schema: pa.Schema | None) -> list[FieldSpec]:
    specs = []
    for i, col in enumerate(columns):
        datatype = getattr(col, "datatype", None)
        arraysize = getattr(col, "arraysize", None)
        xtype = getattr(col, "xtype", None)
        if isinstance(datatype, str) and datatype.lower().startswith("adql:"):
            datatype, arraysize, adql_xtype = _ADQL_TYPES.get(
                datatype[5:].upper(), ("char", "*", None)
            )
            xtype = xtype or adql_xtype
        if datatype not in _VOTABLE_TYPES:
            arrow_type = schema.field(i).type if schema is not None else pa.string()
            datatype, arraysize, arrow_xtype = _spec_from_arrow(col.name, arrow_type)
            xtype = xtype or arrow_xtype
        if datatype in ("char", "unicodeChar") and not arraysize:
            arraysize = "*"
        specs.append(
            FieldSpec(
                name=col.name,
                datatype=datatype,
                arraysize=str(arraysize) if arraysize else None,
                xtype=xtype or None,
                unit=getattr(col, "unit", None) or None,
                ucd=getattr(col, "ucd", None) or None,
                description=getattr(col, "description", None) or None,
            )
        )
    return specs


def _as_strings(arr: pa.Array) -> pa.Array:
    """Arrow values as strings; timestamps in ISO 8601 with a ``T``."""
    if pa.types.is_timestamp(arr.type):
        return pc.strftime(arr, format="%Y-%m-%dT%H:%M:%S")
    if pa.types.is_date(arr.type):
        return pc.strftime(arr, format="%Y-%m-%d")
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_string(arr.type):
        return arr
    return arr.cast(pa.string())


def header(specs: Sequence[FieldSpec], *, query: str | None, encoding: str) -> bytes:
    """The document up to the start of the table data (``encoding``: BINARY2/TABLEDATA)."""
    head, tail = _header_parts(tuple(specs), encoding)
    if query is None:
        return head + tail
    return head + f'<INFO name="QUERY" value={quoteattr(query)}/>\n'.encode() + tail


@functools.lru_cache(maxsize=256)
def _header_parts(specs: tuple[FieldSpec, ...], encoding: str) -> tuple[bytes, bytes]:
    """The header before and after the ``QUERY`` INFO; one result shape's, remembered.

    Services answer the same few shapes again and again (a cone search's
    columns), and escaping every attribute of every FIELD cost as much as
    the search itself.
    """
    head = [XML_DECL, VOTABLE_OPEN, '<RESOURCE type="results">\n']
    head.append('<INFO name="QUERY_STATUS" value="OK"/>\n')
    parts = ["<TABLE>\n"]
    if encoding == "TABLEDATA":
        specs = tuple(_tabledata_spec(spec) for spec in specs)
    parts.extend(spec.field_xml() + "\n" for spec in specs)
    if encoding == "BINARY2":
        parts.append('<DATA><BINARY2><STREAM encoding="base64">\n')
    else:
        parts.append("<DATA><TABLEDATA>\n")
    return "".join(head).encode(), "".join(parts).encode()


def _tabledata_spec(spec: FieldSpec) -> FieldSpec:
    """Text columns of a TABLEDATA document declared ``unicodeChar``.

    VOTable ``char`` is ASCII; in TABLEDATA the cell text is the same either
    way, so a free-text column is declared ``unicodeChar`` and a reader
    decodes any character in it rightly (BINARY2 keeps ``char``: its bytes
    differ, and ``?`` stands for characters beyond ASCII there).  Text with a
    fixed format (``xtype`` timestamp, region) stays ``char``.
    """
    if spec.datatype != "char" or spec.xtype or spec.arraysize not in ("*", None):
        return spec
    return dataclasses.replace(spec, datatype="unicodeChar")


def footer(*, encoding: str, overflow: bool, error: str | None = None) -> bytes:
    """The document after the table data, with the trailing ``QUERY_STATUS``."""
    close = "</STREAM></BINARY2></DATA>" if encoding == "BINARY2" else "</TABLEDATA></DATA>"
    tail = f"{close}\n</TABLE>\n"
    if error is not None:
        tail += f'<INFO name="QUERY_STATUS" value="ERROR">{escape(error)}</INFO>\n'
    elif overflow:
        tail += '<INFO name="QUERY_STATUS" value="OVERFLOW"/>\n'
    return (tail + "</RESOURCE>\n</VOTABLE>\n").encode()


def error_document(message: str) -> bytes:
    """A VOTable error document (DALI §5.2): ``QUERY_STATUS`` ``ERROR`` with the message."""
    return (
        f'{XML_DECL}{VOTABLE_OPEN}<RESOURCE type="results">\n'
        f'<INFO name="QUERY_STATUS" value="ERROR">{escape(message)}</INFO>\n'
        "</RESOURCE>\n</VOTABLE>\n"
    ).encode()


# --- BINARY2 -------------------------------------------------------------------------------

# A row of BINARY2 is the null-flag bytes followed by every field's bytes.  Each
# field contributes, per row, a run of bytes of some length; a "part" is those
# runs for all rows of a batch, as (per-row lengths, concatenated bytes).
Part = tuple[np.ndarray, np.ndarray]


def _fixed_part(values: np.ndarray) -> Part:
    """A part whose every row has the same width (``values`` shaped (n,) or (n, k))."""
    n = values.shape[0]
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(n, -1)
    return np.full(n, raw.shape[1], dtype=np.int64), raw.reshape(-1)


def _numeric_values(arr: pa.Array, datatype: str) -> np.ndarray:
    """Numbers as a big-endian numpy array; nulls become NaN (floats) or 0."""
    target = _NUMERIC[datatype]
    cast = arr.cast(target, safe=False) if arr.type != target else arr
    fill = pa.scalar(float("nan") if datatype in ("float", "double") else 0, target)
    filled = cast.fill_null(fill) if cast.null_count else cast
    return np.asarray(filled.to_numpy(zero_copy_only=False)).astype(_BIG_ENDIAN[datatype])


def _variable_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per-row byte lengths and concatenated bytes of a string or binary array."""
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.binary())
    n = len(arr)
    _validity, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset : arr.offset + n + 1]
    lengths = np.diff(offsets).astype(np.int64)
    if arr.null_count:
        lengths[np.asarray(arr.is_null())] = 0
        # Null entries may own bytes in the buffer; take only the valid runs.
        starts = offsets[:-1]
        take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        index = take + np.arange(int(lengths.sum()))
        data = np.frombuffer(data_buf, dtype=np.uint8)[index] if data_buf else np.empty(0, "u1")
    elif data_buf is None:
        data = np.empty(0, dtype=np.uint8)
    else:
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return lengths, data


def _length_prefix(counts: np.ndarray) -> Part:
    return _fixed_part(counts.astype(">u4"))


def _binary2_parts(arr: pa.Array, spec: FieldSpec) -> list[Part]:
    """The BINARY2 parts (one or two) encoding column ``arr`` as ``spec`` declares."""
    n = len(arr)
    if spec.datatype == "boolean" and spec.arraysize is None:
        flags = np.full(n, ord("?"), dtype=np.uint8)
        if pa.types.is_boolean(arr.type):
            values = np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        else:
            values = np.asarray(arr.cast(pa.bool_()).fill_null(False).to_numpy(), dtype=bool)
        valid = ~np.asarray(arr.is_null()) if arr.null_count else np.ones(n, bool)
        flags[valid & values] = ord("T")
        flags[valid & ~values] = ord("F")
        return [_fixed_part(flags)]
    if spec.datatype in _NUMERIC and spec.arraysize is None:
        return [_fixed_part(_numeric_values(arr, spec.datatype))]
    if spec.datatype == "char":
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            strings = arr
        else:
            strings = _as_strings(arr)
            # VOTable 1.4 ``char`` is ASCII and readers (astropy) decode it so;
            # other characters survive only in TABLEDATA, CSV and Parquet.
            if not pc.all(pc.string_is_ascii(strings)).as_py():
                strings = pc.replace_substring_regex(strings, "[^\\x00-\\x7f]", "?")
        lengths, data = _variable_bytes(strings)
        width = spec.fixed_size
        if width is None:
            return [_length_prefix(lengths), (lengths, data)]
        # Fixed-width char: each value truncated or NUL-padded to ``width`` bytes.
        out = np.zeros((n, width), dtype=np.uint8)
        rows = np.repeat(np.arange(n), lengths)
        pos = np.arange(len(data)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = pos < width
        out[rows[keep], pos[keep]] = data[keep]
        return [_fixed_part(out)]
    if spec.datatype == "unicodeChar":
        encoded = [(s or "").encode("utf-16-be") for s in _as_strings(arr).to_pylist()]
        counts = np.array([len(b) // 2 for b in encoded], dtype=np.int64)
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return [_length_prefix(counts), (counts * 2, data)]
    if spec.datatype in _NUMERIC:  # arrays of numbers
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            counts, data = _variable_bytes(arr)
            return [_length_prefix(counts), (counts, data)]
        lists = arr.cast(pa.list_(arr.type.value_type)) if not pa.types.is_list(arr.type) else arr
        counts = np.asarray(lists.value_lengths().fill_null(0), dtype=np.int64)
        flat = _numeric_values(lists.flatten(), spec.datatype)
        width = spec.fixed_size
        itemsize = flat.dtype.itemsize
        raw = flat.view(np.uint8)
        if width is None:
            return [_length_prefix(counts), (counts * itemsize, raw)]
        if np.any((counts != width) & (counts != 0)):
            raise ValueError(f"column {spec.name!r} holds arrays not of the declared size {width}")
        # Null (empty) arrays of a fixed-size column are written as NaN/0 of full width.
        full = np.zeros((n, width), dtype=flat.dtype)
        if datatype_is_float(spec.datatype):
            full[:] = np.nan
        full[counts == width] = flat.reshape(-1, width)
        return [_fixed_part(full)]
    raise ValueError(f"cannot encode column {spec.name!r} as datatype {spec.datatype!r}")


def datatype_is_float(datatype: str) -> bool:
    """Whether ``datatype`` is a VOTable floating-point type."""
    return datatype in ("float", "double")


def _interleave(parts: Sequence[Part]) -> bytes:
    """Rows of concatenated parts: row r is part0[r] + part1[r] + ...; vectorised."""
    lengths = np.stack([p[0] for p in parts], axis=1)  # (n, k)
    row_total = lengths.sum(axis=1)
    row_start = np.cumsum(row_total) - row_total
    field_start = row_start[:, None] + np.cumsum(lengths, axis=1) - lengths
    out = np.empty(int(row_total.sum()), dtype=np.uint8)
    for j, (lens, data) in enumerate(parts):
        if len(data) == 0:
            continue
        source_start = np.cumsum(lens) - lens
        dest = np.repeat(field_start[:, j] - source_start, lens) + np.arange(len(data))
        out[dest] = data
    return out.tobytes()


def _null_flags(batch: pa.RecordBatch) -> np.ndarray:
    """The BINARY2 null-flag bytes of each row (first column in the top bit)."""
    k = batch.num_columns
    flags = np.zeros((batch.num_rows, (k + 7) // 8), dtype=np.uint8)
    for j, col in enumerate(batch.columns):
        if col.null_count:
            flags[:, j // 8] |= np.asarray(col.is_null(), dtype=np.uint8) << np.uint8(7 - j % 8)
    return flags


class Binary2Encoder:
    """Encode record batches as one base64 BINARY2 stream, batch by batch."""

    encoding = "BINARY2"

    def __init__(self, specs: Sequence[FieldSpec]) -> None:
        self.specs = list(specs)
        self._carry = b""  # bytes held back so that each base64 chunk is a multiple of 3

    def batch(self, batch: pa.RecordBatch) -> bytes:
        """The base64 text of one batch (complete lines)."""
        if batch.num_rows == 0:
            return b""
        parts: list[Part] = [_fixed_part(_null_flags(batch))]
        for col, spec in zip(batch.columns, self.specs, strict=True):
            parts.extend(_binary2_parts(col, spec))
        raw = self._carry + _interleave(parts)
        cut = len(raw) - len(raw) % 57  # 57 bytes make one 76-character base64 line
        self._carry = raw[cut:]
        return base64.encodebytes(raw[:cut])

    def flush(self) -> bytes:
        """The base64 text of the bytes still held back."""
        tail, self._carry = self._carry, b""
        return base64.encodebytes(tail) if tail else b""


# --- TABLEDATA -----------------------------------------------------------------------------


def _xml_text(strings: pa.Array) -> pa.Array:
    for old, new in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        strings = pc.replace_substring(strings, old, new)
    return strings


def _td_strings(arr: pa.Array, spec: FieldSpec) -> pa.Array:
    """Cell text of column ``arr`` (empty for NULL)."""
    dtype = arr.type
    if spec.datatype == "boolean" and pa.types.is_boolean(dtype):
        out = pc.if_else(arr, "T", "F")
    elif pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        out = arr.cast(pa.string())
        out = pc.replace_substring_regex(out, "^nan$", "NaN")
        out = pc.replace_substring_regex(out, "^inf$", "+Inf")
        out = pc.replace_substring_regex(out, "^-inf$", "-Inf")
    elif (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    ):
        parts = arr.cast(pa.list_(pa.string()))
        out = pc.binary_join(parts, " ")
    elif spec.datatype in _NUMERIC and spec.arraysize is None:
        out = arr.cast(_NUMERIC[spec.datatype], safe=False).cast(pa.string())
    else:
        out = _xml_text(_as_strings(arr))
    return out.fill_null("")


class TabledataEncoder:
    """Encode record batches as TABLEDATA rows, batch by batch."""

    encoding = "TABLEDATA"

    def __init__(self, specs: Sequence[FieldSpec]) -> None:
        self.specs = list(specs)

    def batch(self, batch: pa.RecordBatch) -> bytes:
        """The ``<TR>`` elements of one batch."""
        if batch.num_rows == 0:
            return b""
        args: list[Any] = ["<TR>"]
        for col, spec in zip(batch.columns, self.specs, strict=True):
            args.extend(["<TD>", _td_strings(col, spec), "</TD>"])
        args.append("</TR>\n")
        rows = pc.binary_join_element_wise(*args, "")
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
        start, end = offsets[rows.offset], offsets[rows.offset + len(rows)]
        return bytes(memoryview(rows.buffers()[2])[start:end])

    def flush(self) -> bytes:
        """Nothing is held back in TABLEDATA."""
        return b""
