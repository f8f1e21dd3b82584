"""Catalog storage: loading files, standard schemas, HEALPix layout, atomic replace, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from skydm.catalog import healpix, list_tables, load_table, open_engine
from skydm.catalog.storage import HEALPIX_COL, PARTITION_COL
from skydm.cli.main import main
from skydm.errors import BadFileError, BadValueError, ConflictError
from skydm.repo import Repository


def _stars(n: int = 500, seed: int = 3) -> Table:
    rng = np.random.default_rng(seed)
    t = Table(
        {
            "RAJ2000": rng.uniform(0, 360, n) * u.deg,
            "DEJ2000": np.degrees(np.arcsin(rng.uniform(-1, 1, n))) * u.deg,
            "Vmag": rng.normal(15, 2, n) * u.mag,
            "name": [f"star{i}" for i in range(n)],
        }
    )
    t["Vmag"].description = "Johnson V magnitude"
    t["Vmag"].meta["ucd"] = "phot.mag;em.opt.V"
    return t


@pytest.mark.parametrize("ext", ["fits", "ecsv", "csv", "parquet", "vot"])
def test_load_file_formats_keep_metadata(tmp_path: Path, ext: str) -> None:
    stars = _stars()
    path = tmp_path / f"stars.{ext}"
    if ext == "parquet":
        stars.write(path, format="parquet")
    elif ext == "vot":
        stars.write(path, format="votable")
    else:
        stars.write(path)
    info = load_table(tmp_path / "catalog", "stars", path)
    assert info.rows == len(stars)
    d = info.definition
    assert (d.ra_col, d.dec_col) == ("RAJ2000", "DEJ2000")
    vmag = d.column("Vmag")
    if ext != "csv":  # CSV has no units
        assert vmag.unit == "mag" and d.column("RAJ2000").unit == "deg"
    if ext in ("fits", "ecsv", "parquet"):
        assert vmag.description == "Johnson V magnitude"
    with open_engine(tmp_path / "catalog") as engine:
        res = engine.execute("SELECT name, Vmag FROM stars WHERE name = 'star7'")
        assert res.table.to_pylist() == [{"name": "star7", "Vmag": pytest.approx(stars["Vmag"][7])}]


def test_layout_is_partitioned_and_sorted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 50_000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    info = load_table(tmp_path, "t", pa.table({"ra": ra, "dec": dec, "k": np.arange(n)}))
    total = 0
    for f in info.files:
        part = int(f.parent.name.split("=")[1])
        hp = pq.read_table(f, columns=[HEALPIX_COL]).column(HEALPIX_COL).to_numpy()
        assert np.all(np.diff(hp) >= 0)
        assert np.all(healpix.coarsen(hp, info.partition_order) == part)
        total += len(hp)
    assert total == n and f"{PARTITION_COL}=" in str(info.files[0])
    # the stored index is the order-29 pixel of each row's position
    back = pq.read_table(info.files, columns=["k", HEALPIX_COL]).to_pydict()
    order = np.argsort(back["k"])
    np.testing.assert_array_equal(
        np.array(back[HEALPIX_COL])[order], healpix.lonlat_to_index(ra, dec)
    )


def test_cone_ranges_cover_every_point_inside() -> None:
    rng = np.random.default_rng(5)
    for ra0, dec0, r in [
        (0.0, 89.9, 0.3),
        (359.9, 0.0, 0.2),
        (123.0, -89.99, 0.05),
        (40.0, 30.0, 1 / 60),
        (10.0, 10.0, 20.0),
    ]:
        # points uniformly inside the cap
        n = 20_000
        cosr = math.cos(math.radians(r))
        z = rng.uniform(cosr, 1, n)
        phi = rng.uniform(0, 2 * math.pi, n)
        local = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z])
        a, d = math.radians(ra0), math.radians(dec0)
        # rotate the cap from the pole to (ra0, dec0)
        ry = np.array([[math.sin(d), 0, math.cos(d)], [0, 1, 0], [-math.cos(d), 0, math.sin(d)]])
        rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        v = rz @ ry @ local
        ra = np.degrees(np.arctan2(v[1], v[0])) % 360
        dec = np.degrees(np.arcsin(np.clip(v[2], -1, 1)))
        idx = healpix.lonlat_to_index(ra, dec)
        ranges = healpix.cone_ranges(ra0, dec0, r)
        lo = np.array([x for x, _ in ranges])
        hi = np.array([y for _, y in ranges])
        pos = np.searchsorted(lo, idx, side="right") - 1
        assert np.all((pos >= 0) & (idx <= hi[np.maximum(pos, 0)])), (ra0, dec0, r)
        assert len(ranges) < 200


def test_standard_table_is_conformed(tmp_path: Path) -> None:
    data = pa.table(
        {
            "DIASOURCEID": [1, 2],
            "diaObjectId": [7, 7],
            "RA": [1.0, 2.0],
            "Dec": [3.0, 4.0],
            "psfFlux": [10.5, 11.5],
            "extra_col": ["a", "b"],
        }
    )
    info = load_table(tmp_path, "diasource", data)
    d = info.definition
    assert d.name == "DiaSource" and d.column("psfFlux").unit == "nJy"
    names = [c.name for c in d.columns]
    assert names[:2] == ["diaSourceId", "diaObjectId"] and names[-1] == "extra_col"
    with open_engine(tmp_path) as engine:
        rows = engine.execute(
            "SELECT diaSourceId, snr, extra_col FROM DiaSource ORDER BY diaSourceId"
        ).table.to_pylist()
    assert rows == [
        {"diaSourceId": 1, "snr": None, "extra_col": "a"},
        {"diaSourceId": 2, "snr": None, "extra_col": "b"},
    ]
    with pytest.raises(BadFileError, match="diaSourceId"):
        load_table(tmp_path, "DiaSource", pa.table({"ra": [1.0], "dec": [2.0]}), mode="replace")


def test_create_replace_append_and_open_engine_sees_changes(tmp_path: Path) -> None:
    t1 = pa.table({"ra": [1.0, 2.0], "dec": [0.0, 0.0], "v": [1, 2]})
    load_table(tmp_path, "t", t1)
    with open_engine(tmp_path) as engine:
        assert engine.execute("SELECT SUM(v) AS s FROM t").table.to_pylist() == [{"s": 3}]
        with pytest.raises(ConflictError, match="already exists"):
            load_table(tmp_path, "t", t1)
        load_table(tmp_path, "t", pa.table({"ra": [3.0], "dec": [1.0], "v": [10]}), mode="append")
        assert engine.execute("SELECT SUM(v) AS s FROM t").table.to_pylist() == [{"s": 13}]
        load_table(tmp_path, "t", pa.table({"ra": [5.0], "dec": [5.0], "v": [100]}), mode="replace")
        assert engine.execute("SELECT SUM(v) AS s FROM t").table.to_pylist() == [{"s": 100}]
        load_table(tmp_path, "u", pa.table({"x": [1, 2, 3]}))  # no positions
        assert engine.execute("SELECT COUNT(*) AS n FROM u").table.to_pylist() == [{"n": 3}]
    assert [t.name for t in list_tables(tmp_path)] == ["t", "u"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(BadValueError, match="table name"):
        load_table(tmp_path, "bad name;", pa.table({"x": [1]}))
    with pytest.raises(BadFileError, match="does not exist"):
        load_table(tmp_path, "t", tmp_path / "missing.csv")
    (tmp_path / "junk.fits").write_bytes(b"not a fits file")
    with pytest.raises(BadFileError, match="junk.fits"):
        load_table(tmp_path, "t", tmp_path / "junk.fits")
    with pytest.raises(BadValueError, match="--ra-col"):
        load_table(tmp_path, "t", pa.table({"a": [1.0], "b": [2.0]}), ra_col="nope")
    with pytest.raises(BadFileError, match="differ only in case"):
        load_table(tmp_path, "t", pa.table({"a": [1.0], "A": [2.0]}))


def test_cli_load_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stars.ecsv"
    _stars(50).write(path)
    Repository.open(tmp_path).close()  # only ingest, demo and sim create repositories
    assert main(["catalog", "load", "--repo", str(tmp_path), "-q", str(path)]) == 0
    assert main(["catalog", "load", "--repo", str(tmp_path), "-q", str(path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "catalog",
                "load",
                "--repo",
                str(tmp_path),
                "-q",
                "--append",
                "--table",
                "stars",
                str(path),
            ]
        )
        == 0
    )
    assert main(["catalog", "list", "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stars" in out and "100 rows" in out
