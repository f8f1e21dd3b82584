"""Faint streaks subtracted as a fitted model instead of replaced.

Replacing an epoch's clipped pixels by other epochs' swaps that epoch's noise
for theirs.  For a bright artefact that costs nothing, but for a faint one
(a faint satellite trail, a faint trailed asteroid) the swapped noise is
comparable to the artefact's own light: it adds a few per cent of the
artefact's flux to the coadd as noise, and where a faint trail crosses faint
sources it moves their S/N by a sigma or more.  A satellite trail or a
trailed moving object has a known shape — a line segment seen through the
epoch's PSF, maybe broadened (satellites are out of focus) — so it can be
fitted and subtracted, keeping the epoch's own pixels and noise.  Rubin's
``MaskStreaksTask`` fits the same kind of line profile to find trails; here
the fit goes on to remove them.

Each clipped footprint of an epoch is fitted on ``d = x_k - r_k``, the
epoch minus its replacement (the mixture of other epochs with its PSF
second moment, an estimate of the static sky as epoch ``k`` sees it).  The
model is ``a(t) L(d) E(t)``: ``L`` is the epoch's PSF projected across the
line (its line-spread function) convolved with a Gaussian of fitted width,
``E`` the segment's ends seen through the PSF, and ``a(t)`` a flux per unit
length that may change slowly along the line (piecewise linear, one node
per ``node_spacing`` pixels).  The line's angle, offset, ends and
broadening are fitted by non-linear least squares with the amplitudes
solved linearly at each step.

The model replaces the clip only where the data cannot tell it from the
truth: the residual's chi-square is that of noise, and its sum over every
cell of a grid along and across the line (and over the whole footprint) is
within noise.  Pixels far off the model and cells whose sum is off (a
static source the replacement does not match exactly, a variable, another
artefact across the line) stay replaced, and the line is fitted again
without them.  A bright artefact's residual fails these tests for the
smallest error in shape (its residual is large against the noise), so
bright artefacts stay replaced, where replacement noise does not matter;
ghosts, cosmic rays and anything not a line fail them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize, special

from skydm.coadd._cw_linemodel import LineModel, ProfileCache, Profiles, line_frame, line_profiles
from skydm.coadd._cw_pixels import replacement_shares
from skydm.image.psf import Psf


@dataclass
class Streak:
    """A fitted line model that replaces the clip of one footprint in epoch ``k``.

    Attributes
    ----------
    k : int
        The epoch.
    index : numpy.ndarray
        Sorted flat indices (full resolution) of the pixels where the epoch is
        kept with the model subtracted.
    value : numpy.ndarray
        The model there (float32).
    x0, y0, x1, y1 : float
        The fitted segment's ends (beyond the footprint for a line crossing it).
    width : float
        Gaussian broadening beyond the PSF, sigma in pixels.
    flux : float
        The model's flux over ``index``.
    chi2 : float
        Reduced chi-square of the residual.
    """

    k: int
    index: np.ndarray
    value: np.ndarray
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    flux: float
    chi2: float


@dataclass
class Candidate:
    """One clipped footprint of epoch ``k`` and its data: ``d`` (epoch minus
    replacement) and ``v`` (its variance) at ``index``, usable where ``ok``;
    ``sources`` holds (y, x) of static sources under the footprint."""

    k: int
    index: np.ndarray
    d: np.ndarray
    v: np.ndarray
    ok: np.ndarray
    sources: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def candidates(
    clip: np.ndarray,
    b: int,
    shape: tuple[int, int],
    *,
    min_pixels: int,
    max_pixels: int,
) -> list[Candidate]:
    """The clipped footprints (8-connected) of every epoch's binned clip map,
    of ``min_pixels`` to ``max_pixels`` binned pixels."""
    ny, nx = shape
    out: list[Candidate] = []
    eight = np.ones((3, 3), dtype=bool)
    for k in range(clip.shape[0]):
        lab, count = ndimage.label(clip[k], structure=eight)
        if count == 0:
            continue
        sizes = np.bincount(lab.reshape(-1), minlength=count + 1)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or not min_pixels <= sizes[i] <= max_pixels:
                continue
            yy, xx = np.nonzero(lab[sl] == i)
            yy, xx = yy + sl[0].start, xx + sl[1].start
            ys = (yy[:, None] * b + np.arange(b)[None, :]).repeat(b, axis=1).reshape(-1)
            xs = np.tile(xx[:, None] * b + np.arange(b)[None, :], (1, b)).reshape(-1)
            inside = (ys < ny) & (xs < nx)
            index = np.sort(ys[inside].astype(np.int64) * nx + xs[inside])
            m = index.size
            out.append(Candidate(k, index, np.zeros(m), np.zeros(m), np.zeros(m, dtype=bool)))
    return out


def gather(
    cands: list[Candidate],
    y0: int,
    img: np.ndarray,
    var: np.ndarray,
    good: np.ndarray,
    clipped: np.ndarray,
    cr: list[np.ndarray],
    weights: np.ndarray,
    widths2: np.ndarray,
) -> None:
    """Fill the candidates' data from one band (rows from ``y0``) of the stack.

    ``clipped`` marks every epoch's clipped pixels (cosmic rays included),
    ``cr`` holds each epoch's sorted cosmic-ray pixels (flat, full
    resolution): those stay replaced and out of the fit.
    """
    rows, nx = img.shape[1], img.shape[2]
    lo, hi = y0 * nx, (y0 + rows) * nx
    kept = good & ~clipped
    # Pixels taken by one flat index into the band (epoch * plane + pixel):
    # numpy's indexing by three arrays costs several times more.
    plane = rows * nx
    img_f, var_f = img.reshape(-1), var.reshape(-1)
    for c in cands:
        i0, i1 = np.searchsorted(c.index, (lo, hi))
        if i1 <= i0:
            continue
        flat = c.index[i0:i1] - lo
        ys, xs = flat // nx, flat % nx
        k = c.k
        usable = good[k].reshape(-1)[flat] & ~in_sorted(c.index[i0:i1], cr[k])
        cand, share = replacement_shares(kept, ys, xs, k, weights, widths2)
        r, vr = np.zeros(ys.size), np.zeros(ys.size)
        for row in range(cand.shape[0]):
            sel = cand[row] >= 0
            at = cand[row, sel] * plane + flat[sel]
            s = share[row, sel].astype(np.float64)
            r[sel] += s * img_f[at]
            vr[sel] += s * s * var_f[at]
        usable &= (cand >= 0).any(axis=0)
        c.d[i0:i1] = img_f[k * plane + flat] - r
        c.v[i0:i1] = var_f[k * plane + flat] + vr
        c.ok[i0:i1] = usable & (c.v[i0:i1] > 0)


@dataclass(frozen=True)
class StreakFit:
    """The streak fit's constants (pixels are full resolution), named.

    ``node_spacing``: pixels between the amplitude's nodes along the line;
    ``long_line``: a segment longer than this crosses the footprint (its
    ends are not fitted); ``diffuse_length``: longest footprint fitted as a
    broadened (diffuse) line; ``z_cells``, ``cell_length``: the residual's
    sums over cells of this length along the line must be within this many
    sigma; ``min_aspect``: smallest length over width of a line;
    ``min_sn``, ``max_sn``: the footprint's S/N range that is fitted (below:
    no line to fit; above: replacing costs nothing); ``outlier_z``: pixels
    this many sigma off the first fit are left out; ``z_point``: a point
    source's residual excess (sigma) that marks a slow mover rather than a
    line; ``max_outliers``: largest fraction of pixels left out;
    ``fit_pixels``: pixels sampled for the non-linear fit; ``max_nfev``:
    its evaluations.
    """

    node_spacing: float = 256.0
    long_line: float = 400.0
    diffuse_length: float = 150.0
    z_cells: float = 3.0
    cell_length: float = 32.0
    min_aspect: float = 4.0
    min_sn: float = 5.0
    max_sn: float = 100.0
    outlier_z: float = 4.0
    z_point: float = 3.0
    max_outliers: float = 0.5
    fit_pixels: int = 3_000
    max_nfev: int = 40


def fit_streak(
    c: Candidate,
    nx: int,
    psf: Psf,
    *,
    fit: StreakFit = StreakFit(),
    cache: ProfileCache | None = None,
) -> Streak | None:
    """Fit a line model to a candidate's data; None when it fails the tests
    (see the module docs) and the footprint should stay replaced.

    Pixels the first fit leaves more than ``outlier_z`` sigma off (a bright
    source the replacement does not match exactly, a variable, a blended
    artefact), grown by a pixel, are left out of the second fit and of the
    tests and stay replaced; a footprint with more than ``max_outliers`` of
    them stays replaced whole.  ``cache`` keeps the PSF's profiles by angle
    (to 2 degrees) between calls for the same PSF.
    """
    if c.ok.sum() < 20:
        return None
    index = c.index[c.ok]
    y, x = (index // nx).astype(np.float64), (index % nx).astype(np.float64)
    d, v = c.d[c.ok], c.v[c.ok]
    iv = 1.0 / np.sqrt(v)
    # Start from the footprint's flux-weighted moments (positive part).
    w = np.clip(d * iv, 0.0, None) ** 2
    if np.count_nonzero(w) < 2:
        return None  # one positive pixel has no moments (no direction to fit along)
    xc, yc = float(np.average(x, weights=w)), float(np.average(y, weights=w))
    evals, evecs = np.linalg.eigh(np.cov(np.vstack([x - xc, y - yc]), aweights=w))
    if not (np.all(np.isfinite(evals)) and np.all(np.isfinite(evecs))):
        return None  # non-finite data: no moments
    theta0 = math.atan2(evecs[1, 1], evecs[0, 1])
    t_all = (x - xc) * math.cos(theta0) + (y - yc) * math.sin(theta0)
    tmin, tmax = float(t_all.min()), float(t_all.max())
    extent = tmax - tmin
    # Below ``min_sn`` there is no line to fit (a cosmic ray's grown
    # footprint without its core, noise); replacing a bright artefact costs
    # ~1/S/N of its flux in noise, and no model is exact enough to subtract
    # it: both stay replaced.
    snr = float(d.sum()) / math.sqrt(float(v.sum()))
    if snr < fit.min_sn or snr / math.sqrt(max(extent / fit.cell_length, 1.0)) > fit.max_sn:
        return None
    long = extent > fit.long_line
    bucket = round(math.degrees(theta0) / 2) % 180
    cache = {} if cache is None else cache
    if bucket not in cache:
        cache[bucket] = line_profiles(psf, math.radians(2 * bucket), 4 * psf.fwhm + 8)
    prof = cache[bucket]
    m = max(1, math.ceil(extent / fit.node_spacing)) if long else 1
    # A mover is the PSF trailed; a line longer than movers trail may also
    # be a diffuse trail (out of focus, without the PSF's wings).
    diffuse = extent > fit.diffuse_length

    def with_nodes(k: int) -> LineModel:
        return LineModel(prof, xc, yc, long, np.linspace(tmin, tmax, k) if k > 1 else None, diffuse)

    # The line's shape is found on at most ``fit_pixels`` of the pixels, with
    # the flux along it coarser (both hardly change the geometry); the
    # fluxes and the tests then use them all.
    line, coarse = with_nodes(m), with_nodes(min(m, 4))
    # The PSF part's broadening stays under the PSF's own width (an
    # out-of-focus satellite is wider, and the Gaussian part takes it: a
    # broader PSF part would only soak up smooth light that is not the line).
    wmax, bmax = 4 * prof.psf_sigma + 2, prof.psf_sigma
    if long:
        p = np.array([theta0, 0.0, 0.3, 1.2 * prof.psf_sigma])
        lo = [theta0 - 0.2, -wmax, 0.0, 0.5]
        hi = [theta0 + 0.2, wmax, bmax, wmax]
    else:
        half0 = min(max(math.sqrt(max(12 * (evals[1] - evals[0]), 0.0)) / 2, 0.5), extent + 0.99)
        lo = [theta0 - math.pi / 2, -wmax, 0.0, 0.5, tmin, 0.1]
        hi = [theta0 + math.pi / 2, wmax, bmax, wmax, tmax, extent + 1]
        p = np.array([theta0, 0.0, 0.3, 1.2 * prof.psf_sigma, 0.0, half0])
    # Pixels the fit leaves ``outlier_z`` off, and (once those are out)
    # cells whose residual sum is off, are left out and the line fitted
    # again, until none is.
    use = np.ones(d.size, dtype=bool)
    for rnd in range(3):
        sub = np.flatnonzero(use)
        sub = sub[:: max(1, math.ceil(sub.size / fit.fit_pixels))]
        try:
            # The first fit is robust (a bright source's residual would pull
            # the line over); the later ones are plain, on the pixels left.
            p = optimize.least_squares(
                coarse.residual,
                p,
                jac=coarse.jacobian,
                args=(x[sub], y[sub], d[sub], iv[sub]),
                bounds=(lo, hi),
                x_scale="jac",
                max_nfev=fit.max_nfev if rnd == 0 else fit.max_nfev // 3,
                loss="soft_l1" if rnd == 0 else "linear",
                f_scale=3.0,
            ).x
            coef = line.solve(p, x[use], y[use], d[use], iv[use])[1]
        except (ValueError, np.linalg.LinAlgError):
            return None
        model = line.model(p, x, y, coef)
        res = d - model
        out = _grown(index, np.abs(res) * iv > fit.outlier_z, nx)
        cells = np.zeros(d.size, dtype=bool)
        if rnd:  # after a fit without the first fit's outliers
            cells[~out] = _bad_cells(p, x[~out], y[~out], (xc, yc), res[~out], v[~out], prof, fit)
            rest = ~(out | cells)
            cells[rest] = _point_residuals(
                p, x[rest], y[rest], (xc, yc), res[rest], v[rest], prof.psf_sigma, fit.z_point
            )
        settled = np.array_equal(~(out | cells), use)
        use = ~(out | cells)  # the model applies where this fit passed
        if not use.mean() >= 1 - fit.max_outliers:
            return None
        if settled or rnd == 2:
            break
    if not np.all(np.isfinite(coef)) or coef.sum() <= 0:
        return None
    r, vv, ivu = (d - model)[use], v[use], iv[use]
    dof = max(r.size - coef.size - p.size, 1)
    chi2 = _excess_chi2(r * ivu)
    if chi2 > 1 + 6 * math.sqrt(2 / dof):
        return None
    length = extent if long else 2 * float(p[5])
    # The model's FWHM across: its parts' widths weighted by their flux.
    parts = np.clip(coef.reshape(2, -1).sum(axis=1), 0.0, None)
    w2 = np.array([prof.psf_sigma**2 + float(p[2]) ** 2, float(p[3]) ** 2])
    across = 2.355 * math.sqrt(float(parts @ w2) / max(float(parts.sum()), 1e-300))
    point = length <= across and p[2] <= 0.5 * prof.psf_sigma
    if not (point or length >= fit.min_aspect * across):
        return None  # neither a line nor a point source: a ghost or a blend
    ct, st = math.cos(p[0]), math.sin(p[0])
    cx, cy = xc - float(p[1]) * st, yc + float(p[1]) * ct
    if point and c.sources.size:
        # A point on a static source is its variability, not a mover: the
        # variable-source restoration keeps that epoch's flux instead.
        px, py = cx + float(p[4]) * ct, cy + float(p[4]) * st
        gap = np.hypot(c.sources[:, 0] - py, c.sources[:, 1] - px)
        if gap.min() <= 1.5 * 2.355 * prof.psf_sigma:
            return None
    if abs(float(r.sum())) > fit.z_cells * math.sqrt(float(vv.sum())):
        return None  # the whole footprint's residual is not within noise
    t0, t1 = (tmin - 8, tmax + 8) if long else (float(p[4] - p[5]), float(p[4] + p[5]))
    value = model[use]
    return Streak(
        c.k,
        index[use],
        value.astype(np.float32),
        cx + t0 * ct,
        cy + t0 * st,
        cx + t1 * ct,
        cy + t1 * st,
        float(p[2]),
        float(value.sum()),
        chi2,
    )


def _grown(index: np.ndarray, hit: np.ndarray, nx: int) -> np.ndarray:
    """``hit`` grown by one pixel (8 neighbours) within the sorted flat ``index``."""
    if not hit.any():
        return hit
    steps = np.array([-nx - 1, -nx, -nx + 1, -1, 0, 1, nx - 1, nx, nx + 1])
    near = np.unique((index[hit][:, None] + steps[None, :]).reshape(-1))
    return in_sorted(index, near)


def in_sorted(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in the sorted array ``table``: ``np.isin``
    by binary search, without sorting again what is sorted already."""
    if table.size == 0:
        return np.zeros(values.shape, dtype=bool)
    return table[np.minimum(np.searchsorted(table, values), table.size - 1)] == values


