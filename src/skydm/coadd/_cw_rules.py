"""CompareWarp's rules: which outlier footprints of which epochs are clipped.

Each rule is a small object with its own config (:mod:`skydm.coadd._cw_config`),
an ``enabled`` switch and a role, and they are combined in three stages, each
independent of the order of its rules:

1. **Whole footprints.**  A footprint is clipped when some *add* rule
   selects it and no *veto* rule protects it:
   ``clip = any(add rules) and not any(veto rules)``.
   Add: :class:`SamePlace` (few epochs peak there: DMTN-080's temporal
   rule, judged at the footprint's peak).  Veto: :class:`Variable` (a flux change of a
   static source).
2. **Parts of footprints not clipped whole.**  :class:`Pieces` adds the
   seeded few-epoch pieces of unprotected footprints merged with
   many-epoch regions; :class:`Mover` adds every epoch's
   pixels along a straight track through time, whatever its speed.  Their
   pixels are unioned.
3. **Extensions of what is clipped.**  Growth by ``detect.grow_fwhm``;
   :class:`Trail` strips along long thin footprints.

Footprints are kept sparse (flat indices, ascending, with labels); only
the growth of the clipped ones touches a dense map.  Positive and negative
outliers are judged separately; artefacts add light, so a positive
footprint may be clipped where only two epochs overlap (at least one
outlier epoch is allowed from two epochs on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from skydm.coadd._cw_config import (
    CompareWarpConfig,
    PieceConfig,
    RulesConfig,
    SamePlaceConfig,
    TrailConfig,
    VariableConfig,
)
from skydm.coadd._cw_footprints import (
    OutlierPixels,
    _components,
    _dilate,
    _disk,
    _footprints,
    _groups,
    _label_at,
    _Labels,
)
from skydm.coadd._cw_movers import Mover, MoverTracks

#: A flux change's footprint reaches ``size + SPREAD * sqrt(2 ln(p / t))``
#: FWHM (a Gaussian core's reach from peak ``p`` to threshold ``t``, with a
#: margin for noise and PSF wings).
SPREAD = 0.6


@dataclass
class EpochFootprints:
    """One epoch's footprints of one sign, with what the rules read.

    Attributes
    ----------
    k : int
        The epoch.
    fp : _Labels
        The footprints (flat indices ascending, labels 1..n).
    code : numpy.ndarray
        The epoch's outlier codes (binned grid).
    pixels : OutlierPixels
        Its outlier pixels with their local fits.
    tops : numpy.ndarray
        Per label, the flat index of its most significant pixel (-1: none).
    top_labels, top_at : numpy.ndarray
        The labels that have one, and its position in ``pixels``.
    sizes : numpy.ndarray
        Pixels per label (index 0 unused).
    limit : numpy.ndarray
        Per label, the most outlier epochs for which it is transient
        (:meth:`RulesConfig.epoch_limit` of its mean coverage).
    """

    k: int
    fp: _Labels
    code: np.ndarray
    pixels: OutlierPixels
    tops: np.ndarray
    top_labels: np.ndarray
    top_at: np.ndarray
    sizes: np.ndarray
    limit: np.ndarray


@dataclass
class RuleContext:
    """What the rules share for one sign: the grid, the maps of epochs with
    data (``cover``) and with a footprint (``count``), flat; the target FWHM
    (binned pixels); every epoch's footprints and the epochs' times (MJD)."""

    sign: int
    fwhm: float
    width: int
    cover: np.ndarray
    count: np.ndarray
    threshold: float
    grow_threshold: float
    epochs: list[EpochFootprints]
    times: np.ndarray


class FootprintRule:
    """A rule on whole footprints: selects labels of one epoch (stage 1)."""

    role: ClassVar[Literal["add", "veto"]] = "add"
    config: SamePlaceConfig | VariableConfig

    @property
    def enabled(self) -> bool:
        """Whether the rule takes part."""
        return bool(self.config.enabled)

    def prepare(self, ctx: RuleContext) -> None:
        """Work over every epoch at once (before :meth:`select`)."""

    def select(self, ep: EpochFootprints, ctx: RuleContext) -> np.ndarray:
        """Per label of ``ep`` (``(n,)`` bool), whether the rule fires."""
        raise NotImplementedError


@dataclass
class SamePlace(FootprintRule):
    """Add: few epochs have a footprint peak within ``radius_fwhm`` of this one's.

    A slow asteroid or ghost whose footprints overlap those of other visits
    at shifted positions is still transient; a static source's residuals
    are concentric.
    """

    config: SamePlaceConfig
    _same: np.ndarray | None = None

    def prepare(self, ctx: RuleContext) -> None:
        radius = self.config.radius_fwhm * ctx.fwhm
        rows = ctx.cover.size // ctx.width
        self._same = _same_place([e.tops for e in ctx.epochs], (rows, ctx.width), radius)

    def select(self, ep: EpochFootprints, ctx: RuleContext) -> np.ndarray:
        if self._same is None:
            return np.zeros(ep.fp.n, dtype=bool)
        has = ep.tops >= 0
        nsame = np.where(has, self._same.ravel()[np.maximum(ep.tops, 0)], 255)
        return np.asarray(has & (nsame <= ep.limit))


@dataclass
class Variable(FootprintRule):
    """Veto: the footprint looks like a flux change of a static source.

    At the footprint's most significant pixel the difference over a
    PSF-sized window must be fit by a multiple of the model (reduced
    chi-square at most ``chi2``, or ``chi2_compact`` for a PSF-sized
    footprint, whose PSF-matching residuals grow with the change), where
    the model is a significant source (window S/N at least the detection
    threshold), at its local maximum (``centred``: an asteroid or cosmic
    ray beside a star peaks off the star's centre).
    """

    role: ClassVar[Literal["add", "veto"]] = "veto"
    config: VariableConfig

    def select(self, ep: EpochFootprints, ctx: RuleContext) -> np.ndarray:
        cfg, out = self.config, np.zeros(ep.fp.n, dtype=bool)
        o, top = ep.pixels, ep.top_at
        if top.size == 0:
            return out
        dabs, chi2, msig, peak = np.abs(o.sig[top]), o.chi2[top], o.msig[top], o.peak[top]
        good = chi2 <= cfg.chi2
        if ctx.fwhm > 0:
            area = ep.sizes[ep.top_labels].astype(np.float64)
            reach = np.sqrt(2 * np.log(np.maximum(dabs / ctx.grow_threshold, 1.0)))
            radius = ctx.fwhm * (cfg.size + SPREAD * reach)
            compact = area <= math.pi * radius**2
            good |= compact & (chi2 <= cfg.chi2_compact)
        good &= msig >= ctx.threshold
        good &= peak >= cfg.centred
        out[ep.top_labels - 1] = good
        return out


@dataclass
class Pieces:
    """Add (stage 2): a transient whose footprint merges with a region that is
    an outlier in many epochs (a bright trail across a bright star's
    PSF-mismatch halo or another epoch's ghost) fails the whole-footprint
    rules; its own part, the seeded pieces that are outliers in few epochs,
    is clipped.  Only in footprints no veto protects."""

    config: PieceConfig
    role: ClassVar[Literal["add", "veto"]] = "add"

    @property
    def enabled(self) -> bool:
        """Whether the rule takes part."""
        return self.config.enabled

    def select(self, ep: EpochFootprints, ctx: RuleContext, open_: np.ndarray) -> np.ndarray:
        """Positions in ``ep.fp.pix`` of the pixels clipped, among footprints ``open_``."""
        pix, lab, _ = ep.fp
        cnt = ctx.count[pix]
        piece = np.flatnonzero(
            np.r_[False, open_][lab] & (cnt >= 1) & (cnt <= np.r_[0.0, ep.limit][lab])
        )
        plab, npiece = _components(pix[piece], ctx.width)
        if not npiece:
            return np.zeros(0, dtype=np.int64)
        seeded = np.zeros(npiece + 1, dtype=bool)
        seeded[plab[ep.code.ravel()[pix[piece]] * np.int8(ctx.sign) >= 2]] = True
        return piece[seeded[plab]]


@dataclass
class Trail:
    """Add (stage 3): long thin clipped footprints are segments of straight
    trails; strips along their axes bridge the gaps where a faint trail dips
    into the noise (:func:`_extend_streaks`)."""

    config: TrailConfig
    role: ClassVar[Literal["add", "veto"]] = "add"

    @property
    def enabled(self) -> bool:
        """Whether the rule takes part."""
        return self.config.enabled


def footprint_rules(cfg: CompareWarpConfig) -> list[FootprintRule]:
    """The enabled stage-1 rules of ``cfg``."""
    r = cfg.rules
    rules: list[FootprintRule] = [SamePlace(r.same_place), Variable(r.variable)]
    return [rule for rule in rules if rule.enabled]


def clip_maps(
    codes: np.ndarray,
    cover: np.ndarray,
    pixels: list[OutlierPixels],
    cfg: CompareWarpConfig,
    *,
    grow: float,
    fwhm: float = 0.0,
    times: np.ndarray | None = None,
    tcodes: np.ndarray | None = None,
    tracks: MoverTracks | None = None,
) -> np.ndarray:
    """Per-epoch boolean maps of the pixels to clip (binned grid), by the
    rules of ``cfg`` in their three stages (see the module docs); ``tcodes``
    are the time codes that the :class:`Mover` rule reads; its tracks, and
    the clip maps before it, are stored in ``tracks``."""
    n = codes.shape[0]
    shape = (int(codes.shape[1]), int(codes.shape[2]))
    clip = np.zeros(codes.shape, dtype=bool)
    structure = _disk(grow) if grow >= 0.5 else None
    t = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if not pixels:  # no local fits (tests of the rules on codes alone)
        pixels = [OutlierPixels.concatenate([], n) for _ in range(n)]
    trail = Trail(cfg.rules.trail)
    pieces = Pieces(cfg.rules.pieces)
    for sign in (1, -1):
        length = trail.config.length if sign > 0 and trail.enabled else 0.0
        fps = [_footprints(codes[k], sign, length, trail.config.aspect) for k in range(n)]
        count = np.zeros(shape[0] * shape[1], dtype=np.uint8)
        for fp in fps:
            count[fp.pix] += 1
        epochs = [
            _epoch(k, fps[k], codes[k], pixels[k], cover.ravel(), sign, cfg.rules) for k in range(n)
        ]
        ctx = RuleContext(
            sign, fwhm, shape[1], cover.ravel(), count, cfg.detect.threshold,
            cfg.detect.grow_threshold, epochs, t,
        )  # fmt: skip
        rules = footprint_rules(cfg)
        for rule in rules:
            rule.prepare(ctx)
        for ep in epochs:
            if ep.fp.n == 0:
                continue
            none = np.zeros(ep.fp.n, dtype=bool)
            add = np.logical_or.reduce(
                [r.select(ep, ctx) for r in rules if r.role == "add"] or [none]
            )
            veto = np.logical_or.reduce(
                [r.select(ep, ctx) for r in rules if r.role == "veto"] or [none]
            )
            whole = add & ~veto
            chosen = np.r_[False, whole][ep.fp.lab]  # per footprint pixel
            if pieces.enabled:
                chosen[pieces.select(ep, ctx, ~whole & ~veto)] = True
            if chosen.any():
                _extend(clip[ep.k], ep, chosen, structure, ctx, trail)
    mover = Mover(cfg.rules.mover)
    if mover.enabled and tcodes is not None:
        if tracks is not None:
            tracks.others = clip.copy()
        found = mover.add_to(clip, tcodes, cover, t, fwhm)
        if tracks is not None:
            tracks.spans.extend(found)
            tracks.chained = len(tracks.spans)
    return clip


def _epoch(
    k: int,
    fp: _Labels,
    code: np.ndarray,
    pixels: OutlierPixels,
    cover: np.ndarray,
    sign: int,
    rules: RulesConfig,
) -> EpochFootprints:
    """The per-footprint quantities of one epoch that the rules read."""
    tops, which, top = _peaks(fp, pixels)
    sizes = np.bincount(fp.lab, minlength=fp.n + 1)
    if fp.n:
        mean_cover = np.bincount(fp.lab, weights=cover[fp.pix], minlength=fp.n + 1)[1:] / sizes[1:]
    else:
        mean_cover = np.zeros(0)
    limit = rules.epoch_limit(mean_cover)
    if sign > 0:
        limit = np.where(mean_cover >= 2, np.maximum(limit, 1), limit)
    return EpochFootprints(k, fp, code, pixels, tops, which, top, sizes, limit)


def _extend(
    out: np.ndarray,
    ep: EpochFootprints,
    chosen: np.ndarray,
    structure: np.ndarray | None,
    ctx: RuleContext,
    trail: Trail,
) -> None:
    """Stage 3: set in ``out`` the chosen footprint pixels, trail strips and
    growth."""
    pix, lab = ep.fp.pix, ep.fp.lab
    extra = np.zeros(0, dtype=np.int64)
    if ctx.sign > 0 and trail.enabled:
        strip = _extend_streaks(ep.fp, np.unique(lab[chosen]), ep.sizes, ctx, trail.config)
        on = _label_at(ep.fp, strip) > 0
        chosen[np.searchsorted(pix, strip[on])] = True
        extra = strip[~on]
    if structure is None:
        flat = out.reshape(-1)
        flat[pix[chosen]] = True
        flat[extra] = True
    else:
        _grow(out, pix[chosen], lab[chosen], extra, structure)


def _same_place(tops: list[np.ndarray], shape: tuple[int, int], radius: float) -> np.ndarray | None:
    """Per pixel, the number of epochs with a footprint peak within ``radius`` of it."""
    if radius <= 0:
        return None
    offsets = np.nonzero(_disk(radius)) - np.array(math.ceil(radius))
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


def _peaks(fp: _Labels, outl: OutlierPixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each footprint's most significant pixel: its flat index per label (-1 if
    unknown), and the labels that have one with its position in ``outl``."""
    tops = np.full(fp.n, -1, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if outl.idx.size == 0 or fp.n == 0:
        return tops, none, none
    which = _label_at(fp, outl.idx)
    inside = np.flatnonzero(which > 0)
    w, d = which[inside], np.abs(outl.sig[inside])
    # Sort by label, then by decreasing |d| (ties keep the sparse order).
    order = np.lexsort((-d, w))
    first = np.ones(order.size, dtype=bool)
    first[1:] = w[order][1:] != w[order][:-1]
    top = inside[order[first]]
    tops[which[top] - 1] = outl.idx[top]
    return tops, which[top], top


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
