"""Outlier footprints and DMTN-080's temporal rule: which footprints of which
epochs CompareWarp clips (on the binned grid).

See :mod:`skydm.coadd.compare_warp` for the whole algorithm.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from skydm.coadd.compare_warp import CompareWarpConfig

#: Per outlier pixel of an epoch: (epoch, flat index, |significance|, chi2 of the local
#: fit by a multiple of the model, window model S/N, model over its local maximum,
#: the model's S/N at the pixel, the multiple and chi2 of the fit with a constant, and
#: the epochs in the model there as bits, -1 for all).
Sparse = list[
    tuple[
        int,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
    ]
]


def _disk(radius: float) -> np.ndarray:
    r = math.ceil(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius + 1e-9


def _footprints(code: np.ndarray, streak_length: float) -> np.ndarray:
    """Outlier footprints of one epoch and sign.

    Regions of ``code >= 1`` that hold a seed (``code >= 2``), plus seedless
    regions that are long and thin (:func:`_is_streak`): a faint trail is
    never 5 sigma anywhere but runs above the lower threshold for hundreds
    of pixels, which noise does not.
    """
    lab, nlab = ndimage.label(code >= 1)
    if nlab == 0:
        return np.zeros(code.shape, dtype=bool)
    keep = np.zeros(nlab + 1, dtype=bool)
    seeded = np.unique(lab[code >= 2])
    keep[seeded] = True
    if streak_length > 0:
        sizes = np.bincount(lab.ravel(), minlength=nlab + 1)
        for label in np.flatnonzero((sizes >= streak_length) & ~keep):
            ys, xs = np.nonzero(lab == label)
            if label > 0 and _is_streak(ys, xs, streak_length):
                keep[label] = True
    keep[0] = False
    return keep[lab]


def _is_streak(ys: np.ndarray, xs: np.ndarray, min_length: float) -> bool:
    """Whether pixels (ys, xs) form a straight strip at least ``min_length`` long
    and 8 times longer than wide (from their second moments)."""
    cov = np.cov(np.vstack([xs, ys]).astype(np.float64))
    evals = np.linalg.eigvalsh(cov)
    length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
    return length >= min_length and length >= 8 * max(width, 1.0)


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
    clip = np.zeros(codes.shape, dtype=bool)
    structure = _disk(grow) if grow >= 0.5 else None
    r = math.ceil(grow) if structure is not None else 0
    for sign in (1, -1):
        fps = np.zeros(codes.shape, dtype=bool)
        length = cfg.streak_length if sign > 0 else 0.0
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="footprints") as pool:
            found = pool.map(_footprints, [c * sign for c in codes], [length] * n)
            for k, fp in enumerate(found):
                fps[k] = fp
        count = fps.sum(axis=0, dtype=np.uint8)
        same = _same_place(fps, sparse, fwhm)

        def clip_epoch(
            k: int,
            fps: np.ndarray = fps,
            count: np.ndarray = count,
            same: np.ndarray | None = same,
            sign: int = sign,
        ) -> None:
            lab, nlab = ndimage.label(fps[k])
            if nlab == 0:
                return
            index = np.arange(1, nlab + 1)
            mean_cover = np.asarray(ndimage.mean(cover, lab, index))
            limit = cfg.epoch_threshold(mean_cover)
            if sign > 0:
                limit = np.where(mean_cover >= 2, np.maximum(limit, 1), limit)
            # Fraction of each footprint's pixels that are outliers in few
            # enough epochs (footprints differ only through their coverage).
            frac = np.zeros(nlab)
            for lo in np.unique(limit):
                sel = limit == lo
                ok_pix = (count >= 1) & (count <= lo)
                frac[sel] = np.asarray(ndimage.mean(ok_pix, lab, index[sel]))
            candidate = frac > cfg.spatial_threshold
            if same is not None:
                # Outliers in few epochs *at the same place* (their peaks
                # within a FWHM): a slow asteroid or ghost whose footprints
                # overlap those of other visits at shifted positions is
                # still transient; a static source's residuals are concentric.
                tops = _top_pixels(lab, nlab, k, sparse)
                has = tops >= 0
                nsame = np.where(has, same.ravel()[np.maximum(tops, 0)], 255)
                candidate |= has & (nsame <= limit)
            variable = _variable(lab, nlab, k, sparse, cfg, fwhm)
            candidate &= ~variable
            chosen = index[candidate]
            sel_map = np.isin(lab, chosen)
            # A transient artefact whose footprint merges with a region that
            # is an outlier in many epochs (a bright trail across a bright
            # star's PSF-mismatch halo or another epoch's ghost) fails the
            # fraction rule as a whole; its own part, the seeded pieces that
            # are outliers in few epochs, is still clipped.
            rest = index[~candidate & ~variable]
            if rest.size:
                piece = (
                    np.isin(lab, rest) & (count >= 1) & (count <= np.concatenate([[0], limit])[lab])
                )
                plab, np_ = ndimage.label(piece)
                if np_:
                    seeded = np.unique(plab[(codes[k] * sign >= 2) & piece])
                    sel_map |= np.isin(plab, seeded[seeded > 0])
            if variable.any():
                # A transient beside a variable (a slow asteroid passing a
                # supernova) merges with its footprint; outside the
                # variable's core, seeded parts that are outliers in few
                # enough epochs are still clipped.
                sel_map |= _off_core(lab, index[variable], k, sparse, count, limit, cfg, fwhm)
            chosen = np.unique(lab[sel_map])
            chosen = chosen[chosen > 0]
            if chosen.size == 0:
                return
            if sign > 0 and cfg.streak_length > 0:
                sel_map |= _extend_streaks(lab, chosen, cover > 0, cfg.streak_length)
            if structure is None:
                clip[k] |= sel_map
                return
            for obj in ndimage.find_objects(np.where(sel_map, lab, 0)):
                if obj is None:
                    continue
                ys = slice(max(obj[0].start - r, 0), obj[0].stop + r)
                xs = slice(max(obj[1].start - r, 0), obj[1].stop + r)
                clip[k, ys, xs] |= ndimage.binary_dilation(sel_map[ys, xs], structure=structure)

        # Epochs are independent given the counts: two threads (scipy's
        # labelling and measurements release the GIL); each writes its own map.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="clip-maps") as pool:
            for done in [pool.submit(clip_epoch, k) for k in range(n)]:
                done.result()
    return clip


def _off_core(
    lab: np.ndarray,
    labels: np.ndarray,
    k: int,
    sparse: Sparse,
    count: np.ndarray,
    limit: np.ndarray,
    cfg: CompareWarpConfig,
    fwhm: float,
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
    """
    out = np.zeros(lab.shape, dtype=bool)
    if fwhm <= 0:
        return out
    parts = [p for p in sparse if p[0] == k]
    if not parts:
        return out
    idx = np.concatenate([p[1] for p in parts])
    dense = np.zeros((4, lab.size), dtype=np.float32)
    dense[0, idx] = np.concatenate([p[2] for p in parts])
    dense[1, idx] = np.concatenate([p[3] for p in parts])
    dense[2, idx] = np.concatenate([p[4] for p in parts])
    sig, chi2, msig = (d.reshape(lab.shape) for d in dense[:3])
    tops = _top_pixels(lab, int(lab.max()), k, sparse)
    wb = lab.shape[1]
    objs = ndimage.find_objects(lab)
    for label in labels:
        t, obj = tops[label - 1], objs[label - 1]
        if t < 0 or obj is None:
            continue
        sub = lab[obj] == label
        s_sub = np.where(sub, sig[obj], 0)
        ty, tx = t // wb - obj[0].start, t % wb - obj[1].start
        peaks = sub & (s_sub >= cfg.threshold) & (s_sub >= ndimage.maximum_filter(s_sub, 3))
        yy, xx = np.indices(sub.shape)
        d_top = np.hypot(yy - ty, xx - tx)
        peaks &= d_top > fwhm
        for py, px in zip(*np.nonzero(peaks), strict=True):
            c = count[obj][py, px]
            if not 1 <= c <= limit[label - 1]:
                continue
            fit_ok = chi2[obj][py, px] <= cfg.variable_chi2_compact
            if fit_ok and msig[obj][py, px] >= cfg.threshold:
                continue  # a flux change itself (a second star of the variable's blend)
            m = max(int(d_top[py, px]), 2)
            ly = np.rint(np.linspace(ty, py, m + 1)).astype(int)
            lx = np.rint(np.linspace(tx, px, m + 1)).astype(int)
            if s_sub[ly, lx].min() >= 0.5 * s_sub[py, px]:
                continue  # no saddle: a wing of the variable's own footprint
            reach = math.sqrt(2 * math.log(max(s_sub[py, px] / cfg.grow_threshold, 1.0)))
            radius = fwhm * (cfg.variable_size + 0.6 * reach)
            d_p = np.hypot(yy - py, xx - px)
            out[obj] |= sub & (d_p < d_top) & (d_p <= radius)
    return out


