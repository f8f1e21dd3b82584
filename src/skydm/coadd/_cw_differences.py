"""CompareWarp's leave-one-out differences of one band of binned rows.

The PSF-matched binned planes of every epoch (:func:`match_planes`), each
epoch's significance against the model of the other epochs, its outlier
codes, and the sparse data of the variable-source test
(:func:`band_differences`).  Bands are computed independently (in the band
threads of :func:`skydm.coadd.compare_warp.compare_warp`) and merged into
the cell-wide maps in band order (:meth:`BandDiff.merge_into`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from skydm.coadd._cw_config import CompareWarpConfig, DetectConfig
from skydm.coadd._cw_footprints import OutlierPixels
from skydm.coadd.combine import clip_outliers


def match_planes(
    bi: np.ndarray, bv: np.ndarray, bc: np.ndarray, bsig: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF-matched binned planes: image, variance and where they are usable.

    Normalised convolution, so that missing pixels and the borders of the
    data neither bias the matched image nor hide its larger noise.
    """
    n = bi.shape[0]
    matched = np.empty_like(bi)
    mvar = np.empty_like(bv)
    ok = np.empty(bi.shape, dtype=bool)
    for k in range(n):
        s = float(bsig[k])
        full = bool(bc[k].min() >= 1.0)
        if s > 0.3:
            src = bi[k] if full else bi[k] * bc[k]
            num = ndimage.gaussian_filter(src, s, mode="constant", truncate=3.5)
            vs = s / math.sqrt(2.0)
            vsrc = bv[k] if full else bv[k] * bc[k] ** 2
            vnum = ndimage.gaussian_filter(vsrc, vs, mode="constant", truncate=3.5)
            vnum *= np.float32(1.0 / (4 * math.pi * s * s))
            if full:
                # Only the image borders lack data: the kernel's mass there
                # is a product of two 1-d sums.
                den = border_mass(bi.shape[1:], s)
            else:
                den = ndimage.gaussian_filter(bc[k], s, mode="constant", truncate=3.5)
        else:
            num, den, vnum = bi[k] * bc[k], bc[k], bv[k] * bc[k] ** 2
        # Down to a tenth of a kernel's worth of data the normalised
        # convolution is usable (its variance says how noisy).
        ok[k] = (den > 0.1) & (bc[k] > 0)
        safe = np.maximum(den, np.float32(1e-6))
        matched[k] = np.where(ok[k], num / safe, 0.0)
        mvar[k] = np.where(ok[k], vnum / (safe * safe), 0.0)
    return matched, mvar, ok


def border_mass(shape: tuple[int, ...], s: float) -> np.ndarray:
    """Mass of a truncated Gaussian kernel inside a ``shape`` image, per pixel."""
    out = []
    for size in shape:
        e = np.ones(size, dtype=np.float32)
        out.append(ndimage.gaussian_filter1d(e, s, mode="constant", truncate=3.5))
    return (out[0][:, None] * out[1][None, :]).astype(np.float32)


#: Fewest usable pixels in a noise tile's sample for its robust rms; fewer:
#: the variance plane is taken as it is (scale 1).
MIN_NOISE_SAMPLE = 100
#: Robust rms rescalings outside this range mean a broken sample, not
#: miscalibrated variance: ignored.
NOISE_SCALE_RANGE = (0.2, 5.0)
#: Share of the PSF-mismatch term in the noise of the time differences:
#: residuals of static sources stay put and make no track, so a small
#: share suffices, and a larger one hides slow movers' weak dipoles.
TIME_SYSTEMATIC = 0.1
#: Robust sigma of a Gaussian from its median absolute deviation.
MAD_TO_SIGMA = 1.4826


