"""Syntax errors in the user's terms: what was expected, where, with a caret.

sqlglot's own messages speak of its internals ("Required keyword: 'this'
missing for <class ...Where>") and point at the token where it gave up,
which is often after the mistake (``SELEC TOP 1`` fails at ``1``).  This
module looks at the query's tokens to find the real mistake: a misspelt
keyword, a clause with nothing after it, an unclosed parenthesis; and says
what was expected there.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from sqlglot.dialects.tsql import TSQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from skydm.catalog.adql.errors import AdqlError

#: Keywords a misspelt word is compared with (the words ADQL's clauses start with).
KEYWORDS = (
    "SELECT",
    "FROM",
    "WHERE",
    "ORDER",
    "GROUP",
    "BY",
    "HAVING",
    "JOIN",
    "DISTINCT",
    "BETWEEN",
    "LIKE",
    "AND",
    "OR",
    "NOT",
    "TOP",
    "AS",
    "ON",
    "IN",
    "IS",
    "NULL",
    "ASC",
    "DESC",
    "OFFSET",
    "UNION",
    "EXISTS",
)

#: What the parser wanted when a part of a clause was missing, by sqlglot node.
_EXPECTED = {
    "Where": "a condition after WHERE",
    "Having": "a condition after HAVING",
    "Limit": "a row count (a whole number) after TOP",
    "Order": "a column after ORDER BY",
    "Group": "a column after GROUP BY",
    "From": "a table after FROM",
    "Join": "a table after JOIN",
    "Select": "a column list after SELECT",
    "And": "a condition after AND",
    "Or": "a condition after OR",
    "Not": "a condition after NOT",
    "Between": "BETWEEN low AND high",
    "In": "a list of values after IN",
    "Alias": "a name after AS",
    "Like": "a pattern after LIKE",
    "Is": "NULL after IS",
}
_OPERATORS = {
    "EQ": "=",
    "NEQ": "<>",
    "GT": ">",
    "GTE": ">=",
    "LT": "<",
    "LTE": "<=",
    "Add": "+",
    "Sub": "-",
    "Mul": "*",
    "Div": "/",
    "DPipe": "||",
}


_OPERANDS = frozenset(
    {TokenType.VAR, TokenType.NUMBER, TokenType.STRING, TokenType.IDENTIFIER, TokenType.STAR}
)


@dataclass(frozen=True)
class _Place:
    """Where in the query a mistake is: 0-based offsets ``start`` to ``end`` inclusive."""

    start: int
    end: int


def explain(adql: str, exc: ParseError | TokenError) -> AdqlError:
    """An :class:`AdqlError` saying what was expected where, for sqlglot's ``exc``."""
    try:
        tokens = TSQL().tokenize(adql)
    except (TokenError, ValueError):
        return _at(adql, _unterminated(adql), "a quote or comment is not closed; close it")
    if not tokens:
        return AdqlError("the query is empty; give a SELECT statement")
    first = tokens[0]
    if first.token_type not in (TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN):
        return _at(
            adql,
            _Place(first.start, first.end),
            f"expected SELECT at the start of the query, found {first.text!r}{_hint(first)}",
        )
    if isinstance(exc, TokenError):
        return _at(adql, None, f"syntax error: {exc}")
    error = exc.errors[0] if exc.errors else {}
    description = str(error.get("description") or exc).split("\n")[0]
    failed = _token_at(tokens, error.get("line"), error.get("col"))
    # A misspelt keyword before the place the parser gave up is the likely mistake.
    for token in tokens:
        if failed is not None and token.start > failed.end:
            break
        hint = _hint(token)
        if hint:
            return _at(adql, _Place(token.start, token.end), f"unexpected {token.text!r}{hint}")
    missing = re.search(r"missing for <class '[\w.]*?(\w+)'>", description)
    if missing:
        node = missing.group(1)
        want = _EXPECTED.get(node) or (
            f"a value after {_OPERATORS[node]!r}" if node in _OPERATORS else "more of the query"
        )
        return _missing(adql, tokens, failed, want, operand_first=node != "Between")
    if description.startswith("Expecting )"):
        opened = _unclosed_paren(tokens)
        where = f" to close the '(' at column {_column(adql, opened)}" if opened else ""
        return _missing(adql, tokens, failed, f"')'{where}", operand_first=False)
    if failed is not None:
        return _at(
            adql,
            _Place(failed.start, failed.end),
            f"unexpected {failed.text!r}: check the words before it (a comma, an operator or "
            "a keyword may be missing or misspelt)",
        )
    return _at(adql, None, f"syntax error: {description}")


