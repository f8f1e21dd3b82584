"""ADQL fuzzed with grammar-aware generation (issue 14): every query runs or is refused.

Queries are built from ADQL's grammar over the real columns of a small
catalog (so that most of them get past the parser and reach the compiler,
the geometry translation and DuckDB), then some are damaged token by token.
Each must either return rows or raise a :class:`~skydm.errors.UserError`;
any other exception is a finding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import budget
from skydm.catalog import CatalogEngine, load_table, open_engine
from skydm.errors import UserError

COLUMNS = {"objectId": "int", "ra": "num", "dec": "num", "r_psfMag": "num", "band": "str"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogEngine]:
    rng = np.random.default_rng(3)
    n = 500
    table = pa.table(
        {
            "objectId": np.arange(1, n + 1, dtype=np.int64),
            "ra": rng.uniform(0, 360, n),
            "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
            "r_psfMag": rng.normal(22, 1, n).astype(np.float32),
            "band": rng.choice(np.array(["g", "r", "i", "é"]), n),
        }
    )
    root = tmp_path_factory.mktemp("fuzzcat")
    load_table(root, "Object", table)
    eng = open_engine(root)
    yield eng
    eng.close()


numbers = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: f"{x:.6g}"),
    st.sampled_from(["0", "-0", "1e308", "1e-308", "90", "-90", "360", "180", "0.5"]),
)
strings = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8).map(
    lambda s: "'" + s.replace("'", "''") + "'"
)
column = st.sampled_from(sorted(COLUMNS))
num_column = st.sampled_from([c for c, t in COLUMNS.items() if t != "str"])


@st.composite
def value(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(numbers)
    if kind == 1:
        return draw(num_column)
    if kind == 2:
        fn = draw(st.sampled_from(["ABS", "SQRT", "LOG10", "FLOOR", "CEILING", "SIN", "RADIANS"]))
        return f"{fn}({draw(value())})"
    if kind == 3:
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        return f"({draw(value())} {op} {draw(value())})"
    if kind == 4:
        return f"DISTANCE(POINT(ra, dec), POINT({draw(numbers)}, {draw(numbers)}))"
    return draw(strings)


@st.composite
def geometry(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["CIRCLE", "BOX", "POLYGON", "POINT"]))
    n = {"CIRCLE": 3, "BOX": 4, "POLYGON": draw(st.integers(2, 5)) * 2, "POINT": 2}[kind]
    args = ", ".join(draw(numbers) for _ in range(n))
    return f"{kind}({args})"


@st.composite
def condition(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 7 if depth < 2 else 4))
    if kind == 0:
        op = draw(st.sampled_from(["=", "<>", "!=", "<", "<=", ">", ">="]))
        return f"{draw(column)} {op} {draw(value())}"
    if kind == 1:
        return f"{draw(column)} BETWEEN {draw(value())} AND {draw(value())}"
    if kind == 2:
        items = ", ".join(draw(st.lists(value(), min_size=1, max_size=4)))
        return f"{draw(column)} {draw(st.sampled_from(['IN', 'NOT IN']))} ({items})"
    if kind == 3:
        return f"{draw(column)} IS {draw(st.sampled_from(['NULL', 'NOT NULL']))}"
    if kind == 4:
        fn = draw(st.sampled_from(["CONTAINS", "INTERSECTS"]))
        return f"1 = {fn}(POINT(ra, dec), {draw(geometry())})"
    if kind == 5:
        return f"NOT ({draw(condition(depth + 1))})"
    if kind == 6:
        return f"band LIKE {draw(strings)}"
    op = draw(st.sampled_from(["AND", "OR"]))
    return f"({draw(condition(depth + 1))}) {op} ({draw(condition(depth + 1))})"


@st.composite
def query(draw: st.DrawFn) -> str:
    top = f"TOP {draw(st.integers(-5, 2000))} " if draw(st.booleans()) else ""
    distinct = "DISTINCT " if draw(st.booleans()) else ""
    if draw(st.integers(0, 4)) == 0:
        cols = draw(st.sampled_from(["*", "COUNT(*)", "MAX(r_psfMag), MIN(dec)", "AVG(ra) AS m"]))
    else:
        cols = ", ".join(draw(st.lists(st.one_of(column, value()), min_size=1, max_size=3)))
    text = f"SELECT {top}{distinct}{cols} FROM {draw(st.sampled_from(['Object', 'nosuch']))}"
    if draw(st.booleans()):
        text += f" WHERE {draw(condition())}"
    if draw(st.integers(0, 3)) == 0:
        text += f" GROUP BY {draw(column)}"
    if draw(st.booleans()):
        text += f" ORDER BY {draw(column)} {draw(st.sampled_from(['', 'ASC', 'DESC']))}"
    return text


@st.composite
def damaged(draw: st.DrawFn) -> str:
    """A grammatical query with tokens dropped, doubled, swapped or replaced."""
    words = draw(query()).split(" ")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(words) - 1))
        action = draw(st.integers(0, 3))
        if action == 0 and len(words) > 1:
            del words[i]
        elif action == 1:
            words.insert(i, words[i])
        elif action == 2:
            j = draw(st.integers(0, len(words) - 1))
            words[i], words[j] = words[j], words[i]
        else:
            junk = ["(", ")", ",", "'", '"', ";", "--", "/*", "SELECT", "FROM", "WHERE", "\x00"]
            words[i] = draw(st.sampled_from(junk))
    return " ".join(words)


def _run(engine: CatalogEngine, adql: str) -> None:
    try:
        engine.execute(adql, maxrec=100)
    except UserError as exc:
        text = str(exc)
        assert text.strip()
        assert "Traceback" not in text and "<class" not in text, text


@budget(150)
@given(adql=query())
def test_fuzz_grammatical_adql(engine: CatalogEngine, adql: str) -> None:
    _run(engine, adql)


@budget(150)
@given(adql=damaged())
def test_fuzz_damaged_adql(engine: CatalogEngine, adql: str) -> None:
    _run(engine, adql)


@budget(50)
@given(adql=st.text(max_size=200))
def test_fuzz_arbitrary_text_as_adql(engine: CatalogEngine, adql: str) -> None:
    _run(engine, adql)


def test_a_generated_query_runs(engine: CatalogEngine) -> None:
    """The generator is not only making errors: a typical query returns rows."""
    result = engine.execute(
        "SELECT TOP 5 objectId, ra FROM Object WHERE 1 = CONTAINS(POINT(ra, dec), "
        "CIRCLE(180, 0, 90)) ORDER BY objectId"
    )
    assert result.table.num_rows == 5
