"""PSF models against analytic truth; detection and measurement against injected truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from skydm.errors import BadValueError
from skydm.image import (
    DoubleGaussianPsf,
    Exposure,
    GaussianPsf,
    MoffatPsf,
    VisitInfo,
    detect_sources,
    measure_psf,
    psf_photometry,
    read_exposure,
)


def test_gaussian_second_moment_is_sigma_squared() -> None:
    k = GaussianPsf(2.0).kernel(size=41)
    _, x = np.mgrid[-20:21, -20:21]
    # Pixel integration adds 1/12 pixel^2 to the variance of the sampled profile.
    assert math.isclose(float(np.sum(k * x**2)), 4.0 + 1 / 12, rel_tol=2e-3)
    assert math.isclose(float(k.sum()), 1.0)


@pytest.mark.parametrize("psf", [MoffatPsf(3.0, 2.5), DoubleGaussianPsf(1.2, 3.0, 0.1)])
def test_fwhm_matches_rendered_profile(psf: MoffatPsf | DoubleGaussianPsf) -> None:
    # Peak-normalised profile at r = FWHM/2 along an axis is one half.
    r = psf.fwhm / 2
    centre = float(psf._render(np.array([0.0]), np.array([0.0]))[0])
    edge = float(psf._render(np.array([r]), np.array([0.0]))[0])
    assert math.isclose(edge / centre, 0.5, rel_tol=1e-6)


def test_bad_psf_parameters_are_named() -> None:
    with pytest.raises(BadValueError, match="sigma=-1"):
        GaussianPsf(-1)
    with pytest.raises(BadValueError, match="beta"):
        MoffatPsf(3.0, beta=0.5)


def star_field(
    seed: int, n: int = 60, fwhm: float = 3.5
) -> tuple[Exposure, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (300, 300)
    psf = MoffatPsf(fwhm, 3.0)
    sky, gain, rn = 500.0, 2.0, 5.0
    model = np.full(shape, sky)
    xs = rng.uniform(20, 280, n)
    ys = rng.uniform(20, 280, n)
    fluxes = 10 ** rng.uniform(3.3, 5.0, n)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        ix, iy = round(x), round(y)
        k = psf.kernel(size=25, dx=x - ix, dy=y - iy)
        model[iy - 12 : iy + 13, ix - 12 : ix + 13] += f * k
    img = rng.poisson(model * gain) / gain + rng.normal(0, rn / gain, shape)
    exp = Exposure(
        (img - sky).astype(np.float32), info=VisitInfo(gain=gain, read_noise=rn, sky=sky)
    )
    return exp, xs, ys, fluxes


def test_detection_recovers_positions_and_fluxes() -> None:
    exp, xs, ys, fluxes = star_field(1)
    exp.psf = MoffatPsf(3.5, 3.0)
    table = detect_sources(exp, threshold=5.0)
    matched = 0
    for x, y in zip(xs, ys, strict=True):
        d = np.hypot(table["x"] - x, table["y"] - y)
        if d.min() < 0.3:
            matched += 1
    assert matched >= 0.9 * len(xs)
    flux, err = psf_photometry(exp, xs, ys)
    pull = (flux - fluxes) / err
    ok = np.isfinite(pull)
    # Isolated-ish stars: PSF fluxes unbiased to within errors.
    assert abs(np.median(pull[ok])) < 1.0
    assert np.median(np.abs(flux[ok] / fluxes[ok] - 1)) < 0.02


def test_measured_psf_matches_truth() -> None:
    exp, _, _, _ = star_field(2, n=80, fwhm=4.0)
    psf = measure_psf(exp, min_snr=30)
    assert abs(psf.fwhm - 4.0) / 4.0 < 0.1
    truth = MoffatPsf(4.0, 3.0).kernel(size=psf.image.shape[0])
    assert np.abs(psf.image - truth).sum() < 0.1


def test_detection_on_real_ntt_image(data_dir: Path) -> None:
    exp = read_exposure(data_dir / "ntt_single" / "image.fits")
    table = detect_sources(exp, threshold=5.0)
    # sep's own tests find ~ 60-70 objects at 1.5 sigma of globalrms on this
    # image; at 5 sigma of the noise a few dozen remain.
    assert 10 < len(table) < 200
    assert np.all((table["x"] >= 0) & (table["x"] < 256))


@pytest.mark.parametrize("fwhm", [2.3, 3.1, 4.45, 6.0])
def test_pixel_psf_fwhm_is_not_quantised(fwhm: float) -> None:
    from skydm.image import PixelPsf

    psf = PixelPsf(GaussianPsf.from_fwhm(fwhm).kernel(size=31))
    # Pixel integration broadens a Gaussian by 1/12 pixel^2 in variance.
    sigma = math.sqrt((fwhm / 2.3548) ** 2 + 1 / 12)
    assert abs(psf.fwhm - 2.3548 * sigma) < 0.05 * fwhm


def test_psf_measured_on_every_real_decam_stamp(data_dir: Path) -> None:
    # 256x256 stamps hold few bright stars (18d has only 4 above S/N 50): the
    # relaxed cut still gives a PSF, and its width is that of the epoch.
    widths = {}
    for path in sorted((data_dir / "decam_pair").glob("input_data__DEC-OBS*.mini.fits")):
        widths[path.name] = measure_psf(read_exposure(path)).fwhm
    assert len(widths) == 10
    assert all(3.0 < w < 7.0 for w in widths.values()), widths
