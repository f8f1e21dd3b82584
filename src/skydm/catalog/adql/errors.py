"""The error a bad ADQL query raises."""

from __future__ import annotations

from sqlglot import exp

from skydm.errors import UserError


class AdqlError(UserError):
    """An ADQL query that cannot be run, with the place it goes wrong.

    Parameters
    ----------
    message : str
        What is wrong and what to do.
    position : (int, int), optional
        1-based (line, column) of the offending part of the query.
    snippet : str, optional
        The offending part of the query, as written.
    """

    def __init__(
        self, message: str, *, position: tuple[int, int] | None = None, snippet: str | None = None
    ) -> None:
        self.message = message
        self.position = position
        self.snippet = snippet
        where = ""
        if position is not None:
            where = f" (line {position[0]}, column {position[1]})"
        if snippet:
            short = snippet if len(snippet) <= 80 else snippet[:77] + "..."
            where += f" at {short!r}"
        super().__init__(f"ADQL error{where}: {message}")


def node_position(node: exp.Expr) -> tuple[int, int] | None:
    """The (line, column) sqlglot recorded for ``node`` or its first token."""
    for n in node.walk():
        meta = n.meta if isinstance(n, exp.Expr) else {}
        if "line" in meta and "col" in meta:
            line, col = int(meta["line"]), int(meta["col"])
            # sqlglot reports the column of a token's last character; point at its start
            if "start" in meta and "end" in meta:
                col -= int(meta["end"]) - int(meta["start"])
            return line, max(col, 1)
    return None


def error_at(node: exp.Expr, message: str) -> AdqlError:
    """An :class:`AdqlError` pointing at ``node``."""
    try:
        snippet = node.sql(dialect="tsql")
    except Exception:  # a half-rewritten node may not print; the position still helps
        snippet = None
    return AdqlError(message, position=node_position(node), snippet=snippet)
