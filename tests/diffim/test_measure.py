"""DIA source measurement against analytic truth: apertures, PSF fits, dipoles, trails."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from diffim_helpers import DECAM, read

from skydm.diffim import detect_dia_sources, subtract
from skydm.diffim.measure import MeasureConfig, forced_psf_photometry, measure_dia_sources
from skydm.errors import BadValueError
from skydm.image import Exposure
from skydm.image.mask import Mask
from skydm.image.psf import GaussianPsf

PIXEL_SCALE = 0.2  # arcsec
FWHM = 3.5
NOISE = 5.0


def _wcs(shape: tuple[int, int], rotation_deg: float = 0.0) -> WCS:
    """A TAN WCS, north up and east left when not rotated."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    s = PIXEL_SCALE / 3600.0
    c, n = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    w.wcs.cd = np.array([[-s * c, s * n], [s * n, s * c]])
    return w


def _blank(seed: int, shape: tuple[int, int] = (256, 256), rotation: float = 0.0) -> Exposure:
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, NOISE, shape).astype(np.float32)
    return Exposure(
        image=image,
        variance=np.full(shape, NOISE**2, np.float32),
        wcs=_wcs(shape, rotation),
        psf=GaussianPsf.from_fwhm(FWHM),
        zero_point=28.0,
    )


def _add_psf(exp: Exposure, x: float, y: float, flux: float) -> None:
    assert exp.psf is not None
    size = 41
    ix, iy = round(x), round(y)
    k = exp.psf.kernel(size, x - ix, y - iy)
    h = size // 2
    exp.image[iy - h : iy + h + 1, ix - h : ix + h + 1] += np.float32(flux) * k.astype(np.float32)


def _add_trail(exp: Exposure, x: float, y: float, flux: float, length: float, theta: float) -> None:
    """A trail as the sum of many PSF copies along a segment (not the fitted formula)."""
    steps = 400
    for t in (np.arange(steps) + 0.5) / steps - 0.5:
        _add_psf(
            exp, x + t * length * math.cos(theta), y + t * length * math.sin(theta), flux / steps
        )


def _table(xs: list[float], ys: list[float], flux: list[float]) -> Table:
    t = Table()
    t["x"], t["y"] = np.array(xs, float), np.array(ys, float)
    t["psf_flux"] = np.array(flux, float)
    t.meta["threshold"] = 5.0
    return t


def test_aperture_and_psf_flux_of_isolated_points() -> None:
    exp = _blank(1)
    pos = [(60.3, 70.6, 2000.0), (150.0, 180.2, -1500.0), (200.7, 40.1, 800.0)]
    for x, y, f in pos:
        _add_psf(exp, x, y, f)
    t = measure_dia_sources(_table(*map(list, zip(*pos, strict=True))), exp)
    truth = np.array([p[2] for p in pos])
    # A 12-pixel aperture holds all of a 3.5-pixel-FWHM Gaussian's flux.
    assert np.all(np.abs(t["apFlux"] - truth) < 4 * t["apFluxErr"])
    expected_err = NOISE * math.sqrt(math.pi * 12.0**2)
    assert np.allclose(t["apFluxErr"], expected_err, rtol=0.05)
    # chi^2 of the right model over psfNdata pixels is about psfNdata.
    assert np.all(np.abs(t["psfChi2"] - t["psfNdata"]) < 5 * np.sqrt(2 * t["psfNdata"]))
    assert np.all(np.isfinite(t["psfLnL"]))
    # Position errors: the Cramer-Rao bound for a Gaussian PSF (sigma s,
    # broadened by the pixel: s^2 + 1/12) on flat noise N is sqrt(8 pi) s^2 N / F.
    s = FWHM / 2.3548
    cr = math.sqrt(8 * math.pi) * (s**2 + 1 / 12) * NOISE / np.abs(truth)
    assert np.allclose(t["xErr"], cr, rtol=0.05)
    assert np.allclose(t["yErr"], cr, rtol=0.05)
    assert np.allclose(t["raErr"] * 3600, t["xErr"] * PIXEL_SCALE, rtol=1e-3)
    assert np.all(np.abs(t["ra_dec_Cov"]) < 0.1 * t["raErr"] * t["decErr"])
    assert not np.any(t["isDipole"])
    assert not np.any(t["psfFlux_flag"])
    # Point sources: moments equal the PSF's, extendedness near 0.
    assert np.allclose(t["ixx"], t["ixxPSF"], rtol=0.15)
    assert np.allclose(t["ixxPSF"], (s * PIXEL_SCALE) ** 2, rtol=0.05)
    assert np.all(t["extendedness"] < 0.2)


