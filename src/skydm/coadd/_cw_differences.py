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
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from skydm.coadd._cw_footprints import Sparse
from skydm.coadd._cw_lines import LineAccumulator, column_sums
from skydm.coadd.assemble import clip_outliers

if TYPE_CHECKING:
    from skydm.coadd.compare_warp import CompareWarpConfig


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
        e = np.zeros(size, dtype=np.float32)
        e[:] = 1.0
        out.append(ndimage.gaussian_filter1d(e, s, mode="constant", truncate=3.5))
    return (out[0][:, None] * out[1][None, :]).astype(np.float32)


@dataclass
class BandDiff:
    """Leave-one-out differences of one band, to be merged (:meth:`merge_into`)."""

    row0: int
    codes: np.ndarray
    okc: np.ndarray
    line_sums: list[tuple[np.ndarray, np.ndarray]] | None
    static: np.ndarray | None
    peaks: np.ndarray | None
    sparse: Sparse

    def merge_into(
        self,
        codes: np.ndarray,
        cover: np.ndarray,
        sparse: Sparse,
        lines: list[LineAccumulator] | None,
        static: np.ndarray,
        peaks: np.ndarray,
    ) -> None:
        """Write the band into the cell-wide maps (in band order: the line
        accumulators' blocks straddle bands)."""
        rb = slice(self.row0, self.row0 + self.codes.shape[1])
        codes[:, rb] = self.codes
        cover[rb] += self.okc.sum(axis=0, dtype=np.uint8)
        if lines is not None and self.line_sums is not None:
            for acc, (zc, nc) in zip(lines, self.line_sums, strict=True):
                acc.add_sums(rb.start, zc, nc)
        if self.static is not None:
            static[rb] |= self.static
        if self.peaks is not None:
            peaks[rb] |= self.peaks
        sparse.extend(self.sparse)


