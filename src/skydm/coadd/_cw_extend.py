"""How far a clipped footprint reaches beyond its outlier pixels.

The extension stage of :func:`skydm.coadd._cw_rules.clip_maps`: a growth
by the PSF (:func:`_grow`) and a faint streak's continuation along its line into the noise
(:func:`_extend_streaks`, :func:`_strip`).  Split from the rules module,
which decides *whether* a footprint is clipped; this one says *how much*.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from skydm.coadd._cw_config import TrailConfig
from skydm.coadd._cw_footprints import _dilate, _groups, _Labels

if TYPE_CHECKING:
    from skydm.coadd._cw_rules import RuleContext


def _grow(
    out: np.ndarray, fpix: np.ndarray, flab: np.ndarray, extra: np.ndarray, structure: np.ndarray
) -> None:
    """Set in ``out`` the clipped pixels grown by ``structure``.

    Clipped footprint pixels ``fpix`` (labels ``flab``) are grown in full.
    Pixels ``extra`` off the footprints (streak strips) are grown only within
    the window of some clipped footprint (its box grown by the structure's
    radius), and only where that window holds them: that is where the
    footprints' growth, done box by box, reaches.
    """
    rows, cols = out.shape
    r = structure.shape[0] // 2
    ys, xs = np.divmod(fpix, cols)
    y0, y1 = max(int(ys.min()) - r, 0), min(int(ys.max()) + r + 1, rows)
    x0, x1 = max(int(xs.min()) - r, 0), min(int(xs.max()) + r + 1, cols)
    box = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    box[ys - y0, xs - x0] = True
    out[y0:y1, x0:x1] |= _dilate(box, structure)
    if extra.size == 0:
        return
    order = np.argsort(flab, kind="stable")
    sl = flab[order]
    starts = np.flatnonzero(np.r_[True, sl[1:] != sl[:-1]])
    bounds = [np.minimum.reduceat(ys[order], starts), np.maximum.reduceat(ys[order], starts)]
    bounds += [np.minimum.reduceat(xs[order], starts), np.maximum.reduceat(xs[order], starts)]
    mask = np.zeros(out.shape, dtype=bool)
    mask.reshape(-1)[extra] = True
    ty, tx = np.divmod(extra, cols)  # ascending rows
    for ya, yb, xa, xb in zip(*bounds, strict=True):
        wy0, wy1 = max(int(ya) - r, 0), min(int(yb) + r + 1, rows)
        wx0, wx1 = max(int(xa) - r, 0), min(int(xb) + r + 1, cols)
        a, b = np.searchsorted(ty, [wy0, wy1])
        inside = np.flatnonzero((tx[a:b] >= wx0) & (tx[a:b] < wx1))
        if inside.size == 0:
            continue
        # The window's strip pixels grow within it, up to r from their box.
        iy, ix = ty[a:b][inside], tx[a:b][inside]
        sy0, sy1 = max(int(iy[0]) - r, wy0), min(int(iy[-1]) + r + 1, wy1)
        sx0, sx1 = max(int(ix.min()) - r, wx0), min(int(ix.max()) + r + 1, wx1)
        out[sy0:sy1, sx0:sx1] |= _dilate(mask[sy0:sy1, sx0:sx1], structure)


def _extend_streaks(
    fp: _Labels, chosen: np.ndarray, sizes: np.ndarray, ctx: RuleContext, cfg: TrailConfig
) -> np.ndarray:
    """Straight strips through every long, thin footprint, across the whole grid.

    Satellite trails cross a whole image, but where a faint one dips into
    the noise its footprint breaks into segments and the gaps would leak.
    A footprint (of those ``chosen``) at least ``cfg.length``
    binned pixels long and ``cfg.aspect`` times longer than wide is taken to be a segment
    of a straight trail, and the strip along its axis (as wide as the
    footprint) is clipped wherever the epoch has data, as Rubin's streak
    masking does.  Returns the strips' flat indices, ascending.
    """
    min_length, cover = cfg.length, ctx.cover
    shape = (cover.size // ctx.width, ctx.width)
    big = chosen[sizes[chosen] >= min_length]
    strips = []
    for _, ys, xs in _groups(fp, big, shape[1]):
        cy, cx = ys.mean(), xs.mean()
        cov = np.cov(np.vstack([xs - cx, ys - cy]))
        evals, evecs = np.linalg.eigh(cov)
        length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
        if length < min_length or length < cfg.aspect * max(width, 1.0):
            continue
        ux, uy = evecs[0, 1], evecs[1, 1]
        perp = np.abs(-(xs - cx) * uy + (ys - cy) * ux)
        # The footprint itself is clipped anyway; the strip only bridges its
        # gaps, as wide as the trail, not as the stars merged with it.
        half = float(np.percentile(perp, 90)) + 1.0
        strips.append(_strip(shape, cx, cy, ux, uy, half))
    mark = np.zeros(cover.size, dtype=bool)
    mark[np.concatenate([np.zeros(0, dtype=np.int64), *strips])] = True
    strip = np.flatnonzero(mark)
    return strip[cover[strip] > 0]


def _strip(
    shape: tuple[int, int], cx: float, cy: float, ux: float, uy: float, half: float
) -> np.ndarray:
    """Flat indices of the pixels within ``half`` of the line through (cx, cy)
    along (ux, uy): a band of candidates per row (or column) tested by the
    arithmetic of a whole-grid test (float32 coordinates), for equal results."""
    rows, cols = shape
    if abs(uy) >= abs(ux):
        along = np.arange(rows)
        centre = cx + (along - cy) * (ux / uy)
        m = math.ceil(half / abs(uy)) + 2
    else:
        along = np.arange(cols)
        centre = cy + (along - cx) * (uy / ux)
        m = math.ceil(half / abs(ux)) + 2
    across = np.floor(centre).astype(np.int64)[:, None] + np.arange(-m, m + 1)
    first = np.broadcast_to(along[:, None], across.shape)
    yc, xc = (first, across) if abs(uy) >= abs(ux) else (across, first)
    ok = (xc >= 0) & (xc < cols) & (yc >= 0) & (yc < rows)
    yc, xc = yc[ok], xc[ok]
    dist = np.abs(-(xc.astype(np.float32) - cx) * uy + (yc.astype(np.float32) - cy) * ux)
    near = dist <= half
    return yc[near] * cols + xc[near]
