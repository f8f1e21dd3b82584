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


def smooth_background(
    image: np.ndarray, mask: np.ndarray, *, clip_sources: bool, bin_factor: int = 4
) -> np.ndarray:
    """Smooth background of ``image`` (sep meshes), estimated on a binned copy.

    A background is smooth by construction, so it is measured on ``bin_factor``
    x ``bin_factor`` block means (16 times fewer pixels) and interpolated back.
    With ``clip_sources``, pixels more than 2.5 sigma from a first estimate,
    grown by two binned pixels, are left out of a second.
    """
    ny, nx = image.shape
    f = bin_factor if min(ny, nx) >= 64 * bin_factor else 1
    bad = ~np.isfinite(image) | ((mask & np.uint32(UNUSABLE)) != 0)
    data = np.where(bad, 0.0, image).astype(np.float32)
    cy, cx = (ny // f) * f, (nx // f) * f
    good = (~bad[:cy, :cx]).reshape(cy // f, f, cx // f, f).sum(axis=(1, 3))
    sums = data[:cy, :cx].reshape(cy // f, f, cx // f, f).sum(axis=(1, 3))
    binned = np.ascontiguousarray(np.where(good > 0, sums / np.maximum(good, 1), 0.0), np.float32)
    bbad = np.ascontiguousarray(good < (f * f) // 2)
    box = int(np.clip(min(binned.shape) // 2, 16, 256 // f))
    bkg = sep.Background(binned, mask=bbad, bw=box, bh=box, fw=3, fh=3)
    if clip_sources:
        out = np.abs(binned - bkg.back()) > 2.5 * bkg.globalrms
        out = ndimage.maximum_filter(out.view(np.uint8), size=5).view(bool)
        bkg = sep.Background(binned, mask=bbad | out, bw=box, bh=box, fw=3, fh=3)
    back = np.asarray(bkg.back(), dtype=np.float32)
    if f == 1:
        return back
    # Bilinear interpolation of block centres onto every pixel.
    yc = (np.arange(ny) - (f - 1) / 2) / f
    xc = (np.arange(nx) - (f - 1) / 2) / f
    ry = np.clip(yc, 0, back.shape[0] - 1)
    iy0 = np.floor(ry).astype(int)
    iy1 = np.minimum(iy0 + 1, back.shape[0] - 1)
    wy = (ry - iy0).astype(np.float32)[:, None]
    rx = np.clip(xc, 0, back.shape[1] - 1)
    ix0 = np.floor(rx).astype(int)
    ix1 = np.minimum(ix0 + 1, back.shape[1] - 1)
    wx = (rx - ix0).astype(np.float32)[None, :]
    top = back[iy0][:, ix0] * (1 - wx) + back[iy0][:, ix1] * wx
    bottom = back[iy1][:, ix0] * (1 - wx) + back[iy1][:, ix1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def residual_background(diff: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Smooth background left in a difference image, measured on all its sky pixels.

    A kernel fit's background polynomial is constrained only on the stamps,
    around stars, where it trades off against the kernel's wings, and sky
    estimates of crowded images are biased differently at different seeing;
    the sky between the stars is what photometry of new sources sits on.
    Sources and residuals are clipped (see :func:`smooth_background`).
    """
    return smooth_background(diff, mask, clip_sources=True)
