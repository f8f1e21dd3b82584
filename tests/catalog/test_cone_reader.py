"""The DuckDB engine's direct cone reader: the queries it takes; it answers as SQL does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from skydm.catalog import compile_query, load_table
from skydm.catalog.engines.duckdb import DuckDBEngine

CONE = "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, {r})) = 1"


@pytest.fixture(scope="module")
def engines(catalog_dir: Path) -> Iterator[tuple[DuckDBEngine, DuckDBEngine]]:
    """(direct reader on, off) over the same catalog."""
    fast, sql = (
        DuckDBEngine(catalog_dir, direct_cones=True),
        DuckDBEngine(catalog_dir, direct_cones=False),
    )
    yield fast, sql
    fast.close()
    sql.close()


def _answered_directly(engine: DuckDBEngine) -> list[bool]:
    """Record, for each later query, whether the reader answered it (instead of SQL)."""
    seen: list[bool] = []
    read = engine._cones.read

    def spy(*args: object, **kwargs: object) -> pa.Table | None:
        table = read(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(table is not None)
        return table

    engine._cones.read = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(
    "query",
    [
        "SELECT objectId, ra, dec FROM Object WHERE " + CONE,
        "SELECT TOP 5 objectId AS id, g_psfMag FROM Object WHERE " + CONE,
        "SELECT o.ra, o.ra, o.objectId FROM Object AS o WHERE "
        "1 = CONTAINS(POINT('ICRS', o.ra, o.dec), CIRCLE('ICRS', {ra}, {dec}, {r}))",
        "SELECT * FROM Object WHERE INTERSECTS(CIRCLE('ICRS', {ra}, {dec}, {r}), "
        "POINT('ICRS', ra, dec)) = 1",
    ],
)
def test_cone_shapes_are_described(engines: tuple[DuckDBEngine, DuckDBEngine], query: str) -> None:
    fast, _ = engines
    for ra, dec, r in ((10.0, 20.0, 0.1), (350.5, -45.25, 0.02)):
        cone = fast.translate(query.format(ra=ra, dec=dec, r=r), maxrec=100).cone
        assert cone is not None
        assert (cone.ra, cone.dec, cone.radius) == (ra, dec, r)  # also from the cache
        assert (cone.ra_col, cone.dec_col, cone.table) == ("ra", "dec", "Object")


@pytest.mark.parametrize(
    "query",
    [
        "SELECT objectId FROM Object WHERE " + CONE + " ORDER BY objectId",
        "SELECT objectId FROM Object WHERE " + CONE + " AND g_psfMag < 22",
        "SELECT objectId + 1 AS x FROM Object WHERE " + CONE,
        "SELECT COUNT(*) AS n FROM Object WHERE " + CONE,
        "SELECT DISTINCT ra FROM Object WHERE " + CONE,
        "SELECT objectId FROM Object WHERE "
        "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, {r})) = 0",
        "SELECT objectId FROM Object WHERE "
        "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 180)) = 1",
        "SELECT o.objectId FROM Object AS o JOIN ForcedSource AS f ON o.objectId = f.objectId "
        "WHERE CONTAINS(POINT('ICRS', o.ra, o.dec), CIRCLE('ICRS', {ra}, {dec}, {r})) = 1",
    ],
)
def test_other_shapes_run_as_sql(engines: tuple[DuckDBEngine, DuckDBEngine], query: str) -> None:
    fast, _ = engines
    assert fast.translate(query.format(ra=10.0, dec=20.0, r=0.1), maxrec=100).cone is None


def _cones(n: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    out = [
        (float(a), float(d), float(r))
        for a, d, r in zip(
            rng.uniform(0, 360, n),
            np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
            10 ** rng.uniform(-3, -0.5, n),
            strict=True,
        )
    ]
    # The dense patches: at both poles and across RA = 0 (see conftest).
    out += [(0.0, 89.99, 0.05), (123.0, -89.97, 0.03), (359.99, 10.0, 0.04), (0.01, 10.02, 0.01)]
    out += [(-0.02, 10.0, 0.03), (360.01, 10.0, 0.02)]  # centres outside [0, 360)
    return out


@pytest.mark.parametrize(
    ("select", "maxrec"),
    [
        ("SELECT objectId, ra, dec, g_psfMag FROM Object", 100_000),
        ("SELECT TOP 7 dec, objectId, dec FROM Object", 100_000),
        ("SELECT * FROM Object", 10),  # overflows in the dense patches
    ],
)
def test_reader_answers_as_sql(
    engines: tuple[DuckDBEngine, DuckDBEngine], select: str, maxrec: int
) -> None:
    fast, sql = engines
    answered = _answered_directly(fast)
    rows = overflowed = 0
    for ra, dec, r in _cones(60, seed=len(select)):
        query = f"{select} WHERE " + CONE.format(ra=repr(ra), dec=repr(dec), r=repr(r))
        got, want = fast.execute(query, maxrec=maxrec), sql.execute(query, maxrec=maxrec)
        assert got.table.equals(want.table), query  # same rows, order, types and names
        assert got.overflow == want.overflow
        assert got.columns == want.columns
        rows += got.table.num_rows
        overflowed += got.overflow
    assert rows > 30  # the comparison saw data, not only empty cones
    assert all(answered) and len(answered) == 66
    if maxrec == 10:
        assert overflowed > 0


def test_strings_and_fallback(tmp_path: Path) -> None:
    """Text and flags are read directly; a cone over many row groups goes to SQL."""
    rng = np.random.default_rng(3)
    n = 50_000
    table = pa.table(
        {
            "ra": rng.uniform(10, 11, n),
            "dec": rng.uniform(-1, 1, n),
            "name": pa.array([f"src{i}" for i in range(n)]),
            "flag": rng.uniform(0, 1, n) > 0.5,
            "small": rng.integers(-100, 100, n).astype(np.int16),
        }
    )
    load_table(tmp_path, "Things", table)
    fast, sql = DuckDBEngine(tmp_path), DuckDBEngine(tmp_path, direct_cones=False)
    try:
        answered = _answered_directly(fast)
        for select, r, direct in (("name, flag, small, ra", 0.05, True), ("name", 2.0, False)):
            query = f"SELECT {select} FROM Things WHERE " + CONE.format(ra=10.5, dec=0.1, r=r)
            got, want = fast.execute(query), sql.execute(query)
            assert got.table.num_rows > 10
            assert got.table.equals(want.table)
            assert answered[-1] is direct
    finally:
        fast.close()
        sql.close()


def test_deferred_sql_is_the_full_translation(engines: tuple[DuckDBEngine, DuckDBEngine]) -> None:
    """The SQL the cache makes on demand for a cone shape is what a full compile gives."""
    fast, _ = engines
    template = "SELECT objectId, ra FROM Object WHERE " + CONE
    fast.translate(template.format(ra=1.0, dec=2.0, r=0.5), maxrec=50)  # cache the shape
    query = template.format(ra=200.25, dec=-30.5, r=0.125)
    cached = fast.translate(query, maxrec=50)
    full = compile_query(
        query,
        dialect="duckdb",
        schema=fast.tap_schema(),
        maxrec=50,
        partition_orders=fast._partition_orders(),
    )
    assert cached.sql == full.sql
    assert cached.cone == full.cone
