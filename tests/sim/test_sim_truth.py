"""Truth tables against pixels: fluxes, PSF, WCS, light curves and movers."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from astropy.table import Table

from skydm.image import Mask, psf_photometry
from skydm.sim import simulate_survey
from skydm.sim.catalog import project, transient_shape, variable_offset
from skydm.sim.config import MOVER_CLASSES
from skydm.sim.render import PointRenderer, make_psf
from skydm.sim.survey import SimVisit, Survey


def _isolated(
    truth: Table, shape: tuple[int, int], radius: float, frac: float, edge: float = 20.0
) -> np.ndarray:
    """Stars ``edge`` pixels from the edges with no object brighter than ``frac`` of
    their flux within ``radius`` pixels, and none 3 times brighter within twice
    that."""
    x, y, f = (np.asarray(truth[c], dtype=float) for c in ("x", "y", "flux"))
    kinds = np.asarray(truth["kind"])
    obj = np.isin(kinds, ("star", "galaxy", "transient", "variable"))
    out = []
    for i in np.flatnonzero(kinds == "star"):
        if not (edge < x[i] < shape[1] - edge and edge < y[i] < shape[0] - edge):
            continue
        d = np.hypot(x[obj] - x[i], y[obj] - y[i])
        # Bright neighbours' wings reach further than faint ones'.
        near = ((d < radius) & (f[obj] > frac * f[i])) | ((d < 2 * radius) & (f[obj] > 3 * f[i]))
        if np.sum(near) == 1:
            out.append(i)
    return np.array(out, dtype=int)


def _centroid(img: np.ndarray, x: float, y: float, s: float) -> tuple[float, float]:
    """Gaussian-windowed centroid, iterated (converges to the centre of a symmetric star)."""
    h = math.ceil(5 * s)
    for _ in range(30):
        ix, iy = round(x), round(y)
        yy, xx = np.mgrid[iy - h : iy + h + 1, ix - h : ix + h + 1]
        w = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s**2) * img[yy, xx]
        x, y = float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())
    return x, y


@pytest.mark.parametrize("kind", ["moffat", "double_gaussian", "gaussian"])
def test_rendered_stars_are_the_exposure_psf(kind: str) -> None:
    psf = make_psf(kind, 4.3)
    assert psf.fwhm == pytest.approx(4.3, rel=1e-6)
    r = PointRenderer(psf, floor=1e-3)
    stamp = r.stamps(np.array([0.3]), np.array([-0.2]), 12)[0]
    ref = psf.kernel(25, 0.3, -0.2)
    assert np.max(np.abs(stamp - ref)) < 2e-3 * ref.max()
    assert stamp.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def sparse_survey(small_survey: Survey) -> Survey:
    """Few sources, so that many stars are isolated; PSF widths across the range."""
    cfg = dataclasses.replace(
        small_survey.config,
        seed=5,
        shape=(320, 320),
        n_visits=3,
        n_stars=30,
        n_galaxies=0,
        seeing_range=(0.6, 1.5),
        star_mags=(17.5, 22.5),
    )
    return simulate_survey(cfg)


def test_psf_fwhm_follows_the_requested_seeing(sparse_survey: Survey) -> None:
    cfg = sparse_survey.config
    for v in sparse_survey.visits:
        assert cfg.seeing_range[0] <= v.seeing <= cfg.seeing_range[1]
        assert v.raw.psf is not None
        assert v.raw.psf.fwhm == pytest.approx(v.seeing / cfg.pixel_scale, rel=1e-6)
        # The half-maximum width of an isolated star in the noiseless image.
        t = v.truth
        fwhm = v.seeing / cfg.pixel_scale
        iso = _isolated(t, cfg.shape, 6 * fwhm, 0.01, edge=3 * fwhm + 2)
        i = iso[np.argmax(t["flux"][iso] * (t["flux"][iso] < 1e5))]
        img = v.model - v.sky
        x, y = float(t["x"][i]), float(t["y"][i])
        yy, xx = np.mgrid[0 : cfg.shape[0], 0 : cfg.shape[1]]
        rr = np.hypot(xx - x, yy - y).ravel()
        vals = img.ravel()
        near = rr < 3 * fwhm
        # Half maximum crossing of the radial profile, peak from a fit of the
        # central pixels (pixel integration lowers the sampled peak).
        order = np.argsort(rr[near])
        r_s, v_s = rr[near][order], vals[near][order]
        peak = v.raw.psf.kernel(dx=0.0, dy=0.0).max() * float(t["flux"][i])
        half_r = r_s[np.argmax(v_s < peak / 2)]
        assert 2 * half_r == pytest.approx(fwhm, rel=0.12)


def test_star_fluxes_and_positions_match_truth(sparse_survey: Survey) -> None:
    cfg = sparse_survey.config
    checked = 0
    for v in sparse_survey.visits:
        t = v.truth
        fwhm = v.psf.fwhm
        iso = _isolated(t, cfg.shape, 7 * fwhm, 1e-3, edge=4 * fwhm + 2)
        img = v.model.astype(np.float64) - v.sky
        half = math.ceil(4 * fwhm)
        for i in iso:
            x, y, flux = float(t["x"][i]), float(t["y"][i]), float(t["flux"][i])
            ix, iy = round(x), round(y)
            box = img[iy - half : iy + half + 1, ix - half : ix + half + 1]
            assert box.sum() == pytest.approx(flux, rel=2e-3, abs=1.0)
            if flux > 2000:
                cx, cy = _centroid(img, x, y, fwhm / 2.3548)
                assert abs(cx - x) < 0.02 and abs(cy - y) < 0.02
            checked += 1
    assert checked >= 5


def test_psf_photometry_on_the_noisy_image_recovers_truth(sparse_survey: Survey) -> None:
    cfg = sparse_survey.config
    for v in sparse_survey.visits:
        t = v.truth
        exp = v.clean.copy()
        exp.image = exp.image - np.float32(v.sky)
        iso = _isolated(t, cfg.shape, 6 * v.psf.fwhm, 0.01)
        sel = iso[(t["flux"][iso] > 3000) & (t["flux"][iso] < 3e5)]
        flux, err = psf_photometry(exp, np.asarray(t["x"][sel]), np.asarray(t["y"][sel]))
        good = np.isfinite(flux)
        assert good.sum() >= 3
        truth = np.asarray(t["flux"][sel])[good]
        # The photometry kernel is cut at 31 pixels: allow the Moffat wing beyond.
        assert np.all(np.abs(flux[good] - truth) < 5 * err[good] + 0.03 * truth)


def test_wcs_maps_truth_sky_positions_to_truth_pixels(small_survey: Survey) -> None:
    for v in small_survey.visits:
        t = v.truth
        x, y = v.raw.wcs.wcs_world2pix(t["ra"], t["dec"], 0)
        assert np.allclose(x, t["x"], atol=1e-6) and np.allclose(y, t["y"], atol=1e-6)
    # The same star moves between visits by the dither (and rotation).
    a, b = small_survey.visits[0].truth, small_survey.visits[1].truth
    common = np.intersect1d(a["id"][a["kind"] == "star"], b["id"][b["kind"] == "star"])
    assert common.size > 50
    ia = np.searchsorted(a["id"], common)
    ib = np.searchsorted(b["id"], common)
    shift = np.hypot(a["x"][ia] - b["x"][ib], a["y"][ia] - b["y"][ib])
    assert np.all(shift > 0.01)


@pytest.fixture(scope="module")
def lightcurve_survey(small_survey: Survey) -> Survey:
    cfg = dataclasses.replace(
        small_survey.config,
        seed=11,
        n_visits=6,
        n_galaxies=0,
        n_stars=40,
        artefacts=(),
        n_transients=4,
        n_variables=3,
        n_movers=0,
        bad_columns=0,
        transient_mags=(18.5, 19.5),
        variable_mags=(18.0, 19.0),
        rotation=0.0,
    )
    return simulate_survey(cfg)


def _forced(v: SimVisit, kind: str) -> tuple[Table, np.ndarray, np.ndarray]:
    t = v.truth[v.truth["kind"] == kind]
    exp = v.clean.copy()
    exp.image = exp.image - np.float32(v.sky)
    flux, err = psf_photometry(exp, np.asarray(t["x"]), np.asarray(t["y"]))
    return t, flux, err


def test_transients_follow_their_light_curves(lightcurve_survey: Survey) -> None:
    cat = lightcurve_survey.truth
    tr = cat[cat["kind"] == "transient"]
    assert len(tr) == 4
    # The shape peaks at t_peak with value 1, rises before and falls after.
    t = np.array([-20.0, -5.0, 0.0, 5.0, 40.0])
    s = transient_shape(t + 100.0, 100.0, 6.0, 20.0)
    assert s[2] == 1.0 and s[0] < s[1] < 1.0 and 1.0 > s[3] > s[4]
    assert s[4] == pytest.approx(math.exp(-2.0))
    shining = 0
    for v in lightcurve_survey.visits:
        rows, flux, err = _forced(v, "transient")
        for row, f, e in zip(rows, flux, err, strict=True):
            c = tr[tr["id"] == row["id"]][0]
            shape = transient_shape(np.array(v.mjd), c["t_peak"], c["tau_rise"], c["tau_fall"])
            expected = 10 ** (-0.4 * (c["mag_r"] - v.zero_point)) * float(shape)
            assert row["flux"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
            if np.isfinite(f):
                assert abs(f - expected) < 5 * e + 0.03 * expected
                shining += expected > 10 * e
    assert shining >= 3


def test_variables_follow_their_light_curves(lightcurve_survey: Survey) -> None:
    cat = lightcurve_survey.truth
    var = cat[cat["kind"] == "variable"]
    fluxes: dict[int, list[float]] = {}
    for v in lightcurve_survey.visits:
        rows, flux, err = _forced(v, "variable")
        for row, f, e in zip(rows, flux, err, strict=True):
            c = var[var["id"] == row["id"]][0]
            mag = c["mag_r"] + float(
                variable_offset(np.array(v.mjd), c["period"], c["amplitude"], c["phase"])
            )
            assert row["mag"] == pytest.approx(mag)
            assert abs(f - row["flux"]) < 5 * e + 0.03 * row["flux"]
            fluxes.setdefault(int(row["id"]), []).append(float(row["flux"]))
    # They do vary: by more than 10% over the survey.
    assert all(max(f) / min(f) > 1.1 for f in fluxes.values())


def test_movers_move_at_their_catalog_rates(small_survey: Survey) -> None:
    cfg = small_survey.config
    cat = small_survey.truth
    rows = []
    for v in small_survey.visits:
        m = v.truth[v.truth["kind"] == "mover"]
        for r in m:
            rows.append((int(r["id"]), v.mjd, str(r["cls"]), r))
    assert {c for _, _, c, _ in rows} == set(MOVER_CLASSES)
    centre = small_survey.fields[0]
    by_id: dict[int, list] = {}
    for ident, mjd, cls, r in rows:
        c = cat[cat["id"] == ident][0]
        length = math.hypot(r["x1"] - r["x0"], r["y1"] - r["y0"])
        rate_pix = math.hypot(c["rate_xi"], c["rate_eta"]) / 3600 * cfg.exptime / cfg.pixel_scale
        assert length == pytest.approx(rate_pix, rel=0.01)
        assert (cls == "asteroids_fast") == (length > 10)
        by_id.setdefault(ident, []).append((mjd, r))
    # A slow mover seen in both visits of a night has moved by rate * time.
    pairs = 0
    for ident, seen in by_id.items():
        c = cat[cat["id"] == ident][0]
        for (m0, r0), (m1, r1) in itertools.pairwise(seen):
            xi0, eta0 = project(np.array([r0["ra"]]), np.array([r0["dec"]]), *centre)
            xi1, eta1 = project(np.array([r1["ra"]]), np.array([r1["dec"]]), *centre)
            hours = (m1 - m0) * 24
            assert (xi1 - xi0)[0] * 3600 == pytest.approx(c["rate_xi"] * hours, abs=1e-3)
            assert (eta1 - eta0)[0] * 3600 == pytest.approx(c["rate_eta"] * hours, abs=1e-3)
            pairs += 1
    assert pairs >= 1


def test_saturated_pixels_in_truth_are_flagged(small_survey: Survey) -> None:
    v = small_survey.visits[0]
    t = v.truth
    bright = t[(t["kind"] == "star") & (t["flux"] > 3e6)]
    for r in bright:
        ix, iy = round(float(r["x"])), round(float(r["y"]))
        if 0 <= ix < v.raw.shape[1] and 0 <= iy < v.raw.shape[0]:
            assert v.raw.msk[iy, ix] & np.uint32(Mask.SAT)


@pytest.mark.parametrize("n", [1.0, 2.0])
def test_galaxy_profiles_have_their_half_light_radius_and_orientation(n: float) -> None:
    from skydm.sim.render import galaxy_stamp

    delta = np.ones((1, 1))  # no PSF: the bare Sérsic profile
    r_eff = 6.0
    img = galaxy_stamp(delta, 0.0, 0.0, r_eff, n, 1.0, 0.0)
    assert img.sum() == pytest.approx(1.0)
    h = img.shape[0] // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    inside = img[np.hypot(xx, yy) < r_eff].sum()
    # Half the light within r_eff (the pixel grid and the cut at 5 r_eff
    # move it by a few per cent).
    assert inside == pytest.approx(0.5, abs=0.04)
    # An elongated galaxy along +x with axis ratio 0.5: second moments in the
    # ratio q**2, and its centre where it was put.
    psf = make_psf("gaussian", 3.0).kernel()
    ell = galaxy_stamp(psf, 0.3, -0.2, r_eff, n, 0.5, 0.0)
    h = ell.shape[0] // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    cx, cy = (ell * xx).sum(), (ell * yy).sum()
    assert cx == pytest.approx(0.3, abs=0.02) and cy == pytest.approx(-0.2, abs=0.02)
    assert (ell * (yy - cy) ** 2).sum() < 0.5 * (ell * (xx - cx) ** 2).sum()
