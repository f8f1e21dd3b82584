"""Cone searches answered from memory: the decoded ``_healpix`` cache and its limits.

The direct cone reader keeps each file's ``_healpix`` column decoded
(:class:`~skydm.catalog.engines.conereader.ConeReader`), and an engine answers
a cone of a cached shape that holds no row without opening a file
(:meth:`DuckDBEngine.answer_from_memory`).  Both must answer exactly as SQL
does, see a reloaded table at once, and fall back when they cannot know.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from skydm.catalog import healpix, load_table
from skydm.catalog.engines.duckdb import DuckDBEngine
from skydm.errors import BadValueError

CONE = (
    "SELECT objectId, ra, dec FROM Object WHERE "
    "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra!r}, {dec!r}, {r!r})) = 1"
)


@pytest.fixture(scope="module")
def engines(catalog_dir: Path) -> Iterator[tuple[DuckDBEngine, DuckDBEngine, DuckDBEngine]]:
    """(cache on, cache off, SQL only) over the same catalog."""
    made = (
        DuckDBEngine(catalog_dir),
        DuckDBEngine(catalog_dir, cone_index_mb=0),
        DuckDBEngine(catalog_dir, direct_cones=False),
    )
    yield made
    for engine in made:
        engine.close()


def _cones(n: int, seed: int) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    out = [
        (float(a), float(d), float(r))
        for a, d, r in zip(
            rng.uniform(0, 360, n),
            np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
            10 ** rng.uniform(-2.5, -0.5, n),
            strict=True,
        )
    ]
    # The dense patches (see conftest): cones there hold rows.
    return [*out, (0.0, 89.99, 0.05), (123.0, -89.97, 0.03), (0.01, 10.02, 0.01)]


def test_memory_and_cache_answer_as_sql(
    engines: tuple[DuckDBEngine, DuckDBEngine, DuckDBEngine],
) -> None:
    cached, uncached, sql = engines
    from_memory = with_rows = 0
    for ra, dec, r in _cones(40, seed=3):
        query = CONE.format(ra=ra, dec=dec, r=r)
        want = sql.execute(query, maxrec=1000).table
        # The first query of a shape (and the first touch of a file) is read.
        got = cached.execute(query, maxrec=1000)
        assert got.table.equals(want), query
        assert uncached.execute(query, maxrec=1000).table.equals(want), query
        answer = cached.answer_from_memory(query, maxrec=1000)
        if answer is not None:
            columns, batches, overflow = answer
            table = pa.Table.from_batches(list(batches), schema=want.schema)
            assert table.equals(want) and table.num_rows == 0, query
            assert [c.name for c in columns] == ["objectId", "ra", "dec"]
            assert not overflow()
            from_memory += 1
        with_rows += want.num_rows > 0
    # Most small cones of a 30,000-row sky are empty, and memory answers them;
    # the dense patches hold rows, which memory never answers.
    assert from_memory >= 20 and with_rows >= 3
    assert from_memory <= 43 - with_rows


def test_memory_declines_what_it_cannot_know(catalog_dir: Path) -> None:
    engine = DuckDBEngine(catalog_dir)
    try:
        query = CONE.format(ra=200.0, dec=-30.0, r=0.001)
        assert engine.answer_from_memory(query) is None  # shape not compiled yet
        engine.execute(query)
        assert engine.answer_from_memory(query) is not None
        other = "SELECT objectId FROM Object WHERE " + CONE.split(" WHERE ", 1)[1]
        assert engine.answer_from_memory(other.format(ra=200.0, dec=-30.0, r=0.001)) is None
        ordered = query + " ORDER BY objectId"
        engine.execute(ordered)
        assert engine.answer_from_memory(ordered) is None  # not a plain cone: SQL
    finally:
        engine.close()
    off = DuckDBEngine(catalog_dir, cone_index_mb=0)
    try:
        off.execute(query)
        assert off.answer_from_memory(query) is None  # no decoded column kept
    finally:
        off.close()


def test_reloaded_table_is_seen_at_once(tmp_path: Path) -> None:
    def table(ra: list[float]) -> pa.Table:
        return pa.table(
            {"objectId": np.arange(len(ra), dtype=np.int64), "ra": ra, "dec": [5.0] * len(ra)}
        )

    load_table(tmp_path, "Object", table([100.0, 101.0]))
    engine = DuckDBEngine(tmp_path)
    try:
        query = CONE.format(ra=50.0, dec=5.0, r=0.01)
        assert engine.execute(query).table.num_rows == 0
        assert engine.answer_from_memory(query) is not None
        load_table(tmp_path, "Object", table([100.0, 50.001]), mode="replace")
        assert engine.answer_from_memory(query) is None
        assert engine.execute(query).table.column("objectId").to_pylist() == [1]
        assert engine.answer_from_memory(query) is None  # the cone now holds a row
    finally:
        engine.close()


def test_bad_cache_size_is_refused(catalog_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYDM_CATALOG_CONE_INDEX_MB", "lots")
    with pytest.raises(BadValueError, match="SKYDM_CATALOG_CONE_INDEX_MB='lots'"):
        DuckDBEngine(catalog_dir)
    with pytest.raises(BadValueError, match="cone_index_mb"):
        DuckDBEngine(catalog_dir, cone_index_mb=-1)


@pytest.fixture(params=["mocpy", "astropy-healpix"])
def cover_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Cone coverage from mocpy's core, or from astropy-healpix (when mocpy is missing)."""
    if request.param == "mocpy":
        if healpix._moc_core() is None:
            pytest.skip("mocpy is not installed")
    else:
        monkeypatch.setattr(healpix, "_moc_core", lambda: None)
    healpix._cone_cover.cache_clear()
    healpix.cone_cover.cache_clear()
    yield request.param
    healpix._cone_cover.cache_clear()
    healpix.cone_cover.cache_clear()


