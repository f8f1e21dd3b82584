"""The DALI examples document (``/examples``): XHTML with RDFa-marked queries.

The examples are written from the table set, so they always name tables that
exist: the ``TAP_SCHEMA`` listings, and for each catalog table with a main
sky position (UCDs ``pos.eq.ra;meta.main`` / ``pos.eq.dec;meta.main``) a cone
search and a count; for other catalog tables, the first rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from skydm.errors import SkydmError
from skydm.services.tap.vosi import TableInfo, TableSet


def _position_columns(table: TableInfo) -> tuple[str, str] | None:
    ra = dec = None
    for col in table.columns:
        ucd = (col.get("ucd") or "").lower()
        if ucd == "pos.eq.ra;meta.main":
            ra = col["column_name"]
        elif ucd == "pos.eq.dec;meta.main":
            dec = col["column_name"]
    if ra is None or dec is None:
        names = {c["column_name"].lower(): c["column_name"] for c in table.columns}
        ra, dec = names.get("ra"), names.get("dec")
    return (ra, dec) if ra and dec else None


def sample_positions(engine: Any, tableset: TableSet) -> dict[str, tuple[float, float]]:
    """A position held by each table with a sky position, for cone searches that find rows.

    A fixed centre would find nothing on most catalogs; the first row's
    position always finds at least that row.
    """
    out: dict[str, tuple[float, float]] = {}
    for table in tableset.tables.values():
        position = _position_columns(table)
        if table.schema.lower() == "tap_schema" or position is None:
            continue
        ra, dec = position
        try:
            rows = engine.execute(f"SELECT TOP 1 {ra}, {dec} FROM {table.name}").table
        except SkydmError:
            continue  # an example without data is still an example of the syntax
        if rows.num_rows:
            a, d = rows.column(0)[0].as_py(), rows.column(1)[0].as_py()
            if a is not None and d is not None:
                out[table.name] = (round(float(a), 4), round(float(d), 4))
    return out


def examples_for(
    tableset: TableSet, positions: Mapping[str, tuple[float, float]] | None = None
) -> list[tuple[str, str, str, str]]:
    """The examples as (id, name, description, query).

    ``positions`` gives each positional table's cone centre (see
    :func:`sample_positions`); (10, 20) where it gives none.
    """
    out = [
        (
            "tap-schema-tables",
            "Tables of this service",
            "List every table with its description, from TAP_SCHEMA.",
            "SELECT schema_name, table_name, description FROM TAP_SCHEMA.tables",
        ),
        (
            "tap-schema-columns",
            "Columns of the TAP_SCHEMA tables",
            "List the columns of the tables in TAP_SCHEMA with their types and units.",
            "SELECT table_name, column_name, datatype, unit, ucd FROM TAP_SCHEMA.columns "
            "WHERE table_name LIKE 'TAP_SCHEMA.%'",
        ),
    ]
    for table in tableset.tables.values():
        if table.schema.lower() == "tap_schema":
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", table.name.lower()).strip("-")
        position = _position_columns(table)
        if position is not None:
            ra, dec = position
            ra0, dec0 = (positions or {}).get(table.name, (10.0, 20.0))
            out.append(
                (
                    f"cone-{slug}",
                    f"Cone search in {table.name}",
                    f"Rows of {table.name} within 1 arcminute of a sky position.",
                    f"SELECT * FROM {table.name} WHERE 1 = CONTAINS(POINT('ICRS', {ra}, {dec}), "
                    f"CIRCLE('ICRS', {ra0}, {dec0}, 0.0166667))",
                )
            )
        out.append(
            (
                f"first-rows-{slug}",
                f"First rows of {table.name}",
                f"Ten rows of {table.name}, to see what it holds.",
                f"SELECT TOP 10 * FROM {table.name}",
            )
        )
    return out


def examples_document(
    tableset: TableSet, positions: Mapping[str, tuple[float, float]] | None = None
) -> bytes:
    """The DALI examples document as XHTML+RDFa (DALI 1.1 §2.3)."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<html xmlns="http://www.w3.org/1999/xhtml">\n'
        "<head><title>skydm TAP examples</title></head>\n"
        '<body vocab="ivo://ivoa.net/std/DALI-examples#">\n<h1>Example queries</h1>\n',
    ]
    for ident, name, description, query in examples_for(tableset, positions):
        parts.append(
            f'<div typeof="example" id="{ident}" resource="#{ident}">\n'
            f'<h2 property="name">{escape(name)}</h2>\n<p>{escape(description)}</p>\n'
            f'<pre property="query">{escape(query)}</pre>\n</div>\n'
        )
    parts.append("</body>\n</html>\n")
    return "".join(parts).encode()