def test_extended_source_has_high_extendedness() -> None:
    exp = _blank(2)
    big = GaussianPsf.from_fwhm(2.0 * FWHM)
    k = big.kernel(61)
    exp.image[100 - 30 : 100 + 31, 120 - 30 : 120 + 31] += np.float32(20000.0) * k.astype(
        np.float32
    )
    t = measure_dia_sources(_table([120.0], [100.0], [1.0]), exp)
    assert t["extendedness"][0] > 0.95
    assert t["ixx"][0] == pytest.approx(4 * t["ixxPSF"][0], rel=0.15)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_dipole_fit_recovers_separation_and_fluxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    exp = _blank(seed)
    truth = []
    xs, ys = [], []
    for k in range(4):
        x, y = 50.0 + 50 * k + rng.uniform(-0.5, 0.5), 128.0 + rng.uniform(-0.5, 0.5)
        sep = rng.uniform(1.2, 2.5) * FWHM
        ang = rng.uniform(0, 2 * math.pi)
        fp, fn = rng.uniform(3000, 6000), rng.uniform(3000, 6000)
        dx, dy = 0.5 * sep * math.cos(ang), 0.5 * sep * math.sin(ang)
        _add_psf(exp, x + dx, y + dy, fp)
        _add_psf(exp, x - dx, y - dy, -fn)
        truth.append((sep, fp, fn, ang))
        xs.append(x + dx)
        ys.append(y + dy)
    t = measure_dia_sources(_table(xs, ys, [1.0] * 4), exp)
    assert np.all(t["dipoleFitAttempted"]) and np.all(t["isDipole"])
    for row, (sep, fp, fn, ang) in zip(t, truth, strict=True):
        assert row["dipoleLength"] == pytest.approx(sep * PIXEL_SCALE, rel=0.1)
        assert row["dipoleMeanFlux"] == pytest.approx(0.5 * (fp + fn), rel=0.1)
        assert row["dipoleFluxDiff"] == pytest.approx(fp - fn, abs=0.1 * (fp + fn))
        # North up, east left: a pixel vector (dx, dy) has bearing atan2(-dx, dy).
        bearing = math.degrees(math.atan2(-math.cos(ang), math.sin(ang))) % 360
        diff = (row["dipoleAngle"] - bearing + 180) % 360 - 180
        assert abs(diff) < 5
        assert row["dipoleNdata"] > 0 and np.isfinite(row["dipoleChi2"])


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_trail_fit_recovers_length_and_angle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    exp = _blank(seed, rotation=rng.uniform(0, 90))
    truth = []
    xs, ys = [], []
    for k in range(3):
        x, y = 60.0 + 70 * k + rng.uniform(-0.5, 0.5), 128.0 + rng.uniform(-0.5, 0.5)
        # Trails of 3.5-9 FWHM: shorter ones are barely longer than the PSF,
        # and at S/N 20 their fitted length scatters by more than 5%.
        length = rng.uniform(12, 30)
        theta = rng.uniform(0, math.pi)
        # The trail's S/N (optimal, its shape known) drawn in [20, 40].
        unit = _blank(0)
        unit.image[:] = 0.0
        _add_trail(unit, x, y, 1.0, length, theta)
        flux = rng.uniform(20, 40) * NOISE / math.sqrt(float(np.sum(unit.image.astype(float) ** 2)))
        _add_trail(exp, x, y, flux, length, theta)
        truth.append((length, theta, flux))
        xs.append(x)
        ys.append(y)
    t = measure_dia_sources(_table(xs, ys, [1.0] * 3), exp)
    for row, (length, theta, flux) in zip(t, truth, strict=True):
        assert row["trailNdata"] > 0 and not row["trail_flag"]
        assert row["trailLength"] == pytest.approx(length * PIXEL_SCALE, rel=0.1)
        ux, uy = math.cos(theta), math.sin(theta)
        east, north = exp.wcs.wcs.cd @ np.array([ux, uy])  # type: ignore[union-attr]
        bearing = math.degrees(math.atan2(east, north)) % 180
        diff = (row["trailAngle"] - bearing + 90) % 180 - 90
        # "Within 10%" for an angle: 0.1 radian (a fraction of the angle's
        # value would depend on the arbitrary zero direction).
        assert abs(diff) < math.degrees(0.1)
        assert 0 < row["trailAngleErr"] < math.degrees(0.1)
        assert row["trailFlux"] == pytest.approx(flux, rel=0.1)
        assert np.isfinite(row["trailRa"]) and np.isfinite(row["trailDecErr"])


