"""Outlier footprints and DMTN-080's temporal rule: which footprints of which
epochs CompareWarp clips (on the binned grid).

See :mod:`skydm.coadd.compare_warp` for the whole algorithm.  Footprints
cover a few per cent of the grid, so they are kept sparse (flat indices of
their pixels, ascending, and labels); per-footprint sums are bincounts over
them, and only the growth of the clipped ones touches a dense map.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from skydm.coadd._cw_footprints import (
    Sparse,
    _components,
    _Context,
    _dilate,
    _disk,
    _footprints,
    _groups,
    _label_at,
    _Labels,
    _Outliers,
    _outliers,
)

if TYPE_CHECKING:
    from skydm.coadd.compare_warp import CompareWarpConfig


def _same_place(tops: list[np.ndarray], shape: tuple[int, int], fwhm: float) -> np.ndarray | None:
    """Per pixel, the number of epochs with a footprint peak within ``fwhm`` of it."""
    if fwhm <= 0:
        return None
    offsets = np.nonzero(_disk(fwhm)) - np.array(math.ceil(fwhm))
    out = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    slot = np.empty(out.size, dtype=np.int64)  # scratch: read only where just written
    for t in tops:
        t = t[t >= 0]
        if t.size:
            ys, xs = np.divmod(t, shape[1])
            yy, xx = ys[:, None] + offsets[0], xs[:, None] + offsets[1]
            ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
            hit = yy[ok] * shape[1] + xx[ok]
            # Each epoch counts once per pixel, however many of its peaks are
            # near: of repeated pixels, only the one whose slot write stuck.
            order = np.arange(hit.size)
            slot[hit] = order
            out[hit[slot[hit] == order]] += 1
    return out.reshape(shape)


def clip_maps(
    codes: np.ndarray,
    cover: np.ndarray,
    sparse: Sparse,
    cfg: CompareWarpConfig,
    *,
    grow: float,
    fwhm: float = 0.0,
) -> np.ndarray:
    """Per-epoch boolean maps of the pixels to clip (binned grid).

    Positive and negative outliers are counted separately.  Artefacts add
    light, so a positive footprint may be clipped even where only two epochs
    overlap (at least one outlier epoch is allowed from two epochs on); a
    negative one needs the full rule.  A footprint whose difference is
    a multiple of the model there (see :func:`_variable`) is a variable
    source, and is kept whatever its number of epochs.
    """
    n = codes.shape[0]
    shape = (int(codes.shape[1]), int(codes.shape[2]))
    clip = np.zeros(codes.shape, dtype=bool)
    structure = _disk(grow) if grow >= 0.5 else None
    outl = [_outliers(sparse, k) for k in range(n)]
    for sign in (1, -1):
        length = cfg.streak_length if sign > 0 else 0.0
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="footprints") as pool:
            fps = list(pool.map(_footprints, codes, [sign] * n, [length] * n))
        count = np.zeros(shape[0] * shape[1], dtype=np.uint8)
        for fp in fps:
            count[fp.pix] += 1
        peaks = [_peaks(fp, o) for fp, o in zip(fps, outl, strict=True)]
        same = _same_place([p[0] for p in peaks], shape, fwhm) if sparse else None

        ctx = _Context(cfg, sign, fwhm, structure, shape[1], cover.ravel(), count, same)
        # Epochs are independent given the counts: two threads (numpy releases
        # the GIL in its array operations); each writes its own map.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="clip-maps") as pool:
            list(pool.map(partial(_clip_epoch, ctx=ctx), clip, fps, codes, peaks, outl))
    return clip


def _peaks(fp: _Labels, outl: _Outliers | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each footprint's most significant pixel: its flat index per label (-1 if
    unknown), and the labels that have one with its position in ``outl``."""
    tops = np.full(fp.n, -1, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if outl is None or fp.n == 0:
        return tops, none, none
    which = _label_at(fp, outl.idx)
    inside = np.flatnonzero(which > 0)
    w, d = which[inside], outl.dabs[inside]
    # Sort by label, then by decreasing |d| (ties keep the sparse order).
    order = np.lexsort((-d, w))
    first = np.ones(order.size, dtype=bool)
    first[1:] = w[order][1:] != w[order][:-1]
    top = inside[order[first]]
    tops[which[top] - 1] = outl.idx[top]
    return tops, which[top], top


def _clip_epoch(
    out: np.ndarray,
    fp: _Labels,
    code: np.ndarray,
    peaks: tuple[np.ndarray, np.ndarray, np.ndarray],
    outl: _Outliers | None,
    ctx: _Context,
) -> None:
    """Set in ``out`` (the epoch's 2-D map) the footprints ``fp`` of one epoch
    (outlier codes ``code``) that the temporal rule clips, grown by
    ``ctx.structure``."""
    if fp.n == 0:
        return
    cfg, sign, _, structure, width, cover, count, same = ctx
    tops, which_top, top = peaks
    pix, lab, nlab = fp
    sizes = np.bincount(lab, minlength=nlab + 1)
    mean_cover = np.bincount(lab, weights=cover[pix], minlength=nlab + 1)[1:] / sizes[1:]
    limit = cfg.epoch_threshold(mean_cover)
    if sign > 0:
        limit = np.where(mean_cover >= 2, np.maximum(limit, 1), limit)
    # Fraction of each footprint's pixels that are outliers in few enough
    # epochs (footprints differ only through their coverage).
    cnt = count[pix]
    frac = np.zeros(nlab)
    for lo in np.unique(limit):
        sel = limit == lo
        ok = np.bincount(lab, weights=(cnt >= 1) & (cnt <= lo), minlength=nlab + 1)[1:]
        frac[sel] = ok[sel] / sizes[1:][sel]
    candidate = frac > cfg.spatial_threshold
    if same is not None:
        # Outliers in few epochs *at the same place* (their peaks within a
        # FWHM): a slow asteroid or ghost whose footprints overlap those of
        # other visits at shifted positions is still transient; a static
        # source's residuals are concentric.
        has = tops >= 0
        nsame = np.where(has, same.ravel()[np.maximum(tops, 0)], 255)
        candidate |= has & (nsame <= limit)
    variable = _variable(sizes, which_top, top, outl, nlab, ctx)
    candidate &= ~variable
    chosen = np.r_[False, candidate][lab]  # per footprint pixel
    # A transient artefact whose footprint merges with a region that is an
    # outlier in many epochs (a bright trail across a bright star's
    # PSF-mismatch halo or another epoch's ghost) fails the fraction rule as
    # a whole; its own part, the seeded pieces that are outliers in few
    # epochs, is still clipped.
    rest = ~candidate & ~variable
    if rest.any():
        piece = np.flatnonzero(
            np.r_[False, rest][lab] & (cnt >= 1) & (cnt <= np.r_[0.0, limit][lab])
        )
        plab, npiece = _components(pix[piece], width)
        if npiece:
            seeded = np.zeros(npiece + 1, dtype=bool)
            seeded[plab[code.ravel()[pix[piece]] * np.int8(sign) >= 2]] = True
            chosen[piece[seeded[plab]]] = True
    if variable.any():
        # A transient beside a variable (a slow asteroid passing a supernova)
        # merges with its footprint; outside the variable's core, seeded parts
        # that are outliers in few enough epochs are still clipped.
        split = _off_core_pixels(fp, np.flatnonzero(variable) + 1, tops, outl, limit, ctx)
        chosen[np.searchsorted(pix, split)] = True
    if not chosen.any():
        return
    extra = np.zeros(0, dtype=np.int64)
    if sign > 0 and cfg.streak_length > 0:
        strip = _extend_streaks(fp, np.unique(lab[chosen]), sizes, ctx)
        on = _label_at(fp, strip) > 0
        chosen[np.searchsorted(pix, strip[on])] = True
        extra = strip[~on]
    flat = out.reshape(-1)
    if structure is None:
        flat[pix[chosen]] = True
        flat[extra] = True
    else:
        _grow(out, pix[chosen], lab[chosen], extra, structure)
    if sign > 0 and cfg.halo_size > 0 and ctx.fwhm > 0:
        _halo(out, pix[chosen], lab[chosen], code, ctx)


def _halo(
    out: np.ndarray, fpix: np.ndarray, flab: np.ndarray, code: np.ndarray, ctx: _Context
) -> None:
    """Extend large, broad clipped footprints over their faint halo.

    A diffuse artefact (a ghost: a soft donut, or a blob whose Gaussian
    wings reach twice its half-light radius) is only above the footprint
    threshold in its bright part; the rest of its light, a fraction of a
    sigma per pixel over a large area, is below it pixel by pixel but not in
    aggregate: there the epoch's pixels above the lower threshold are
    denser than noise gives (a fraction ``p0`` of the normal tail beyond
    it).  Around each clipped footprint whose minor-axis radius ``r`` (from
    its second moments; trails are thin and are not extended) is at least
    ``cfg.halo_size`` target FWHM, whose major axis is at most
    ``cfg.halo_aspect`` times that and that fills at least
    ``cfg.halo_fill`` of the ellipse of its second moments (radii
    ``2 sqrt(eigenvalue)``), the density of those pixels is taken in a box
    of side ``s = max(cfg.halo_box r, 3 FWHM)``; where it exceeds noise by
    ``cfg.halo_sigma`` standard deviations (``p0 + k sqrt(p0) FWHM / s``:
    the pixels are correlated over about a FWHM squared), connected to the
    footprint and within ``cfg.halo_reach r`` of it, the epoch is clipped
    too.
    """
    cfg, width = ctx.cfg, ctx.width
    min_r = cfg.halo_size * ctx.fwhm
    if fpix.size < math.pi * min_r * min_r:
        return
    rows = out.shape[0]
    p0 = 0.5 * math.erfc(cfg.grow_threshold / math.sqrt(2))
    sizes = np.bincount(flab)
    big = np.flatnonzero(sizes >= math.pi * min_r * min_r)
    for _, ys, xs in _groups(_Labels(fpix, flab, int(flab.max())), big, width):
        cov = np.cov(np.vstack([xs, ys]).astype(np.float64))
        minor, major = 2 * np.sqrt(np.maximum(np.linalg.eigvalsh(cov), 0.0))
        # A round blob (a ghost's disk or ring, or a part of one cut by the
        # edge) that fills its ellipse: not a trail, nor the cross of a trail
        # merged with a ghost, along which the density box would run.
        if minor < min_r or major > cfg.halo_aspect * minor:
            continue
        if ys.size < cfg.halo_fill * math.pi * minor * major:
            continue
        reach = math.ceil(cfg.halo_reach * minor)
        y0, y1 = max(int(ys.min()) - reach, 0), min(int(ys.max()) + reach + 1, rows)
        x0, x1 = max(int(xs.min()) - reach, 0), min(int(xs.max()) + reach + 1, width)
        box = max(round(cfg.halo_box * minor), round(3 * ctx.fwhm)) | 1
        limit = p0 + cfg.halo_sigma * math.sqrt(p0) * ctx.fwhm / box
        hit = (code[y0:y1, x0:x1] * np.int8(ctx.sign) >= 1).astype(np.float32)
        dense = ndimage.uniform_filter(hit, box, mode="constant") > limit
        dense &= ctx.cover.reshape(rows, width)[y0:y1, x0:x1] > 0
        seed = np.zeros(dense.shape, dtype=bool)
        seed[ys - y0, xs - x0] = True
        # Within the reach of the footprint (a distance, not just its box).
        dense &= ndimage.distance_transform_edt(~seed) <= cfg.halo_reach * minor
        dense |= seed
        lab, _ = ndimage.label(dense)
        touch = np.unique(lab[seed])
        out[y0:y1, x0:x1] |= np.isin(lab, touch[touch > 0])


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


def _off_core_pixels(
    fp: _Labels,
    labels: np.ndarray,
    tops: np.ndarray,
    outl: _Outliers | None,
    limit: np.ndarray,
    ctx: _Context,
) -> np.ndarray:
    """Second peaks of variable footprints ``labels``: transients beside a variable.

    A slow asteroid passing a supernova merges with its footprint, which is
    then kept whole as a flux change.  Within such a footprint, a second
    local maximum of the significance (at least ``cfg.threshold``, more than
    a target FWHM from the footprint's peak, separated from it by a saddle
    below half its height, outlier in few enough epochs) whose difference
    is not a multiple of the model (the fit of :func:`_variable` fails) is a
    transient of its own: the footprint's pixels nearer to it than to the
    peak, within the reach of a point source of its significance, are clipped.
    Returns their flat indices.
    """
    cfg, fwhm, width, count = ctx.cfg, ctx.fwhm, ctx.width, ctx.nfp
    none = np.zeros(0, dtype=np.int64)
    if fwhm <= 0 or outl is None:
        return none
    # The outlier values at a footprint's pixels (0 elsewhere; the last of
    # repeated pixels, as a dense map filled in order would hold).
    order = np.argsort(outl.idx, kind="stable")
    sidx = outl.idx[order]
    hits = []
    for label, ys, xs in _groups(fp, np.asarray(labels), width):
        t = tops[label - 1]
        if t < 0:
            continue
        y0, x0 = int(ys.min()), int(xs.min())
        shape = (int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1)
        sub = np.zeros(shape, dtype=bool)
        sub[ys - y0, xs - x0] = True
        pos = np.searchsorted(sidx, ys * width + xs, side="right") - 1
        found = np.flatnonzero((pos >= 0) & (sidx[np.maximum(pos, 0)] == ys * width + xs))
        src = order[pos[found]]
        vy, vx = ys[found] - y0, xs[found] - x0
        s_sub, chi2, msig = (np.zeros(shape, dtype=np.float32) for _ in range(3))
        s_sub[vy, vx], chi2[vy, vx], msig[vy, vx] = outl.dabs[src], outl.chi2[src], outl.msig[src]
        ty, tx = t // width - y0, t % width - x0
        peaks = sub & (s_sub >= cfg.threshold) & (s_sub >= ndimage.maximum_filter(s_sub, 3))
        yy, xx = np.indices(shape)
        d_top = np.hypot(yy - ty, xx - tx)
        peaks &= d_top > fwhm
        for py, px in zip(*np.nonzero(peaks), strict=True):
            c = count[(py + y0) * width + px + x0]
            if not 1 <= c <= limit[label - 1]:
                continue
            fit_ok = chi2[py, px] <= cfg.variable_chi2_compact
            if fit_ok and msig[py, px] >= cfg.threshold:
                continue  # a flux change itself (a second star of the variable's blend)
            m = max(int(d_top[py, px]), 2)
            ly = np.rint(np.linspace(ty, py, m + 1)).astype(int)
            lx = np.rint(np.linspace(tx, px, m + 1)).astype(int)
            if s_sub[ly, lx].min() >= 0.5 * s_sub[py, px]:
                continue  # no saddle: a wing of the variable's own footprint
            reach = math.sqrt(2 * math.log(max(s_sub[py, px] / cfg.grow_threshold, 1.0)))
            radius = fwhm * (cfg.variable_size + 0.6 * reach)
            d_p = np.hypot(yy - py, xx - px)
            hy, hx = np.nonzero(sub & (d_p < d_top) & (d_p <= radius))
            hits.append((hy + y0) * width + hx + x0)
    return np.unique(np.concatenate(hits)) if hits else none


def _extend_streaks(
    fp: _Labels, chosen: np.ndarray, sizes: np.ndarray, ctx: _Context
) -> np.ndarray:
    """Straight strips through every long, thin footprint, across the whole grid.

    Satellite trails cross a whole image, but where a faint one dips into
    the noise its footprint breaks into segments and the gaps would leak.
    A footprint (of those ``chosen``) at least ``cfg.streak_length``
    binned pixels long and 8 times longer than wide is taken to be a segment
    of a straight trail, and the strip along its axis (as wide as the
    footprint) is clipped wherever the epoch has data, as Rubin's streak
    masking does.  Returns the strips' flat indices, ascending.
    """
    min_length, cover = ctx.cfg.streak_length, ctx.cover
    shape = (cover.size // ctx.width, ctx.width)
    big = chosen[sizes[chosen] >= min_length]
    strips = []
    for _, ys, xs in _groups(fp, big, shape[1]):
        cy, cx = ys.mean(), xs.mean()
        cov = np.cov(np.vstack([xs - cx, ys - cy]))
        evals, evecs = np.linalg.eigh(cov)
        length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
        if length < min_length or length < 8 * max(width, 1.0):
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


def _variable(
    sizes: np.ndarray,
    which_top: np.ndarray,
    top: np.ndarray,
    outl: _Outliers | None,
    nlab: int,
    ctx: _Context,
) -> np.ndarray:
    """Which footprints of an epoch look like a flux change of a static source.

    At each footprint's most significant pixel (``top``, its position in
    ``outl``, for labels ``which_top``; :func:`_peaks`), the difference over
    a PSF-sized window must be fit by a multiple of the model (reduced
    chi-square at most ``cfg.variable_chi2``) where the model is a
    significant source (window S/N at least ``cfg.threshold``).  ``sizes``:
    the footprints' pixel counts, by label.
    """
    cfg, fwhm = ctx.cfg, ctx.fwhm
    out = np.zeros(nlab, dtype=bool)
    if cfg.variable_chi2 <= 0 or outl is None:
        return out
    dabs, chi2, msig, peak = outl.dabs[top], outl.chi2[top], outl.msig[top], outl.peak[top]
    good = chi2 <= cfg.variable_chi2
    if fwhm > 0 and cfg.variable_chi2_compact > 0:
        # A compact footprint (PSF-sized) on a static source is the source's
        # flux change seen through that epoch's PSF; PSF-matching residuals
        # grow with the change, so its fit is allowed a larger chi-square.
        # Trails and ghosts across a star are larger than a PSF.
        # The footprint of a point source of peak significance p reaches
        # about sqrt(2 ln(p / t)) / 2.355 FWHM out to the lower threshold t
        # (Gaussian core); allowed with a margin for noise and PSF wings.
        area = sizes[which_top].astype(np.float64)
        reach = np.sqrt(2 * np.log(np.maximum(dabs / cfg.grow_threshold, 1.0)))
        radius = fwhm * (cfg.variable_size + 0.6 * reach)
        compact = area <= math.pi * radius**2
        good |= compact & (chi2 <= cfg.variable_chi2_compact)
    good &= msig >= cfg.threshold
    # A source's flux change peaks where the source does; an asteroid or a
    # cosmic ray beside a star peaks off the star's centre (the model there
    # is well below its local maximum).
    good &= peak >= cfg.variable_centred
    out[which_top - 1] = good
    return out