@dataclass
class BandOutliers:
    """The outlier pass's products for one band of binned rows (merged into the
    cell-wide maps in band order by :meth:`merge_into`).

    Attributes
    ----------
    row0 : int
        The band's first binned row.
    codes : numpy.ndarray
        ``(n, rows, columns)`` int8: +2/-2 above/below +-threshold, +1/-1
        above/below +-grow_threshold, 0 otherwise.
    okc : numpy.ndarray
        ``(n, rows, columns)`` where each epoch could be compared.
    pixels : list of OutlierPixels
        Per epoch, its flagged pixels with their local fits.
    peaks : numpy.ndarray or None
        The model's local maxima (candidates for restoring variables).
    tcodes : numpy.ndarray or None
        ``(n, rows, columns)`` int8 codes of the time-neighbour differences
        (:func:`time_codes`), for the mover rule.
    """

    row0: int
    codes: np.ndarray
    okc: np.ndarray
    pixels: list[OutlierPixels]
    peaks: np.ndarray | None
    tcodes: np.ndarray | None = None

    def merge_into(self, maps: OutlierMaps) -> None:
        """Write the band into the cell-wide maps."""
        rb = slice(self.row0, self.row0 + self.codes.shape[1])
        maps.codes[:, rb] = self.codes
        if maps.tcodes is not None and self.tcodes is not None:
            maps.tcodes[:, rb] = self.tcodes
        maps.cover[rb] += self.okc.sum(axis=0, dtype=np.uint8)
        if self.peaks is not None:
            maps.peaks[rb] |= self.peaks
        for k, part in enumerate(self.pixels):
            maps.parts[k].append(part)


@dataclass
class OutlierMaps:
    """The outlier pass's products for the whole cell (binned grid)."""

    codes: np.ndarray
    cover: np.ndarray
    peaks: np.ndarray
    parts: list[list[OutlierPixels]]
    tcodes: np.ndarray | None

    @classmethod
    def empty(cls, n: int, shape: tuple[int, int], *, movers: bool) -> OutlierMaps:
        """Maps of ``n`` epochs on a binned grid of ``shape``, to be filled band by band."""
        return cls(
            np.zeros((n, *shape), dtype=np.int8),
            np.zeros(shape, dtype=np.uint8),
            np.zeros(shape, dtype=bool),
            [[] for _ in range(n)],
            np.zeros((n, *shape), dtype=np.int8) if movers else None,
        )

    def pixels(self) -> list[OutlierPixels]:
        """Per epoch, all its outlier pixels."""
        n = self.codes.shape[0]
        return [OutlierPixels.concatenate(p, n) for p in self.parts]


def tile_scales(sig: np.ndarray, ok: np.ndarray, tile: int) -> np.ndarray:
    """Per row of ``sig`` (binned rows of whole tiles of ``tile`` rows from a
    tile boundary), the robust rms of the significance over its tile.

    The sample is every third row and column of the tile from its first, so
    that it does not depend on how rows are grouped into bands.
    """
    rows = sig.shape[0]
    out = np.ones(rows, dtype=np.float32)
    for t0 in range(0, rows, tile):
        t1 = min(t0 + tile, rows)
        sample = sig[t0:t1:3, ::3][ok[t0:t1:3, ::3]]
        if sample.size > MIN_NOISE_SAMPLE:
            # The variance plane ignores the noise correlations of warping and
            # the model's share of each epoch: rescale to unit robust rms.
            scale = MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample))))
            if NOISE_SCALE_RANGE[0] < scale < NOISE_SCALE_RANGE[1]:
                out[t0:t1] = scale
    return out


