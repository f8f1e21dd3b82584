"""Slow movers found by their centroids: a bright static source of the model
whose per-epoch centroid moves along a straight line through time.

A mover slower than about a FWHM over the whole survey shows no moving lobe
in the time codes (:mod:`skydm.coadd._cw_movers`), so its track is found
here and handed to the same mover model; a variable source, whose centroid
stays put, never passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import stats

from skydm.coadd._cw_config import MoverConfig
from skydm.coadd._cw_movermodel import MODEL_SN
from skydm.coadd._cw_movers import Track

if TYPE_CHECKING:
    from skydm.coadd.stack import WarpStack


def centroid_tracks(
    stack: WarpStack,
    peaks: np.ndarray,
    cosmic_rays: list[np.ndarray],
    times: np.ndarray,
    b: int,
    fwhm: float,
    cfg: MoverConfig,
) -> list[tuple[Track, np.ndarray]]:
    """Tracks (binned grid) of the model's bright peaks whose centroid moves
    along a straight line through time, each with all its epochs.

    A mover slower than about a FWHM over the whole survey leaves no lobe
    that moves in the time codes (the lobes of a small shift sit half a FWHM
    from the reference position whatever the shift) and is a static source
    in the model; but its centroid still moves in a straight line.  Each
    epoch's centroid is a Gaussian-windowed first moment (``fwhm`` full
    resolution) about the peak; a straight line in time is fitted to the
    epochs with a clean window, with errors from the variances scaled up by
    the fit's reduced chi-square (a star whose centroid jumps about, pulled
    by a varying neighbour or PSF residuals, has a large one).  The peak is a
    mover where the line's motion is ``centroid_sn`` times its error or
    more and the epochs span ``min_epochs`` nights; a variable source, whose
    centroid does not move, never is.
    """
    ny, nx = stack.shape
    n = times.size
    h = max(2, math.ceil(fwhm))
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    s2 = (fwhm / 2.3548) ** 2
    widths2 = (
        np.array([(m.psf.fwhm if m.psf is not None else fwhm) / 2.3548 for m in stack.members]) ** 2
    )
    order = np.argsort(times, kind="stable")
    night = np.zeros(n, dtype=np.int64)
    night[order] = np.cumsum(np.r_[0, np.diff(times[order]) >= cfg.min_gap_days])
    if np.unique(night).size < cfg.min_epochs:
        return []
    found: list[tuple[float, Track]] = []
    measured: list[_Centroids] = []
    block = (0, 0)
    rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for py, px in zip(*np.nonzero(peaks), strict=True):
        cy0, cx0 = int(py) * b + (b - 1) // 2, int(px) * b + (b - 1) // 2
        if not (h <= cy0 < ny - h and h <= cx0 < nx - h):
            continue
        if not (block[0] <= cy0 - h and cy0 + h + 1 <= block[1]):
            # Peaks come row by row: one read serves all those of a block.
            block = (cy0 - h, min(cy0 - h + max(CENTROID_BLOCK, 2 * h + 1), ny))
            rows = stack.rows(*block)
        sl = np.s_[:, cy0 - h - block[0] : cy0 + h + 1 - block[0], cx0 - h : cx0 + h + 1]
        assert rows is not None
        img, var, good = rows
        img, var, good = img[sl].astype(np.float64), var[sl].astype(np.float64), good[sl]
        core = yy * yy + xx * xx <= fwhm * fwhm
        # Bad pixels (a bad column crosses many epochs' windows) are filled
        # from the epochs' mean image scaled to the epoch's flux, so that a
        # static source's centroid stays put, whatever its variability.
        mean_img = np.where(good, img, 0).sum(axis=0) / np.maximum(good.sum(axis=0), 1)
        ratio = np.array(
            [
                (img[k][good[k] & core]).sum() / max((mean_img[good[k] & core]).sum(), 1e-30)
                for k in range(n)
            ]
        )
        img = np.where(good, img, ratio[:, None, None] * mean_img)
        var = np.where(good, var, np.median(var[good]) if good.any() else 0.0)
        use = (good[:, core].mean(axis=1) >= 1 - MAX_FILLED) & (good.sum(axis=0)[core] > 0).all()
        # No cosmic ray in the window: none in any of its rows' spans (sorted).
        starts = (cy0 - h + np.arange(2 * h + 1)) * nx + cx0 - h
        use &= [
            not np.any(np.searchsorted(c, starts + 2 * h, "right") > np.searchsorted(c, starts))
            for c in cosmic_rays
        ]
        # The window is centred on the source in the epochs' sum: off centre,
        # a static source's windowed centroid would move with the seeing.
        c = np.zeros(2)
        total = img[use].sum(axis=0)
        for _ in range(3):
            g = np.exp(-0.5 * ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / s2) * total
            if not g.sum() > 0:
                break
            c = np.array([(g * yy).sum(), (g * xx).sum()]) / g.sum()
        if not (g.sum() > 0 and np.all(np.abs(c) < h / 2)):
            continue
        gauss = np.exp(-0.5 * ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / s2)
        s = (gauss * img).sum(axis=(1, 2))
        ds = np.sqrt((gauss * gauss * var).sum(axis=(1, 2)))
        use &= s > MODEL_SN * ds
        if np.unique(night[use]).size < cfg.min_epochs:
            continue
        s, gi, vi = s[use], gauss * img[use], var[use]
        cen = np.stack([(gi * yy).sum(axis=(1, 2)), (gi * xx).sum(axis=(1, 2))], 1) / s[:, None]
        # A Gaussian window of variance s2 draws a Gaussian source's centroid
        # towards its centre by s2 / (s2 + source variance): undone, so that
        # the track moves as fast as the mover.
        stretch = 1 + widths2[use] / s2
        # Per axis, the first moment's variance; the two axes averaged.
        g2v = gauss * gauss * vi
        d2 = (yy - cen[:, :1, None]) ** 2 + (xx - cen[:, 1:, None]) ** 2
        cen = c + (cen - c) * stretch[:, None]
        photon2 = (g2v * d2).sum(axis=(1, 2)) / (2 * s * s) * stretch**2
        measured.append(_Centroids(cy0, cx0, times[use], cen, photon2, night[use], s * stretch))
    floor2 = centroid_floor(measured, fwhm) ** 2
    for m in measured:
        w = 1.0 / (m.photon2 + floor2)
        fit = _line(m.t, m.cen, w, m.nights, cfg.min_epochs, m.window)
        if fit is None:
            continue
        tm, mean, v, sig = fit
        if sig >= cfg.centroid_sn:
            # Full resolution to the binned grid of :class:`Track`.
            pb = (mean + np.array([m.cy, m.cx]) + 0.5) / b - 0.5
            found.append((sig, Track(pb, v / b, tm, float(times.min()), float(times.max()))))
    # One track per mover: a mover may hold several peaks of the model.
    out: list[Track] = []
    for _, track in sorted(found, key=lambda f: -f[0]):
        if all(np.hypot(*(track.p0 - o.p0)) > cfg.link_fwhm * fwhm / b for o in out):
            out.append(track)
    return [(track, np.arange(n)) for track in out]


#: Rows of the stack read at once for the centroids of the peaks in them.
CENTROID_BLOCK = 64

#: Fewest sources whose centroids measure a field's centroid floor
#: (:func:`centroid_floor`); below it, :data:`DEFAULT_FLOOR` is assumed.
MIN_FLOOR_SOURCES = 10

#: The centroid floor (target FWHM) assumed where too few sources measure it:
#: PSF residuals and resampling move a bright source's centroid by a few
#: hundredths of a FWHM from epoch to epoch (the constant floor this
#: measurement replaced).
DEFAULT_FLOOR = 0.03

#: Largest fraction of a centroid window's core filled in for bad pixels.
MAX_FILLED = 0.25

#: Normalised residual (sigma) above which the epoch farthest from a
#: centroid line is dropped and the line refitted (an epoch that a trail, a
#: ghost or a cosmic ray crosses pulls its centroid off the line).
LINE_CLIP = 5.0


class _Centroids(NamedTuple):
    """One bright source's per-epoch centroids (full resolution, about
    ``cy``, ``cx``): the epochs' times and nights, the centroids and their
    photon variance per axis (both corrected for the window's pull), and
    the window's flux corrected for the seeing (``window``)."""

    cy: int
    cx: int
    t: np.ndarray
    cen: np.ndarray
    photon2: np.ndarray
    nights: np.ndarray
    window: np.ndarray


def centroid_floor(measured: Sequence[_Centroids], fwhm: float) -> float:
    """The field's centroid error floor (full-resolution pixels, per axis),
    added in quadrature to each epoch's photon error: the ``f`` for which
    the median source's scatter about its mean position is what its errors
    predict.

    Resampling, PSF residuals and the seeing's changes move a bright
    source's centroid by more than its photon noise, by an amount that
    depends on the data (the warps' resampling, how well each epoch's PSF
    is known), not on one field's tuning.  Most bright peaks are static
    sources, so over the field's sources the median of ``chi2(f) /
    median(chi2_d)`` (``chi2`` about each source's weighted mean position
    with errors ``photon^2 + f^2``, ``d = 2 (n - 1)`` degrees of freedom)
    is 1 at the floor; movers and variables pulled about by a neighbour are
    few and do not move a median.  A constant floor of 0.03 FWHM was 2-7
    times the scatter of the held-out fields' static sources, and hid
    overlapping movers' motion (issue 19).
    """
    usable = [m for m in measured if m.t.size >= 2]
    if len(usable) < MIN_FLOOR_SOURCES:
        return DEFAULT_FLOOR * fwhm
    expected = np.array([stats.chi2.median(2 * (m.t.size - 1)) for m in usable])

    def excess(f: float) -> float:
        ratios = np.empty(len(usable))
        for i, m in enumerate(usable):
            w = 1.0 / (m.photon2 + f * f)
            mean = (w[:, None] * m.cen).sum(axis=0) / w.sum()
            ratios[i] = float((w * ((m.cen - mean) ** 2).sum(axis=1)).sum()) / expected[i]
        return float(np.median(ratios)) - 1.0

    lo, hi = 0.0, float(fwhm)
    if excess(lo) <= 0:
        return 0.0
    if excess(hi) > 0:
        return hi
    # chi2(f) falls as f grows: bisection to a hundredth of a percent of a FWHM.
    while hi - lo > FLOOR_TOLERANCE * fwhm:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


#: Precision (target FWHM) to which :func:`centroid_floor` is solved.
FLOOR_TOLERANCE = 1e-4


def _line(
    t: np.ndarray,
    cen: np.ndarray,
    w: np.ndarray,
    nights: np.ndarray,
    min_nights: int,
    flux: np.ndarray,
) -> tuple[float, np.ndarray, np.ndarray, float] | None:
    """A straight line fitted to centroids ``cen`` (weights ``w``) at times ``t``,
    dropping the worst epoch while it is over :data:`LINE_CLIP` sigma off
    and ``min_nights`` nights are left: (mean time, mean position,
    velocity, significance of the velocity with its errors scaled by the
    reduced chi-square where above 1), or None.

    The centroid may also move in proportion to the window's ``flux``: a
    static source blended with a variable neighbour moves towards it as it
    brightens, which a line in time mimics wherever the light curve is slow
    (at the field's centroid floor such blends passed as movers, and their
    model took a star out of the coadd).  The velocity is only what the
    flux does not explain; a mover's flux is steady.  The chi-square is the
    larger of the kept epochs' and the median one of *every* epoch:
    dropping epochs until a line fits would make one out of any wandering
    centroid, while the few epochs that a trail or a ghost crosses do not
    move a median (a 2-axis residual's median is ``2 ln 2`` times its
    variance per axis).
    """
    keep = np.ones(t.size, dtype=bool)
    while np.unique(nights[keep]).size >= min_nights:
        wk = w[keep]
        tm = float(np.average(t[keep], weights=wk))
        rel = flux / float(np.average(flux[keep], weights=wk)) - 1.0
        x = np.stack([np.ones(t.size), t - tm, rel], axis=1)
        xk = x[keep]
        try:
            inv = np.linalg.inv(xk.T @ (wk[:, None] * xk))
        except np.linalg.LinAlgError:
            return None
        if not (np.all(np.isfinite(inv)) and inv[1, 1] > 0):
            return None
        beta = inv @ (xk.T @ (wk[:, None] * cen[keep]))  # one column per axis
        r2 = w * ((cen - x @ beta) ** 2).sum(axis=1)
        chi2 = float(r2[keep].sum()) / max(2 * (int(keep.sum()) - 3), 1)
        if r2[keep].max() <= LINE_CLIP**2:
            chi2 = max(chi2, float(np.median(r2)) / (2 * math.log(2)), 1.0)
            v = beta[1]
            return tm, beta[0], v, float(np.hypot(*v)) / math.sqrt(inv[1, 1] * chi2)
        keep[np.argmax(np.where(keep, r2, -1.0))] = False
    return None
