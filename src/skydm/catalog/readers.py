"""Read a table from Parquet, CSV, FITS, ECSV or VOTable, keeping units, UCDs and descriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from skydm.errors import BadFileError

ColumnMeta = dict[str, dict[str, str]]


def read_any(source: object) -> tuple[pa.Table, ColumnMeta]:
    """A table and per-column metadata (``unit``, ``ucd``, ``description``) from ``source``.

    Parameters
    ----------
    source : path, pyarrow.Table or astropy.table.Table
        A file (format from its extension: ``.parquet``/``.pq``, ``.csv``,
        ``.fits``/``.fit``/``.fits.gz``, ``.ecsv``, ``.vot``/``.xml``) or a table.

    Raises
    ------
    BadFileError
        When the file does not exist, has an unknown extension or cannot be read.
    """
    from astropy.table import Table

    if isinstance(source, pa.Table):
        return source, _parquet_meta(source.schema)
    if isinstance(source, Table):
        return _from_astropy(source, source)
    path = Path(str(source))
    if not path.is_file():
        raise BadFileError(path, "does not exist or is not a file")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table, _parquet_meta(table.schema)
        if name.endswith((".csv", ".csv.gz")):
            import pyarrow.csv as pacsv

            return pacsv.read_csv(path), {}
        if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            return _from_astropy(Table.read(path, format="fits", hdu=_first_table_hdu(path)), path)
        if name.endswith(".ecsv"):
            return _from_astropy(Table.read(path, format="ascii.ecsv"), path)
        if name.endswith((".vot", ".xml", ".votable")):
            return _from_astropy(Table.read(path, format="votable"), path)
    except BadFileError:
        raise
    except Exception as exc:  # each reader raises its own exception types
        raise BadFileError(path, f"cannot be read as a table: {exc}") from exc
    raise BadFileError(
        path, "has an unknown extension; give a .parquet, .csv, .fits, .ecsv or .vot file"
    )


def _first_table_hdu(path: Path) -> int:
    from astropy.io import fits

    with fits.open(path) as hdul:
        for i, hdu in enumerate(hdul):
            if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                return i
    raise BadFileError(path, "has no table extension (BINTABLE or TABLE)")


def _parquet_meta(schema: pa.Schema) -> ColumnMeta:
    # Field metadata written by skydm or by astropy (unit/ucd/description keys).
    out: ColumnMeta = {}
    for f in schema:
        md = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        keep = {k: md[k] for k in ("unit", "ucd", "description") if k in md}
        if keep:
            out[f.name] = keep
    astropy_yaml = (schema.metadata or {}).get(b"table_meta_yaml")
    if astropy_yaml:
        _merge_astropy_header(astropy_yaml.decode(), out)
    return out


def _merge_astropy_header(text: str, out: ColumnMeta) -> None:
    # Parquet written by astropy keeps units, descriptions and meta in this YAML header.
    from astropy.table.meta import get_header_from_yaml

    try:
        header = get_header_from_yaml(text.splitlines())
    except Exception:  # the header is a nicety: the table still loads without it
        return
    for col in header.get("datatype", []):
        entry = out.setdefault(str(col["name"]), {})
        for key in ("unit", "description"):
            if col.get(key):
                entry[key] = str(col[key])
        ucd = dict(col.get("meta") or {}).get("ucd")
        if ucd:
            entry["ucd"] = str(ucd)


def _from_astropy(table: Any, source: object) -> tuple[pa.Table, ColumnMeta]:
    arrays: list[pa.Array] = []
    names: list[str] = []
    meta: ColumnMeta = {}
    for name in table.colnames:
        col = table[name]
        if col.ndim > 1:
            raise BadFileError(
                source,
                f"column {name!r} holds arrays of shape {col.shape[1:]}; "
                "a catalog column must hold one value per row",
            )
        values = np.asarray(col)
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
        if values.dtype.byteorder not in ("=", "|"):
            values = values.astype(values.dtype.newbyteorder("="))  # FITS is big-endian
        if values.dtype.kind == "S":
            values = np.char.decode(values, "utf-8")
        if values.dtype.kind == "U":
            values = np.char.rstrip(values)
        if values.dtype.kind == "O":
            arrays.append(pa.array(list(values), mask=mask if mask.any() else None))
        else:
            arrays.append(pa.array(values, mask=mask if mask.any() else None))
        names.append(str(name))
        entry: dict[str, str] = {}
        if col.unit is not None:
            entry["unit"] = col.unit.to_string("vounit")
        if col.description:
            entry["description"] = str(col.description)
        ucd = (col.meta or {}).get("ucd") or getattr(getattr(col, "info", None), "ucd", None)
        if ucd:
            entry["ucd"] = str(ucd)
        if entry:
            meta[str(name)] = entry
    return pa.table(arrays, names=names), meta
