"""A footprint's peaks: the vectorised dip test against its pair-by-pair definition."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from skydm.diffim._detect import PEAK_DIP_SHARE, PEAK_DIP_SIGMA, _footprint_peaks


def _reference_peaks(sub: np.ndarray, npix: int, threshold: float, fwhm: float):  # type: ignore[no-untyped-def]
    """One straight path per pair of peaks, sampled with ``np.linspace``."""
    top = np.unravel_index(int(np.argmax(sub)), sub.shape)
    best = [(int(top[0]), int(top[1]))]
    if npix < 2 * math.pi * fwhm**2 / 2:
        return best
    local = (sub == ndimage.maximum_filter(sub, size=3)) & (sub >= threshold)
    cand = np.argwhere(local)
    cand = cand[np.argsort(-sub[local])]
    for cy, cx in cand:
        cy, cx = int(cy), int(cx)
        if (cy, cx) == best[0] or any(math.hypot(cy - qy, cx - qx) < fwhm for qy, qx in best):
            continue
        value = float(sub[cy, cx])
        separate = True
        for qy, qx in best:
            n = math.ceil(math.hypot(cy - qy, cx - qx)) + 1
            ly = np.rint(np.linspace(cy, qy, n)).astype(int)
            lx = np.rint(np.linspace(cx, qx, n)).astype(int)
            # Compared in the image's dtype, as numpy compares an array with a float.
            level = sub.dtype.type(value - max(PEAK_DIP_SIGMA, PEAK_DIP_SHARE * value))
            if np.min(sub[ly, lx]) > level:
                separate = False
                break
        if separate:
            best.append((cy, cx))
    return best


def test_footprint_peaks_match_the_pairwise_definition() -> None:
    rng = np.random.default_rng(2024)
    several = 0
    for i in range(25):
        dtype = np.float32 if i % 2 else np.float64  # differences are float32
        h, w = (int(v) for v in rng.integers(15, 70, 2))
        sub = ndimage.gaussian_filter(rng.standard_normal((h, w)), 1.2) * 30.0 + 8.0
        yy, xx = np.mgrid[:h, :w]
        for _ in range(int(rng.integers(1, 6))):
            y, x = rng.integers(0, h), rng.integers(0, w)
            amp, width = rng.uniform(5, 200), rng.uniform(1, 4)
            sub += amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))
        sub = np.where(sub > 5.0, sub, -np.inf).astype(dtype)
        npix = int(np.isfinite(sub).sum())
        fwhm = float(rng.uniform(2.0, 5.0))
        got = _footprint_peaks(sub, npix, 5.0, fwhm)
        assert got == _reference_peaks(sub, npix, 5.0, fwhm)
        several += len(got) > 2
    assert several >= 5  # the dip test was exercised on many pairs
