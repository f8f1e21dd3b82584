"""PSF measurement on a field where bright compact galaxies outnumber the stars,
against the exact PSF the stars were drawn with."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from skydm.image import Exposure, GaussianPsf, MoffatPsf, VisitInfo, measure_psf

FWHM, BETA = 5.0, 3.5


def _field(seed: int) -> Exposure:
    """400x400 image: 20 stars and 45 brighter galaxies (the PSF convolved with a
    Gaussian of sigma 1-2.5 px), Moffat PSF rendered out to 30 px (total flux)."""
    rng = np.random.default_rng(seed)
    shape = (400, 400)
    sky, gain = 400.0, 2.0
    model = np.full(shape, sky)
    psf = MoffatPsf(FWHM, BETA).kernel(size=61)
    n_star, n_gal = 20, 45
    pos = rng.uniform(40, 360, (n_star + n_gal, 2))
    for k, (x, y) in enumerate(pos):
        ix, iy = round(x), round(y)
        if k < n_star:
            flux = 10 ** rng.uniform(4.0, 4.8)
            stamp = MoffatPsf(FWHM, BETA).kernel(size=61, dx=x - ix, dy=y - iy)
        else:
            flux = 10 ** rng.uniform(4.3, 5.0)
            blob = GaussianPsf(rng.uniform(1.0, 2.5)).kernel(size=21, dx=x - ix, dy=y - iy)
            stamp = fftconvolve(psf, blob, mode="same")
        model[iy - 30 : iy + 31, ix - 30 : ix + 31] += flux * stamp / stamp.sum()
    img = rng.poisson(model * gain) / gain
    return Exposure((img - sky).astype(np.float32), info=VisitInfo(gain=gain, sky=sky))


def _flux_bias(measured: MoffatPsf | object, size: int = 41) -> float:
    """PSF flux of a noiseless star of unit total flux fitted with ``measured``."""
    star = MoffatPsf(FWHM, BETA).kernel(size=201)[100 - size // 2 : 101 + size // 2,
                                                  100 - size // 2 : 101 + size // 2]  # fmt: skip
    model = measured.kernel(size)  # type: ignore[attr-defined]
    return float(np.sum(model * star) / np.sum(model * model))


@pytest.mark.parametrize("seed", [3, 4])
def test_psf_of_stars_among_compact_galaxies(seed: int) -> None:
    psf = measure_psf(_field(seed))
    # The stamp holds the wings (3.5 FWHM each way), and the PSF is the stars'.
    assert psf.default_size() >= 2 * 3 * FWHM
    assert abs(psf.fwhm / FWHM - 1) < 0.06, psf.fwhm
    # PSF fluxes measured with it are those of the true PSF to 1.5%: galaxies
    # in the stack broaden it (fluxes high), a truncated stamp cuts the wings
    # (fluxes low).
    assert abs(_flux_bias(psf) - 1) < 0.015, _flux_bias(psf)
