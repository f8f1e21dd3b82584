"""simulate_pair: a science and a template on one pixel grid."""

from __future__ import annotations

import numpy as np
import pytest

from skydm.image import psf_photometry
from skydm.sim import simulate_pair


def test_pair_shares_the_grid_and_differs_in_psf_and_transients() -> None:
    sci, tmp, truth = simulate_pair(4, (256, 256), 30, 1.2, 0.7, n_transients=5)
    assert sci.shape == tmp.shape == (256, 256)
    assert sci.wcs is not None and tmp.wcs is not None
    assert np.allclose(sci.wcs.wcs.cd, tmp.wcs.wcs.cd)
    assert np.allclose(sci.wcs.wcs.crval, tmp.wcs.wcs.crval)
    assert sci.psf is not None and tmp.psf is not None
    assert sci.psf.fwhm == pytest.approx(1.2 / 0.2) and tmp.psf.fwhm == pytest.approx(0.7 / 0.2)
    assert len(truth) == 5 and set(truth.colnames) >= {"x", "y", "flux", "mag", "ra", "dec"}
    # Sky-subtracted, with independent noise.
    assert abs(float(np.median(sci.image))) < 12 and abs(float(np.median(tmp.image))) < 12
    assert not np.array_equal(sci.image, tmp.image)
    # Transients: measured in the science image at their truth flux, absent
    # from the template.
    f_sci, e_sci = psf_photometry(sci, np.asarray(truth["x"]), np.asarray(truth["y"]))
    f_tmp, e_tmp = psf_photometry(tmp, np.asarray(truth["x"]), np.asarray(truth["y"]))
    objects = truth.meta["objects"]
    checked = 0
    for k, row in enumerate(truth):
        d = np.hypot(objects["x"] - row["x"], objects["y"] - row["y"])
        if np.sum((d < 3 * sci.psf.fwhm) & (objects["flux"] > 0.05 * row["flux"])) > 1:
            continue  # blended with a star: forced photometry measures both
        checked += 1
        assert f_sci[k] == pytest.approx(row["flux"], rel=0.03, abs=5 * e_sci[k])
        assert abs(f_tmp[k]) < 5 * e_tmp[k] + 0.03 * row["flux"]
        assert row["flux"] > 20 * e_sci[k]  # bright enough to be found
    assert checked >= 2
    assert set(objects["kind"]) == {"star", "transient"}
    # The same stars in both, at the same pixels.
    stars = objects[objects["kind"] == "star"]
    bright = stars[(stars["flux"] > 5e3) & (stars["flux"] < 2e5)]
    xs, ys = np.asarray(bright["x"]), np.asarray(bright["y"])
    a, _ea = psf_photometry(sci, xs, ys)
    b, _eb = psf_photometry(tmp, xs, ys)
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.sum() >= 3
    assert np.median(a[ok] / b[ok]) == pytest.approx(1.0, abs=0.03)


def test_pair_transients_sit_on_host_galaxies() -> None:
    _, _, truth = simulate_pair(2, (192, 192), 20, 1.0, 0.8, n_transients=6, n_galaxies=40)
    objects = truth.meta["objects"]
    gal = objects[objects["kind"] == "galaxy"]
    hosted = 0
    for row in truth:
        d = np.hypot(gal["x"] - row["x"], gal["y"] - row["y"])
        hosted += bool(np.any(d < gal["size"] * 1.01))
    assert hosted >= 2


def test_pair_is_deterministic_and_seed_dependent() -> None:
    a = simulate_pair(9, (64, 64), 10, 1.0, 0.8, n_transients=1)
    b = simulate_pair(9, (64, 64), 10, 1.0, 0.8, n_transients=1)
    c = simulate_pair(10, (64, 64), 10, 1.0, 0.8, n_transients=1)
    assert np.array_equal(a[0].image, b[0].image) and np.array_equal(a[1].image, b[1].image)
    assert not np.array_equal(a[0].image, c[0].image)
    assert np.array_equal(a[2]["flux"], b[2]["flux"])
