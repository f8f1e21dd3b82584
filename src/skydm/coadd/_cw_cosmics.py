"""CompareWarp's cosmic-ray tests: a pixel sharper than any source blurred by
its epoch's PSF can be (the Laplacian over the value, bounded by the PSF's
own), measured against the noise of the Laplacian, which is calibrated per
epoch over the whole cell.  Split from :mod:`skydm.coadd._cw_pixels`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from skydm.coadd._cw_pixels import nearest_available
from skydm.image.psf import Psf

if TYPE_CHECKING:
    from skydm.coadd.stack import WarpStack


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
        correlates neighbouring pixels), from :func:`cell_laplacian_scales`.
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
        j = nearest_available(usable, order, rows0, cols, 1)[0]
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
