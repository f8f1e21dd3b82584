"""Pixel-level numerics of CompareWarp: binning, PSF matching, cosmic rays and the
PSF-preserving replacement of clipped pixels.

Everything here works on ``(n_epochs, rows, columns)`` float32 bands of a
:class:`~skydm.coadd.stack.WarpStack`, vectorised over pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd._cw_restore import Target, replacement_correction
from skydm.image.psf import GAUSS_FWHM, Psf


def bin_planes(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, b: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin ``(n, h, w)`` planes by ``b`` x ``b``: mean image, its variance, good fraction."""
    if b == 1:
        return img, var, good.astype(np.float32)
    n, h, w = img.shape
    hp, wp = -(-h // b) * b, -(-w // b) * b
    if (hp, wp) != (h, w):
        pad = ((0, 0), (0, hp - h), (0, wp - w))
        img, var, good = np.pad(img, pad), np.pad(var, pad), np.pad(good, pad)
    shape = (n, hp // b, b, wp // b, b)
    # Bad pixels are zero in ``img`` and ``var`` (WarpStack.rows), so plain sums do.
    cnt = good.reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    s = img.reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    sv = var.reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    safe = np.maximum(cnt, np.float32(1.0))
    return s / safe, sv / (safe * safe), cnt * np.float32(1.0 / (b * b))


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


def laplacian(x: np.ndarray) -> np.ndarray:
    """Discrete Laplacian ``4 x - (sum of the 4 neighbours)`` over the last two axes.

    At the edges the missing neighbour is the one opposite (reflection):
    taken as 0 it would make every source on the edge look sharp.
    """
    lap = 4 * x
    lap[..., 1:, :] -= x[..., :-1, :]
    lap[..., :-1, :] -= x[..., 1:, :]
    lap[..., :, 1:] -= x[..., :, :-1]
    lap[..., :, :-1] -= x[..., :, 1:]
    if x.shape[-2] > 1:
        lap[..., 0, :] -= x[..., 1, :]
        lap[..., -1, :] -= x[..., -2, :]
    if x.shape[-1] > 1:
        lap[..., :, 0] -= x[..., :, 1]
        lap[..., :, -1] -= x[..., :, -2]
    return lap


def sharpness_bound(psf: Psf | None) -> float:
    """Largest ratio of Laplacian to value that a source blurred by ``psf`` can reach.

    A static source is the PSF convolved with something non-negative, so its
    Laplacian over its value is at most the PSF's own, which peaks at the
    core; the ratio is taken over sub-pixel centrings and pixels above 5% of
    the peak.  Without a PSF the value for a 2-pixel FWHM Gaussian is used.
    """
    if psf is None:
        from skydm.image import GaussianPsf

        psf = GaussianPsf.from_fwhm(2.0)
    best = 0.0
    for dx, dy in ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.25, 0.25)):
        k = psf.kernel(max(psf.default_size(), 7) | 1, dx, dy)
        lap = laplacian(k)[1:-1, 1:-1]
        core = k[1:-1, 1:-1]
        sel = core > 0.05 * core.max()
        best = max(best, float(np.max(lap[sel] / core[sel])))
    return best


def cosmic_rays(
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    bounds: np.ndarray,
    *,
    threshold: float,
    margin: float,
    sharp: float,
    scales: np.ndarray,
) -> np.ndarray:
    """Pixels sharper than the epoch's PSF allows: cosmic rays (and hot pixels).

    A pixel is a hit when ``lap(x) - margin * L_k * max(x, 0)`` exceeds
    ``threshold`` times the Laplacian's noise, with ``L_k`` the sharpness
    bound of epoch ``k``'s PSF (:func:`sharpness_bound`).  Any static source
    (star or galaxy) stays below ``L_k`` times its value at every pixel, so
    a hit on top of a star is found as well as on the sky: only the hit's
    own excess sharpness has to beat the noise.

    Parameters
    ----------
    img, var, good : numpy.ndarray
        ``(n, rows, columns)`` band (bad pixels zeroed).
    bounds : numpy.ndarray
        ``L_k`` per epoch.
    threshold, margin : float
        Significance and the safety factor on ``L_k``.
    sharp : float
        Laplacian over value above which a lone pixel is sharper than any
        PSF (an unblurred hit reaches 2 to 4).
    scales : numpy.ndarray
        Per epoch, the Laplacian's noise over ``sqrt(20 var)`` (warping
        correlates neighbouring pixels), from :func:`laplacian_scale`.

    Returns
    -------
    numpy.ndarray
        Boolean hits, ``(n, rows, columns)``, not grown.
    """
    lap = laplacian(img)
    # Masked neighbours would fake sharpness: require all five usable.
    full = good.copy()
    full[:, 1:] &= good[:, :-1]
    full[:, :-1] &= good[:, 1:]
    full[:, :, 1:] &= good[:, :, :-1]
    full[:, :, :-1] &= good[:, :, 1:]
    noise = np.sqrt(np.float32(20.0) * var)
    noise *= (np.float32(threshold) * scales.astype(np.float32))[:, None, None]
    pos = np.maximum(img, 0)
    # On the sky a hit need only be significant and sharper than any PSF
    # (``sharp`` times its value); on a source, its excess over the source's
    # largest possible Laplacian must be significant.
    on_sky = (lap > noise) & (lap > np.float32(sharp) * pos)
    lim = (np.float32(margin) * bounds.astype(np.float32))[:, None, None] * pos
    lap -= lim
    return full & (on_sky | (lap > noise))


def laplacian_scale(img: np.ndarray, var: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per epoch, the robust rms of ``lap(x) / sqrt(20 var)`` on a sample of pixels."""
    n = img.shape[0]
    out = np.ones(n)
    lap = laplacian(img)
    for k in range(n):
        ok = good[k, 1:-1, 1:-1]
        vals = (lap[k, 1:-1, 1:-1][ok] / np.sqrt(20 * var[k, 1:-1, 1:-1][ok]))[::7]
        if vals.size >= 100:
            s = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
            out[k] = s if 0.05 < s < 20 else 1.0
    return out


def grow_hits(hits: np.ndarray, width: int) -> np.ndarray:
    """Flat indices (within a ``rows x width`` plane) of hits grown to their 3x3 squares."""
    ys, xs = np.nonzero(hits)
    if ys.size == 0:
        return np.zeros(0, dtype=np.int64)
    rows = hits.shape[0]
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
            where = np.full(kept.shape[1] * cols, -1, dtype=np.int64)
            where[ys * cols + xs] = np.arange(ys.size)
            if extra is None:
                extra = np.zeros(kept.shape[1:], dtype=np.float32)
            for t in mine:
                my, mx = np.nonzero(t.mask)
                py, px = my + t.y0, mx + t.x0
                i = where[py * cols + px]
                ok = i >= 0
                if not ok.any():
                    continue
                add = replacement_correction(cand[:, i[ok]], share[:, i[ok]], t.f, t.target)
                extra[py[ok], px[ok]] += wk_ * add * t.prof[my[ok], mx[ok]]
        for r in range(cand.shape[0]):
            sel = cand[r] >= 0
            coef[cand[r, sel], ys[sel], xs[sel]] += wk_ * share[r, sel]
    return coef, coef.sum(axis=0), extra


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
            _nearest_available(kept, below, ys, xs, per_side),
            _nearest_available(kept, above, ys, xs, per_side),
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


def _nearest_available(
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
