"""Uploaded tables (TAP_UPLOAD) on both engines, and the translation cache."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pytest
from astropy.table import Table

from skydm.catalog import AdqlError, CatalogEngine, compile_query
from skydm.catalog.adql.cache import TranslationCache, lift
from skydm.catalog.uploads import UploadError, fetch_upload, read_upload

XMATCH = (
    "SELECT t.pid, o.objectId FROM TAP_UPLOAD.pos AS t JOIN Object AS o "
    "ON 1 = CONTAINS(POINT('ICRS', o.ra, o.dec), CIRCLE('ICRS', t.ra, t.dec, t.r))"
)


def votable_bytes(table: Table) -> bytes:
    buf = io.BytesIO()
    table.write(buf, format="votable")
    return buf.getvalue()


def positions(objects: pa.Table, n: int = 40, seed: int = 3) -> Table:
    """Upload positions: near chosen objects (some at the poles and RA = 0), radii 0.01-0.2 deg."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(objects.num_rows, n, replace=False)
    ra = objects.column("ra").to_numpy()[pick] + rng.normal(0, 0.003, n)
    dec = np.clip(objects.column("dec").to_numpy()[pick] + rng.normal(0, 0.003, n), -90, 90)
    t = Table({"pid": np.arange(n, dtype=np.int32), "ra": np.mod(ra, 360), "dec": dec})
    t["r"] = rng.uniform(0.01, 0.2, n)
    t["ra"].unit = "deg"
    t["label"] = [f"p{i}" for i in range(n)]
    return t


def brute_xmatch(objects: pa.Table, up: Table) -> set[tuple[int, int]]:
    ra1, dec1 = (np.radians(objects.column(c).to_numpy()) for c in ("ra", "dec"))
    ids = objects.column("objectId").to_numpy()
    out = set()
    for row in up:
        r0, d0 = np.radians(row["ra"]), np.radians(row["dec"])
        h = np.sin((dec1 - d0) / 2) ** 2 + np.cos(d0) * np.cos(dec1) * np.sin((ra1 - r0) / 2) ** 2
        sep = np.degrees(2 * np.arcsin(np.sqrt(np.minimum(h, 1))))
        out |= {(int(row["pid"]), int(i)) for i in ids[sep <= row["r"]]}
    return out


def test_upload_crossmatch_matches_brute_force(engine: CatalogEngine, objects: pa.Table) -> None:
    up = positions(objects)
    table = read_upload("pos", votable_bytes(up))
    result = engine.execute(XMATCH, uploads={"pos": table})
    pairs = zip(result.table["pid"].to_pylist(), result.table["objectId"].to_pylist(), strict=True)
    got = set(pairs)
    expected = brute_xmatch(objects, up)
    assert len(expected) > len(up)  # every position matches its own object, some more
    assert got == expected
    # The catalog side is read through its index: q3c on PostgreSQL; on DuckDB,
    # the _healpix ranges covering all the uploaded cones.
    sql = engine.translate(XMATCH, uploads={"pos": table}).sql
    assert ("q3c_join" if engine.dialect == "postgres" else '"_healpix" BETWEEN') in sql


def test_upload_select_star_keeps_values_and_metadata(
    engine: CatalogEngine, objects: pa.Table
) -> None:
    up = positions(objects, n=5)
    result = engine.execute(
        "SELECT * FROM TAP_UPLOAD.pos ORDER BY pid",
        uploads={"pos": read_upload("pos", votable_bytes(up))},
    )
    assert result.table.column_names == ["pid", "ra", "dec", "r", "label"]
    assert result.table["ra"].to_pylist() == list(up["ra"])
    assert result.table["label"].to_pylist() == list(up["label"])
    ra = next(c for c in result.columns if c.name == "ra")
    assert ra.unit == "deg"