def band_differences(
    matched: np.ndarray,
    mvar: np.ndarray,
    ok: np.ndarray,
    weights: np.ndarray,
    cfg: CompareWarpConfig,
    core: slice,
    row0: int,
    fw: int,
    *,
    previous: np.ndarray | None = None,
) -> BandOutliers:
    """Leave-one-out differences of a band (binned rows from ``row0``, its core
    ``core`` of the band's rows, whole noise tiles): outlier codes, coverage,
    the model's peaks (with ``cfg.restore.enabled``), each epoch's outlier
    pixels with their local fits and, with ``previous`` (per epoch, the
    epoch it is compared with in time), the time codes."""
    det = cfg.detect
    n = matched.shape[0]
    keep = clip_outliers(
        matched, mvar, ok, weights, nsigma=det.model_nsigma, ampfrac=det.systematic
    )
    # Each epoch is compared with the model made of the other epochs, so that
    # an epoch's own noise neither shrinks its difference nor inflates it
    # where the clipping took it out of the model.
    wk = np.where(keep, weights[:, None, None].astype(np.float32), np.float32(0))
    s_all = np.einsum("kij,kij->ij", wk, matched)
    w_all = wk.sum(axis=0)
    v_all = np.einsum("kij,kij->ij", wk * wk, mvar)
    model = s_all / np.maximum(w_all, np.float32(1e-30))
    model_sn = s_all / np.sqrt(np.maximum(v_all, np.float32(1e-30)))
    # The fit windows reach ``h`` rows past the core: computed on the core
    # so extended (the band's halo holds those rows), so that a window does
    # not depend on where the band ends.
    h = fw // 2
    ext = slice(max(core.start - h, 0), min(core.stop + h, matched.shape[1]))
    lo = core.start - ext.start  # the core within the extension
    hi = lo + (core.stop - core.start)
    # PSF mismatch leaves residuals that scale with the brightness of the
    # nearby sky (cores and wings of stars): the local peak of the model.
    peak = ndimage.maximum_filter(np.abs(model), size=fw)[ext]
    sys2 = (np.float32(det.systematic) * peak) ** 2
    rows, cols = hi - lo, matched.shape[2]
    out = BandOutliers(
        row0,
        np.empty((n, rows, cols), dtype=np.int8),
        np.empty((n, rows, cols), dtype=bool),
        [],
        None,
    )
    if cfg.restore.enabled:
        # Bright static sources (candidates for restoring a variable's flux).
        top = ndimage.maximum_filter(model_sn, size=3)[core]
        out.peaks = (model_sn[core] >= top) & (model_sn[core] >= np.float32(cfg.restore.sn))
    if previous is not None:
        out.tcodes = time_codes(
            matched[:, core], mvar[:, core], ok[:, core], sys2[lo:hi], previous, det
        )
    s_e, w_e, v_e = s_all[ext], w_all[ext], v_all[ext]
    for k in range(n):
        wkc = wk[k, ext]
        mk = matched[k, ext]
        w_o = w_e - wkc
        oke = ok[k, ext] & (w_o > 0)
        safe = np.maximum(w_o, np.float32(1e-30))
        others = (s_e - wkc * mk) / safe
        v_o = np.divide(
            v_e - wkc * wkc * mvar[k, ext],
            safe * safe,
            out=np.zeros(oke.shape, dtype=np.float32),
            where=oke,
        )
        np.maximum(v_o, 0, out=v_o)
        noise = np.sqrt(mvar[k, ext] + v_o + sys2)
        raw = np.where(oke, (mk - others) / np.maximum(noise, np.float32(1e-12)), 0.0)
        okc = oke[lo:hi]
        scale = tile_scales(raw[lo:hi], okc, det.noise_tile)
        sig = raw[lo:hi] / scale[:, None]
        code = (sig > det.grow_threshold).astype(np.int8)
        code += sig > det.threshold
        code -= sig < -det.grow_threshold
        code -= sig < -det.threshold
        out.codes[k] = code
        out.okc[k] = okc
        flagged = np.flatnonzero(code)
        out.pixels.append(
            _local_fits(
                flagged,
                sig,
                raw,
                oke,
                others,
                noise,
                scale,
                keep[:, ext][:, lo:hi],
                lo,
                fw,
                row0 * cols,
            )
        )
    return out


def time_codes(
    matched: np.ndarray,
    mvar: np.ndarray,
    ok: np.ndarray,
    sys2: np.ndarray,
    previous: np.ndarray,
    det: DetectConfig,
) -> np.ndarray:
    """Codes of where each epoch is brighter than its reference epoch,
    ``previous[k]`` (-1: none; :func:`skydm.coadd._cw_movers.reference_epochs`).

    A mover slower than a PSF per epoch overlaps itself from epoch to epoch,
    so the static-sky model holds its light and the leave-one-out
    differences hardly see it; but the difference of an epoch and the one
    before it is a dipole whose positive lobe, the mover's leading edge,
    grows with its speed and moves with it.  The significance of
    ``m_k - m_prev`` (PSF-matched, noise from both variances plus a share
    of the systematic term, rescaled to unit robust rms per noise tile) is
    thresholded as the outliers are (2: above ``threshold``, 1: above
    ``grow_threshold``); an epoch without an earlier one gets none.  Static sources
    cancel; a brightening source gives a blob that stays put, a mover one
    that moves (:class:`skydm.coadd._cw_rules.Mover`).
    """
    out = np.zeros(matched.shape, dtype=np.int8)
    for k, prev in enumerate(previous):
        if prev < 0:
            continue
        both = ok[k] & ok[prev]
        noise = np.sqrt(mvar[k] + mvar[prev] + TIME_SYSTEMATIC * sys2)
        d = np.where(both, (matched[k] - matched[prev]) / np.maximum(noise, np.float32(1e-12)), 0)
        d = d / tile_scales(d, both, det.noise_tile)[:, None]
        out[k] = (d > det.grow_threshold).astype(np.int8) + (d > det.threshold)
    return out