def _point_residuals(
    p: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    r: np.ndarray,
    v: np.ndarray,
    sigma: float,
    z: float,
) -> np.ndarray:
    """Pixels within a PSF of where the residual, filtered for a point source,
    is over ``z`` sigma: there the model would leave a source-like bump (or
    dip) in the coadd.

    The residual is resampled onto a grid along and across the line (one
    pixel per cell), which keeps the filtering to the footprint's own area
    for a line crossing a whole cell; a Gaussian of the PSF's width stands
    for the PSF.
    """
    if x.size == 0:  # every pixel left out already
        return np.zeros(0, dtype=bool)
    t, dd = line_frame(p[0], 0.0, x, y, centre)
    ti = np.floor(t - t.min()).astype(np.int64)
    di = np.floor(dd - dd.min()).astype(np.int64)
    shape = (int(ti.max()) + 1, int(di.max()) + 1)
    flat = ti * shape[1] + di
    size = shape[0] * shape[1]
    res = np.bincount(flat, weights=r, minlength=size).reshape(shape)
    var = np.bincount(flat, weights=v, minlength=size).reshape(shape)
    # For G normalised, sum G r has variance sum G^2 v, and G^2 is a
    # Gaussian of width sigma / sqrt(2) over 4 pi sigma^2.
    num = ndimage.gaussian_filter(res, sigma, mode="constant")
    den = ndimage.gaussian_filter(var, sigma / math.sqrt(2), mode="constant")
    den /= 4 * math.pi * sigma * sigma
    hit = np.abs(num) > z * np.sqrt(np.maximum(den, 1e-300))
    grow = 2 * math.ceil(2 * sigma) + 1
    hit = ndimage.maximum_filter(hit, size=grow, mode="constant")
    return hit.reshape(-1)[flat]