def test_upload_is_visible_to_its_query_only(engine: CatalogEngine, objects: pa.Table) -> None:
    table = read_upload("pos", votable_bytes(positions(objects, n=3)))
    assert (
        engine.execute("SELECT COUNT(*) AS n FROM TAP_UPLOAD.pos", uploads={"pos": table})
        .table["n"][0]
        .as_py()
        == 3
    )
    with pytest.raises(AdqlError, match="not in TAP_SCHEMA"):
        engine.execute("SELECT COUNT(*) AS n FROM TAP_UPLOAD.pos")
    names = engine.execute("SELECT table_name FROM TAP_SCHEMA.tables").table["table_name"]
    assert not any(str(n).lower().endswith("pos") for n in names.to_pylist())


def test_upload_limits_and_bad_input() -> None:
    t = Table({"a": np.arange(10)})
    with pytest.raises(UploadError, match="bytes; the limit"):
        read_upload("t", votable_bytes(t), max_bytes=100)
    with pytest.raises(UploadError, match="10 rows; the limit is 5"):
        read_upload("t", votable_bytes(t), max_rows=5)
    with pytest.raises(UploadError, match="not a readable VOTable"):
        read_upload("t", b"<html>not a table</html>")
    with pytest.raises(UploadError, match="is not usable"):
        read_upload("1bad", votable_bytes(t))
    with pytest.raises(UploadError, match="non-public address"):
        fetch_upload("http://127.0.0.1:9/table.vot")
    with pytest.raises(UploadError, match="http:// or https://"):
        fetch_upload("file:///etc/passwd")


# --- translation cache ------------------------------------------------------------------------


def _plain(sql: str) -> str:
    return re.sub(r"__SKYDM_[0-9A-F]+_", "", sql)


def test_lift_takes_numbers_of_geometry_calls_only() -> None:
    key, numbers = lift(
        "SELECT TOP 5 ra FROM Object WHERE g_psfMag < 20.5 AND "
        "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10.5, -2, 1/60.)) = 1"
    )
    assert [t for _, t in numbers] == ["10.5", "2", "1", "60."]
    assert "TOP 5" in key and "20.5" in key and "= 1" in key


@pytest.mark.parametrize(
    "template",
    [
        "SELECT objectId FROM Object WHERE CONTAINS(POINT('ICRS', ra, dec), "
        "CIRCLE('ICRS', {a}, {b}, 0.05)) = 1",
        "SELECT objectId, DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', {a}, {b})) AS d "
        "FROM Object WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), BOX('ICRS', {a}, {b}, 0.2, 0.1))",
        "SELECT COORD1(POINT('ICRS', {a}, {b})) AS c FROM Object WHERE objectId = 3",
    ],
)
def test_cached_translation_equals_full_one(engine: CatalogEngine, template: str) -> None:
    cache = TranslationCache()
    schema = engine.tap_schema()
    orders = engine._partition_orders()
    rng = np.random.default_rng(5)
    for a, b in zip(rng.uniform(0, 360, 8), rng.uniform(1, 89, 8), strict=True):
        adql = template.format(a=repr(float(a)), b=repr(float(b)))
        got = cache.compile(
            adql, dialect=engine.dialect, schema=schema, maxrec=100, partition_orders=orders
        )
        full = compile_query(
            adql, dialect=engine.dialect, schema=schema, maxrec=100, partition_orders=orders
        )
        assert _plain(got.sql) == _plain(full.sql)
    if "COORD1" not in template:
        assert cache.hits == 7  # one shape, compiled once


def test_cached_shape_still_validates_values(engine: CatalogEngine) -> None:
    cache = TranslationCache()
    schema = engine.tap_schema()
    box = (
        "SELECT objectId FROM Object "
        "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), BOX('ICRS', 1, 2, {w}, 1))"
    )
    cache.compile(box.format(w=1), dialect=engine.dialect, schema=schema)
    with pytest.raises(AdqlError, match="BOX width"):
        cache.compile(box.format(w=500), dialect=engine.dialect, schema=schema)
