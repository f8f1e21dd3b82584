"""What a compiled ADQL query is, and how its geometry placeholders become SQL.

The rewriter (:mod:`skydm.catalog.adql.rewrite`) leaves every geometry call as
a placeholder ``<token><i>()`` in the generated SQL and keeps the call itself,
so that the translation cache (:mod:`skydm.catalog.adql.cache`) can re-make
the geometry SQL for new literals with :func:`geometry_sql` and
:func:`splice` without compiling the query again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlglot import exp

from skydm.catalog.adql import geometry
from skydm.catalog.adql.conescan import ConeScan
from skydm.catalog.adql.errors import error_at
from skydm.catalog.adql.functions import Dialect
from skydm.catalog.schema import ColumnDef

GeometryKind = Literal["predicate", "distance"]


@dataclass(frozen=True)
class OutputColumn:
    """A result column: its name and, when it is a stored column, that column's metadata."""

    name: str
    column: ColumnDef | None = None


class Translation:
    """A compiled query.

    Attributes
    ----------
    sql : str
        The engine SQL (made on first use when given as a function: the
        translation cache defers it, since a cone search answered from
        :attr:`cone` never needs it).
    columns : list of OutputColumn
        The result columns, in order.
    limit : int or None
        The row limit applied (TOP, or maxrec + 1 to detect overflow).
    maxrec : int or None
        The maxrec asked for; more rows than this means overflow.
    cone : ConeScan or None
        When the query is a plain cone search on one stored table, its
        description (an engine may read the files directly instead of running
        ``sql``; see :mod:`skydm.catalog.adql.conescan`).
    """

    __slots__ = ("_sql", "columns", "cone", "limit", "maxrec")

    def __init__(
        self,
        sql: str | Callable[[], str],
        columns: list[OutputColumn],
        limit: int | None,
        maxrec: int | None,
        cone: ConeScan | None = None,
    ) -> None:
        self._sql = sql
        self.columns = columns
        self.limit = limit
        self.maxrec = maxrec
        self.cone = cone

    @property
    def sql(self) -> str:
        """The engine SQL."""
        if not isinstance(self._sql, str):
            self._sql = self._sql()
        return self._sql

    def __repr__(self) -> str:
        return (
            f"Translation(sql={self.sql!r}, columns={self.columns!r}, limit={self.limit!r}, "
            f"maxrec={self.maxrec!r}, cone={self.cone!r})"
        )


@dataclass
class Template:
    """A compiled query before its geometry SQL is spliced in (for the translation cache).

    Attributes
    ----------
    translation : Translation
        The finished translation of the query compiled.
    sql : str
        Generated SQL with ``<token><i>()`` placeholders for geometry.
    token : str
        The placeholder prefix.
    raw : list of str
        The SQL of each placeholder.
    pieces : list
        For each placeholder, the geometry call ``(node, kind)`` it was made
        from, or None when its text is fixed.
    cone_piece : int or None
        The placeholder whose circle is ``translation.cone``'s.
    """

    translation: Translation
    sql: str
    token: str
    raw: list[str]
    pieces: list[tuple[exp.Expr, GeometryKind] | None]
    cone_piece: int | None = None


def geometry_sql(node: exp.Expr, kind: GeometryKind, dialect: Dialect) -> str:
    """Engine SQL of a CONTAINS/INTERSECTS (``predicate``) or DISTANCE call."""
    if kind == "predicate":
        return geometry.predicate(node, dialect)
    args = list(node.expressions)
    if len(args) == 4:
        p, q = geometry.Point(args[0], args[1]), geometry.Point(args[2], args[3])
    elif len(args) == 2:
        sp, sq = geometry.shape(args[0]), geometry.shape(args[1])
        if not (isinstance(sp, geometry.Point) and isinstance(sq, geometry.Point)):
            raise error_at(node, "DISTANCE takes two POINTs")
        p, q = sp, sq
    else:
        raise error_at(node, "DISTANCE takes two POINTs (or ra1, dec1, ra2, dec2)")
    return geometry.distance(p, q, dialect)


def splice(sql: str, token: str, raw: list[str]) -> str:
    """Replace the geometry placeholders ``<token><i>()`` in generated SQL by ``raw[i]``."""
    for i in reversed(range(len(raw))):
        sql = sql.replace(f"{token}{i}()", f"({raw[i]})")
    return sql