def band_differences(
    matched: np.ndarray,
    mvar: np.ndarray,
    ok: np.ndarray,
    weights: np.ndarray,
    cfg: CompareWarpConfig,
    core: slice,
    row0: int,
    fw: int,
    wb: int,
    *,
    lines: bool,
) -> BandDiff:
    """Leave-one-out differences of a band (binned rows from ``row0``): outlier
    codes, coverage, the line search's block sums and bright static sources
    (with ``lines``), the model's peaks (candidates for restoring variables,
    with ``cfg.restore_variables``), and the sparse data of the
    variable-source test."""
    n = matched.shape[0]
    keep = clip_outliers(
        matched, mvar, ok, weights, nsigma=cfg.model_nsigma, ampfrac=cfg.systematic
    )
    # Each epoch is compared with the model made of the other epochs, so that
    # an epoch's own noise neither shrinks its difference nor inflates it
    # where the clipping took it out of the model.
    wk = np.where(keep, weights[:, None, None].astype(np.float32), np.float32(0))
    # Which epochs the model holds, per pixel (a bit per epoch; -1: all, when
    # there are too many epochs for the bits): the reference of a flux change.
    if n <= 62:
        bits = np.zeros(keep.shape[1:], dtype=np.int64)
        for j in range(n):
            bits |= keep[j].astype(np.int64) << j
        bits = bits[core]
    else:
        bits = np.full(keep.shape[1:], -1, dtype=np.int64)[core]
    s_all = np.einsum("kij,kij->ij", wk, matched)
    w_all = wk.sum(axis=0)
    v_all = np.einsum("kij,kij->ij", wk * wk, mvar)
    model = s_all / np.maximum(w_all, np.float32(1e-30))
    # PSF mismatch leaves residuals that scale with the brightness of the
    # nearby sky (cores and wings of stars): the local peak of the model.
    peak = ndimage.maximum_filter(np.abs(model), size=fw)[core]
    sys2 = (np.float32(cfg.systematic) * peak) ** 2
    s_all, w_all, v_all = s_all[core], w_all[core], v_all[core]
    model_sn = s_all / np.sqrt(np.maximum(v_all, np.float32(1e-30)))
    out = BandDiff(
        row0,
        np.empty((n, *model_sn.shape), dtype=np.int8),
        np.empty((n, *model_sn.shape), dtype=bool),
        [] if lines else None,
        model_sn > np.float32(cfg.line_static) if lines else None,
        None,
        [],
    )
    if cfg.restore_variables:
        # Bright static sources (candidates for restoring a variable's flux).
        top = ndimage.maximum_filter(model_sn, size=3)
        out.peaks = (model_sn >= top) & (model_sn >= np.float32(cfg.restore_sn))
    quiet = None
    if lines:
        # PSF-matching residuals of static sources are the heavy tail of the
        # line sums (a row of stars makes a line); the sums leave them out.
        near = ndimage.maximum_filter(model_sn, size=fw) > np.float32(cfg.line_source)
        quiet = ~near
    for k in range(n):
        wkc = wk[k, core]
        mk = matched[k, core]
        w_o = w_all - wkc
        okc = ok[k, core] & (w_o > 0)
        safe = np.maximum(w_o, np.float32(1e-30))
        others = (s_all - wkc * mk) / safe
        v_o = np.divide(
            v_all - wkc * wkc * mvar[k, core],
            safe * safe,
            out=np.zeros(okc.shape, dtype=np.float32),
            where=okc,
        )
        np.maximum(v_o, 0, out=v_o)
        noise = np.sqrt(mvar[k, core] + v_o + sys2)
        sig = np.where(okc, (mk - others) / np.maximum(noise, np.float32(1e-12)), 0.0)
        sample = sig[::3, ::3][okc[::3, ::3]]
        scale = 1.0
        if sample.size > 100:
            # The variance plane ignores the noise correlations of warping and
            # the model's share of each epoch: rescale to unit robust rms.
            scale = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
            if 0.2 < scale < 5:
                sig /= np.float32(scale)
            else:
                scale = 1.0
        code = (sig > cfg.grow_threshold).astype(np.int8)
        code += sig > cfg.threshold
        code -= sig < -cfg.grow_threshold
        code -= sig < -cfg.threshold
        out.codes[k] = code
        out.okc[k] = okc
        if out.line_sums is not None and quiet is not None:
            out.line_sums.append(column_sums(sig, okc & quiet, cfg.line_block, cfg.grow_threshold))
        flagged = np.flatnonzero(code)
        if flagged.size:
            # Local fit of the difference by a multiple of the model over a
            # PSF-sized window: good where a static source changed flux.
            # The window sums are needed at the flagged pixels alone (a few
            # per cent): gathered there, not filtered over the whole band.
            win = fw
            rows_at, cols_at = _window(flagged, sig.shape, win)
            okw = okc[rows_at, cols_at]
            s_w = np.where(okw, sig[rows_at, cols_at], np.float32(0))
            noise_w = np.maximum(noise[rows_at, cols_at], np.float32(1e-12))
            m_w = np.where(okw, others[rows_at, cols_at] / noise_w, np.float32(0))
            m_w /= np.float32(scale)
            npw = win * win
            fs = (s_w * m_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
            fm = (m_w * m_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
            fd = (s_w * s_w).sum(axis=0, dtype=np.float32) / np.float32(npw)
            sd = s_w.sum(axis=0, dtype=np.float32) / np.float32(npw)
            sm = m_w.sum(axis=0, dtype=np.float32) / np.float32(npw)
            mpk = m_w.max(axis=0)
            m_here = m_w[npw // 2]
            chi2 = npw * (fd - fs * fs / np.maximum(fm, 1e-12)) / (npw - 1)
            # The same fit with a constant (a ghost's or a trail's light under
            # the source): the multiple that restores a clipped variable
            # (skydm.coadd._cw_restore).
            cov = fs - sd * sm
            vm = np.maximum(fm - sm * sm, 1e-12)
            alpha = cov / vm
            chi2c = npw * (fd - sd * sd - cov * cov / vm) / (npw - 2)
            out.sparse.append(
                (
                    k,
                    flagged + row0 * wb,
                    np.abs(sig.ravel()[flagged]).astype(np.float32),
                    chi2.astype(np.float32),
                    np.sqrt(npw * fm).astype(np.float32),
                    (m_here / np.maximum(mpk, 1e-12)).astype(np.float32),
                    m_here.astype(np.float32),
                    alpha.astype(np.float32),
                    chi2c.astype(np.float32),
                    bits.ravel()[flagged],
                )
            )
    return out


def _window(flat: np.ndarray, shape: tuple[int, ...], win: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns, ``(win * win, m)``, of the ``win`` x ``win`` window about each
    flat index (the centre at ``win * win // 2``), reflected at the edges as
    scipy.ndimage's ``reflect`` mode does (the edge pixel is repeated)."""
    rows, cols = shape
    y, x = np.divmod(flat, cols)
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
