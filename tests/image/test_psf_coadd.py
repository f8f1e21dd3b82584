"""The coadd PSF includes the warps' bilinear resampling (issue 12), at each
warp's own sub-pixel phase when the warp recorded it.

Bilinear interpolation at a random sub-pixel phase broadens every image it
resamples; a coadd PSF that left it out made PSF fluxes 1-2% low.  Checked
against stars resampled with the same kernel (``scipy.ndimage`` order 1,
which is what ``reproject``'s bilinear interpolation computes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy import ndimage

from skydm.coadd.combine import bilinear_psf, coadd_psf
from skydm.coadd.skygrid import SkyCell
from skydm.coadd.stack import WarpStack
from skydm.coadd.warp import warp_exposure
from skydm.image import Exposure, GaussianPsf, MoffatPsf

TRUE = MoffatPsf(3.5, 3.5)
SIZE = 31


def _resampled_stars(n: int, seed: int) -> list[tuple[np.ndarray, float, float]]:
    """``n**2`` unit-flux stars of ``TRUE`` sampled on an input grid at random
    phases, then bilinearly resampled onto an output grid offset by phases
    on an ``n x n`` grid."""
    rng = np.random.default_rng(seed)
    # Resampling phases on a regular n x n grid (the mean over phases is
    # what the kernel models), star positions at random.
    return [_resampled_star(rng, (k % n + 0.5) / n, (k // n + 0.5) / n) for k in range(n * n)]


def _resampled_star(
    rng: np.random.Generator, fx: float, fy: float
) -> tuple[np.ndarray, float, float]:
    """One unit-flux star of ``TRUE`` at a random input position, bilinearly
    resampled at phase ``(fx, fy)``, and its centre on the output grid
    relative to the central pixel."""
    sx, sy = rng.random(2)
    star = TRUE.kernel(SIZE + 8, dx=sx - 0.5, dy=sy - 0.5)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    img = ndimage.map_coordinates(star, [yy + 4 + fy, xx + 4 + fx], order=1)
    return img, sx - 0.5 - fx, sy - 0.5 - fy


def _mean_psf_flux(kernel: np.ndarray, stars: list[tuple[np.ndarray, float, float]]) -> float:
    fluxes = []
    for img, dx, dy in stars:
        shifted = ndimage.shift(kernel, (dy, dx), order=3, mode="constant")
        fluxes.append(float(np.sum(shifted * img) / np.sum(shifted * shifted)))
    return float(np.mean(fluxes))


def test_bilinear_psf_matches_resampled_stars() -> None:
    stars = _resampled_stars(8, seed=5)
    plain = TRUE.kernel(SIZE)
    broadened = bilinear_psf(plain)
    # The calexp PSF alone fits resampled stars low; with the kernel, exact.
    assert _mean_psf_flux(plain, stars) < 0.98
    assert _mean_psf_flux(broadened, stars) == pytest.approx(1.0, abs=0.001)
    # On a Gaussian (no wings for the stamp to cut), 1/6 px^2 more variance per axis.
    gauss = GaussianPsf(2.0).kernel(SIZE)
    _, x = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    added = float(np.sum(bilinear_psf(gauss) * x**2) - np.sum(gauss * x**2))
    assert added == pytest.approx(1 / 6, abs=0.003)


def _warp(method: str) -> Exposure:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [20.0, 20.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    exp = Exposure(np.zeros((40, 40), np.float32), wcs=wcs, psf=TRUE, zero_point=27.0)
    exp.variance = np.ones((40, 40), np.float32)
    exp.meta["WARPMETH"] = method
    return exp


def test_coadd_psf_convolves_bilinear_warps_only() -> None:
    stack = WarpStack([_warp("bilinear"), _warp("bicubic")])
    both = coadd_psf(stack, np.array([1.0, 1.0]))
    only_bilinear = coadd_psf(stack, np.array([1.0, 0.0]))
    only_bicubic = coadd_psf(stack, np.array([0.0, 1.0]))
    assert both is not None and only_bilinear is not None and only_bicubic is not None
    n = only_bicubic.image.shape[0]
    assert np.allclose(only_bicubic.image, TRUE.kernel(n), atol=1e-7)
    assert np.allclose(only_bilinear.image, bilinear_psf(TRUE.kernel(n)), atol=1e-7)
    assert np.allclose(both.image, (only_bilinear.image + only_bicubic.image) / 2, atol=1e-7)


def _stars_at_phase(
    fx: float, fy: float, n: int, seed: int
) -> list[tuple[np.ndarray, float, float]]:
    """``n`` unit-flux stars at random positions, all bilinearly resampled at
    the one phase ``(fx, fy)``: the output pixel centres fall at input
    coordinates ``k + f`` (a warp that is a pure translation)."""
    rng = np.random.default_rng(seed)
    return [_resampled_star(rng, fx, fy) for _ in range(n)]


@pytest.mark.parametrize("phase", [(0.5, 0.5), (0.05, 0.0), (0.8, 0.3)])
def test_bilinear_psf_at_the_warps_phase_fits_better_than_the_mean(
    phase: tuple[float, float],
) -> None:
    stars = _stars_at_phase(*phase, n=12, seed=7)
    plain = TRUE.kernel(SIZE)
    exact = _mean_psf_flux(bilinear_psf(plain, phase), stars)
    mean = _mean_psf_flux(bilinear_psf(plain), stars)
    assert exact == pytest.approx(1.0, abs=0.001)
    assert abs(mean - 1.0) > 2 * abs(exact - 1.0)
    # At phase 1/2 interpolation broadens most (1/4 px^2 against the mean's
    # 1/6): the mean kernel is too narrow and fits low; near 0 it fits high.
    if phase == (0.5, 0.5):
        assert mean < 0.995
    if phase == (0.05, 0.0):
        assert mean > 1.005


def test_coadd_psf_uses_each_warps_phase_and_falls_back_to_the_mean() -> None:
    phased = _warp("bilinear")
    phased.meta["WARPDX"] = 0.5
    phased.meta["WARPDY"] = 0.25
    stack = WarpStack([phased, _warp("bilinear")])
    exact = coadd_psf(stack, np.array([1.0, 0.0]))
    older = coadd_psf(stack, np.array([0.0, 1.0]))
    assert exact is not None and older is not None
    n = exact.image.shape[0]
    assert np.allclose(exact.image, bilinear_psf(TRUE.kernel(n), (0.5, 0.25)), atol=1e-7)
    assert np.allclose(older.image, bilinear_psf(TRUE.kernel(n)), atol=1e-7)
    assert not np.allclose(exact.image, older.image, atol=1e-5)


def test_warp_records_the_phase_of_a_translation(tmp_path: Path) -> None:
    cell = SkyCell.centred(150.0, 2.0, (48, 48), 0.2, id="c")
    wcs = cell.wcs
    # The input grid is the cell's moved by (-3.3, +7.6) pixels, so the
    # output pixel centres fall at input coordinates k + 0.7 and k + 0.6.
    wcs.wcs.crpix = wcs.wcs.crpix + np.array([-3.3, 7.6])
    exp = Exposure(np.ones((48, 48), np.float32), wcs=wcs, psf=TRUE, zero_point=27.0)
    exp.variance = np.ones((48, 48), np.float32)
    warp = warp_exposure(exp, cell)
    assert warp.meta["WARPDX"] == pytest.approx(0.7, abs=1e-4)
    assert warp.meta["WARPDY"] == pytest.approx(0.6, abs=1e-4)
    # Through a file, as the pipeline's coadd reads it.
    path = tmp_path / "warp.fits"
    warp.write(path)
    with WarpStack([path]) as stack:
        assert stack.members[0].phase == pytest.approx((0.7, 0.6), abs=1e-4)
    # A rotated input is no translation: no phase, the mean kernel applies.
    rot = cell.wcs
    c, s = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    rot.wcs.cd = np.array([[c, -s], [s, c]]) @ rot.wcs.cd
    exp.wcs = rot
    assert "WARPDX" not in warp_exposure(exp, cell).meta
    exp.wcs = wcs
    assert "WARPDX" not in warp_exposure(exp, cell, method="bicubic").meta