def _top_pixels(lab: np.ndarray, nlab: int, k: int, sparse: Sparse) -> np.ndarray:
    """Flat index of each footprint's most significant pixel (-1 if unknown)."""
    out = np.full(nlab, -1, dtype=np.int64)
    parts = [p for p in sparse if p[0] == k]
    if not parts or nlab == 0:
        return out
    idx = np.concatenate([p[1] for p in parts])
    dabs = np.concatenate([p[2] for p in parts])
    which = lab.ravel()[idx]
    inside = which > 0
    idx, dabs, which = idx[inside], dabs[inside], which[inside]
    order = np.lexsort((-dabs, which))
    first = np.ones(order.size, dtype=bool)
    first[1:] = which[order][1:] != which[order][:-1]
    top = order[first]
    out[which[top] - 1] = idx[top]
    return out


def _same_place(fps: np.ndarray, sparse: Sparse, fwhm: float) -> np.ndarray | None:
    """Per pixel, the number of epochs with a footprint peak within ``fwhm`` of it."""
    if fwhm <= 0 or not sparse:
        return None
    structure = _disk(fwhm)
    out = np.zeros(fps.shape[1:], dtype=np.uint8)

    def near_peaks(k: int) -> np.ndarray | None:
        lab, nlab = ndimage.label(fps[k])
        tops = _top_pixels(lab, nlab, k, sparse)
        tops = tops[tops >= 0]
        if tops.size == 0:
            return None
        peaks = np.zeros(out.shape, dtype=bool)
        peaks.ravel()[tops] = True
        return np.asarray(ndimage.binary_dilation(peaks, structure=structure))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="same-place") as pool:
        for near in pool.map(near_peaks, range(fps.shape[0])):
            if near is not None:
                out += near
    return out


