"""Recognising the canonical cone search, so that an engine may run it without SQL.

Most queries a catalog service sees are simple cone searches::

    SELECT [TOP n] col, col, ... FROM table
    WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r)) = 1

on a table stored with ``_healpix`` (whose ``ra``/``dec`` are its position
columns).  The compiler translates them into SQL like any query, and also
describes them as a :class:`ConeScan`: the table, the stored columns of each
output column, and the circle.  An engine that can read the table's files
directly (the DuckDB engine over Parquet) may answer from that description,
skipping SQL planning entirely; any other engine ignores it.  Anything more
than this shape (joins, expressions, ORDER BY, other conditions...) gets no
description and runs as SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from skydm.catalog.adql import geometry
from skydm.catalog.adql.functions import adql_name

#: ``meta`` key of a stored column's definition on a resolved column (set by the compiler).
_DEF_META = "skydm_def"
_CLAUSES = frozenset({"expressions", "from_", "where", "limit"})


@dataclass(frozen=True)
class ConeScan:
    """A cone search over one stored table, described for a direct reader.

    Attributes
    ----------
    schema, table : str
        The table as the engine names it (schema and table name).
    columns : tuple of str
        The stored column read for each output column, in order.
    ra_col, dec_col : str
        The table's position columns.
    ra, dec, radius : float
        The circle, in degrees (0 < radius < 180).
    """

    schema: str
    table: str
    columns: tuple[str, ...]
    ra_col: str
    dec_col: str
    ra: float
    dec: float
    radius: float


def circle_of(node: exp.Expr, alias: str) -> tuple[str, str, float, float, float] | None:
    """(ra column, dec column, ra0, dec0, radius) of ``CONTAINS(POINT(ra, dec), CIRCLE(...))``.

    ``node`` is a compiled CONTAINS/INTERSECTS call; the point must be the
    position columns of the table aliased ``alias`` and the circle constant,
    with a radius strictly between 0 and 180 degrees.  None otherwise.
    """
    if adql_name(node) not in ("CONTAINS", "INTERSECTS"):
        return None
    if isinstance(node, exp.Contains):
        a, b = node.this, node.expression
    elif len(node.expressions) == 2:
        a, b = node.expressions
    else:
        return None
    try:
        sa, sb = geometry.shape(a), geometry.shape(b)
    except Exception:  # not geometry this reader handles: the SQL path reports errors
        return None
    if adql_name(node) == "INTERSECTS" and isinstance(sb, geometry.Point):
        sa, sb = sb, sa
    if not (isinstance(sa, geometry.Point) and isinstance(sb, geometry.Circle)):
        return None
    ra_meta, dec_meta = sa.ra.meta.get(geometry.POS_META), sa.dec.meta.get(geometry.POS_META)
    if not (ra_meta and dec_meta and ra_meta[0] == "ra" and dec_meta[0] == "dec"):
        return None
    if ra_meta[1] != alias or dec_meta[1] != alias:
        return None
    ra0, dec0 = geometry.const(sb.centre.ra), geometry.const(sb.centre.dec)
    radius = geometry.const(sb.radius)
    if ra0 is None or dec0 is None or radius is None or not 0 < radius < 180:
        return None
    return _column_name(sa.ra), _column_name(sa.dec), ra0, dec0, radius


def _column_name(node: exp.Expr) -> str:
    inner = node.this if isinstance(node, exp.Paren) else node
    assert isinstance(inner, exp.Column)
    return str(inner.this.this)


def find_cone(
    tree: exp.Expr, token: str, pieces: list[tuple[exp.Expr, str] | None]
) -> tuple[int, ConeScan] | None:
    """The cone search a compiled query is, and the index of its geometry piece; or None.

    Parameters
    ----------
    tree : sqlglot expression
        The compiled query (columns resolved, geometry replaced by placeholders).
    token : str
        The compiler's placeholder prefix.
    pieces : list
        The compiler's geometry pieces: ``(call, kind)`` per placeholder.
    """
    if not isinstance(tree, exp.Select):
        return None
    if any(
        value not in (None, [], False) for key, value in tree.args.items() if key not in _CLAUSES
    ):
        return None
    from_, where = tree.args.get("from_"), tree.args.get("where")
    if from_ is None or where is None or not isinstance(from_.this, exp.Table):
        return None
    table = from_.this
    alias = table.alias
    if not alias or table.args.get("db") is None:
        return None
    columns = []
    for item in tree.expressions:
        body = item.this if isinstance(item, exp.Alias) else item
        if not isinstance(body, exp.Column) or body.meta.get(_DEF_META) is None:
            return None
        if body.table != alias:
            return None
        columns.append(str(body.this.this))
    placeholder = where.this
    if not isinstance(placeholder, exp.Anonymous) or placeholder.expressions:
        return None
    name = str(placeholder.this)
    if not name.startswith(token) or not name[len(token) :].isdigit():
        return None
    index = int(name[len(token) :])
    piece = pieces[index] if index < len(pieces) else None
    if piece is None or piece[1] != "predicate":
        return None
    circle = circle_of(piece[0], alias)
    if circle is None:
        return None
    ra_col, dec_col, ra0, dec0, radius = circle
    scan = ConeScan(
        schema=str(table.args["db"].this),
        table=str(table.this.this),
        columns=tuple(columns),
        ra_col=ra_col,
        dec_col=dec_col,
        ra=ra0,
        dec=dec0,
        radius=radius,
    )
    return index, scan
