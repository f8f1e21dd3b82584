"""Pixel-level numerics of CompareWarp: binning, PSF matching, cosmic rays and the
PSF-preserving replacement of clipped pixels.

Everything here works on ``(n_epochs, rows, columns)`` float32 bands of a
:class:`~skydm.coadd.stack.WarpStack`, vectorised over pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd._cw_restore import Target, replacement_correction
from skydm.image.psf import GAUSS_FWHM, Psf

if TYPE_CHECKING:
    pass


def bin_planes(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin ``(n, h, w)`` planes by ``b`` x ``b``: mean image, its variance, good fraction."""
    if b == 1:
        return img, var, good.astype(np.float32)
    _, h, w = img.shape
    hp, wp = -(-h // b) * b, -(-w // b) * b
    if (hp, wp) != (h, w):
        pad = ((0, 0), (0, hp - h), (0, wp - w))
        img, var, good = np.pad(img, pad), np.pad(var, pad), np.pad(good, pad)
    # Sums of strided slices: far faster than summing a reshaped array over
    # its small axes.  Bad pixels are zero in ``img`` and ``var``
    # (WarpStack.rows), so plain sums do.
    cnt = _bin_sum(good.view(np.uint8), b).astype(np.float32)
    s = _bin_sum(img, b)
    sv = _bin_sum(var, b)
    safe = np.maximum(cnt, np.float32(1.0))
    return s / safe, sv / (safe * safe), cnt * np.float32(1.0 / (b * b))


def _bin_sum(x: np.ndarray, b: int) -> np.ndarray:
    """Sums of ``b`` x ``b`` blocks over the last two axes (sides multiples of ``b``)."""
    rows = x[:, 0::b].copy()
    for i in range(1, b):
        rows += x[:, i::b]
    out = rows[:, :, 0::b].copy()
    for j in range(1, b):
        out += rows[:, :, j::b]
    return out


def matching_sigmas(psfs: list[Psf | None], extra: float) -> tuple[np.ndarray, float]:
    """Gaussian sigmas (pixels) that bring each warp's PSF to the common target PSF.

    The target is the broadest input PSF convolved with a Gaussian of sigma
    ``extra`` pixels; each warp's sigma minimises the squared difference
    between its PSF convolved with the Gaussian and the target.  Warps
    without a PSF are taken to have the target PSF already (sigma 0).

    Returns
    -------
    sigmas : numpy.ndarray
        One sigma per warp.
    fwhm : float
        The target PSF's FWHM in pixels (approximate).
    """
    known = [p for p in psfs if p is not None]
    if not known:
        return np.zeros(len(psfs)), 2.0 + GAUSS_FWHM * extra
    widest = max(known, key=lambda p: p.fwhm)
    size = max(int(4 * widest.fwhm + 8 * extra) | 1, max(p.default_size() for p in known) | 1)
    target = (
        ndimage.gaussian_filter(widest.kernel(size), extra) if extra > 0 else widest.kernel(size)
    )
    fwhm = math.sqrt(widest.fwhm**2 + (GAUSS_FWHM * extra) ** 2)
    sigmas = np.zeros(len(psfs))
    for k, p in enumerate(psfs):
        if p is None:
            continue
        kern = p.kernel(size)

        def cost(s: float, kern: np.ndarray = kern) -> float:
            out = ndimage.gaussian_filter(kern, s) if s > 1e-3 else kern
            return float(np.sum((out - target) ** 2))

        res = optimize.minimize_scalar(cost, bounds=(0.0, fwhm), method="bounded")
        sigmas[k] = float(res.x)
    return sigmas, fwhm


def psf_widths2(psfs: list[Psf | None]) -> np.ndarray:
    """Per warp, its PSF's squared FWHM (the median of the others' where it has none)."""
    fwhms = np.array([p.fwhm if p is not None else math.nan for p in psfs])
    fill = np.nanmedian(fwhms) if np.isfinite(fwhms).any() else 1.0
    return np.asarray(np.where(np.isfinite(fwhms), fwhms, fill) ** 2)


def grow_pixels(ys: np.ndarray, xs: np.ndarray, rows: int, width: int) -> np.ndarray:
    """Flat indices (within a ``rows x width`` plane) of pixels grown to their 3x3 squares."""
    if ys.size == 0:
        return np.zeros(0, dtype=np.int64)
    dy, dx = np.mgrid[-1:2, -1:2]
    yy = (ys[:, None] + dy.ravel()[None]).ravel()
    xx = (xs[:, None] + dx.ravel()[None]).ravel()
    ok = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < width)
    return np.unique(yy[ok].astype(np.int64) * width + xx[ok])


