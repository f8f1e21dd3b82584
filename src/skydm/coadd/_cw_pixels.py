"""Pixel-level numerics of CompareWarp: binning, PSF matching, cosmic rays and the
PSF-preserving replacement of clipped pixels.

Everything here works on ``(n_epochs, rows, columns)`` float32 bands of a
:class:`~skydm.coadd.stack.WarpStack`, vectorised over pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd._cw_restore import Target, replacement_correction
from skydm.image.psf import GAUSS_FWHM, Psf

if TYPE_CHECKING:
    from skydm.coadd.stack import WarpStack


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
    img: np.ndarray, var: np.ndarray, good: np.ndarray, bounds: np.ndarray, **options: Any
) -> np.ndarray:
    """:func:`cosmic_ray_pixels` (with the same ``options``) as boolean hits,
    ``(n, rows, columns)``, not grown."""
    out = np.zeros(img.shape, dtype=bool)
    for k, flat in enumerate(cosmic_ray_pixels(img, var, good, bounds, **options)):
        out[k].reshape(-1)[flat] = True
    return out


def cosmic_ray_pixels(
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    bounds: np.ndarray,
    *,
    threshold: float,
    margin: float,
    sharp: float,
    scales: np.ndarray,
    lap: np.ndarray | None = None,
    widths2: np.ndarray | None = None,
    systematic: float = 0.3,
) -> list[np.ndarray]:
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
    lap : numpy.ndarray, optional
        ``laplacian(img)``, when the caller has it already.
    widths2 : numpy.ndarray, optional
        Per epoch, the PSF's squared width.  With it, a significant Laplacian
        on a source that the PSF bound allows is also judged against the
        source's own sharpness in the other epochs (:func:`_sharper_than_source`):
        a cosmic ray on a bright galaxy, far below the bound, is found.
    systematic : float
        Fraction of the source's expected Laplacian allowed for PSF shape
        differences between epochs, in that test.

    Returns
    -------
    list of numpy.ndarray
        Per epoch, the flat indices (within a ``rows x columns`` plane) of
        the hits, not grown.
    """
    if lap is None:
        lap = laplacian(img)
    n, rows, cols = img.shape
    out = []
    for k in range(n):
        t = np.float32(threshold) * np.float32(scales[k])
        # Both ways of being a hit need ``lap > noise``: that (loosened a
        # little against rounding) picks the few candidates on which the
        # whole test is made, instead of a dozen passes over every pixel.
        lk = lap[k]
        loose = np.float32(0.99 * 20.0) * t * t * var[k]
        cand = np.flatnonzero((lk > 0) & (lk * lk > loose))
        if cand.size == 0:
            out.append(cand)
            continue
        gk = good[k].reshape(-1)
        y, x = np.divmod(cand, cols)
        # Masked neighbours would fake sharpness: all five must be usable.
        full = gk[cand].copy()
        full[y > 0] &= gk[cand[y > 0] - cols]
        full[y < rows - 1] &= gk[cand[y < rows - 1] + cols]
        full[x > 0] &= gk[cand[x > 0] - 1]
        full[x < cols - 1] &= gk[cand[x < cols - 1] + 1]
        cand = cand[full]
        lc = lk.reshape(-1)[cand]
        noise = np.sqrt(np.float32(20.0) * var[k].reshape(-1)[cand]) * t
        pos = np.maximum(img[k].reshape(-1)[cand], 0)
        # On the sky a hit need only be significant and sharper than any PSF
        # (``sharp`` times its value); on a source, its excess over the
        # source's largest possible Laplacian must be significant.
        on_sky = (lc > noise) & (lc > np.float32(sharp) * pos)
        lim = np.float32(margin) * np.float32(bounds[k]) * pos
        hit = on_sky | (lc - lim > noise)
        if widths2 is not None and n >= 3:
            rest = ~hit & (lc > noise) & (pos > 0)
            if rest.any():
                hit[rest] = _sharper_than_source(
                    k, cand[rest], lc[rest], pos[rest], img, var, good, lap, scales, widths2,
                    threshold=threshold, systematic=systematic,
                )  # fmt: skip
        out.append(cand[hit])
    return out


