"""The combining arithmetic every coadd method shares: weighted means,
masked medians, sigma clipping, and the coadd exposure with its PSF.

Kept apart from :mod:`skydm.coadd.assemble` (which dispatches the methods,
CompareWarp among them) so that CompareWarp's modules can use it without
an import cycle.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from skydm.coadd.stack import WarpStack
from skydm.image import Exposure, PixelPsf, VisitInfo
from skydm.image.visitpsf import visit_consistent_kernels


def weighted_mean(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel weighted mean of a stack with scalar weights per layer.

    Parameters
    ----------
    img, var : numpy.ndarray
        ``(n, rows, columns)`` image and variance (bad pixels may hold anything).
    good : numpy.ndarray
        Boolean, True where a pixel is used.
    weights : numpy.ndarray
        ``(n,)`` weights.

    Returns
    -------
    mean, variance, wsum : numpy.ndarray
        The mean (0 where no pixel is used), its variance (inf there) and the
        sum of the weights used.
    """
    w = np.where(good, weights[:, None, None].astype(np.float32), np.float32(0))
    wsum = w.sum(axis=0)
    safe = np.where(wsum > 0, wsum, 1.0)
    mean = np.einsum("kij,kij->ij", w, np.where(good, img, 0.0)) / safe
    v = np.einsum("kij,kij->ij", w * w, np.where(good, var, 0.0)) / (safe * safe)
    return (
        np.where(wsum > 0, mean, 0.0).astype(np.float32),
        np.where(wsum > 0, v, np.inf).astype(np.float32),
        wsum,
    )


def masked_median(img: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median of the good layers of ``img``; returns (median, count)."""
    n = good.sum(axis=0)
    s = np.sort(np.where(good, img, np.inf), axis=0)
    lo = np.clip((n - 1) // 2, 0, img.shape[0] - 1)
    hi = np.clip(n // 2, 0, img.shape[0] - 1)
    a = np.take_along_axis(s, lo[None], axis=0)[0]
    b = np.take_along_axis(s, hi[None], axis=0)[0]
    med = np.where(n > 0, 0.5 * (a + b), 0.0)
    return med.astype(np.float32), n


def clip_outliers(
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    weights: np.ndarray,
    *,
    nsigma: float = 3.0,
    ampfrac: float = 0.3,
    iterations: int = 2,
) -> np.ndarray:
    """Pixels kept by iterative clipping around a robust centre.

    A pixel is rejected when it differs from the centre (the median, then the
    clipped mean) by more than ``nsigma`` times its own noise combined with
    ``ampfrac`` times the centre's amplitude; the amplitude term (as in
    SWarp's ``CLIP_AMPFRAC``) keeps the cores of stars, which differ between
    epochs with the seeing, from being clipped.
    """
    centre, _ = masked_median(img, good)
    keep = good.copy()
    for _ in range(iterations):
        tol2 = nsigma * nsigma * var + (ampfrac * centre[None]) ** 2
        keep = good & ((img - centre[None]) ** 2 <= tol2)
        centre, _, wsum = weighted_mean(img, var, keep, weights)
        # Where everything was clipped, fall back to the median of what there is.
        none_left = (wsum <= 0) & good.any(axis=0)
        if none_left.any():
            keep[:, none_left] = good[:, none_left]
    return keep


def coadd_psf(stack: WarpStack, used_weight: np.ndarray) -> PixelPsf | None:
    """The coadd's PSF: the warps' PSFs averaged with the weight each warp got.

    ``used_weight[k]`` is warp k's scalar weight times the number of coadd
    pixels it contributed to, so a warp that covers half the cell counts
    half.  A warp resampled with the bilinear kernel carries its calexp's
    PSF convolved with that kernel (:func:`bilinear_psf`): interpolation
    broadens every image it resamples, and a coadd PSF without it made PSF
    fluxes of stars 1-2% low.  The kernel is the exact two-tap one for the
    warp's own sub-pixel phase when the warp recorded it (a translation,
    ``WARPDX``/``WARPDY``), the mean over phases otherwise: with few warps
    the mean one made PSF fluxes up to 0.7% high.  Before the average, each visit's detector
    PSFs are checked against each other and an outlier is replaced by the
    visit's median (:func:`skydm.image.visitpsf.visit_consistent_kernels`):
    a calexp PSF fitted to a few stars, one blended, was up to 30% off in
    flux.  Returns ``None`` when no input has a PSF.
    """
    psfs = [(m, float(w)) for m, w in zip(stack.members, used_weight, strict=True)]
    psfs = [(m, w) for m, w in psfs if m.psf is not None and w > 0]
    if not psfs:
        return None
    # Two pixels more than the inputs' stamps: the bilinear kernel reaches
    # one pixel beyond the PSF on each side.
    size = (max(m.psf.default_size() for m, _ in psfs if m.psf is not None) + 2) | 1
    kernels = [m.psf.kernel(size) for m, _ in psfs if m.psf is not None]
    # A detector's PSF fitted to a few stars, one of them blended, can be off
    # by 10% in flux; its visit's other detectors tell (skydm.image.visitpsf).
    check = visit_consistent_kernels(
        kernels, [_exposure_key(m.info, k) for k, (m, _) in enumerate(psfs)]
    )
    total = np.zeros((size, size))
    for (m, w), kernel in zip(psfs, check.kernels, strict=True):
        if m.resampling == "bilinear":
            kernel = bilinear_psf(kernel, m.phase)
        total += w * kernel
    return PixelPsf(total)


def _exposure_key(info: VisitInfo, k: int) -> tuple[object, ...]:
    """What one exposure's detectors share exactly (a unique key when unknown)."""
    if info.visit > 0 and math.isfinite(info.mjd):
        return (info.instrument, info.band, info.visit, info.mjd)
    return ("", "", -1, float(k))


