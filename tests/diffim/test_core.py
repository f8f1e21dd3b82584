"""Analytic and simulator truth for the numerics: basis, kernel fit, decorrelation, ZOGY."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from skydm.diffim import AlConfig, detect_dia_sources, subtract
from skydm.diffim import _al_core as core
from skydm.diffim._prepare import robust_sigma
from skydm.image import Exposure, GaussianPsf, VisitInfo, psf_photometry
from skydm.sim import simulate_pair


def _star_field(
    shape: tuple[int, int], n: int, sigma: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free Gaussian stars and their positions."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    xy = rng.uniform(20, np.array(shape[::-1]) - 20, (n, 2))
    flux = 10 ** rng.uniform(3.5, 5.0, n)
    y, x = np.mgrid[: shape[0], : shape[1]]
    for (x0, y0), f in zip(xy, flux, strict=True):
        sl = (slice(int(y0) - 12, int(y0) + 13), slice(int(x0) - 12, int(x0) + 13))
        r2 = (x[sl] - x0) ** 2 + (y[sl] - y0) ** 2
        img[sl] += f * np.exp(-0.5 * r2 / sigma**2) / (2 * np.pi * sigma**2)
    return img, xy


def _exposure(img: np.ndarray, sigma_noise: float, psf_sigma: float, rng) -> Exposure:
    noisy = img + rng.normal(0, sigma_noise, img.shape)
    var = np.full(img.shape, sigma_noise**2, dtype=np.float32)
    return Exposure(
        noisy.astype(np.float32), var, psf=GaussianPsf(psf_sigma), info=VisitInfo(gain=1e9)
    )


def test_basis_sums() -> None:
    for basis in (core.alard_lupton_basis((0.7, 1.5, 3.0), (4, 2, 2), 8), core.delta_basis(3)):
        sums = basis.kernels.sum(axis=(1, 2))
        assert sums[0] == pytest.approx(1.0)
        assert np.allclose(sums[1:], 0.0, atol=1e-12)
    assert len(core.alard_lupton_basis((0.7, 1.5, 3.0), (4, 2, 2), 8)) == 15 + 6 + 6


def test_kernel_and_background_recovered() -> None:
    """science = 1.3 * (template * G) + 5: the fit finds the scale, kernel and offset."""
    rng = np.random.default_rng(1)
    truth, _ = _star_field((256, 256), 120, 1.2, seed=2)
    template = _exposure(truth, 1.0, 1.2, rng)
    sci_true = 1.3 * ndimage.gaussian_filter(truth, 1.0, mode="constant", truncate=6) + 5.0
    science = _exposure(sci_true, 1.0, np.hypot(1.2, 1.0), rng)
    result = subtract(science, template, method="al", decorrelate=False)
    assert result.convolved == "template"
    sol = result.kernel
    assert sol is not None
    assert sol.kernel_sum == pytest.approx(1.3, rel=2e-3)
    true_k = np.zeros((sol.basis.size,) * 2)
    true_k[sol.basis.size // 2, sol.basis.size // 2] = 1.3
    true_k = ndimage.gaussian_filter(true_k, 1.0, mode="constant", truncate=6)
    assert np.abs(sol.centre_kernel() - true_k).max() < 0.01 * true_k.max()
    assert np.median(sol.background_map()) == pytest.approx(5.0, abs=0.5)
    d = result.difference
    z = d.image / np.sqrt(d.var)
    assert robust_sigma(z[d.msk == 0]) == pytest.approx(1.0, abs=0.05)


def test_spatially_varying_kernel() -> None:
    """A kernel whose width changes across the image needs the spatial terms."""
    rng = np.random.default_rng(3)
    truth, _ = _star_field((256, 256), 250, 1.0, seed=4)
    narrow = ndimage.gaussian_filter(truth, 0.8, mode="constant", truncate=6)
    wide = ndimage.gaussian_filter(truth, 1.8, mode="constant", truncate=6)
    w = np.linspace(0, 1, 256)[None, :]
    template = _exposure(truth, 0.5, 1.0, rng)
    science = _exposure((1 - w) * narrow + w * wide, 0.5, 1.8, rng)
    chi2 = {}
    for order in (0, 2):
        res = subtract(science, template, al=AlConfig(kernel_order=order), decorrelate=False)
        assert res.kernel is not None and res.kernel.kernel_order == order
        chi2[order] = res.kernel.chi2
    assert chi2[2] < 0.5 * chi2[0]


def test_convolve_spatial_matches_direct() -> None:
    rng = np.random.default_rng(5)
    img = rng.normal(size=(64, 80)).astype(np.float32)
    basis = core.alard_lupton_basis((0.7, 1.5, 3.0), (2, 1, 0), 5)
    coeffs = rng.normal(size=(len(basis), 1))
    sol = core.KernelSolution(basis, coeffs, np.zeros(1), 0, 0, img.shape)
    got = core.convolve_spatial(img, sol)
    want = ndimage.convolve(img.astype(np.float64), sol.centre_kernel(), mode="wrap")
    assert np.allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module")
def sim_pair() -> tuple[Exposure, Exposure, object]:
    return simulate_pair(
        7, (256, 256), n_stars=150, seeing_science=1.0, seeing_template=0.7, n_transients=4
    )


def _lag1(img: np.ndarray, ok: np.ndarray) -> float:
    a = np.where(ok, img, 0.0)
    both = ok[:, 1:] & ok[:, :-1]
    return float(np.sum(a[:, 1:] * a[:, :-1] * both) / np.sum(a[:, 1:] ** 2 * both))


def test_decorrelation_whitens_and_variance_is_right(sim_pair) -> None:
    science, template, _ = sim_pair
    # A template much noisier than the science, so that its convolved noise
    # (correlated by the kernel) is a large share of the difference's noise.
    template = template.copy()
    extra = 3.0 * np.sqrt(template.var)
    template.image = template.image + np.random.default_rng(9).normal(0, 1, template.shape) * extra
    template.variance = template.var + extra**2
    lag = {}
    for dec in (False, True):
        d = subtract(science, template, decorrelate=dec).difference
        z = d.image / np.sqrt(d.var)
        ok = (d.msk == 0) & np.isfinite(z) & (np.abs(z) < 5)
        assert robust_sigma(z[ok]) == pytest.approx(1.0, abs=0.05)
        lag[dec] = _lag1(z - np.median(z[ok]), ok)
    assert lag[False] > 0.1  # the convolved template correlates neighbouring pixels
    assert abs(lag[True]) < 0.05


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_sim_transients_measured(sim_pair, method: str) -> None:
    science, template, truth = sim_pair
    result = subtract(science, template, method=method)
    table = detect_dia_sources(result)
    tree = cKDTree(np.column_stack([table["x"], table["y"]]))
    dist, idx = tree.query(np.column_stack([truth["x"], truth["y"]]))
    assert np.all(dist < 1.0)
    found = table[idx]
    assert not np.any(found["flagged"])
    assert np.allclose(found["flux"], truth["flux"], rtol=0.05)
    assert np.all(np.abs(found["flux"] - truth["flux"]) < 4 * found["flux_err"])
    assert np.count_nonzero(~table["flagged"]) <= len(truth) + 2
    if method == "zogy":
        # S_corr is unit-variance on pure noise.
        s = result.score
        assert s is not None
        ok = (result.difference.msk == 0) & (np.abs(s) < 5)
        assert robust_sigma(s[ok]) == pytest.approx(1.0, abs=0.05)
        assert result.flux_ratio == pytest.approx(1.0, abs=0.03)


def test_forced_photometry_matches_table(sim_pair) -> None:
    science, template, _truth = sim_pair
    result = subtract(science, template)
    table = detect_dia_sources(result)
    flux, _ = psf_photometry(result.difference, table["x"], table["y"])
    good = np.isfinite(flux)
    assert np.allclose(flux[good], np.asarray(table["psf_flux"])[good])