def _sharper_than_source(
    k: int,
    flat: np.ndarray,
    lk: np.ndarray,
    xk: np.ndarray,
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    lap: np.ndarray,
    scales: np.ndarray,
    widths2: np.ndarray,
    *,
    threshold: float,
    systematic: float,
) -> np.ndarray:
    """Whether epoch ``k``'s Laplacian ``lk`` at pixels ``flat`` (value ``xk``) is
    sharper than the static source there allows, judged from the other epochs.

    The source's Laplacian over its value in epoch ``k`` is bounded by that
    of the nearest sharper epoch, and by that of the nearest broader epoch
    scaled by the ratio of their squared PSF widths (exact for a point
    source's Gaussian core, more than enough for anything extended); the
    larger bound (and at least 0) is taken.  A hit exceeds it by
    ``threshold`` times the noise of both Laplacians plus ``systematic`` of
    the bound.
    """
    n = img.shape[0]
    t = float(widths2[k])
    others = [j for j in range(n) if j != k]
    sharper = sorted((j for j in others if widths2[j] <= t), key=lambda j: -widths2[j])
    broader = sorted((j for j in others if widths2[j] > t), key=lambda j: widths2[j])
    flat_img, flat_lap = img.reshape(n, -1), lap.reshape(n, -1)
    usable = (good.reshape(n, -1)[:, flat] & (flat_img[:, flat] > 0))[:, None, :]
    cols = np.arange(flat.size)
    rows0 = np.zeros(flat.size, dtype=np.int64)
    bound = np.zeros(flat.size, dtype=np.float32)
    bound_noise = np.zeros(flat.size, dtype=np.float32)
    for order in (sharper, broader):
        j = _nearest_available(usable, order, rows0, cols, 1)[0]
        has = j >= 0
        if not has.any():
            continue
        jj, pix = j[has], flat[has]
        xj = flat_img[jj, pix]
        # Scaled to epoch k's PSF width: only ever up (a sharper epoch's own
        # ratio already bounds epoch k's).
        scale = np.maximum(widths2[jj] / t, 1.0).astype(np.float32)
        r = flat_lap[jj, pix] / xj * scale
        sj = np.sqrt(np.float32(20.0) * var.reshape(n, -1)[jj, pix]) * scales[jj].astype(np.float32)
        rn = sj / xj * scale
        better = r > bound[has]
        idx = np.flatnonzero(has)[better]
        bound[idx] = r[better]
        bound_noise[idx] = rn[better]
    expected = bound * xk
    sk = np.sqrt(np.float32(20.0) * var[k].reshape(-1)[flat]) * np.float32(scales[k])
    noise = np.sqrt(sk * sk + (bound_noise * xk) ** 2)
    return lk - expected > np.float32(threshold) * noise + np.float32(systematic) * expected


def laplacian_scale(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, lap: np.ndarray | None = None
) -> np.ndarray:
    """Per epoch, the robust rms of ``lap(x) / sqrt(20 var)`` on the usable pixels of a
    grid of every third row and column off the edges (``lap``: ``laplacian(img)``
    if the caller has it)."""
    if lap is None:
        lap = laplacian(img)
    n = img.shape[0]
    out = np.ones(n)
    # A regular sample: far cheaper than selecting the usable pixels first,
    # and as good an estimate (a 4096-pixel band of 160 rows gives 70,000).
    grid = (slice(1, -1, 3), slice(1, -1, 3))
    for k in range(n):
        ok = good[k][grid]
        vals = lap[k][grid][ok] / np.sqrt(20 * var[k][grid][ok])
        if vals.size >= 100:
            s = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
            out[k] = s if 0.05 < s < 20 else 1.0
    return out


#: Rows read per noise tile for the Laplacian's noise (its interior rows
#: are sampled): a few per cent of the cell's rows.
LAPLACIAN_STRIP = 8
#: Robust rms outside this range means a broken sample, not a
#: miscalibrated variance: the variance plane is taken as it is.
LAPLACIAN_SCALE_RANGE = (0.05, 20.0)


def cell_laplacian_scales(stack: WarpStack, tile_rows: int) -> np.ndarray:
    """Per epoch, the robust rms of ``lap(x) / sqrt(20 var)`` over the whole cell.

    A strip of :data:`LAPLACIAN_STRIP` rows at the top of every tile of
    ``tile_rows`` rows is read and its interior sampled every third row and
    column: one figure per epoch, whatever the band height.
    """
    n = len(stack)
    ny = stack.shape[0]
    vals: list[list[np.ndarray]] = [[] for _ in range(n)]
    for t0 in range(0, ny, tile_rows):
        t1 = min(t0 + LAPLACIAN_STRIP, ny)
        if t1 - t0 < 3:
            continue
        img, var, good = stack.rows(t0, t1)
        lap = laplacian(img)
        grid = (slice(1, -1, 3), slice(1, -1, 3))
        for k in range(n):
            ok = good[k][grid]
            vals[k].append(lap[k][grid][ok] / np.sqrt(20 * var[k][grid][ok]))
    out = np.ones(n)
    for k in range(n):
        v = np.concatenate(vals[k]) if vals[k] else np.zeros(0)
        if v.size >= 100:
            s = 1.4826 * float(np.median(np.abs(v - np.median(v))))
            out[k] = s if LAPLACIAN_SCALE_RANGE[0] < s < LAPLACIAN_SCALE_RANGE[1] else 1.0
    return out


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
