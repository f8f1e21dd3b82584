"""Catalog storage (HEALPix-partitioned Parquet), ADQL translation and query engines.

Public API::

    from skydm.catalog import open_engine, load_table
    load_table("repo/catalog", "Object", "objects.parquet")
    with open_engine("repo/catalog") as engine:            # DuckDB
        result = engine.execute("SELECT TOP 10 * FROM Object", maxrec=1000)

``open_engine(dir, "postgresql+psycopg://...")`` serves the same tables from
PostgreSQL (loaded from the Parquet files, with q3c indexes).
"""

from __future__ import annotations

from pathlib import Path

from skydm.catalog.adql import AdqlError, Translation, compile_query, translate
from skydm.catalog.engine import (
    CatalogEngine,
    ColumnInfo,
    QueryCancelledError,
    QueryFailedError,
    QueryResult,
)
from skydm.catalog.schema import STANDARD_TABLES, ColumnDef, TableDef
from skydm.catalog.storage import TableInfo, drop_table, list_tables, load_table
from skydm.catalog.tapschema import TapSchema
from skydm.errors import BadValueError

__all__ = [
    "STANDARD_TABLES",
    "AdqlError",
    "CatalogEngine",
    "ColumnDef",
    "ColumnInfo",
    "QueryCancelledError",
    "QueryFailedError",
    "QueryResult",
    "TableDef",
    "TableInfo",
    "TapSchema",
    "Translation",
    "compile_query",
    "drop_table",
    "list_tables",
    "load_table",
    "open_engine",
    "translate",
]


def open_engine(catalog_dir: Path | str, url: str | None = None) -> CatalogEngine:
    """Open a query engine on the catalog in ``catalog_dir``.

    Parameters
    ----------
    catalog_dir : Path or str
        The catalog directory (``<repo>/catalog``).
    url : str, optional
        None or ``"duckdb"``: DuckDB over the Parquet files.  A PostgreSQL URL
        (``postgresql+psycopg://user@host:port/db`` or ``postgresql://...``):
        the tables are loaded into that database (again only when they changed)
        with q3c indexes, and queries run there.

    Raises
    ------
    BadValueError
        For a URL of another kind.
    """
    if url is None or url == "duckdb":
        from skydm.catalog.engines.duckdb import DuckDBEngine

        return DuckDBEngine(catalog_dir)
    if url.startswith(("postgresql", "postgres:")):
        from skydm.catalog.engines.postgres import PostgresEngine

        return PostgresEngine(catalog_dir, url)
    raise BadValueError("url", url, "None, 'duckdb' or a postgresql:// URL")