def _missing(
    adql: str, tokens: list[Token], failed: Token | None, want: str, *, operand_first: bool = True
) -> AdqlError:
    """The query stopped, or went on with something else, where ``want`` was needed."""
    if operand_first and failed is not None and failed.token_type in _OPERANDS:
        # sqlglot stopped at the wrong operand itself (TOP x): point at it.
        return _at(
            adql, _Place(failed.start, failed.end), f"expected {want}, found {failed.text!r}"
        )
    after = failed  # else it stopped at the clause's keyword or operator: look after it
    if after is not None:
        following = [t for t in tokens if t.start > after.end]
        if following:
            nxt = following[0]
            return _at(adql, _Place(nxt.start, nxt.end), f"expected {want}, found {nxt.text!r}")
    end = len(adql.rstrip())
    return _at(adql, _Place(end, end), f"expected {want}, found the end of the query")


def _hint(token: Token) -> str:
    """``" (did you mean FROM?)"`` for a plain word that is a keyword misspelt."""
    if token.token_type != TokenType.VAR:
        return ""
    word = token.text.upper()
    if word in KEYWORDS or len(word) < 3:
        return ""
    close = difflib.get_close_matches(word, KEYWORDS, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _token_at(tokens: list[Token], line: object, col: object) -> Token | None:
    """The token sqlglot's (line, column of its last character) points at."""
    if line is None or col is None:
        return None
    for token in tokens:
        if token.line == int(str(line)) and token.col == int(str(col)):
            return token
    return None


def _unclosed_paren(tokens: list[Token]) -> Token | None:
    stack: list[Token] = []
    for token in tokens:
        if token.token_type == TokenType.L_PAREN:
            stack.append(token)
        elif token.token_type == TokenType.R_PAREN and stack:
            stack.pop()
    return stack[-1] if stack else None


def _unterminated(adql: str) -> _Place | None:
    """The opening quote of a string or quoted name that is never closed."""
    quote: str | None = None
    start = 0
    for i, ch in enumerate(adql):
        if quote is None and ch in "'\"":
            quote, start = ch, i
        elif ch == quote:
            quote = None
    return _Place(start, start) if quote is not None else None


def _column(adql: str, token: Token) -> int:
    return token.start - (adql.rfind("\n", 0, token.start) + 1) + 1


def _at(adql: str, place: _Place | None, message: str) -> AdqlError:
    """An error at ``place``: its line and column, and the line with a caret under it."""
    if place is None:
        return AdqlError(message)
    start = min(place.start, len(adql))
    line_start = adql.rfind("\n", 0, start) + 1
    line_end = adql.find("\n", start)
    text = adql[line_start : line_end if line_end >= 0 else len(adql)]
    line = adql.count("\n", 0, start) + 1
    col = start - line_start + 1
    width = max(1, min(place.end, len(text) + line_start - 1) - start + 1)
    # Tabs keep their width on the caret line so that the caret lands right.
    pad = "".join("\t" if c == "\t" else " " for c in text[: col - 1])
    caret = f"\n  {text}\n  {pad}{'^' * width}"
    snippet = adql[start : place.end + 1].strip() or None  # None: the end of the query
    return AdqlError(f"syntax error: {message}{caret}", position=(line, col), snippet=snippet)
