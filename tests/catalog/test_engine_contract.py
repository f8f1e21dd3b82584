"""One contract every catalog engine passes: DuckDB over Parquet and PostgreSQL with q3c."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from skydm.catalog import AdqlError, CatalogEngine, QueryCancelledError


def _truth_cone(objects: pa.Table, ra0: float, dec0: float, r: float) -> set[int]:
    ra = np.radians(objects.column("ra").to_numpy())
    dec = np.radians(objects.column("dec").to_numpy())
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosd = np.sin(dec) * math.sin(d0) + np.cos(dec) * math.cos(d0) * np.cos(ra - a0)
    dist = np.degrees(np.arccos(np.clip(cosd, -1, 1)))
    return set(objects.column("objectId").to_numpy()[dist <= r].tolist())


def _cone_positions(n: int = 50) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(123)
    out = [
        (0.0, 10.0, 0.05),
        (359.99, 10.0, 0.03),
        (0.01, 10.02, 0.02),
        (12.0, 89.99, 0.05),
        (200.0, -89.97, 0.04),
        (0.0, 90.0, 0.06),
        (0.0, -90.0, 0.06),
        (180.0, 0.0, 5.0),
    ]
    while len(out) < n:
        kind = rng.integers(3)
        if kind == 0:
            ra, dec = rng.uniform(0, 360), math.degrees(math.asin(rng.uniform(-1, 1)))
            out.append((ra, dec, float(rng.uniform(0.5, 3))))
        elif kind == 1:
            ra, dec = rng.uniform(0, 360), float(rng.choice([1, -1]) * (90 - rng.uniform(0, 0.1)))
            out.append((ra, dec, float(rng.uniform(0.005, 0.08))))
        else:
            ra, dec = float(np.mod(rng.normal(0, 0.05), 360)), float(rng.normal(10, 0.05))
            out.append((ra, dec, float(rng.uniform(0.005, 0.05))))
    return out


def test_cone_searches_match_brute_force(engine: CatalogEngine, objects: pa.Table) -> None:
    nonempty = 0
    for ra0, dec0, r in _cone_positions():
        res = engine.execute(
            f"SELECT objectId FROM Object WHERE CONTAINS(POINT('ICRS', ra, dec), "
            f"CIRCLE('ICRS', {ra0!r}, {dec0!r}, {r!r})) = 1"
        )
        got = set(res.table.column("objectId").to_pylist())
        truth = _truth_cone(objects, ra0, dec0, r)
        assert got == truth, (ra0, dec0, r, len(got), len(truth))
        nonempty += bool(truth)
    assert nonempty > 40  # the positions really hit data, so equality is not vacuous


def test_distance_condition_equals_cone(engine: CatalogEngine, objects: pa.Table) -> None:
    res = engine.execute(
        "SELECT objectId, DISTANCE(POINT(ra, dec), POINT(0.0, 10.0)) AS d "
        "FROM Object WHERE DISTANCE(POINT(ra, dec), POINT(0.0, 10.0)) < 0.04"
    )
    assert set(res.table.column("objectId").to_pylist()) == _truth_cone(objects, 0, 10, 0.04)
    d = np.array(res.table.column("d").to_pylist())
    assert d.max() < 0.04 and d.min() >= 0


def test_polygon_and_box(engine: CatalogEngine, objects: pa.Table) -> None:
    poly = engine.execute(
        "SELECT objectId, ra, dec FROM Object WHERE CONTAINS(POINT(ra, dec), "
        "POLYGON(359.95, 9.95, 0.05, 9.95, 0.05, 10.05, 359.95, 10.05)) = 1"
    )
    box = engine.execute(
        "SELECT objectId FROM Object WHERE 1 = CONTAINS(POINT(ra, dec), BOX(0.0, 10.0, 0.1, 0.1))"
    )
    ids = set(poly.table.column("objectId").to_pylist())
    assert len(ids) > 100
    # the polygon straddles RA = 0; its edges are great circles, nearly the ra/dec box here
    ra = np.mod(np.array(poly.table.column("ra").to_pylist()) + 180, 360) - 180
    assert np.all(np.abs(ra) < 0.0505) and np.all(
        np.abs(np.array(poly.table.column("dec").to_pylist()) - 10) < 0.0505
    )
    assert abs(len(set(box.table.column("objectId").to_pylist())) - len(ids)) < 0.05 * len(ids)


def test_top_order_offset(engine: CatalogEngine, objects: pa.Table) -> None:
    res = engine.execute(
        "SELECT TOP 5 objectId, g_psfMag FROM Object ORDER BY g_psfMag DESC, objectId OFFSET 3"
    )
    mags = objects.column("g_psfMag").to_numpy()
    order = np.lexsort((objects.column("objectId").to_numpy(), -mags))
    expected = objects.column("objectId").to_numpy()[order][3:8].tolist()
    assert res.table.column("objectId").to_pylist() == expected


def test_maxrec_overflow(engine: CatalogEngine) -> None:
    res = engine.execute("SELECT objectId FROM Object WHERE objectId <= 20", maxrec=10)
    assert res.table.num_rows == 10 and res.overflow
    res = engine.execute("SELECT TOP 10 objectId FROM Object", maxrec=10)
    assert res.table.num_rows == 10 and not res.overflow
    cols, batches, overflow = engine.iter_batches("SELECT objectId, ra FROM Object", maxrec=1000)
    assert sum(b.num_rows for b in batches) == 1000 and overflow()
    assert [c.name for c in cols] == ["objectId", "ra"] and cols[1].unit == "deg"


def test_join_group_having(engine: CatalogEngine) -> None:
    res = engine.execute(
        "SELECT o.objectId, COUNT(*) AS n, AVG(f.psfFlux) AS mean_flux FROM Object AS o "
        "JOIN ForcedSource AS f ON o.objectId = f.objectId WHERE f.band = 'r' "
        "GROUP BY o.objectId HAVING COUNT(*) >= 3 ORDER BY n DESC, o.objectId"
    )
    rows = res.table.to_pylist()
    assert rows and all(r["n"] >= 3 for r in rows)
    counts = [r["n"] for r in rows]
    assert counts == sorted(counts, reverse=True)
    assert all(800 < r["mean_flux"] < 1200 for r in rows)


def test_functions(engine: CatalogEngine) -> None:
    res = engine.execute(
        "SELECT ABS(-2.5) AS a, CEILING(1.2) AS c, FLOOR(-1.2) AS f, ROUND(2.567, 2) AS r, "
        "TRUNCATE(2.567, 1) AS t, MOD(7, 3) AS m, POWER(2, 10) AS p, SQRT(16.0) AS s, "
        "LOG(EXP(1.0)) AS l, LOG10(1000.0) AS l10, DEGREES(PI()) AS deg, RADIANS(180.0) AS rad, "
        "ATAN2(1.0, 1.0) AS at2, UPPER(band) AS up, LOWER('ABC') AS lo, COALESCE(NULL, 3) AS co, "
        "CAST(objectId AS DOUBLE PRECISION) AS cast_d, 7 / 2 AS idiv "
        "FROM ForcedSource WHERE forcedSourceId = 0"
    )
    row = res.table.to_pylist()[0]
    expect = {
        "a": 2.5,
        "c": 2,
        "f": -2,
        "r": 2.57,
        "t": 2.5,
        "m": 1,
        "p": 1024,
        "s": 4,
        "l": 1,
        "l10": 3,
        "deg": 180,
        "rad": math.pi,
        "at2": math.pi / 4,
        "co": 3,
        "idiv": 3,
    }
    assert row["lo"] == "abc"
    for key, value in expect.items():
        assert row[key] == pytest.approx(value, rel=1e-12), key
    assert row["up"] in ("G", "R", "I")


def test_subquery_union_distinct(engine: CatalogEngine) -> None:
    res = engine.execute(
        "SELECT DISTINCT band FROM ForcedSource WHERE objectId IN "
        "(SELECT objectId FROM Object WHERE objectId < 500) ORDER BY band"
    )
    assert res.table.column("band").to_pylist() == ["g", "i", "r"]
    res = engine.execute(
        "SELECT objectId FROM Object WHERE objectId = 1 UNION "
        "SELECT objectId FROM Object WHERE objectId = 2 ORDER BY objectId"
    )
    assert res.table.column("objectId").to_pylist() == [1, 2]
    res = engine.execute("SELECT t.n FROM (SELECT COUNT(*) AS n FROM Object) AS t")
    assert res.table.column("n").to_pylist() == [30_000]


def test_select_star_and_case(engine: CatalogEngine) -> None:
    res = engine.execute("SELECT TOP 1 * FROM object WHERE objectId = 1")
    assert "objectId" in res.table.column_names and "_healpix" not in res.table.column_names
    assert "_npix" not in res.table.column_names


def test_tap_schema_queries(engine: CatalogEngine) -> None:
    tables = engine.execute("SELECT table_name, table_index FROM TAP_SCHEMA.tables")
    names = set(tables.table.column("table_name").to_pylist())
    assert {"Object", "ForcedSource", "TAP_SCHEMA.columns", "TAP_SCHEMA.key_columns"} <= names
    cols = engine.execute(
        "SELECT column_name, datatype, unit, ucd, principal, indexed, std, "
        "column_index, arraysize, xtype FROM tap_schema.columns "
        "WHERE table_name = 'Object' ORDER BY column_index"
    )
    rows = cols.table.to_pylist()
    assert rows[0]["column_name"] == "objectId" and rows[0]["datatype"] == "long"
    ra = next(r for r in rows if r["column_name"] == "ra")
    assert ra["unit"] == "deg" and ra["ucd"] == "pos.eq.ra;meta.main" and ra["indexed"] == 1
    keys = engine.execute(
        "SELECT k.from_table, k.target_table, c.from_column FROM "
        "TAP_SCHEMA.keys AS k JOIN TAP_SCHEMA.key_columns AS c "
        "ON k.key_id = c.key_id WHERE k.from_table = 'ForcedSource'"
    )
    assert keys.table.to_pylist() == [
        {"from_table": "ForcedSource", "target_table": "Object", "from_column": "objectId"}
    ]
    size = engine.execute(
        "SELECT column_name FROM TAP_SCHEMA.columns WHERE "
        "table_name = 'TAP_SCHEMA.columns' AND column_index = 9"
    )
    assert size.table.to_pylist() == [{"column_name": '"size"'}]  # reserved: delimited
    assert engine.execute('SELECT TOP 1 "size" FROM TAP_SCHEMA.columns').table.num_rows == 1
    # what execute() serves agrees with the TapSchema object (what /tables shows)
    assert names == {r.tap_name for r in engine.tap_schema()}


HOSTILE = [
    ("SELECT objectId FROM Object; DROP TABLE Object", "only one statement"),
    ("DROP TABLE Object", "only SELECT"),
    ("SELECT pg_sleep(10) FROM Object", "PG_SLEEP"),
    ("SELECT * FROM read_csv('/etc/passwd')", "READ_CSV"),
    ("SELECT * FROM read_parquet('/etc/passwd')", "READ_PARQUET"),
    ("SELECT current_setting('data_directory') FROM Object", "CURRENT_SETTING"),
    ("SELECT objectId FROM Object WHERE band = '' OR 1=1; --'", "only one statement"),
    ("SELECT objectId FROM pg_catalog.pg_tables", "not in TAP_SCHEMA"),
    (
        "SELECT objectId FROM Object WHERE objectId = 1 UNION SELECT usename FROM pg_user",
        "not in TAP_SCHEMA",
    ),
    ("SELECT secret FROM Object", "secret"),
    ("COPY Object TO '/tmp/x'", None),
    ("ATTACH '/tmp/x.db' AS x", None),
    ("PRAGMA database_list", None),
    ("INSTALL httpfs", None),
    ("SELECT _healpix FROM Object", "_healpix"),
    ("SELECT ABS(_npix) + 1 FROM Object", "_npix"),
    ("SELECT objectId FROM Object WHERE SQRT(ABS(secret)) > 1", "secret"),
    ("WITH x AS (SELECT 1 AS a) SELECT a FROM x", "WITH"),
    ("SELECT objectId FROM Object WHERE objectId = 1 INTO OUTFILE '/tmp/x'", None),
]


@pytest.mark.parametrize(("adql", "mentions"), HOSTILE)
def test_hostile_queries_refused(engine: CatalogEngine, adql: str, mentions: str | None) -> None:
    with pytest.raises(AdqlError) as info:
        engine.execute(adql)
    if mentions:
        assert mentions.lower() in str(info.value).lower()
    # and the engine still answers
    assert engine.execute("SELECT COUNT(*) AS n FROM Object").table.to_pylist() == [{"n": 30_000}]


def test_huge_and_deep_queries_refused(engine: CatalogEngine) -> None:
    huge = "SELECT objectId FROM Object WHERE " + " OR ".join(["objectId = 1"] * 800_000)
    with pytest.raises(AdqlError, match="bytes long"):
        engine.execute(huge)
    deep = "SELECT objectId FROM Object WHERE " + "(" * 1000 + "1=1" + ")" * 1000
    with pytest.raises(AdqlError, match="nested") as info:
        engine.execute(deep)
    assert info.value.position is not None


def test_error_points_at_offending_part(engine: CatalogEngine) -> None:
    with pytest.raises(AdqlError) as info:
        engine.execute("SELECT objectId,\n  nosuchcol FROM Object")
    assert info.value.position == (2, 3) and info.value.snippet == "nosuchcol"
    with pytest.raises(AdqlError) as info:
        engine.execute("SELECT objectId FROM Object WHERE")
    assert info.value.position is not None


def test_cancel_stops_a_long_query(engine: CatalogEngine) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(QueryCancelledError):
        engine.execute(
            "SELECT COUNT(*) AS n FROM Object AS a JOIN Object AS b ON a.ra < b.ra", cancel=cancel
        )
    assert time.monotonic() - start < 3
    assert engine.execute("SELECT COUNT(*) AS n FROM Object").table.num_rows == 1
