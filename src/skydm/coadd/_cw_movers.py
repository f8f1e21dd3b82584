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
star's PSF mismatch into the coadd.  :func:`~skydm.coadd._cw_movermodel.model_movers` therefore fits
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple

import numpy as np

from skydm.coadd._cw_config import MoverConfig
from skydm.coadd._cw_footprints import _footprints, _groups

if TYPE_CHECKING:
    from skydm.coadd.stack import WarpStack


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


def epoch_times(stack: WarpStack) -> np.ndarray:
    """Each epoch's MJD; its index where the time is unknown."""
    times = np.array([float(m.info.mjd) for m in stack.members])
    return np.where(np.isfinite(times), times, np.arange(times.size))