def _excess_chi2(z: np.ndarray) -> float:
    """Mean square of normalised residuals over their robust (MAD) variance.

    Warps' variance planes overstate the pixel variance (resampling
    correlates neighbouring pixels and lowers each one's scatter, while
    sums over areas keep the stated variance), so the plain reduced
    chi-square of pure noise is well below 1; against the residual's own
    robust scatter, a misfit concentrated on some pixels still stands out.
    """
    mad = float(np.median(np.abs(z - np.median(z))))
    robust = (1.4826 * mad) ** 2
    return float(np.mean(z * z) / robust) if robust > 0 else math.inf


def _bad_cells(
    p: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    centre: tuple[float, float],
    r: np.ndarray,
    v: np.ndarray,
    prof: Profiles,
    fit: StreakFit,
) -> np.ndarray:
    """The pixels of cells, along (``fit.cell_length``) and across (core,
    either side) the line, whose residual sum is not within noise.

    The threshold per cell grows with their number (a Bonferroni bound at
    the same total false-rejection rate as ``fit.z_cells`` for a single cell);
    cells of fewer than 8 pixels are not judged.
    """
    if x.size == 0:  # every pixel an outlier of the last fit (the footprint stays replaced)
        return np.zeros(0, dtype=bool)
    t, dd = line_frame(p[0], p[1], x, y, centre)
    core = 1.5 * math.hypot(prof.psf_sigma, float(p[2]))
    across = np.where(dd < -core, 0, np.where(dd > core, 2, 1))
    cell = np.floor((t - t.min()) / fit.cell_length).astype(np.int64) * 3 + across
    sums = np.bincount(cell, weights=r)
    vars_ = np.bincount(cell, weights=v)
    judged = np.bincount(cell) >= 8
    if not judged.any():
        return np.zeros(r.size, dtype=bool)
    tail = special.erfc(fit.z_cells / math.sqrt(2)) / judged.sum()
    limit = math.sqrt(2) * float(special.erfcinv(tail))
    bad = judged & (np.abs(sums) > limit * np.sqrt(np.maximum(vars_, 1e-300)))
    return bad[cell]
