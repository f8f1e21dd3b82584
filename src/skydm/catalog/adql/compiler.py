"""ADQL to engine SQL: validate the parsed query against TAP_SCHEMA and rewrite it.

Every node of the parsed tree must be of an allowed kind, every function on
the allow-list, every table in TAP_SCHEMA and every column in its table.
Identifiers are then re-emitted from TAP_SCHEMA (quoted, canonical case) and
tables get generated aliases, so that nothing the user typed reaches the
engine except literals, which sqlglot re-quotes.

This module checks the node kinds and drives the work: name resolution and
rewriting are in :mod:`skydm.catalog.adql.rewrite`, the result types and the
geometry placeholder splicing in :mod:`skydm.catalog.adql.translation`, the
cone fast-path recognition in :mod:`skydm.catalog.adql.conescan`.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from skydm.catalog.adql import functions
from skydm.catalog.adql.conescan import find_cone
from skydm.catalog.adql.errors import AdqlError, error_at
from skydm.catalog.adql.functions import Dialect
from skydm.catalog.adql.parse import parse
from skydm.catalog.adql.rewrite import MADE, Rewriter
from skydm.catalog.adql.translation import (
    GeometryKind,
    OutputColumn,
    Template,
    Translation,
    geometry_sql,
    splice,
)
from skydm.catalog.tapschema import TapSchema

__all__ = [
    "GeometryKind",
    "OutputColumn",
    "Template",
    "Translation",
    "compile_query",
    "compile_template",
    "geometry_sql",
    "splice",
    "translate",
]

_ALLOWED_NODES: tuple[type[exp.Expr], ...] = (
    exp.Select,
    exp.Union,
    exp.Except,
    exp.Intersect,
    exp.Subquery,
    exp.From,
    exp.Join,
    exp.Table,
    exp.TableAlias,
    exp.Where,
    exp.Group,
    exp.Having,
    exp.Order,
    exp.Ordered,
    exp.Limit,
    exp.Offset,
    exp.Distinct,
    exp.Column,
    exp.Identifier,
    exp.Star,
    exp.Alias,
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Paren,
    exp.And,
    exp.Or,
    exp.Not,
    exp.EQ,
    exp.NEQ,
    exp.LT,
    exp.LTE,
    exp.GT,
    exp.GTE,
    exp.Is,
    exp.Between,
    exp.In,
    exp.Like,
    exp.ILike,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.Neg,
    exp.DPipe,
    exp.Exists,
    exp.DataType,
    exp.DataTypeParam,
    exp.Tuple,
    exp.Func,
)


def _check_nodes(tree: exp.Expr) -> None:
    for node in tree.walk():
        if isinstance(node, exp.With | exp.CTE):
            raise error_at(
                node,
                "WITH (common table expressions) is not supported; use a subquery in FROM instead",
            )
        if not isinstance(node, _ALLOWED_NODES):
            kind = type(node).__name__.upper()
            raise error_at(
                node,
                f"{kind} is not allowed: only SELECT queries on the tables of "
                "TAP_SCHEMA, with ADQL functions, can be run",
            )
        functions.check_allowed(node)


def compile_query(
    adql: str,
    *,
    dialect: Dialect,
    schema: TapSchema,
    maxrec: int | None = None,
    partition_orders: dict[str, int] | None = None,
    upload_data: dict[str, pa.Table] | None = None,
) -> Translation:
    """Validate and translate an ADQL query.

    Parameters
    ----------
    adql : str
        The ADQL query.
    dialect : {"duckdb", "postgres"}
        The engine SQL to write.
    schema : TapSchema
        The queryable tables.
    maxrec : int, optional
        Row limit of the result; the SQL asks for one row more, to detect overflow.
    partition_orders : dict, optional
        For tables stored with ``_healpix`` and ``_npix`` columns (DuckDB): table
        name -> HEALPix order of ``_npix``.  Point-in-shape tests on these tables
        get index ranges.
    upload_data : dict, optional
        Rows of the uploaded tables (name -> Arrow table): a cross-match of an
        upload against such a table gets the ranges covering all its cones.

    Raises
    ------
    AdqlError
        With the position and text of the offending part of the query.
    """
    return compile_template(
        adql,
        dialect=dialect,
        schema=schema,
        maxrec=maxrec,
        partition_orders=partition_orders,
        upload_data=upload_data,
    ).translation


def compile_template(
    adql: str,
    *,
    dialect: Dialect,
    schema: TapSchema,
    maxrec: int | None = None,
    partition_orders: dict[str, int] | None = None,
    upload_data: dict[str, pa.Table] | None = None,
) -> Template:
    """:func:`compile_query`, also returning what the translation cache re-uses."""
    if dialect not in ("duckdb", "postgres"):
        raise AdqlError(f"unknown SQL dialect {dialect!r}; use duckdb or postgres")
    if maxrec is not None and maxrec < 0:
        raise AdqlError(f"maxrec={maxrec} is negative; give 0 or more")
    try:
        tree = parse(adql)
        if not isinstance(tree, exp.Select | exp.Union | exp.Except | exp.Intersect | exp.Subquery):
            raise error_at(tree, "only SELECT queries are allowed")
        _check_nodes(tree)
        compiler = Rewriter(dialect, schema, partition_orders or {})
        compiler.upload_data = upload_data or {}
        columns = compiler.query(tree, [])
        for col in tree.find_all(exp.Column):
            if not col.meta.get(MADE):  # every column must have been resolved above
                raise error_at(col, "internal error: a column escaped validation; please report")
        cone = find_cone(tree, compiler.token, list(compiler.pieces))
        limit = _apply_maxrec(tree, maxrec)
        generated = tree.sql(dialect=dialect)
        sql = compiler.splice(generated)
    except RecursionError:
        raise AdqlError("the query is too deeply nested to translate; simplify it") from None
    return Template(
        Translation(sql, columns, limit, maxrec, cone[1] if cone else None),
        generated,
        compiler.token,
        compiler.raw,
        compiler.pieces,
        cone[0] if cone else None,
    )


def _apply_maxrec(tree: exp.Expr, maxrec: int | None) -> int | None:
    clause = tree.args.get("limit")
    top = int(clause.expression.this) if isinstance(clause, exp.Limit) else None
    if maxrec is None:
        return top
    limit = maxrec + 1 if top is None else min(top, maxrec + 1)
    tree.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
    return limit


def translate(adql: str, *, dialect: Dialect, schema: TapSchema) -> str:
    """The engine SQL for an ADQL query (see :func:`compile_query`)."""
    return compile_query(adql, dialect=dialect, schema=schema).sql
