"""A visit's detector PSFs cross-checked against each other (issue 12).

The profiles below are the fits measured on seed 43's calexps (r, visit 2,
true Moffat FWHM 4.056 px, beta 3.5): detector 0's six stars gave beta 2.2,
whose PSF fluxes are 13% high; its three neighbours are within 1%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from skydm.coadd.combine import coadd_psf
from skydm.coadd.stack import WarpStack
from skydm.errors import BadValueError
from skydm.image import Exposure, MoffatPsf, VisitInfo
from skydm.image.visitpsf import VisitPsfConfig, psf_flux_bias, visit_consistent_kernels

SIZE = 31
TRUE = MoffatPsf(4.056, 3.5)
#: (FWHM px, beta) fitted per detector of seed 43, r, visit 2.
FITS = [(3.865, 2.196), (4.03, 3.335), (4.012, 3.369), (4.028, 3.42)]


def _kernels(fits: list[tuple[float, float]]) -> list[np.ndarray]:
    return [MoffatPsf(f, b).kernel(SIZE) for f, b in fits]


def test_flux_bias_of_the_blended_fit_and_of_the_truth() -> None:
    truth = TRUE.kernel(SIZE)
    assert psf_flux_bias(truth, truth) == pytest.approx(0.0, abs=1e-12)
    biases = [psf_flux_bias(truth, k) for k in _kernels(FITS)]
    assert biases[0] > 0.10  # the broad-winged fit: PSF fluxes 13% high
    assert max(abs(b) for b in biases[1:]) < 0.01


def test_the_outlier_is_replaced_and_the_others_kept() -> None:
    kernels = _kernels(FITS)
    check = visit_consistent_kernels(kernels, [("r", 2)] * 4)
    assert check.replaced == (0,)
    assert check.bias[0] > 0.10 and np.all(np.abs(check.bias[1:]) < 0.01)
    for k in (1, 2, 3):
        assert check.kernels[k] is kernels[k]
    assert abs(psf_flux_bias(TRUE.kernel(SIZE), check.kernels[0])) < 0.01
    assert check.kernels[0].sum() == pytest.approx(1.0)


def test_a_focal_plane_within_tolerance_is_left_alone() -> None:
    # A real focal plane's PSF varies by a few per cent in FWHM.
    fits = [(4.0 * (1 + d), 3.5) for d in (-0.015, 0.0, 0.01, 0.015)]
    kernels = _kernels(fits)
    check = visit_consistent_kernels(kernels, [1] * 4)
    assert check.replaced == ()
    assert all(a is b for a, b in zip(check.kernels, kernels, strict=True))


def test_visits_are_checked_apart_and_two_psfs_are_not_judged() -> None:
    # Visits of very different seeing are never compared with each other;
    # a visit with two PSFs (one outlying) has no majority.
    good = _kernels([(6.0, 3.5), (6.0, 3.5), (6.05, 3.4)])
    pair = _kernels([FITS[0], FITS[1]])
    check = visit_consistent_kernels([*good, *pair], [1, 1, 1, 2, 2])
    assert check.replaced == ()
    assert np.all(np.isfinite(check.bias[:3])) and np.all(np.isnan(check.bias[3:]))


@pytest.mark.parametrize(
    ("field", "value"), [("tolerance", 0.0), ("tolerance", 1.5), ("min_detectors", 2)]
)
def test_config_refuses_bad_values(field: str, value: float) -> None:
    with pytest.raises(BadValueError, match=field):
        VisitPsfConfig(**{field: value})


def test_mismatched_visits_are_refused() -> None:
    with pytest.raises(BadValueError, match="visits"):
        visit_consistent_kernels(_kernels(FITS), [1, 1])


def _warp(psf: MoffatPsf, visit: int, detector: int) -> Exposure:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [20.0, 20.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    info = VisitInfo(band="r", visit=visit, detector=detector, mjd=60000.0 + visit / 100)
    exp = Exposure(np.zeros((40, 40), np.float32), wcs=wcs, psf=psf, zero_point=27.0, info=info)
    exp.variance = np.ones((40, 40), np.float32)
    exp.meta["WARPMETH"] = "bicubic"
    return exp


def test_coadd_psf_uses_the_visit_consistent_psfs() -> None:
    # Visit 2's four detectors (one blended fit) and visit 4's three, all
    # weighted alike: the coadd PSF's flux bias against the truth drops from
    # ~3% (the outlier's 13% over 7 warps) to under 1%.
    psfs = [MoffatPsf(f, b) for f, b in FITS]
    warps = [_warp(p, 2, d) for d, p in enumerate(psfs)]
    warps += [_warp(TRUE, 4, d) for d in range(3)]
    coadd = coadd_psf(WarpStack(warps), np.ones(len(warps)))
    assert coadd is not None
    n = coadd.image.shape[0]
    naive = np.mean([w.psf.kernel(n) for w in warps if w.psf is not None], axis=0)
    assert psf_flux_bias(TRUE.kernel(n), naive) > 0.015
    assert abs(psf_flux_bias(TRUE.kernel(n), coadd.image)) < 0.01


def test_warps_without_a_visit_are_never_grouped() -> None:
    # Warps from outside the pipeline (no VISIT card, no MJD) are not known
    # to share an exposure: nothing is replaced.
    psfs = [MoffatPsf(f, b) for f, b in FITS]
    warps = [_warp(p, 0, 0) for p in psfs]
    for w in warps:
        w.info.mjd = math.nan
    coadd = coadd_psf(WarpStack(warps), np.ones(len(warps)))
    assert coadd is not None
    n = coadd.image.shape[0]
    naive = np.mean([p.kernel(n) for p in psfs], axis=0)
    assert np.allclose(coadd.image, naive / naive.sum(), atol=1e-9)
