"""Object detection and measurement against analytic truth: pure noise, single
stars on a known PSF, the chi-square detection statistic, ids, configuration
and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from skydm.coadd import SkyCell
from skydm.drp import (
    ObjectConfig,
    ObjectFlag,
    assign_object_ids,
    load_objects,
    measure_objects,
    object_ids,
    skycell_index,
    split_object_id,
)
from skydm.drp._detect import BandPlanes, chi2_sigma, detection_image
from skydm.errors import BadValueError, MissingMetadataError, UserError
from skydm.image import Exposure, GaussianPsf, Mask
from skydm.image.exposure import NJY_AB_MAG

SIDE = 256
ZP = 30.0


def _coadd(
    rng: np.random.Generator,
    *,
    sigma: float = 2.0,
    fwhm: float = 3.0,
    stars: list[tuple[float, float, float]] = (),  # type: ignore[assignment]
    shape: tuple[int, int] = (SIDE, SIDE),
    zero_point: float = ZP,
    cell: SkyCell | None = None,
) -> Exposure:
    """White noise of ``sigma`` plus Gaussian stars (x, y, counts) on a cell grid."""
    psf = GaussianPsf.from_fwhm(fwhm)
    image = rng.normal(0.0, sigma, shape)
    padded = np.pad(image, 15)
    for x, y, counts in stars:
        ix, iy = round(x), round(y)
        k = psf.kernel(size=31, dx=x - ix, dy=y - iy)
        padded[iy : iy + 31, ix : ix + 31] += counts * k
    image = padded[15:-15, 15:-15]
    cell = cell or SkyCell.centred(150.0, 2.0, shape, 0.2)
    return Exposure(
        image=image.astype(np.float32),
        variance=np.full(shape, sigma**2, dtype=np.float32),
        wcs=cell.wcs,
        psf=psf,
        zero_point=zero_point,
    )


def test_chi2_sigma_has_the_normal_false_alarm_rate() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 3):
        z = rng.normal(size=(n, 400_000))
        sig = chi2_sigma((np.clip(z, 0, None) ** 2).sum(axis=0), n)
        for t in (1.0, 2.0, 3.0):
            expected = stats.norm.sf(t)
            got = float(np.mean(sig > t))
            assert abs(got - expected) < 5 * math.sqrt(expected / z.shape[1]) + 1e-4
    # One band: the statistic is the S/N itself; far tails stay finite and ordered.
    assert np.allclose(chi2_sigma(np.array([4.0, 100.0, 1e6]), 1), [2.0, 10.0, 1000.0], rtol=1e-6)
    assert np.all(np.diff(chi2_sigma(np.array([1e3, 1e4, 1e5, 1e6]), 3)) > 0)


@pytest.mark.parametrize("kind", ["chi2", "sum"])
def test_detection_image_is_in_true_sigma_on_pure_noise(kind: str) -> None:
    rng = np.random.default_rng(12)
    coadds = {b: _coadd(rng, sigma=3.0, fwhm=f) for b, f in (("g", 3.0), ("r", 4.5))}
    planes = [
        BandPlanes(c.image.astype(float), c.var.astype(float), c.msk, c.msk != 0, c.require_psf(""))
        for c in coadds.values()
    ]
    det, linear, _ = detection_image(planes, kind)
    inner = (slice(20, -20), slice(20, -20))
    # Each pixel of the detection image exceeds t sigma with the normal
    # tail's probability (correlated pixels: ~3000 independent ones here).
    for t in (1.0, 2.0):
        frac = float(np.mean(det[inner] > t))
        assert abs(frac - stats.norm.sf(t)) < 4 * math.sqrt(stats.norm.sf(t) / 3000), (t, frac)
    assert abs(float(np.std(linear[inner])) - 1.0) < 0.06
    # At 5.5 true sigma essentially nothing is found in noise.
    assert len(measure_objects(coadds, ObjectConfig(threshold=5.5, detection_image=kind))) <= 1


def test_isolated_stars_flux_position_and_errors() -> None:
    rng = np.random.default_rng(21)
    grid = np.arange(24, SIDE - 24, 26)
    xy = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)) for x in grid for y in grid]
    counts = rng.uniform(200.0, 4000.0, len(xy))
    stars = [(x, y, c) for (x, y), c in zip(xy, counts, strict=True)]
    coadds = {"g": _coadd(rng, stars=stars), "r": _coadd(rng, stars=stars, fwhm=4.0)}
    table = measure_objects(coadds, ObjectConfig(apcorr_min_stars=5))
    tx, ty = np.array(xy).T
    d = np.hypot(table["x"][:, None] - tx[None], table["y"][:, None] - ty[None])
    nearest = d.argmin(axis=0)
    assert np.all(d.min(axis=0) < 0.5), "every star found"
    assert len(table) == len(xy), "and nothing else"
    njy = 10 ** ((NJY_AB_MAG - ZP) / 2.5)
    for band in ("g", "r"):
        flux = np.asarray(table[f"{band}_psfFlux"][nearest])
        err = np.asarray(table[f"{band}_psfFluxErr"][nearest])
        pull = (flux - counts * njy) / err
        # Gaussian PSF models are exact: no aperture correction is needed and
        # the errors are those of the optimal linear estimator.
        assert abs(table.meta[f"APCORR_{band}"] - 1.0) < 0.01
        assert abs(float(np.mean(pull))) < 0.5
        assert 0.75 < float(np.std(pull)) < 1.3
        assert np.allclose(table[f"{band}_psfMag"][nearest], NJY_AB_MAG - 2.5 * np.log10(flux))
    dx = table["x"][nearest] - tx
    dy = table["y"][nearest] - ty
    assert float(np.sqrt(np.mean(np.concatenate([dx, dy]) ** 2))) < 0.1
    assert np.all(table["extendedness"][nearest] == 0)
    assert np.all(table["flags"][nearest] == 0)


def test_blended_pair_is_deblended_by_peaks_not_by_sep_contrast() -> None:
    rng = np.random.default_rng(3)
    # A faint star 3 FWHM from a bright one, on the bright one's wing.
    stars = [(120.0, 128.0, 60000.0), (129.0, 128.0, 600.0)]
    coadds = {"r": _coadd(rng, stars=stars)}
    peaks = measure_objects(coadds)
    assert len(peaks) == 2
    assert np.all(peaks["flags"] & ObjectFlag.DEBLENDED)
    assert np.all(peaks["deblend_nPeaks"] == 2)
    faint = int(np.argmin(peaks["r_psfFlux"]))
    njy = 10 ** ((NJY_AB_MAG - ZP) / 2.5)
    assert abs(peaks["r_psfFlux"][faint] / (600 * njy) - 1) < 5 * peaks["r_psfFluxErr"][faint] / (
        600 * njy
    )


def test_masked_pixels_set_flags() -> None:
    rng = np.random.default_rng(4)
    stars = [(60.0, 60.0, 3000.0), (180.0, 180.0, 3000.0), (128.0, 2.0, 3000.0)]
    exp = _coadd(rng, stars=stars)
    exp.msk[58:62, 58:62] |= np.uint32(Mask.CLIPPED)
    exp.msk[178:181, 178:181] |= np.uint32(Mask.BAD)
    table = measure_objects({"i": exp})
    by_pos = {(round(x / 10), round(y / 10)): f for x, y, f in table["x", "y", "flags"]}
    assert by_pos[(6, 6)] & ObjectFlag.CLIPPED
    assert by_pos[(18, 18)] & ObjectFlag.BAD
    assert by_pos[(18, 18)] & ObjectFlag.PARTIAL_PSF
    assert by_pos[(13, 0)] & ObjectFlag.EDGE
    edge = np.flatnonzero(table["y"] < 5)
    assert table["i_psfFlux_flag"][edge].all()


def test_band_order_does_not_change_the_objects() -> None:
    rng = np.random.default_rng(8)
    stars = [(float(x), float(y), 2000.0) for x in (50, 130, 200) for y in (60, 190)]
    g, r = _coadd(rng, stars=stars), _coadd(rng, stars=stars, fwhm=3.6)
    a = measure_objects({"g": g, "r": r})
    b = measure_objects({"r": r, "g": g})
    assert len(a) == len(b)
    for name in ("x", "y", "g_psfFlux", "r_psfFlux", "extendedness", "flags"):
        assert np.allclose(a[name], b[name], equal_nan=True)


def test_object_ids_are_unique_across_cells() -> None:
    assert skycell_index("c0_0") == 0
    assert skycell_index("c5_3") == (3 << 20) | 5
    ids = np.concatenate(
        [object_ids(cell, np.arange(1, 1001)) for cell in ("c5_3", "c6_3", "c5_4")]
    )
    assert len(set(ids.tolist())) == ids.size
    cell, number = split_object_id(ids[:1000])
    assert np.all(cell == skycell_index("c5_3")) and np.all(number == np.arange(1, 1001))
    big = object_ids("c1048575_524287", np.array([2**24 - 1]))
    assert big[0] > 0 and big.dtype == np.int64
    table = assign_object_ids(Table({"objectId": [9, 9, 9]}), 7)
    assert list(split_object_id(np.asarray(table["objectId"]))[1]) == [1, 2, 3]
    with pytest.raises(BadValueError, match="skycell"):
        skycell_index("cell-3")
    with pytest.raises(BadValueError, match="object number"):
        object_ids("c1_1", np.array([2**24]))


def test_config_is_validated() -> None:
    with pytest.raises(BadValueError, match="threshold"):
        ObjectConfig(threshold=0)
    with pytest.raises(BadValueError, match="detection_image"):
        ObjectConfig(detection_image="max")
    with pytest.raises(BadValueError, match="psf_stamp"):
        ObjectConfig(psf_stamp=30)
    with pytest.raises(BadValueError, match="deblender"):
        ObjectConfig(deblender="scarlet")
    with pytest.raises(BadValueError, match="min_area"):
        ObjectConfig(min_area=0)
    with pytest.raises(BadValueError, match="apcorr_radius"):
        ObjectConfig(aperture_radius=3.0, apcorr_radius=2.0)


def test_bad_input_is_refused_with_a_clear_message() -> None:
    rng = np.random.default_rng(1)
    good = _coadd(rng)
    with pytest.raises(BadValueError, match="coadds"):
        measure_objects({})
    with pytest.raises(BadValueError, match="band"):
        measure_objects({"r band": good})
    other = _coadd(rng, cell=SkyCell.centred(150.01, 2.0, (SIDE, SIDE), 0.2))
    with pytest.raises(UserError, match="pixel grid"):
        measure_objects({"g": good, "r": other})
    uncal = _coadd(rng, zero_point=math.nan)
    with pytest.raises(MissingMetadataError, match="zero point"):
        measure_objects({"g": uncal})
    nopsf = _coadd(rng)
    nopsf.psf = None
    with pytest.raises(MissingMetadataError, match="PSF"):
        measure_objects({"g": nopsf})


@pytest.mark.parametrize(
    "backend", ["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_loaded_objects_are_queryable_in_adql(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    from skydm.catalog import open_engine

    rng = np.random.default_rng(9)
    stars = [(float(x), float(y), 3000.0) for x in (40, 120, 200) for y in (50, 150, 210)]
    tables = []
    for cell_id, ra in (("c10_7", 150.0), ("c11_7", 150.05)):
        cell = SkyCell.centred(ra, 2.0, (SIDE, SIDE), 0.2, id=cell_id)
        coadds = {b: _coadd(rng, stars=stars, cell=cell) for b in ("g", "r")}
        table = assign_object_ids(measure_objects(coadds), cell_id)
        load_objects(tmp_path, table)
        tables.append(table)
    url = None
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")("skydm_drp_objects")
    with open_engine(tmp_path, url) as engine:
        res = engine.execute(
            "SELECT objectId, coord_ra, coord_dec, g_psfFlux, r_psfFluxErr, extendedness "
            "FROM Object WHERE CONTAINS(POINT('ICRS', ra, dec), "
            "CIRCLE('ICRS', 150.0, 2.0, 0.011)) = 1 ORDER BY objectId",
            maxrec=1000,
        )
        got = res.table.to_pydict()
        assert got["objectId"] == sorted(tables[0]["objectId"].tolist())
        first = tables[0][np.argsort(tables[0]["objectId"])]
        assert np.allclose(got["coord_ra"], first["coord_ra"])
        assert np.allclose(got["g_psfFlux"], first["g_psfFlux"])
        n = engine.execute("SELECT COUNT(*) AS n FROM Object", maxrec=10).table
        assert n.column("n").to_pylist() == [len(tables[0]) + len(tables[1])]
        cols = engine.execute(
            "SELECT column_name, unit, ucd FROM TAP_SCHEMA.columns "
            "WHERE table_name = 'Object' AND column_name = 'r_psfFlux'",
            maxrec=10,
        ).table.to_pylist()
        assert cols == [{"column_name": "r_psfFlux", "unit": "nJy", "ucd": "phot.flux.density"}]
