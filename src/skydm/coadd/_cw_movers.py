"""Slow movers: a straight track through time, clipped or subtracted as a model.

A mover slower than a PSF per epoch overlaps itself from epoch to epoch:
each pixel of its track is an outlier in more epochs than the few-epoch
rules allow, and the static-sky model holds much of its light.  Each epoch
compared with one end of the survey (:func:`reference_epochs`) still shows
the mover where it then was; :class:`Mover` chains those lobes through time
and keeps the chains that fit a straight track :class:`Track` (a variable
source's blob stays put; residuals and dithered ghosts jump about).

Where the track is short (a few FWHM over the whole survey), some of its
pixels are under the mover in every epoch and no epoch can replace them;
replacing them from the epoch where the mover is farthest moves a bright
star's PSF mismatch into the coadd.  :func:`model_movers` therefore fits
every epoch at once as a static sky plus a point source of constant flux
moving along the track (its position and velocity refined) and, where the
fit is significant, each epoch is kept with its point source subtracted
(:class:`~skydm.coadd._cw_streaks.Streak` models) instead of replaced.

A mover slower than about a FWHM over the whole survey shows no moving
lobe at all (a small shift's lobes sit half a FWHM from the reference
position, whatever the shift):
:func:`~skydm.coadd._cw_centroids.centroid_tracks` finds it instead as a
bright static source whose centroid moves along a straight line through
time, significantly; a variable source, whose centroid stays put, never
is one.  Its track is modelled the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd._cw_config import MoverConfig
from skydm.coadd._cw_footprints import _footprints, _groups
from skydm.coadd._cw_streaks import Streak

if TYPE_CHECKING:
    from skydm.coadd.stack import WarpStack
    from skydm.image.psf import Psf

#: A model's pixels are those where the epoch's PSF is above this fraction
#: of its peak (the light beyond is below the noise of any mover we fit).
MODEL_REACH = 1e-3

#: Smallest significance (flux over its error) of a fitted mover model.
MODEL_SN = 5.0

#: The static alternative's position is fitted as an offset from the track's
#: mean (pixels), so that its finite-difference step and its tolerance are in
#: pixels, not relative to the position in the cell (a relative step of 1e-3
#: was 0.1-0.2 px, and most fits ran to their evaluation cap); a hundredth
#: of a pixel is far below any PSF's width.
STATIC_STEP_PX = 1e-2

#: At most this many evaluations of the static alternative (2 parameters).
STATIC_MAX_EVALS = 40


def reference_epochs(times: np.ndarray) -> np.ndarray:
    """Per epoch, the epoch its time codes compare it with: the last one in
    time (the last epoch: the first one).

    A slow mover moves least between epochs next in time: compared with the
    previous night it shows a weak dipole that fades below the threshold in
    the middle of its track.  Compared with one end of the survey every
    epoch shows the mover where it then was, as far from the reference
    image as the track allows; one reference for all but the last epoch
    keeps the lobes' offset from the true positions the same way round, so
    that they still fall on a straight track.
    """
    order = np.argsort(times, kind="stable")
    out = np.full(times.size, order[-1] if times.size else -1, dtype=np.int64)
    if times.size > 1:
        out[order[-1]] = order[0]
    return out


class Track(NamedTuple):
    """A straight track through time: position ``p0`` (binned y, x) at time
    ``tm``, velocity ``v`` (binned pixels per day), spanning ``t0`` to ``t1``."""

    p0: np.ndarray
    v: np.ndarray
    tm: float
    t0: float
    t1: float

    def at(self, t: float) -> np.ndarray:
        """The position at time ``t``."""
        return np.asarray(self.p0 + (t - self.tm) * self.v)


@dataclass
class Mover:
    """Add (stage 2): every epoch's pixels along a recognised moving track.

    A mover slower than a PSF per epoch overlaps itself from epoch to epoch:
    each pixel is an outlier in more epochs than :class:`SamePlace` allows,
    and the static-sky model holds much of its light.  Its leading edge is
    still brighter in each epoch than in the epoch before (the time codes,
    :func:`skydm.coadd._cw_differences.time_codes`).  Footprints of epochs
    next in time (up to ``max_skip`` epochs between them, where a slow
    mover's weak dipole dips below the threshold) whose centroids lie within
    ``link_fwhm`` are chained; a chain of at least ``min_epochs`` epochs is fitted by a
    straight track ``p(t) = p0 + v t`` and is a mover when the track is at
    least ``min_track_fwhm`` long and the centroids scatter about it by at
    most ``max_scatter_fwhm`` rms (a variable source's blob stays put; PSF
    residuals and dithered ghosts jump about).  Every epoch of the track's
    span, widened to the nights just before and after it, is then clipped
    within ``radius_fwhm`` of its position on the track, whether or not
    that epoch showed an outlier there.
    """

    config: MoverConfig
    role: ClassVar[Literal["add", "veto"]] = "add"

    @property
    def enabled(self) -> bool:
        """Whether the rule takes part."""
        return self.config.enabled

    def tracks(self, tcodes: np.ndarray, times: np.ndarray, fwhm: float) -> list[Track]:
        """The movers' fitted tracks."""
        cfg = self.config
        n = tcodes.shape[0]
        if fwhm <= 0 or n < cfg.min_epochs:
            return []
        width = tcodes.shape[2]
        max_area = math.pi * (cfg.max_size_fwhm * fwhm) ** 2
        nodes: list[tuple[int, float, float]] = []  # epoch, centroid y, x
        per_epoch: list[list[int]] = [[] for _ in range(n)]
        for k in range(n):
            fp = _footprints(tcodes[k], 1, 0.0, 1.0)  # no trail segments: any aspect
            for _, ys, xs in _groups(fp, np.arange(1, fp.n + 1), width):
                if ys.size > max_area:  # a diffuse artefact (a ghost), not a point
                    continue
                per_epoch[k].append(len(nodes))
                nodes.append((k, float(ys.mean()), float(xs.mean())))
        if not nodes:
            return []
        parent = list(range(len(nodes)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        order = np.argsort(times, kind="stable")
        # Epochs less than ``min_gap_days`` apart are one night: within a
        # night a mover hardly moves, so a track needs ``min_epochs`` nights.
        night = np.zeros(n, dtype=np.int64)
        night[order] = np.cumsum(np.r_[0, np.diff(times[order]) >= cfg.min_gap_days])
        link = cfg.link_fwhm * fwhm
        for pos, a in enumerate(order):
            for b in order[pos + 1 : pos + 2 + cfg.max_skip]:
                for i in per_epoch[a]:
                    for j in per_epoch[b]:
                        dist = math.hypot(nodes[i][1] - nodes[j][1], nodes[i][2] - nodes[j][2])
                        if dist <= link:
                            parent[find(j)] = find(i)
        groups: dict[int, list[int]] = {}
        for i in range(len(nodes)):
            groups.setdefault(find(i), []).append(i)
        out = []
        for members in groups.values():
            t = np.array([times[nodes[i][0]] for i in members], dtype=np.float64)
            ks = np.array([nodes[i][0] for i in members])
            xy = np.array([(nodes[i][1], nodes[i][2]) for i in members])
            left = np.ones(len(members), dtype=bool)
            # A chain may hold several tracks and the static blobs they pass
            # (union by distance merges them): tracks are taken out one by one.
            nights = night[ks]
            while np.unique(nights[left]).size >= cfg.min_epochs:
                track, inliers = self._best_track(t, nights, xy, left, fwhm)
                if track is None:
                    break
                out.append(track)
                left &= ~inliers
        return out

    def _best_track(
        self, t: np.ndarray, nights: np.ndarray, xy: np.ndarray, left: np.ndarray, fwhm: float
    ) -> tuple[Track | None, np.ndarray]:
        """The straight track through two of the nodes ``left`` that most nights'
        nodes lie on (within ``2 max_scatter_fwhm``), refitted to them, if it
        passes the rule's tests; and those nodes."""
        cfg = self.config
        tol = 2 * cfg.max_scatter_fwhm * fwhm
        idx = np.flatnonzero(left)
        best: tuple[int, np.ndarray] = (0, np.zeros(len(t), dtype=bool))
        for a in idx:
            for b in idx[t[idx] > t[a]]:
                v = (xy[b] - xy[a]) / (t[b] - t[a])
                d = np.hypot(*(xy - (xy[a] + (t - t[a])[:, None] * v)).T)
                on = left & (d <= tol)
                count = np.unique(nights[on]).size
                if count > best[0]:
                    best = (count, on)
        count, on = best
        if count < cfg.min_epochs:
            return None, on
        tt, pp = t[on], xy[on]
        span = float(np.ptp(tt))
        if span <= 0:
            return None, on
        tc = tt - tt.mean()
        v = (tc @ (pp - pp.mean(axis=0))) / float(tc @ tc)
        p0 = pp.mean(axis=0)
        resid = pp - (p0 + tc[:, None] * v)
        scatter = math.sqrt(float(np.mean(np.sum(resid * resid, axis=1))))
        if (
            float(np.hypot(*v)) * span >= cfg.min_track_fwhm * fwhm
            and scatter <= cfg.max_scatter_fwhm * fwhm
        ):
            return Track(p0, v, float(tt.mean()), float(tt.min()), float(tt.max())), on
        return None, on

    def add_to(
        self,
        clip: np.ndarray,
        tcodes: np.ndarray,
        cover: np.ndarray,
        times: np.ndarray,
        fwhm: float,
    ) -> list[tuple[Track, np.ndarray]]:
        """Clip, in ``clip``, every track's pixels (:meth:`clip_spans`).

        Returns every track with the epochs of its span, widened to the
        nights just before and after it (the first night has no time code;
        a track's ends fade below the threshold before the mover does); no
        further: a straight track is not extrapolated over the survey.
        """
        n = tcodes.shape[0]
        ordered = np.sort(times)
        gap = self.config.min_gap_days
        spans: list[tuple[Track, np.ndarray]] = []
        for track in self.tracks(tcodes, times, fwhm):
            i0, i1 = np.searchsorted(ordered, [track.t0, track.t1])
            lo = ordered[max(i0 - 1, 0)] - gap
            hi = ordered[min(i1 + 1, n - 1)] + gap
            spans.append((track, np.flatnonzero((times >= lo) & (times <= hi))))
        self.clip_spans(clip, spans, cover, times, fwhm)
        return spans

    def clip_spans(
        self,
        clip: np.ndarray,
        spans: list[tuple[Track, np.ndarray]],
        cover: np.ndarray,
        times: np.ndarray,
        fwhm: float,
    ) -> None:
        """Clip from each span's epochs, in ``clip``, the pixels with data
        (``cover``) within ``radius_fwhm`` of their positions on the track,
        also where the mover fell below the threshold.  A very slow mover
        covers the middle of its track in every epoch: the assembly's last
        step gives the faintest epoch back there
        (:func:`~skydm.coadd._cw_assemble.keep_least_discrepant`).
        """
        r = self.config.radius_fwhm * fwhm
        h = math.ceil(r)
        dy, dx = np.mgrid[-h : h + 1, -h : h + 1]
        rows, cols = cover.shape
        for track, epochs in spans:
            for k in epochs:
                cy, cx = track.at(times[k])
                yy, xx = np.floor(cy) + dy.ravel(), np.floor(cx) + dx.ravel()
                on = (np.hypot(yy - cy, xx - cx) <= r) & (yy >= 0) & (yy < rows)
                on &= (xx >= 0) & (xx < cols)
                at = (yy[on] * cols + xx[on]).astype(np.int64)
                clip[k].reshape(-1)[at[cover.reshape(-1)[at] > 0]] = True


@dataclass
class MoverTracks:
    """The :class:`Mover` rule's tracks, each with the epochs of its widened
    span (the first ``chained`` from chained lobes, the rest from
    centroids), and the clip maps (binned) before the rule added to them:
    pixels that other rules clip stay replaced, not modelled."""

    spans: list[tuple[Track, np.ndarray]] = field(default_factory=list)
    others: np.ndarray | None = None
    chained: int = 0


@dataclass
class _Stamp:
    """Every epoch's pixels around one track (full resolution): image, inverse
    variance (0 where unusable), the stamp's corner and the image width."""

    img: np.ndarray
    w: np.ndarray
    y0: int
    x0: int
    nx: int


@dataclass
class MoverModels:
    """What :func:`model_movers` found: the per-epoch models to subtract, and
    which of the tracks' spans (indices into ``MoverTracks.spans``) the fit
    confirmed as movers (with or without a model)."""

    streaks: list[Streak] = field(default_factory=list)
    movers: list[int] = field(default_factory=list)


class _Fit(NamedTuple):
    """A confirmed track's fitted flux and, unless the fit moved off the
    chained track, its per-epoch models (flat indices, values)."""

    flux: float
    models: list[tuple[np.ndarray, np.ndarray]] | None


def epoch_times(stack: WarpStack) -> np.ndarray:
    """Each epoch's MJD; its index where the time is unknown."""
    times = np.array([float(m.info.mjd) for m in stack.members])
    return np.where(np.isfinite(times), times, np.arange(times.size))


def model_movers(
    stack: WarpStack,
    tracks: MoverTracks,
    cosmic_rays: list[np.ndarray],
    b: int,
    times: np.ndarray,
    systematic: float = 0.0,
    link: float = 0.0,
) -> MoverModels:
    """Fit each track as a static sky plus a moving point source of constant
    flux over the epochs of its span, and return the significant ones as
    per-epoch models to subtract (see the module docs).

    A centroid track (after the first ``tracks.chained``) within ``link``
    binned pixels of a confirmed track is that track's mover, and is not
    fitted again; near a chained track that the fit does not confirm (lobes
    of other sources linked into it), it is fitted on its own.

    The flux has a closed form for given positions (the static sky, one
    value per pixel, is eliminated by taking each pixel's weighted mean
    over the epochs out of both data and model); the track's position and
    velocity are refined by least squares from the chained lobes' track
    (binned grid, ``b`` pixels per binned pixel).  A fit is kept where its
    motion is significant against ``systematic`` (``detect.systematic``)
    PSF-mismatch noise too (:func:`_motion_chi2`).
    """
    psfs = [m.psf for m in stack.members]
    fw = max((p.fwhm for p in psfs if p is not None and math.isfinite(p.fwhm)), default=4.0)
    h = max(3, math.ceil(2 * fw))
    ny, nx = stack.shape
    out = MoverModels()
    tables: dict[int, KernelTable] = {}
    for i_span, (track, epochs) in enumerate(tracks.spans):
        ks = np.array([k for k in epochs if psfs[k] is not None], dtype=np.int64)
        if ks.size < 3:
            continue
        if i_span >= tracks.chained and any(
            np.hypot(*(tracks.spans[i][0].p0 - track.p0)) <= link for i in out.movers
        ):
            continue
        dt = times[ks] - track.tm
        # Binned pixel centres to full resolution.
        p0 = (track.p0 + 0.5) * b - 0.5
        v = track.v * b
        pos = p0[None, :] + dt[:, None] * v[None, :]
        y0 = max(math.floor(pos[:, 0].min()) - h, 0)
        y1 = min(math.ceil(pos[:, 0].max()) + h + 1, ny)
        x0 = max(math.floor(pos[:, 1].min()) - h, 0)
        x1 = min(math.ceil(pos[:, 1].max()) + h + 1, nx)
        if y1 - y0 < 2 * h or x1 - x0 < 2 * h:
            continue
        img, var, good = stack.rows(y0, y1)
        img, var = img[ks, :, x0:x1].astype(np.float64), var[ks, :, x0:x1]
        ok = good[ks, :, x0:x1] & (var > 0) & np.isfinite(img)
        for i, k in enumerate(ks):
            cr = cosmic_rays[k]
            cy, cx = np.divmod(cr[(cr >= y0 * nx) & (cr < y1 * nx)], nx)
            inside = (cx >= x0) & (cx < x1)
            ok[i, cy[inside] - y0, cx[inside] - x0] = False
        w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
        stamp = _Stamp(np.where(ok, img, 0.0), w, y0, x0, nx)
        for k in ks:
            psf = psfs[k]
            if int(k) not in tables and psf is not None:
                tables[int(k)] = KernelTable(psf, h)
        fit = _fit_track(stamp, [tables[int(k)] for k in ks], dt, p0, v, h, fw, systematic)
        if fit is None:
            continue
        out.movers.append(i_span)
        if fit.models is None:
            continue
        flux = fit.flux
        for k, (idx, val) in zip(ks, fit.models, strict=True):
            # Cosmic rays and what other rules clip stay replaced.
            keep = ~np.isin(idx, cosmic_rays[k])
            if tracks.others is not None:
                iy, ix = np.divmod(idx, nx)
                keep &= ~tracks.others[k, iy // b, ix // b]
            if keep.any():
                m = val[keep]
                out.streaks.append(
                    Streak(int(k), idx[keep], m.astype(np.float32), 0, 0, 0, 0, 0.0, flux, 0.0)
                )
    return out


#: Sub-pixel phases per pixel of a :class:`KernelTable`: the PSF is rendered
#: at ``KERNEL_PHASES**2`` shifts and interpolated in between (a cubic spline
#: on a 0.2-pixel grid: errors far below a mover's noise for any FWHM >= 2 px).
KERNEL_PHASES = 5


class KernelTable:
    """One PSF's pixel kernels at any sub-pixel shift, from a finer table.

    The mover fit asks for every epoch's kernel at a new position at each
    step of its least squares (about 140 per epoch on the benchmark, most
    of them for finite-difference Jacobians); rendering each one took
    three quarters of the fit.  The kernel is instead rendered once at
    ``KERNEL_PHASES**2`` sub-pixel shifts, interleaved into one finer grid
    and interpolated with a cubic spline (smooth in the shift, as a least
    squares needs), then normalised as :meth:`Psf.kernel` does.
    """

    def __init__(self, psf: Psf, h: int) -> None:
        q, m = KERNEL_PHASES, h + 1
        size = 2 * m + 1
        fine = np.empty((size * q, size * q))
        for a in range(q):
            for c in range(q):
                # Entry (j q + c, i q + a) is the profile at offset i - m + a / q.
                fine[c::q, a::q] = psf.kernel(size, -a / q, -c / q)
        self.coeffs = ndimage.spline_filter(fine, order=3)
        self.h, self.m = h, m
        self.base = (np.arange(2 * h + 1) - h + m) * q

    def kernel(self, dx: float, dy: float) -> np.ndarray:
        """The ``2 h + 1`` square kernel shifted by ``(dx, dy)`` (|shift| <= 0.5)."""
        # Every output pixel sits at the same fraction of the fine grid, so
        # the cubic B-spline is four weights per axis applied to strided views.
        q, n = KERNEL_PHASES, 2 * self.h + 1
        rows = self._axis(self.base[0] - dy * q)
        cols = self._axis(self.base[0] - dx * q)
        c = self.coeffs
        part = sum(w * c[i : i + q * (n - 1) + 1 : q] for i, w in rows)
        k = sum(w * part[:, i : i + q * (n - 1) + 1 : q] for i, w in cols)
        assert isinstance(k, np.ndarray)
        return k / k.sum()

    @staticmethod
    def _axis(at: float) -> list[tuple[int, float]]:
        """The four (first fine index, cubic B-spline weight) pairs at ``at``."""
        i = math.floor(at)
        f = at - i
        g = 1 - f
        return [
            (i - 1, g * g * g / 6),
            (i, (3 * f * f * f - 6 * f * f + 4) / 6),
            (i + 1, (3 * g * g * g - 6 * g * g + 4) / 6),
            (i + 2, f * f * f / 6),
        ]


def _fit_track(
    st: _Stamp,
    psfs: list[KernelTable],
    dt: np.ndarray,
    p0: np.ndarray,
    v: np.ndarray,
    h: int,
    fw: float,
    systematic: float,
) -> _Fit | None:
    """The refined track's flux and per-epoch (flat indices, model values);
    None where it is no mover: its flux or its motion is not significant
    (:func:`_motion_chi2`); no models where the fit moved off the chained
    track by more than ``fw``."""
    n, rows, cols = st.img.shape

    def profiles(theta: np.ndarray) -> np.ndarray:
        pos = theta[None, :2] + dt[:, None] * theta[None, 2:]
        prof = np.zeros((n, rows, cols))
        for i in range(n):
            cy, cx = pos[i, 0] - st.y0, pos[i, 1] - st.x0
            iy, ix = round(cy), round(cx)
            k = psfs[i].kernel(cx - ix, cy - iy)
            ya, yb = max(iy - h, 0), min(iy + h + 1, rows)
            xa, xb = max(ix - h, 0), min(ix + h + 1, cols)
            if ya < yb and xa < xb:
                prof[i, ya:yb, xa:xb] = k[ya - iy + h : yb - iy + h, xa - ix + h : xb - ix + h]
        return prof

    def solver(
        w: np.ndarray,
    ) -> Callable[[np.ndarray], tuple[float, float, np.ndarray, np.ndarray]]:
        # The static sky (one value per pixel) is eliminated by taking each
        # pixel's weighted mean over the epochs out of data and model.
        safe, xbar = _epoch_mean(w, st.img)

        def solve(theta: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
            prof = profiles(theta)
            dp = prof - (w * prof).sum(axis=0) / safe
            den = float((w * dp * dp).sum())
            if den <= 0:
                return 0.0, math.inf, prof, np.sqrt(w) * (st.img - xbar)
            flux = float((w * dp * (st.img - xbar)).sum()) / den
            return flux, 1.0 / math.sqrt(den), prof, np.sqrt(w) * (st.img - xbar - flux * dp)

        return solve

    solve = solver(st.w)
    theta0 = np.r_[p0, v]
    span = max(float(np.ptp(dt)), 1e-3)
    try:
        res = optimize.least_squares(
            lambda t: solve(t)[3].ravel(),
            theta0,
            x_scale=np.r_[1.0, 1.0, 1.0 / span, 1.0 / span],
            diff_step=1e-3,
            max_nfev=40,
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    theta = res.x
    moved = np.hypot(*(theta[:2] - p0)) + span * np.hypot(*(theta[2:] - v)) / 2
    flux, err, prof, _ = solve(theta)
    if not (flux > 0 and flux >= MODEL_SN * err):
        return None
    if _motion_chi2(st, solver, theta, dt, fw, systematic) < MODEL_SN**2:
        return None
    if moved > fw:
        # A mover, but the fit wandered off the chained track (a stepping
        # mover's lobes are off its positions): its pixels are clipped,
        # not modelled.
        return _Fit(flux, None)
    models = []
    for i in range(n):
        on = np.flatnonzero(prof[i].ravel() > MODEL_REACH * prof[i].max())
        yy, xx = np.divmod(on, cols)
        idx = (yy + st.y0) * st.nx + xx + st.x0
        order = np.argsort(idx)
        models.append((idx[order], flux * prof[i].ravel()[on][order]))
    return _Fit(flux, models)


def _epoch_mean(w: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's summed weight over the epochs (1 where none) and its
    weighted mean: the static sky of a track's stamp."""
    wsum = w.sum(axis=0)
    safe = np.where(wsum > 0, wsum, 1.0)
    return safe, (w * img).sum(axis=0) / safe


def _motion_chi2(
    st: _Stamp,
    solver: Callable[
        [np.ndarray], Callable[[np.ndarray], tuple[float, float, np.ndarray, np.ndarray]]
    ],
    theta: np.ndarray,
    dt: np.ndarray,
    fw: float,
    systematic: float,
) -> float:
    """How much better (chi-square) the moving point source ``theta`` of one
    flux fits than a static point source of free per-epoch flux: the
    number of epochs times the median over the epochs of each epoch's
    chi-square gain, each pixel's noise its variance plus ``systematic`` of
    the local peak of the static sky (PSF mismatch, as in the outlier pass).

    A track is a mover only where its motion is significant, not just its
    flux: a bright static star whose seeing differs from epoch to epoch fits
    a short track at hundreds of sigma on the pixel noise alone, and
    subtracting or clipping that "mover" took the star out of the coadd; a
    static source blended with variable neighbours has a centroid that
    wanders with their light curves, and passed as a slow mover (issue 19).
    The static alternative is what such a blend is: one position (refined
    within ``fw`` of the track's mean), each epoch with its own PSF and its
    own flux.  A mover moves light from one side of its mean position to
    the other in most epochs, which no flux change of a static source does;
    an artefact crossing the stamp in one or two epochs (which a free flux
    absorbs) does not move the median.  The PSF-mismatch noise enters this
    test only, so that a real mover's flux is fitted on the pixel noise.
    """
    ok = st.w > 0
    peak = ndimage.maximum_filter(np.abs(_epoch_mean(st.w, st.img)[1]), size=max(3, round(fw) | 1))
    var = np.where(ok, 1.0 / np.where(ok, st.w, 1.0), 0.0) + (systematic * peak) ** 2
    w = np.where(ok, 1.0 / var, 0.0)
    solve = solver(w)
    safe, xbar = _epoch_mean(w, st.img)
    d = st.img - xbar
    n = w.shape[0]

    def still(q: np.ndarray) -> np.ndarray:
        # Epoch k's model F_k P_k less each pixel's weighted mean over the
        # epochs (the static sky), sum_j F_j u_j: the fluxes' normal
        # equations in closed form (singular where the seeing never changes).
        prof = solve(np.r_[q, 0.0, 0.0])[2]
        u = (w * prof / safe).reshape(n, -1)
        normal = np.diag((w * prof * prof).sum(axis=(1, 2))) - u @ (safe.ravel() * u).T
        flux = np.linalg.lstsq(normal, (w * prof * d).sum(axis=(1, 2)), rcond=None)[0]
        model = flux[:, None, None] * prof - (flux @ u).reshape(safe.shape)
        return np.asarray((np.sqrt(w) * (d - model)).ravel())

    q0 = theta[:2] + dt.mean() * theta[2:]
    try:
        fit = optimize.least_squares(
            lambda dq: still(q0 + dq),
            np.zeros(2),
            bounds=(-fw, fw),
            diff_step=STATIC_STEP_PX,
            max_nfev=STATIC_MAX_EVALS,
            xtol=STATIC_STEP_PX,
            # A chi-square gain to 1e-4 of the stamp's chi-square: far finer
            # than the decision's threshold of MODEL_SN**2.
            ftol=1e-4,
        )
    except (ValueError, np.linalg.LinAlgError):
        return 0.0
    gain = (still(q0 + fit.x) ** 2).reshape(n, -1).sum(axis=1)
    gain -= (solve(theta)[3] ** 2).reshape(n, -1).sum(axis=1)
    return n * float(np.median(gain))