def _extend_streaks(
    lab: np.ndarray, chosen: np.ndarray, data: np.ndarray, min_length: float
) -> np.ndarray:
    """Straight strips through every long, thin footprint, across the whole grid.

    Satellite trails cross a whole image, but where a faint one dips into
    the noise its footprint breaks into segments and the gaps would leak.
    A footprint at least ``min_length`` binned pixels long and 8 times
    longer than wide is taken to be a segment of a straight trail, and the
    strip along its axis (as wide as the footprint) is clipped wherever the
    epoch has data, as Rubin's streak masking does.
    """
    out = np.zeros(lab.shape, dtype=bool)
    big = chosen[np.asarray(ndimage.sum(np.ones_like(lab), lab, chosen)) >= min_length]
    if big.size == 0:
        return out
    yy, xx = np.indices(lab.shape, dtype=np.float32)
    for label in big:
        ys, xs = np.nonzero(lab == label)
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
        dist = np.abs(-(xx - cx) * uy + (yy - cy) * ux)
        out |= (dist <= half) & data
    return out


def _variable(
    lab: np.ndarray,
    nlab: int,
    k: int,
    sparse: Sparse,
    cfg: CompareWarpConfig,
    fwhm: float = 0.0,
) -> np.ndarray:
    """Which footprints of epoch ``k`` look like a flux change of a static source.

    At each footprint's most significant pixel, the difference over a
    PSF-sized window must be fit by a multiple of the model (reduced
    chi-square at most ``cfg.variable_chi2``) where the model is a
    significant source (window S/N at least ``cfg.threshold``).
    """
    out = np.zeros(nlab, dtype=bool)
    if cfg.variable_chi2 <= 0:
        return out
    parts = [p for p in sparse if p[0] == k]
    if not parts:
        return out
    idx = np.concatenate([p[1] for p in parts])
    dabs = np.concatenate([p[2] for p in parts])
    chi2 = np.concatenate([p[3] for p in parts])
    msig = np.concatenate([p[4] for p in parts])
    peak = np.concatenate([p[5] for p in parts])
    which = lab.ravel()[idx]
    inside = which > 0
    which, dabs, chi2 = which[inside], dabs[inside], chi2[inside]
    msig, peak = msig[inside], peak[inside]
    # The most significant pixel of each footprint: sort by label, then |d|.
    order = np.lexsort((-dabs, which))
    first = np.ones(order.size, dtype=bool)
    first[1:] = which[order][1:] != which[order][:-1]
    top = order[first]
    good = chi2[top] <= cfg.variable_chi2
    if fwhm > 0 and cfg.variable_chi2_compact > 0:
        # A compact footprint (PSF-sized) on a static source is the source's
        # flux change seen through that epoch's PSF; PSF-matching residuals
        # grow with the change, so its fit is allowed a larger chi-square.
        # Trails and ghosts across a star are larger than a PSF.
        # The footprint of a point source of peak significance p reaches
        # about sqrt(2 ln(p / t)) / 2.355 FWHM out to the lower threshold t
        # (Gaussian core); allowed with a margin for noise and PSF wings.
        area = np.asarray(ndimage.sum(np.ones(lab.shape), lab, which[top]))
        reach = np.sqrt(2 * np.log(np.maximum(dabs[top] / cfg.grow_threshold, 1.0)))
        radius = fwhm * (cfg.variable_size + 0.6 * reach)
        compact = area <= math.pi * radius**2
        good |= compact & (chi2[top] <= cfg.variable_chi2_compact)
    good &= msig[top] >= cfg.threshold
    # A source's flux change peaks where the source does; an asteroid or a
    # cosmic ray beside a star peaks off the star's centre (the model there
    # is well below its local maximum).
    good &= peak[top] >= cfg.variable_centred
    out[which[top] - 1] = good
    return out