def test_cover_holds_points_just_inside_the_circle(cover_backend: str) -> None:
    rng = np.random.default_rng(11)
    cones = [
        (float(a), float(d), float(r))
        for a, d, r in zip(
            rng.uniform(0, 360, 150),
            np.degrees(np.arcsin(rng.uniform(-1, 1, 150))),
            10 ** rng.uniform(-3.5, 0.3, 150),
            strict=True,
        )
    ]
    cones += [(0.0, 89.999, 0.01), (359.999, -89.99, 0.02), (45.0, 41.8103, 1 / 60)]
    for ra0, dec0, r in cones:
        # Points on a ring just inside the edge, where a cover could miss one.
        n = 300
        phi = rng.uniform(0, 2 * math.pi, n)
        z = np.cos(np.radians(r * (1 - 1e-9)))
        local = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi)])
        local = np.vstack([local, np.full(n, z)])
        a, d = math.radians(ra0), math.radians(dec0)
        ry = np.array([[math.sin(d), 0, math.cos(d)], [0, 1, 0], [-math.cos(d), 0, math.sin(d)]])
        rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        v = rz @ ry @ local
        idx = healpix.lonlat_to_index(
            np.degrees(np.arctan2(v[1], v[0])) % 360,
            np.degrees(np.arcsin(np.clip(v[2], -1, 1))),
        )
        cover = healpix.cone_cover(ra0, dec0, r)
        pos = cover.lo.searchsorted(idx, side="right") - 1
        inside = (pos >= 0) & (idx <= cover.hi[np.maximum(pos, 0)])
        assert inside.all(), (cover_backend, ra0, dec0, r)
        # The merged ranges of the SQL hold the exact ones.
        merged = healpix.cone_ranges(ra0, dec0, r)
        for lo, hi in cover.ranges:
            assert any(m_lo <= lo and hi <= m_hi for m_lo, m_hi in merged)
