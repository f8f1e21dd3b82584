"""The ``--where`` language fuzzed (issue 14): grammar-aware generation against a reference.

Expressions are generated as trees, written out as text (keywords in any
case, spacing and parentheses varied, comparisons from either side), parsed
by :func:`skydm.repo.where.parse_where` and evaluated on generated data IDs;
the result must equal the tree's own evaluation.  Damaged and arbitrary text
must parse or raise :class:`~skydm.repo.where.WhereError`, nothing else.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import budget
from skydm.repo.where import DIMENSIONS, WhereError, parse_where

INTS = [d for d, t in DIMENSIONS.items() if t is int]
STRS = [d for d, t in DIMENSIONS.items() if t is str]
OPS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
MIRROR = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
small_str = st.text(st.sampled_from("abgrizy'_ -é"), max_size=4)
small_int = st.integers(-3, 12)


def _lit(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _kw(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word, word.lower(), word.capitalize()]))


@st.composite
def _dim_value(draw: st.DrawFn) -> tuple[str, Any]:
    if draw(st.booleans()):
        return draw(st.sampled_from(INTS)), draw(small_int)
    return draw(st.sampled_from(STRS)), draw(small_str)


@st.composite
def tree(draw: st.DrawFn, depth: int = 0) -> tuple[Any, str]:
    """``(node, text)``: a tree the test evaluates itself, and its text."""
    kind = draw(st.integers(0, 7 if depth < 3 else 3))
    if kind == 0:
        dim, value = draw(_dim_value())
        op = draw(st.sampled_from(sorted(OPS)))
        if draw(st.booleans()):
            return ("cmp", dim, op, value), f"{dim} {op} {_lit(value)}"
        return ("cmp", dim, op, value), f"{_lit(value)} {MIRROR[op]} {dim}"
    if kind == 1:
        dim, first = draw(_dim_value())
        more = draw(st.lists(small_int if isinstance(first, int) else small_str, max_size=3))
        values = [first, *more]
        text = f"{dim} {_kw(draw, 'IN')} ({', '.join(map(_lit, values))})"
        return ("in", dim, frozenset(values)), text
    if kind == 2:
        dim = draw(st.sampled_from(INTS))
        lo, hi = draw(small_int), draw(small_int)
        text = f"{dim} {_kw(draw, 'BETWEEN')} {lo} {_kw(draw, 'AND')} {hi}"
        return ("between", dim, lo, hi), text
    if kind == 3:
        dim = draw(st.sampled_from(sorted(DIMENSIONS)))
        negated = draw(st.booleans())
        words = "IS NOT NULL" if negated else "IS NULL"
        return ("null", dim, negated), f"{dim} {' '.join(_kw(draw, w) for w in words.split())}"
    if kind == 4:
        node, text = draw(tree(depth + 1))
        return ("not", node), f"{_kw(draw, 'NOT')} ({text})"
    if kind == 5:
        node, text = draw(tree(depth + 1))
        return node, f"({text})"
    parts = draw(st.lists(tree(depth + 1), min_size=2, max_size=3))
    word = "AND" if kind == 6 else "OR"
    text = f" {_kw(draw, word)} ".join(f"({t})" for _, t in parts)
    return (word.lower(), [n for n, _ in parts]), text


def _evaluate(node: Any, values: dict[str, Any]) -> bool:
    kind = node[0]
    if kind == "cmp":
        actual = values.get(node[1])
        return actual is not None and OPS[node[2]](actual, node[3])
    if kind == "in":
        return values.get(node[1]) is not None and values[node[1]] in node[2]
    if kind == "between":
        actual = values.get(node[1])
        return actual is not None and node[2] <= actual <= node[3]
    if kind == "null":
        return (values.get(node[1]) is None) != node[2]
    if kind == "not":
        return not _evaluate(node[1], values)
    results = [_evaluate(n, values) for n in node[1]]
    return all(results) if kind == "and" else any(results)


data_ids = st.fixed_dictionaries(
    {
        "instrument": small_str,
        "detector": small_int,
        "visit": small_int,
        "band": small_str,
        "skycell": st.one_of(st.none(), small_str),
    }
)


@budget(300)
@given(expr=tree(), values=st.lists(data_ids, min_size=1, max_size=5))
def test_fuzz_where_agrees_with_the_tree(expr: tuple[Any, str], values: list[dict]) -> None:
    node, text = expr
    parsed = parse_where(text)
    for v in values:
        assert parsed.matches_values(v) == _evaluate(node, v), (text, v)
    # The vectorised evaluation (graphs of many units) agrees item by item.
    assert parsed.select(values) == [_evaluate(node, v) for v in values], (text, values)


@budget(150)
@given(
    expr=tree(),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["", "(", ")", "'", ",", "=", "AND",
                                                          "NOT", "IN", "3", "x", ";", "--"])),
        min_size=1,
        max_size=3,
    ),
)  # fmt: skip
def test_fuzz_damaged_where_raises_only_where_errors(
    expr: tuple[Any, str], edits: list[tuple[int, str]]
) -> None:
    text = expr[1]
    for at, junk in edits:
        at %= len(text) + 1
        text = text[:at] + junk + text[at + 1 :]
    try:
        parse_where(text)
    except WhereError as exc:
        message = str(exc)
        assert "^" in message and message.strip()


@budget(100)
@given(text=st.text(max_size=120))
def test_fuzz_arbitrary_text_as_where(text: str) -> None:
    with contextlib.suppress(WhereError):
        parse_where(text)