def imputation_coefficients(
    kept: np.ndarray,
    clipped: np.ndarray,
    weights: np.ndarray,
    widths2: np.ndarray,
    restore: list[Target] | None = None,
    *,
    pix: np.ndarray | None = None,
    band_columns: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-pixel coefficients of every epoch in the coadd, clipped pixels replaced.

    Dropping an epoch's pixels where it was clipped would change the coadd's
    PSF there (the epoch's seeing no longer contributes), which biases the
    flux of any star under a clipped artefact.  Instead each clipped pixel of
    epoch ``k`` is replaced by a mixture of the unclipped epochs at that
    pixel with ``k``'s PSF second moment and the least noise
    (:func:`replacement_shares`; ``widths2`` holds each PSF's squared
    width).  The coadd is then ``sum_j c_j x_j / sum_j c_j`` with the
    coefficients returned here (``c_j = w_j`` where nothing was clipped).

    Parameters
    ----------
    kept : numpy.ndarray
        ``(n, rows, columns)`` bool, usable and not clipped.
    clipped : numpy.ndarray
        ``(n, rows, columns)`` bool, usable but clipped.
    weights, widths2 : numpy.ndarray
        Per epoch, the scalar weight and the PSF's squared width.
    restore : list of Target, optional
        From :func:`skydm.coadd._cw_restore.restore_targets`: on each
        target's stamp, epoch ``k``'s replacement gets the variable source's
        PSF profile times the difference between its flux in epoch ``k``
        and the replacing epochs' fluxes.
    pix : numpy.ndarray, optional
        For a compact layout (``kept`` and ``clipped`` of shape ``(n, 1,
        m)``, the ``m`` pixels of a band where something is clipped): their
        sorted flat indices in the band, ``band_columns`` wide, which place
        the restorations' stamps (given in band rows and columns).

    Returns
    -------
    coef : numpy.ndarray
        ``(n, rows, columns)`` coefficients of the coadd's numerator.
    norm : numpy.ndarray
        ``(rows, columns)`` its denominator (the sum of the coefficients).
    extra : numpy.ndarray or None
        ``(rows, columns)`` flux added to the numerator by restorations
        (the coadd is ``(sum c x + extra) / norm``), or None.
    """
    n = kept.shape[0]
    coef = np.where(kept, weights[:, None, None].astype(np.float32), np.float32(0))
    extra: np.ndarray | None = None
    for k in range(n):
        ys, xs = np.nonzero(clipped[k])
        if ys.size == 0:
            continue
        cand, share = replacement_shares(kept, ys, xs, k, weights, widths2)
        wk_ = np.float32(weights[k])
        mine = [t for t in restore or [] if t.k == k]
        if mine:
            # Position of each replaced pixel in (ys, xs), by flat index.
            cols = kept.shape[2]
            where = np.full(kept.shape[1] * cols + 1, -1, dtype=np.int64)
            where[ys * cols + xs] = np.arange(ys.size)
            if extra is None:
                extra = np.zeros(kept.shape[1:], dtype=np.float32)
            for t in mine:
                my, mx = np.nonzero(t.mask)
                loc = _locate(my + t.y0, mx + t.x0, cols, pix, band_columns)
                i = where[loc]  # loc -1 (not in the layout) reads the -1 at the end
                ok = i >= 0
                if not ok.any():
                    continue
                add = replacement_correction(cand[:, i[ok]], share[:, i[ok]], t.f, t.target)
                extra.reshape(-1)[loc[ok]] += wk_ * add * t.prof[my[ok], mx[ok]]
        for r in range(cand.shape[0]):
            sel = cand[r] >= 0
            coef[cand[r, sel], ys[sel], xs[sel]] += wk_ * share[r, sel]
    return coef, coef.sum(axis=0), extra


def _locate(
    py: np.ndarray, px: np.ndarray, cols: int, pix: np.ndarray | None, band_columns: int
) -> np.ndarray:
    """Flat indices in the coefficients' plane of band pixels (py, px); -1 where the
    compact layout ``pix`` does not hold them."""
    if pix is None:
        return py * cols + px
    q = py * band_columns + px
    j = np.minimum(np.searchsorted(pix, q), max(pix.size - 1, 0))
    return np.where(pix[j] == q, j, -1) if pix.size else np.full(q.shape, -1)


def combine_band(
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    clipped: np.ndarray,
    weights: np.ndarray,
    widths2: np.ndarray,
    restore: list[Target] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coadd of one band: its image, variance, sum of coefficients and each
    epoch's share of the coefficients.

    Where no epoch is clipped this is the weighted mean of the usable
    pixels (a matrix-vector product over the stack); the few pixels where
    some epoch is clipped get the replacement coefficients of
    :func:`imputation_coefficients`, computed on those pixels alone.

    Parameters
    ----------
    img, var, good, clipped : numpy.ndarray
        ``(n, rows, columns)`` band: image and variance (zero where not
        usable), usable pixels, usable but clipped pixels.
    weights, widths2 : numpy.ndarray
        Per epoch, the scalar weight and the PSF's squared width.
    restore : list of Target, optional
        Variable sources to restore (see :func:`imputation_coefficients`).

    Returns
    -------
    image, variance : numpy.ndarray
        ``(rows, columns)`` float32; 0 and inf where no coefficient is left.
    norm : numpy.ndarray
        ``(rows, columns)`` the sum of the coefficients (0: no data).
    used : numpy.ndarray
        Per epoch, the sum of its coefficients (float64).
    """
    n, rows, cols = img.shape
    w32 = weights.astype(np.float32)
    flat_img, flat_var = img.reshape(n, -1), var.reshape(n, -1)
    flat_good = good.reshape(n, -1)
    num = w32 @ flat_img
    vsum = (w32 * w32) @ flat_var
    norm = np.zeros(rows * cols, dtype=np.float32)
    for k in range(n):
        np.add(norm, w32[k], out=norm, where=flat_good[k])
    used = weights * good.sum(axis=(1, 2), dtype=np.float64)
    pix = np.flatnonzero(clipped.any(axis=0))
    if pix.size:
        g = flat_good[:, pix]
        cl = clipped.reshape(n, -1)[:, pix]
        coef, csum, extra = imputation_coefficients(
            (g & ~cl)[:, None, :],
            cl[:, None, :],
            weights,
            widths2,
            restore,
            pix=pix,
            band_columns=cols,
        )
        c = coef[:, 0]
        x = np.einsum("kp,kp->p", c, flat_img[:, pix])
        if extra is not None:
            x += extra[0]
        num[pix] = x
        vsum[pix] = np.einsum("kp,kp->p", c * c, flat_var[:, pix])
        norm[pix] = csum[0]
        used += c.sum(axis=1, dtype=np.float64) - weights * g.sum(axis=1, dtype=np.float64)
    has = norm > 0
    safe = np.where(has, norm, np.float32(1.0))
    mean = np.where(has, num / safe, np.float32(0.0)).astype(np.float32)
    variance = np.where(has, vsum / (safe * safe), np.float32(np.inf)).astype(np.float32)
    shape = (rows, cols)
    return mean.reshape(shape), variance.reshape(shape), norm.reshape(shape), used


def replacement_shares(
    kept: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    k: int,
    weights: np.ndarray,
    widths2: np.ndarray,
    per_side: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel (ys, xs), the mixture of kept epochs that replaces epoch ``k``.

    The ``per_side`` kept epochs nearest in PSF width on either side of
    ``k``'s (a mixture of widely different PSFs matches the second moment
    but not the profile, and a star partly under the clip would change
    flux) get shares ``c_j`` summing to 1, with the PSF second moment of
    epoch ``k`` (``sum c_j widths2_j = widths2_k``) and the least noise
    (``sum c_j^2 / w_j`` smallest, each epoch's noise variance taken as
    ``1 / w_j``): ``c_j = w_j (l0 + l1 widths2_j)``, the two multipliers
    solving the constraints.  Where only sharper or only broader epochs are
    kept, or they all have one width, the nearest one replaces ``k`` alone;
    a pixel with no kept epoch gets no share (it is dropped).

    Returns
    -------
    epochs : numpy.ndarray
        ``(2 per_side, m)`` candidate epochs per pixel (-1: none).
    shares : numpy.ndarray
        ``(2 per_side, m)`` their shares.
    """
    t = float(widths2[k])
    others = [j for j in range(kept.shape[0]) if j != k]
    below = sorted((j for j in others if widths2[j] <= t), key=lambda j: -widths2[j])
    above = sorted((j for j in others if widths2[j] > t), key=lambda j: widths2[j])
    cand = np.vstack(
        [
            nearest_available(kept, below, ys, xs, per_side),
            nearest_available(kept, above, ys, xs, per_side),
        ]
    )
    has = cand >= 0
    u = np.where(has, weights[np.maximum(cand, 0)], 0.0)
    w2 = widths2[np.maximum(cand, 0)]
    s0 = u.sum(axis=0)
    s1 = (u * w2).sum(axis=0)
    s2 = (u * w2 * w2).sum(axis=0)
    det = s0 * s2 - s1 * s1
    both = has[0] & has[per_side]  # a kept epoch on either side
    ok = both & (det > 1e-9 * np.maximum(s0 * s2, 1e-300))
    safe = np.where(ok, det, 1.0)
    l0 = (s2 - s1 * t) / safe
    l1 = (s0 * t - s1) / safe
    share = np.where(ok[None, :], u * (l0 + l1 * w2), 0.0)
    # The nearest kept epoch alone, where the constraints cannot be met.
    alone = ~ok & has.any(axis=0)
    if alone.any():
        dist = np.where(has[:, alone], np.abs(w2[:, alone] - t), np.inf)
        share[np.argmin(dist, axis=0), np.flatnonzero(alone)] = 1.0
    return cand, share.astype(np.float32)


def nearest_available(
    kept: np.ndarray, order: list[int], ys: np.ndarray, xs: np.ndarray, count: int
) -> np.ndarray:
    """For each pixel (ys, xs), the first ``count`` epochs of ``order`` kept there
    (``(count, m)``, -1 where fewer)."""
    out = np.full((count, ys.size), -1, dtype=np.int64)
    found = np.zeros(ys.size, dtype=np.int64)
    for j in order:
        todo = np.flatnonzero(found < count)
        if todo.size == 0:
            break
        ok = kept[j, ys[todo], xs[todo]]
        hit = todo[ok]
        out[found[hit], hit] = j
        found[hit] += 1
    return out