def test_forced_photometry_to_the_edge() -> None:
    exp = _blank(5)
    # Centres on and just inside the edge, where the PSF stamp is cut.
    pos = [(0.0, 100.0), (2.2, 50.0), (255.0, 255.0), (128.0, 1.0), (128.0, 128.0)]
    flux = 3000.0
    img = exp.image
    for x, y in pos:
        ix, iy = round(x), round(y)
        assert exp.psf is not None
        k = exp.psf.kernel(41, x - ix, y - iy)
        y0, y1, x0, x1 = iy - 20, iy + 21, ix - 20, ix + 21
        ya, yb, xa, xb = max(y0, 0), min(y1, 256), max(x0, 0), min(x1, 256)
        img[ya:yb, xa:xb] += np.float32(flux) * k[ya - y0 : yb - y0, xa - x0 : xb - x0].astype(
            np.float32
        )
    xs, ys = np.array([p[0] for p in pos]), np.array([p[1] for p in pos])
    fp = forced_psf_photometry(exp, xs, ys)
    assert np.all(np.isfinite(fp.flux))
    assert np.all(np.abs(fp.flux - flux) < 5 * fp.err)
    assert list(fp.edge) == [True, True, True, True, False]
    # Partial PSFs are noisier, never dropped.
    assert np.all(fp.err[:4] > fp.err[4])


def test_pixel_flags_follow_every_mask_bit() -> None:
    exp = _blank(7)
    for x in (40, 80, 120, 160, 200):
        _add_psf(exp, x, 60.0, 3000.0)
    bits = [Mask.CR, Mask.SAT, Mask.INTRP, Mask.STREAK, Mask.INJECTED]
    for x, bit in zip((40, 80, 120, 160, 200), bits, strict=True):
        exp.msk[60, x] |= np.uint32(bit)
    exp.msk[62, 40 + 3] |= np.uint32(Mask.SUSPECT)  # in the footprint, off the centre
    t = measure_dia_sources(_table([40, 80, 120, 160, 200], [60.0] * 5, [1.0] * 5), exp)
    for k, name in enumerate(("cr", "saturated", "interpolated", "streak", "injected")):
        assert t[f"pixelFlags_{name}"][k] and t[f"pixelFlags_{name}Center"][k]
        others = [j for j in range(5) if j != k]
        assert not np.any(t[f"pixelFlags_{name}"][others])
    assert t["pixelFlags_suspect"][0] and not t["pixelFlags_suspectCenter"][0]
    assert np.all(t["bboxSize"] >= 5)


def test_config_is_validated() -> None:
    with pytest.raises(BadValueError, match="aperture_radius"):
        MeasureConfig(aperture_radius=-1)


