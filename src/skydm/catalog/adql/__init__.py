"""ADQL 2.1 to engine SQL (DuckDB, PostgreSQL with q3c), built on sqlglot."""

from skydm.catalog.adql.compiler import OutputColumn, Translation, compile_query, translate
from skydm.catalog.adql.errors import AdqlError
from skydm.catalog.adql.parse import MAX_DEPTH, MAX_QUERY_BYTES

__all__ = [
    "MAX_DEPTH",
    "MAX_QUERY_BYTES",
    "AdqlError",
    "OutputColumn",
    "Translation",
    "compile_query",
    "translate",
]