def _local_fits(
    flagged: np.ndarray,
    sig: np.ndarray,
    raw: np.ndarray,
    oke: np.ndarray,
    others: np.ndarray,
    noise: np.ndarray,
    scale: np.ndarray,
    keep: np.ndarray,
    lo: int,
    fw: int,
    offset: int,
) -> OutlierPixels:
    """Local fit of the difference by a multiple of the model over a PSF-sized
    window at each flagged pixel (core coordinates; the extended arrays
    ``raw``, ``oke``, ``others``, ``noise`` start ``lo`` rows above the core):
    good where a static source changed flux.  The window sums are needed at
    the flagged pixels alone (a few per cent), gathered there, not filtered
    over the whole band.  Each window is in the noise units of its flagged
    pixel's tile, whatever band holds it."""
    cols = sig.shape[1]
    y, x = np.divmod(flagged, cols)
    rows_at, cols_at = _window(y + lo, x, raw.shape, fw)
    # One flat index per window pixel: numpy's indexing by two arrays costs
    # twice as much, four times over.
    at = rows_at * raw.shape[1] + cols_at
    sc = scale[y].astype(np.float32)
    okw = oke.reshape(-1)[at]
    s_w = np.where(okw, raw.reshape(-1)[at] / sc, np.float32(0))
    noise_w = np.maximum(noise.reshape(-1)[at], np.float32(1e-12))
    m_w = np.where(okw, others.reshape(-1)[at] / noise_w, np.float32(0)) / sc
    npw = fw * fw
    fs = (s_w * m_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
    fm = (m_w * m_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
    fd = (s_w * s_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
    sd = s_w.sum(axis=0, dtype=np.float32) / np.float32(npw)
    sm = m_w.sum(axis=0, dtype=np.float32) / np.float32(npw)
    mpk = m_w.max(axis=0)
    m_here = m_w[npw // 2]
    chi2 = npw * (fd - fs * fs / np.maximum(fm, 1e-12)) / (npw - 1)
    # The same fit with a constant (a ghost's or a trail's light under the
    # source): the multiple that restores a clipped variable (_cw_restore).
    cov = fs - sd * sm
    vm = np.maximum(fm - sm * sm, 1e-12)
    alpha = cov / vm
    chi2c = npw * (fd - sd * sd - cov * cov / vm) / (npw - 2)
    model = np.packbits(keep.reshape(keep.shape[0], -1)[:, flagged].T, axis=1)
    return OutlierPixels(
        flagged + offset,
        sig.ravel()[flagged].astype(np.float32),
        chi2.astype(np.float32),
        np.sqrt(npw * fm).astype(np.float32),
        (m_here / np.maximum(mpk, 1e-12)).astype(np.float32),
        m_here.astype(np.float32),
        alpha.astype(np.float32),
        chi2c.astype(np.float32),
        model,
    )


def _window(
    y: np.ndarray, x: np.ndarray, shape: tuple[int, ...], win: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns, ``(win * win, m)``, of the ``win`` x ``win`` window about
    each pixel (y, x) (the centre at ``win * win // 2``), reflected at the edges
    as scipy.ndimage's ``reflect`` mode does (the edge pixel is repeated)."""
    rows, cols = shape
    h = win // 2
    d = np.arange(-h, win - h)
    yy = _reflect(y[None, :] + d[:, None], rows)
    xx = _reflect(x[None, :] + d[:, None], cols)
    return (
        np.repeat(yy, win, axis=0),
        np.tile(xx, (win, 1)),
    )


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``[0, n)`` about the edges, the edge pixel repeated."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i)
