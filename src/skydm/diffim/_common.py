"""Small helpers shared by both differencing methods: masks, fills, PSF widths."""

from __future__ import annotations

import math

import numpy as np
import sep
from scipy import ndimage

from skydm.image.mask import UNUSABLE, Mask
from skydm.image.psf import Psf

#: Input mask bits that describe the difference too (detections do not carry over).
CARRIED = np.uint32(
    int(UNUSABLE) | Mask.EDGE | Mask.INTRP | Mask.CLIPPED | Mask.STREAK | Mask.INJECTED
)


def grow_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Carried bits of ``mask``, each grown by a ``size`` x ``size`` box."""
    mask = mask & CARRIED
    if size <= 1:
        return mask
    out = np.zeros_like(mask)
    present = int(np.bitwise_or.reduce(mask, axis=None))
    for bit in Mask:
        if present & int(bit):
            plane = ((mask & np.uint32(bit)) != 0).view(np.uint8)
            grown = ndimage.maximum_filter(plane, size=size, mode="constant")
            out[grown.view(bool)] |= np.uint32(bit)
    return out


def mark_edge(mask: np.ndarray, width: int) -> None:
    """Set EDGE on a border of ``width`` pixels (where circular convolution wraps)."""
    if width <= 0:
        return
    e = np.uint32(Mask.EDGE)
    mask[:width] |= e
    mask[-width:] |= e
    mask[:, :width] |= e
    mask[:, -width:] |= e


def filled(image: np.ndarray, value: float | None = None) -> np.ndarray:
    """``float32`` copy of ``image`` with non-finite pixels replaced (by the median)."""
    out = np.asarray(image, dtype=np.float32).copy()
    bad = ~np.isfinite(out)
    if bad.any():
        fill = float(np.median(out[~bad])) if value is None else value
        out[bad] = fill
    return out


def typical_variance(variance: np.ndarray, mask: np.ndarray) -> float:
    """Median variance over usable pixels: the sky-noise level the filters assume."""
    good = np.isfinite(variance) & ((mask & np.uint32(UNUSABLE)) == 0) & (variance > 0)
    return float(np.median(variance[good]))


def psf_fwhm(psf: Psf) -> float:
    """FWHM in pixels from the azimuthally averaged profile, interpolated at half maximum.

    Finer than counting pixels above half maximum, which moves in steps of a
    whole pixel area.
    """
    k = psf.kernel()
    half = k.shape[0] // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(x, y).ravel()
    v = k.ravel()
    edges = np.arange(0.0, half + 0.5, 0.5)
    idx = np.digitize(r, edges) - 1
    prof = np.array([v[idx == i].mean() if np.any(idx == i) else np.nan for i in range(len(edges))])
    rad = np.array([r[idx == i].mean() if np.any(idx == i) else np.nan for i in range(len(edges))])
    ok = np.isfinite(prof)
    prof, rad = prof[ok], rad[ok]
    hm = prof[0] / 2
    below = np.flatnonzero(prof < hm)
    if below.size == 0 or below[0] == 0:
        return float(psf.fwhm)
    i = int(below[0])
    r0, r1, p0, p1 = rad[i - 1], rad[i], prof[i - 1], prof[i]
    rhalf = r0 + (p0 - hm) * (r1 - r0) / (p0 - p1)
    return float(2 * rhalf) if math.isfinite(rhalf) else float(psf.fwhm)


def residual_background(diff: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Smooth background left in a difference image, measured on all its sky pixels.

    A kernel fit's background polynomial is constrained only on the stamps,
    around stars, where it trades off against the kernel's wings, and sky
    estimates of crowded images are biased differently at different seeing;
    the sky between the stars is what photometry of new sources sits on.
    Pixels more than 2.5 sigma from a first estimate (sources, residuals),
    grown by 4 pixels, are left out of the second.
    """
    data = np.ascontiguousarray(np.nan_to_num(diff), dtype=np.float32)
    bad = ~np.isfinite(diff) | ((mask & np.uint32(UNUSABLE)) != 0)
    box = int(np.clip(min(diff.shape) // 2, 64, 256))
    bkg = sep.Background(data, mask=bad, bw=box, bh=box, fw=3, fh=3)
    outlier = np.abs(data - bkg.back()) > 2.5 * bkg.globalrms
    outlier = ndimage.maximum_filter(outlier.view(np.uint8), size=9).view(bool)
    bkg = sep.Background(data, mask=bad | outlier, bw=box, bh=box, fw=3, fh=3)
    return np.asarray(bkg.back(), dtype=np.float32)