def test_decam_transient_measurements_agree(data_dir: Path) -> None:
    """Real data: the DECam transient's fluxes agree across estimators and images."""
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    result = subtract(science, template, method="al")
    table = detect_dia_sources(result, threshold=5.0)
    t = measure_dia_sources(
        table,
        result.difference,
        science=science,
        template=result.template,
        science_psf=result.science_psf,
        template_psf=result.template_psf,
    )
    hit = t[np.hypot(t["x"] - 130.0, t["y"] - 128.0) < 4]
    assert len(hit) == 1
    row = hit[0]
    # The 12-pixel aperture and the PSF fit see the same flux.
    assert abs(row["apFlux"] - row["psf_flux"]) < 2 * row["apFluxErr"]
    # New light on the science image: science minus template (each forced
    # with its own PSF) is significantly positive.  It is not equal to the
    # difference's flux: on an extended host, PSFs of 5.2 and 3.9 pixels take
    # in different fractions of the galaxy.
    change = row["scienceFlux"] - row["templateFlux"]
    assert change > 3 * math.hypot(row["scienceFluxErr"], row["templateFluxErr"])
    assert 0 < row["xErr"] < 0.5 and 0 < row["raErr"] * 3600 < 0.2
    assert not row["isDipole"] and row["trailNdata"] == 0
    assert row["psfNdata"] > 100 and row["psfChi2"] / row["psfNdata"] < 2
    assert not row["pixelFlags_edge"] and not row["pixelFlags_saturated"]


def test_results_do_not_depend_on_source_order_or_wcs() -> None:
    exp = _blank(8)
    rng = np.random.default_rng(8)
    xs = rng.uniform(20, 236, 12)
    ys = rng.uniform(20, 236, 12)
    for x, y in zip(xs, ys, strict=True):
        _add_psf(exp, x, y, 2500.0)
    _add_psf(exp, xs[0] + 5.0, ys[0], -2500.0)  # one dipole among them
    table = _table(list(xs), list(ys), [1.0] * 12)
    a = measure_dia_sources(table, exp)
    order = rng.permutation(12)
    b = measure_dia_sources(table[order], exp)
    for name in ("apFlux", "psfChi2", "xErr", "ixx", "extendedness", "dipoleMeanFlux", "bboxSize"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name])[order], equal_nan=True)
    # Without a WCS: pixel quantities stay, sky ones cannot be computed.
    exp.wcs = None
    c = measure_dia_sources(table, exp)
    np.testing.assert_allclose(c["apFlux"], a["apFlux"])
    np.testing.assert_allclose(c["xErr"], a["xErr"])
    assert "raErr" not in c.colnames and "ixx" not in c.colnames
    assert np.all(np.isnan(c["dipoleLength"])) and np.isfinite(c["dipoleMeanFlux"][0])


def test_science_and_template_forced_fluxes_on_their_own_grids() -> None:
    diff = _blank(31)
    science = _blank(32)
    template = _blank(33, shape=(300, 300), rotation=20.0)
    template.psf = GaussianPsf.from_fwhm(2.5)
    template.zero_point = 27.0  # one template count is 10**0.4 difference counts
    x, y = 100.3, 140.8
    _add_psf(diff, x, y, 3000.0)
    _add_psf(science, x, y, 9000.0)
    assert template.wcs is not None and diff.wcs is not None
    tx, ty = template.wcs.world_to_pixel_values(*diff.wcs.pixel_to_world_values(x, y))
    _add_psf(template, float(tx), float(ty), 6000.0 / 10**0.4)
    t = measure_dia_sources(_table([x], [y], [3000.0]), diff, science=science, template=template)
    row = t[0]
    assert abs(row["scienceFlux"] - 9000.0) < 4 * row["scienceFluxErr"]
    assert abs(row["templateFlux"] - 6000.0) < 4 * row["templateFluxErr"]
    assert not row["forced_PsfFlux_flag"]


def test_empty_table_and_positions_off_the_image() -> None:
    from skydm.diffim.measure import MEASURED_COLUMNS

    exp = _blank(9)
    empty = measure_dia_sources(_table([], [], []), exp, science=exp, template=exp)
    assert len(empty) == 0 and set(empty.colnames) >= MEASURED_COLUMNS
    t = measure_dia_sources(_table([-3.0, 300.0], [10.0, 10.0], [1.0, 1.0]), exp)
    assert list(t["pixelFlags_offimage"]) == [True, True]
    assert np.isfinite(t["apFlux"][0]) and t["apFlux_flag_apertureTruncated"][0]
    assert np.isnan(t["apFlux"][1]) and t["psfFlux_flag_noGoodPixels"][1]
