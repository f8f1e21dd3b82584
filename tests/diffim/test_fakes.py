"""Injected fakes in real images: completeness, 50% point and flux bias (both methods)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from scipy import optimize
from scipy.spatial import cKDTree

from skydm.diffim import detect_dia_sources, subtract
from skydm.image import Exposure, detect_sources, measure_psf, psf_photometry, read_exposure

# (science, template, grid step in pixels): three DECam singles against one
# template, and the ESO085 frames against each other.
PAIRS = [
    (
        "decam_pair/input_data__DEC-OBS04a.mini.fits",
        "decam_pair/input_data__DEC-OBS18a.mini.fits",
        22,
    ),
    (
        "decam_pair/input_data__DEC-OBS04b.mini.fits",
        "decam_pair/input_data__DEC-OBS18a.mini.fits",
        22,
    ),
    (
        "decam_pair/input_data__DEC-OBS04d.mini.fits",
        "decam_pair/input_data__DEC-OBS18a.mini.fits",
        22,
    ),
    (
        "eso085_null_pair/aligned_eso085-030-004.fit",
        "eso085_null_pair/aligned_eso085-030-005.fit",
        34,
    ),
    (
        "eso085_null_pair/aligned_eso085-030-005.fit",
        "eso085_null_pair/aligned_eso085-030-004.fit",
        34,
    ),
]
KNOWN_TRANSIENT = (130.0, 128.0)  # the real one in DEC-OBS04a


def _read(path: Path) -> Exposure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_exposure(path)


def _positions(sci: Exposure, tmp: Exposure, step: int, rng: np.random.Generator) -> np.ndarray:
    """Grid points away from bright sources (and the real transient).

    Only sources above 10 sigma in either image are avoided: selecting
    "empty" places with a low threshold would pick spots where the noise
    happens to be low, and bias every flux measured there.
    """
    ny, nx = sci.shape
    border = 30
    gx, gy = np.meshgrid(np.arange(border, nx - border, step), np.arange(border, ny - border, step))
    pts = np.column_stack([gx.ravel(), gy.ravel()]).astype(float)
    pts += rng.uniform(-0.5, 0.5, pts.shape)
    keep = np.hypot(pts[:, 0] - KNOWN_TRANSIENT[0], pts[:, 1] - KNOWN_TRANSIENT[1]) > 15
    for exp in (sci, tmp):
        src = detect_sources(exp.copy(), threshold=10.0, set_mask=False)
        radius = np.clip(3 * np.sqrt(np.asarray(src["npix"], float)), 8, 30)
        for x, y, r in zip(src["x"], src["y"], radius, strict=True):
            keep &= np.hypot(pts[:, 0] - x, pts[:, 1] - y) > r
    return pts[keep]


def _inject(exp: Exposure, pts: np.ndarray, flux: np.ndarray, rng: np.random.Generator) -> Exposure:
    psf = measure_psf(exp)
    img = np.array(exp.image, dtype=np.float64)
    size = psf.default_size()
    half = size // 2
    for (x, y), f in zip(pts, flux, strict=True):
        ix, iy = round(x), round(y)
        stamp = f * psf.kernel(size, dx=x - ix, dy=y - iy)
        if exp.info.gain > 0:
            stamp = stamp + rng.normal(0.0, np.sqrt(np.clip(stamp, 0, None) / exp.info.gain))
        img[iy - half : iy + half + 1, ix - half : ix + half + 1] += stamp
    # The science image goes in with the PSF measured from it (the one the fakes
    # were drawn with), as a calibrated visit image would.
    return Exposure(img, wcs=exp.wcs, psf=psf, info=exp.info, meta=exp.meta, source=exp.source)


def _run_method(data_dir: Path, method: str) -> Table:
    rng = np.random.default_rng(20240611)
    rows = []
    for sci_name, tmp_name, step in PAIRS:
        sci, tmp = _read(data_dir / sci_name), _read(data_dir / tmp_name)
        pts = _positions(sci, tmp, step, rng)
        # Expected PSF-flux error at each position, from a fake-free difference.
        clean = subtract(sci, tmp, method=method).difference
        _, sigma = psf_photometry(clean, pts[:, 0], pts[:, 1])
        ok = np.isfinite(sigma)
        pts, sigma = pts[ok], sigma[ok]
        snr_true = np.exp(rng.uniform(np.log(2.0), np.log(50.0), len(pts)))
        flux = snr_true * sigma
        result = subtract(_inject(sci, pts, flux, rng), tmp, method=method)
        found = detect_dia_sources(result)
        pos = found[~found["is_negative"] & ~found["flagged"]]
        tree = cKDTree(np.column_stack([pos["x"], pos["y"]]))
        dist, idx = tree.query(pts, distance_upper_bound=2.5)
        hit = np.isfinite(dist)
        meas = np.full(len(pts), np.nan)
        meas[hit] = np.asarray(pos["flux"])[idx[hit]]
        rows.append(Table({"snr": snr_true, "flux": flux, "found": hit, "meas": meas}))
    return vstack(rows)


def _half_point(snr: np.ndarray, found: np.ndarray) -> float:
    """S/N at 50% completeness from a logistic maximum-likelihood fit."""

    def nll(p: np.ndarray) -> float:
        c = 1.0 / (1.0 + np.exp(-(snr - p[0]) / abs(p[1])))
        c = np.clip(c, 1e-9, 1 - 1e-9)
        return float(-np.sum(np.where(found, np.log(c), np.log(1 - c))))

    return float(optimize.minimize(nll, [5.0, 0.5], method="Nelder-Mead").x[0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["al", "zogy"])
def test_injected_fakes(data_dir: Path, method: str) -> None:
    t = _run_method(data_dir, method)
    snr, found = np.asarray(t["snr"]), np.asarray(t["found"])
    assert len(t) >= 200
    bright = snr >= 8
    completeness = found[bright].mean()
    s50 = _half_point(snr, found)
    strong = (snr >= 20) & found
    bias = float(np.median(np.asarray(t["meas"])[strong] / np.asarray(t["flux"])[strong] - 1))
    print(f"{method}: n={len(t)} c8={completeness:.3f} s50={s50:.2f} bias={bias:+.4f}")
    assert completeness >= 0.95
    assert 4.5 <= s50 <= 6.5
    assert abs(bias) < 0.02
