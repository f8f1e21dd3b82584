"""The noise model: measured covariance, its propagation, and true-sigma thresholds.

Resampled inputs (Lanczos warps onto a rotated, shifted grid; the DECam
stamps) must give a significance image of unit rms on quiet pixels, few
false detections and complete recovery of injected transients, on seeds the
code was not tuned on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffim_helpers import DECAM, lanczos_warp, read, warped_positions

from skydm.diffim import (
    DiffimConfig,
    NoiseConfig,
    detect_dia_sources,
    measure_covariance,
    subtract,
)
from skydm.diffim._noise import filter_factor
from skydm.diffim._prepare import robust_sigma
from skydm.image import Exposure, GaussianPsf, Mask, psf_photometry
from skydm.sim.pair import simulate_pair


def _noise_exposure(image: np.ndarray, var: float) -> Exposure:
    return Exposure(
        image.astype(np.float32),
        np.full(image.shape, var, dtype=np.float32),
        np.zeros(image.shape, dtype=np.uint32),
    )


def test_covariance_of_white_noise_is_white() -> None:
    rng = np.random.default_rng(5)
    cov = measure_covariance(
        _noise_exposure(rng.normal(0, 3.0, (512, 512)), 9.0), radius=3, window=512
    )
    assert cov.ratio == pytest.approx(1.0, abs=0.02)
    off = cov.kernel.copy()
    off[3, 3] = 0
    assert np.abs(off).max() < 0.01
    assert cov.box_factor == pytest.approx(1.0, abs=0.05)


def test_covariance_of_interpolated_noise_matches_analytic() -> None:
    # A half-pixel shift by linear interpolation: y = (x_i + x_{i+1}) / 2.
    # Per-pixel variance 1/2 of the plane's 1 (the plane is taken as it is);
    # neighbours along x have covariance 1/4; other lags none.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(600, 601))
    y = 0.5 * (x[:, :-1] + x[:, 1:])
    cov = measure_covariance(_noise_exposure(y, 1.0), radius=3, window=600)
    assert cov.ratio == pytest.approx(0.5, rel=0.03)
    assert cov.kernel[3, 4] == pytest.approx(0.25, abs=0.01)
    assert cov.kernel[3, 2] == pytest.approx(0.25, abs=0.01)
    assert abs(cov.kernel[4, 3]) < 0.01 and abs(cov.kernel[3, 5]) < 0.01
    # Sum over lags / lag 0: a large aperture scatters twice the white value.
    assert cov.box_factor == pytest.approx(2.0, rel=0.05)
    # A PSF-matched filter's variance under this noise (analytic, exact
    # sum over the PSF's pixels) is what filter_factor says.
    psf = GaussianPsf.from_fwhm(3.0).kernel()
    exact = float(np.sum(psf * psf) + 0.5 * 2 * np.sum(psf[:, 1:] * psf[:, :-1]))
    assert filter_factor(psf, cov) == pytest.approx(exact / np.sum(psf * psf), rel=0.03)


@pytest.fixture(scope="module", params=[101, 202], ids=["seed101", "seed202"])
def resampled_pair(request: pytest.FixtureRequest) -> tuple[Exposure, Exposure, dict]:
    """A 1024^2 simulated pair, both epochs Lanczos-3 warped onto a rotated, shifted grid."""
    seed = int(request.param)
    science, template, truth = simulate_pair(
        seed,
        shape=(1024, 1024),
        n_stars=1200,
        n_transients=80,
        seeing_science=1.0,
        seeing_template=0.8,
        transient_mags=(21.0, 24.0),
    )
    angle, shift = 5.0 + seed % 7, (0.37, -0.21)
    warped_s = lanczos_warp(science, angle_deg=angle, shift=shift)
    warped_t = lanczos_warp(template, angle_deg=angle, shift=shift)
    tx, ty = warped_positions(
        np.asarray(truth["x"]), np.asarray(truth["y"]), science.shape, angle_deg=angle, shift=shift
    )
    return warped_s, warped_t, {"x": tx, "y": ty, "flux": np.asarray(truth["flux"], float)}


def _quiet_rms(table_meta: dict) -> float:
    return float(table_meta["score_rms"])


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_resampled_pair_thresholds_in_true_sigma(
    resampled_pair: tuple[Exposure, Exposure, dict], method: str
) -> None:
    science, template, truth = resampled_pair
    result = subtract(science, template, method=method)
    # The warps' covariance was found: sums over many pixels scatter more.
    assert result.science_noise.box_factor > 1.1
    assert result.template_noise.box_factor > 1.1
    table = detect_dia_sources(result, threshold=5.0)
    assert 0.9 <= _quiet_rms(table.meta) <= 1.1
    assert "noise_warning" not in table.meta
    diff = result.difference
    # The difference itself: unit variance per pixel, and (decorrelated AL,
    # ZOGY's D) white: neighbours uncorrelated although both inputs are not.
    z = diff.image / np.sqrt(diff.var)
    quiet = (diff.msk == 0) & np.isfinite(z) & (np.abs(z) < 5)
    assert 0.93 <= robust_sigma(z[quiet]) <= 1.07
    zq = np.where(quiet, z - np.median(z[quiet]), 0.0)
    both = quiet[:, 1:] & quiet[:, :-1]
    lag1 = float(np.sum(zq[:, 1:] * zq[:, :-1] * both) / np.sum(zq[:, 1:] ** 2 * both))
    assert abs(lag1) < 0.05
    ny, nx = diff.shape
    # Truth on usable pixels: inside the warped footprint, off masked pixels.
    ix, iy = np.round(truth["x"]).astype(int), np.round(truth["y"]).astype(int)
    inside = (ix >= 15) & (ix < nx - 15) & (iy >= 15) & (iy < ny - 15)
    ix, iy = np.clip(ix, 0, nx - 1), np.clip(iy, 0, ny - 1)
    bad = np.uint32(Mask.NO_DATA | Mask.EDGE | Mask.SAT | Mask.BAD)
    usable = inside & ((diff.msk[iy, ix] & bad) == 0)
    x, y, flux = truth["x"][usable], truth["y"][usable], truth["flux"][usable]
    _, err = psf_photometry(diff, x, y)
    snr_true = flux / (err * np.sqrt(result.filter_factor))
    found = np.zeros(x.size, dtype=bool)
    matched = np.zeros(len(table), dtype=bool)
    tx, ty = np.asarray(table["x"]), np.asarray(table["y"])
    for k in range(x.size):
        d = np.hypot(tx - x[k], ty - y[k])
        if d.size and d.min() < 3:
            found[k] = True
            matched[int(np.argmin(d))] = True
    bright = snr_true >= 10
    assert bright.sum() >= 15
    assert found[bright].mean() >= 0.95
    false = ~matched & ~np.asarray(table["flagged"], bool) & ~np.asarray(table["is_negative"])
    false_neg = ~matched & ~np.asarray(table["flagged"], bool) & np.asarray(table["is_negative"])
    assert int(false.sum() + false_neg.sum()) <= 5


def test_white_noise_assumption_fails_on_resampled_pair(
    resampled_pair: tuple[Exposure, Exposure, dict],
) -> None:
    """The ablation: without the noise model the significance is too wide."""
    science, template, _ = resampled_pair
    white = DiffimConfig(noise=NoiseConfig(correlated=False))
    table_white = detect_dia_sources(subtract(science, template, method="zogy", config=white))
    table = detect_dia_sources(subtract(science, template, method="zogy"))
    assert table_white.meta["score_rms"] > table.meta["score_rms"] + 0.05


def test_al_without_decorrelation_uses_the_filter_factor(
    resampled_pair: tuple[Exposure, Exposure, dict],
) -> None:
    science, template, _ = resampled_pair
    result = subtract(science, template, method="al", decorrelate=False)
    # Convolution by the matching kernel correlates the noise further.
    assert result.filter_factor > 1.2
    assert result.difference.meta["DIFFNCF"] == pytest.approx(result.filter_factor)
    table = detect_dia_sources(result)
    assert 0.9 <= table.meta["score_rms"] <= 1.1


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_decam_significance_rms_and_transient(data_dir: Path, method: str) -> None:
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    result = subtract(science, template, method=method)
    table = detect_dia_sources(result, threshold=5.0)
    # Quiet pixels: unmasked (no detection, no defect, not the edge).
    diff = result.difference
    if result.score is not None:
        z = result.score
    else:
        from skydm.diffim._detect import matched_filter

        z = matched_filter(diff.image, diff.var, diff.psf) / np.sqrt(result.filter_factor)
    quiet = (diff.msk == 0) & np.isfinite(z)
    assert 0.9 <= robust_sigma(z[quiet]) <= 1.1
    d = np.hypot(table["x"] - 130.0, table["y"] - 128.0)
    hit = table[d < 4]
    assert len(hit) == 1 and hit["snr"][0] >= 10
    assert np.count_nonzero((d >= 4) & ~table["flagged"]) <= 3


def test_noise_warning_when_variance_plane_is_wrong() -> None:
    science, template, _ = simulate_pair(31, shape=(384, 384), n_stars=250)
    # A variance plane that claims half the real variance (noise 0.71x).
    template.variance = template.var * np.float32(0.5)
    result = subtract(science, template, method="zogy")
    assert any("template" in w or "skysim" in w for w in result.warnings)
    table = detect_dia_sources(result)
    assert "measured pixel noise" in table.meta["noise_warning"]
    assert result.template_noise.ratio == pytest.approx(2.0, rel=0.1)
    # The measured noise is what is used: thresholds stay in true sigma.
    assert 0.9 <= table.meta["score_rms"] <= 1.1


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_large_scale_residuals_do_not_cluster_detections(method: str) -> None:
    """A smooth residual (scale ~60 px, 0.5 sigma a pixel) in the science only."""
    from skydm.diffim import DetectionConfig

    science, template, _ = simulate_pair(61, shape=(512, 512), n_stars=400)
    yy, xx = np.mgrid[0:512, 0:512]
    sigma = float(np.sqrt(np.median(science.var)))
    bumps = np.zeros((512, 512))
    for cx, cy, sign in ((130, 140, 1), (380, 360, -1), (360, 120, 1)):
        bumps += sign * 0.5 * sigma * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 60.0**2))
    sci = science.copy()
    sci.image = (science.image + bumps).astype(np.float32)
    table = detect_dia_sources(subtract(sci, template, method=method))
    assert np.count_nonzero(~table["flagged"]) <= 1
    # The ablation: twice the mesh (the former default on this image size)
    # follows the bumps too loosely, and their crests cross the threshold.
    coarse = DiffimConfig(detection=DetectionConfig(background_box=128))
    table_coarse = detect_dia_sources(subtract(sci, template, method=method, config=coarse))
    assert np.count_nonzero(~table_coarse["flagged"]) >= 3


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_decam_stacks_correlated_and_overestimated_noise(data_dir: Path, method: str) -> None:
    """The SFFT stacks: resampled and averaged, their header variance 4-20x too high.

    Without the noise model the significance rms was 0.51 (thresholds at
    10 true sigma); with it, unit, a warning says so, and the transient
    comes out at its true significance.
    """
    science = read(data_dir / "decam_pair/sfft_stack_2018-08-04.fits")
    template = read(data_dir / "decam_pair/sfft_stack_2016-08-18.fits")
    result = subtract(science, template, method=method)
    assert result.science_noise.box_factor > 2.0  # strongly correlated
    assert result.science_noise.ratio < 0.2  # variance plane far too high
    table = detect_dia_sources(result)
    assert 0.9 <= table.meta["score_rms"] <= 1.1
    assert "sfft_stack_2018-08-04.fits: measured pixel noise" in table.meta["noise_warning"]
    d = np.hypot(table["x"] - 130.0, table["y"] - 128.0)
    assert np.count_nonzero(d < 4) == 1 and table["snr"][d < 4][0] >= 20
    assert np.count_nonzero((d >= 4) & ~table["flagged"]) <= 3
