"""Checks made before parsing, and parsing ADQL with sqlglot.

ADQL is SQL-92 plus ``TOP``, which sqlglot's T-SQL dialect reads; the
resulting tree is validated and rewritten by :mod:`skydm.catalog.adql.compiler`.
Size and nesting are limited *before* parsing so that a hostile query cannot
exhaust memory or the parser's recursion.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from skydm.catalog.adql.errors import AdqlError
from skydm.catalog.adql.syntax import explain

#: Longest accepted query (bytes of UTF-8).
MAX_QUERY_BYTES = 100_000
#: Deepest accepted nesting of parentheses.
MAX_DEPTH = 64


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def check_limits(adql: str) -> None:
    """Refuse queries that are too long or too deeply nested, before parsing.

    Raises
    ------
    AdqlError
        Naming the size or the place where the nesting gets too deep.
    """
    size = len(adql.encode("utf-8", errors="replace"))
    if size > MAX_QUERY_BYTES:
        raise AdqlError(
            f"the query is {size} bytes long; the limit is {MAX_QUERY_BYTES} bytes. "
            "Upload long lists of positions as a table instead"
        )
    if not adql.strip():
        raise AdqlError("the query is empty; give a SELECT statement")
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(adql):
        if quote is not None:
            if ch == quote:
                quote = None  # a doubled quote re-opens at once: same effect
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise AdqlError(
                    f"parentheses are nested more than {MAX_DEPTH} deep; simplify the query",
                    position=_line_col(adql, i),
                    snippet=adql[max(0, i - 20) : i + 1],
                )
        elif ch == ")":
            depth -= 1


def parse(adql: str) -> exp.Expr:
    """Parse one ADQL statement.

    Raises
    ------
    AdqlError
        For a syntax error (with its line and column), or more than one statement.
    """
    check_limits(adql)
    try:
        statements = sqlglot.parse(adql, read="tsql")
    except (ParseError, TokenError) as exc:
        raise explain(adql, exc) from None
    except RecursionError:
        raise AdqlError("the query is nested too deeply to parse; simplify it") from None
    real = [s for s in statements if s is not None]
    if not real:
        raise AdqlError("the query is empty; give a SELECT statement")
    if len(real) > 1:
        from skydm.catalog.adql.errors import error_at

        raise error_at(
            real[1],
            "only one statement is allowed, and only SELECT: remove the "
            "';' and everything after it",
        )
    return real[0]
