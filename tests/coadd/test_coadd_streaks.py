"""Faint streaks subtracted as a fitted line model (skydm.coadd._cw_streaks),
on synthetic footprints with known truth."""

from __future__ import annotations

import math

import numpy as np

from skydm.coadd._cw_linemodel import line_profiles
from skydm.coadd._cw_streaks import (
    Candidate,
    StreakFit,
    _bad_cells,
    _point_residuals,
    fit_streak,
)
from skydm.image import MoffatPsf

SIDE = 96
PSF = MoffatPsf(4.0)


def _segment(x0: float, y0: float, x1: float, y1: float, flux: float) -> np.ndarray:
    """A source moving uniformly from (x0, y0) to (x1, y1), seen through PSF."""
    img = np.zeros((SIDE, SIDE))
    n = max(2, math.ceil(math.hypot(x1 - x0, y1 - y0) / 0.25))
    half = 12
    for t in (np.arange(n) + 0.5) / n:
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        ix, iy = round(x), round(y)
        img[iy - half : iy + half + 1, ix - half : ix + half + 1] += (
            PSF.kernel(2 * half + 1, x - ix, y - iy) * flux / n
        )
    return img


def _candidate(
    signal: np.ndarray, seed: int, sigma: float = 1.0, foot: np.ndarray | None = None
) -> Candidate:
    """``signal`` plus white noise on a footprint (default: where the signal is
    over 2% of its peak, grown by 4 pixels, as a clip would be)."""
    from scipy import ndimage

    if foot is None:
        foot = ndimage.binary_dilation(signal > 0.02 * signal.max(), iterations=4)
    rng = np.random.default_rng(seed)
    index = np.flatnonzero(foot)
    d = (signal + rng.normal(0, sigma, signal.shape)).reshape(-1)[index]
    m = index.size
    return Candidate(0, index, d, np.full(m, sigma**2), np.ones(m, dtype=bool))


def test_a_faint_trailed_mover_is_fitted_to_its_flux() -> None:
    truth = _segment(25, 30, 70, 60, 400.0)  # S/N about 40 over its length
    found = []
    for seed in range(4):
        c = _candidate(truth, seed)
        s = fit_streak(c, SIDE, PSF)
        assert s is not None
        # The model is subtracted on (nearly) the whole footprint.
        assert s.index.size >= 0.9 * c.index.size
        found.append(s.flux)
        assert math.hypot(s.x0 - 25, s.y0 - 30) < 3 or math.hypot(s.x1 - 25, s.y1 - 30) < 3
    # Within noise of the truth: the flux error of a matched fit is ~10 here.
    assert abs(np.mean(found) - truth.sum()) < 25, (found, truth.sum())


def test_a_faint_diffuse_trail_across_the_footprint_is_fitted() -> None:
    """A trail wider than the PSF and without its wings (a Gaussian across)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    dist = (xx - 10) * math.sin(0.4) - (yy - 5) * math.cos(0.4)
    truth = 1.2 * np.exp(-0.5 * (dist / 2.5) ** 2)
    s = fit_streak(_candidate(truth, 7), SIDE, PSF, fit=StreakFit(long_line=60.0))
    assert s is not None
    covered = truth.reshape(-1)[s.index].sum()
    assert abs(s.flux - covered) < 0.05 * covered


def test_a_round_blob_is_no_streak() -> None:
    """A ghost: smooth and round; it stays replaced."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    truth = 0.8 * np.exp(-0.5 * ((xx - 48) ** 2 + (yy - 48) ** 2) / 12.0**2)
    assert fit_streak(_candidate(truth, 3), SIDE, PSF) is None


def test_noise_and_bright_streaks_stay_replaced() -> None:
    # Nothing there: below the S/N worth a model.
    box = np.zeros((SIDE, SIDE), dtype=bool)
    box[30:60, 20:80] = True
    assert fit_streak(_candidate(np.zeros((SIDE, SIDE)), 1, foot=box), SIDE, PSF) is None
    # A bright mover: replacing costs little noise, and a model would leave
    # more light than that.
    assert fit_streak(_candidate(_segment(25, 30, 70, 60, 2e5), 1), SIDE, PSF) is None


def test_a_point_on_a_static_source_is_variability_not_a_mover() -> None:
    truth = _segment(48, 48, 48.3, 48.2, 300.0)
    c = _candidate(truth, 5)
    assert fit_streak(c, SIDE, PSF) is not None  # a slow mover alone
    c.sources = np.array([[48.0, 48.5]])
    assert fit_streak(c, SIDE, PSF) is None


def test_streak_size_limits_are_checked() -> None:
    import pytest

    from skydm.coadd._cw_config import StreakConfig
    from skydm.errors import BadValueError

    with pytest.raises(BadValueError, match="min_pixels"):
        StreakConfig(min_pixels=50, max_pixels=10)


def test_the_residual_tests_accept_a_fit_that_left_every_pixel_out() -> None:
    """A later fit can leave every pixel of a footprint over ``outlier_z``
    (grown by a pixel): both residual tests then see no pixel.  They must
    judge none (the fit fails its pixel-fraction test and the footprint stays
    replaced), not stop CompareWarp: ``_point_residuals`` crashed this way on
    held-out fields 569793000:8 and 1462159799:8, and ``_bad_cells`` had the
    same reduction over no pixel."""
    p = np.array([0.3, 0.0, 0.3, 2.0, 0.0, 3.0])
    none = np.zeros(0)
    prof = line_profiles(PSF, 0.3, 4 * PSF.fwhm + 8)
    cells = _bad_cells(p, none, none, (10.0, 10.0), none, none, prof, StreakFit())
    points = _point_residuals(p, none, none, (10.0, 10.0), none, none, 2.0, 3.0)
    for out in (cells, points):
        assert out.dtype == bool and out.shape == (0,)


def test_a_footprint_with_one_positive_pixel_is_no_streak() -> None:
    """The start is the positive part's weighted moments: one positive pixel
    has none (their covariance is NaN), and the fit must decline the
    footprint rather than stop on a NaN angle."""
    index = np.arange(30, dtype=np.int64) + 5 * SIDE
    d = -np.ones(index.size)
    d[7] = 200.0  # S/N 31: past the S/N test
    c = Candidate(0, index, d, np.ones(index.size), np.ones(index.size, dtype=bool))
    assert fit_streak(c, SIDE, PSF) is None
