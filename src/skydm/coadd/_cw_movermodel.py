"""The moving point-source model of a slow mover's track.

:func:`model_movers` fits every epoch of a :class:`~skydm.coadd._cw_movers.Mover`
track at once as a static sky plus a point source of constant flux moving
along the track (its position and velocity refined; each epoch's PSF
rendered once into a :class:`KernelTable` and interpolated).  Where the
flux and the motion are significant (the moving source fits better than a
static one of free per-epoch flux, :func:`_motion_chi2`), each epoch is kept
with its point source subtracted (:class:`~skydm.coadd._cw_streaks.Streak`
models) instead of replaced; a chained track the fit does not confirm is
no mover.  Split from :mod:`skydm.coadd._cw_movers` (the rule and its
tracks) along that seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd._cw_movers import MoverTracks
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