#: Quadrature of the bilinear (tent) kernel ``1 - |t|`` on ``(-1, 1)``: the
#: midpoints of 16 steps, weights summing to 1 (second moment 0.1660 against
#: the exact 1/6).
_TENT_T = (np.arange(16) + 0.5) / 8.0 - 1.0
_TENT_W = (1.0 - np.abs(_TENT_T)) / 8.0


def _two_tap(f: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of bilinear interpolation at phase ``f``: weight
    ``1 - f`` on the input pixel at ``-f`` from the output pixel and ``f`` on
    the one at ``1 - f``, so the image moves by ``+f`` and ``f - 1`` (the
    mean offset is 0, the variance ``f (1 - f)``)."""
    return np.array([f, f - 1.0]), np.array([1.0 - f, f])


def bilinear_psf(kernel: np.ndarray, phase: tuple[float, float] | None = None) -> np.ndarray:
    """``kernel`` convolved with the bilinear interpolation kernel.

    Bilinear interpolation at a sub-pixel phase ``f`` is a convolution with
    the two-tap kernel ``(1 - f, f)`` per axis, which adds ``f (1 - f)``
    pixel² to the PSF's variance on that axis.  With ``phase`` (a warp that
    is a translation, so one phase for all its stars) that exact kernel is
    used.  Without it, the mean over random phases: the tent ``1 - |t|`` on
    ``(-1, 1)`` per axis, which adds 1/6 pixel².  The convolution is
    separable; each term is the kernel shifted by ``t`` with cubic splines
    (the kernel is smooth on the pixel scale for FWHM of two pixels or more).

    Parameters
    ----------
    kernel : numpy.ndarray
        A square, odd-sided PSF image centred on its central pixel, with a
        margin of at least one pixel of near-zero values.
    phase : tuple of float, optional
        ``(fx, fy)`` in ``[0, 1]``: the fractional input-pixel coordinates of
        the output pixel centres (``WARPDX``/``WARPDY`` of a warp).

    Returns
    -------
    numpy.ndarray
        The broadened kernel, same shape, unit sum.
    """
    out = np.asarray(kernel, dtype=np.float64)
    for axis in (0, 1):
        acc = np.zeros_like(out)
        if phase is None:
            taps = _TENT_T, _TENT_W
        else:
            taps = _two_tap(float(phase[1] if axis == 0 else phase[0]))
        for t, w in zip(*taps, strict=True):
            shift = (0.0, float(t)) if axis == 1 else (float(t), 0.0)
            acc += w * ndimage.shift(out, shift, order=3, mode="constant")
        out = acc
    out = np.clip(out, 0.0, None)
    return out / out.sum()


def _coadd_exposure(
    stack: WarpStack,
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    used_weight: np.ndarray,
    method: str,
) -> Exposure:
    infos = [m.info for m in stack.members]
    mjds = [i.mjd for i in infos if math.isfinite(i.mjd)]
    bands = sorted({i.band for i in infos})
    info = VisitInfo(
        instrument=infos[0].instrument,
        band=bands[0] if len(bands) == 1 else "+".join(bands),
        mjd=float(np.mean(mjds)) if mjds else math.nan,
    )
    exp = Exposure(
        image=image,
        variance=variance,
        mask=mask,
        wcs=stack.wcs.deepcopy(),
        psf=coadd_psf(stack, used_weight),
        zero_point=stack.zero_point,
        info=info,
    )
    exp.meta["COADD"] = (method, "coadd assembly method")
    exp.meta["NEPOCHS"] = (len(stack), "number of input warps")
    for k, m in enumerate(stack.members):
        exp.meta[f"INP{k:04d}"] = (Path(m.name).name[-60:], f"weight {used_weight[k]:.4g}")
    return exp
