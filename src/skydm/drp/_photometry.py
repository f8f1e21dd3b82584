"""Forced PSF photometry of one band at fixed positions: objects whose PSF stamps
overlap are fitted together (one linear least-squares fit of PSF amplitudes),
with aperture fluxes of each object after its neighbours' models are removed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy.sparse import coo_matrix, csc_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from skydm.drp._detect import BandPlanes


@dataclass
class BandPhotometry:
    """One band's forced measurements, in the coadd's counts.

    Attributes
    ----------
    flux, flux_err : numpy.ndarray
        PSF flux (amplitude of the unit-sum PSF model) and its error from the
        variance plane, marginalised over the neighbours fitted with it; NaN
        where no usable pixel was left.
    psf_fraction : numpy.ndarray
        Fraction of the PSF's squared weight on usable pixels.
    ap_flux, ap_flux_err : numpy.ndarray
        Aperture flux of the object alone (neighbours' fitted models
        removed, masked pixels replaced by the object's model), divided by
        the PSF model's flux fraction in the same aperture: equal to the PSF
        flux in expectation for a point source.
    clipped_stamp : numpy.ndarray
        True where the PSF stamp crosses the image border.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    psf_fraction: np.ndarray
    ap_flux: np.ndarray
    ap_flux_err: np.ndarray
    clipped_stamp: np.ndarray


def stamp_groups(x: np.ndarray, y: np.ndarray, size: int, max_group: int) -> list[np.ndarray]:
    """Indexes of objects fitted together: connected sets of overlapping stamps.

    Sets larger than ``max_group`` are split into single objects.
    """
    n = x.size
    if n == 0:
        return []
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(r=float(size), p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups: list[np.ndarray] = []
    for g in np.split(order, bounds):
        if g.size > max_group:
            groups.extend(np.array([i]) for i in g)
        else:
            groups.append(g)
    return groups


def measure_band(
    band: BandPlanes,
    x: np.ndarray,
    y: np.ndarray,
    groups: list[np.ndarray],
    *,
    stamp: int,
    aperture_radius: float,
    crowded_sweeps: int = 0,
) -> BandPhotometry:
    """PSF and aperture fluxes of every object in one band.

    Parameters
    ----------
    band : BandPlanes
        The band's background-subtracted planes and PSF.
    x, y : numpy.ndarray
        Positions (0-based pixels).
    groups : list of numpy.ndarray
        Objects fitted together (:func:`stamp_groups`).
    stamp : int
        Side of the PSF stamp (odd).
    aperture_radius : float
        Radius of the aperture flux, pixels (within the stamp).
    crowded_sweeps : int
        Sweeps of the neighbour-subtracted refit (:func:`_crowded_refit`) of
        the objects fitted alone although their stamps overlap another's
        (groups split for exceeding ``max_group``); 0 leaves their lone fits.
    """
    n = x.size
    out = BandPhotometry(
        flux=np.full(n, np.nan),
        flux_err=np.full(n, np.nan),
        psf_fraction=np.zeros(n),
        ap_flux=np.full(n, np.nan),
        ap_flux_err=np.full(n, np.nan),
        clipped_stamp=np.zeros(n, dtype=bool),
    )
    half = stamp // 2
    ny, nx = band.image.shape
    for g in groups:
        _fit_group(band, x[g], y[g], g, half, (ny, nx), aperture_radius, out)
    if crowded_sweeps > 0:
        lone = np.concatenate([g for g in groups if g.size == 1] or [np.zeros(0, dtype=np.int64)])
        crowded = lone[_has_neighbour(x, y, lone, stamp)]
        if crowded.size:
            _crowded_refit(band, x, y, crowded, half, aperture_radius, crowded_sweeps, out)
    return out


def _has_neighbour(x: np.ndarray, y: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    """Whether each object ``idx`` has another object's stamp overlapping its own."""
    if idx.size == 0 or x.size < 2:
        return np.zeros(idx.size, dtype=bool)
    tree = cKDTree(np.column_stack([x, y]))
    counts = tree.query_ball_point(
        np.column_stack([x[idx], y[idx]]), r=float(size), p=np.inf, return_length=True
    )
    return np.asarray(counts) > 1


def _crowded_refit(
    band: BandPlanes,
    x: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    half: int,
    radius: float,
    sweeps: int,
    out: BandPhotometry,
) -> None:
    """Refit objects ``idx`` each with its neighbours' current models subtracted.

    Gauss-Seidel (coordinate descent) on the weighted least-squares fit of all
    their PSF amplitudes together: each sweep fits every object's amplitude
    alone on the data less every other object's model, then updates the
    model image.  It converges to the joint fit (the normal matrix is
    symmetric positive definite) without its dense ``n x n`` inverse, so
    that a faint star on a bright neighbour's wing is not given that wing's
    light (as a lone fit does).  The errors stay the lone fit's (conditional
    on the neighbours).
    """
    ny, nx = band.image.shape
    size = 2 * half + 1
    data = band.image.astype(np.float64)
    var = band.variance.astype(np.float64)
    good = ~band.bad & np.isfinite(var) & (var > 0)
    wgt = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    data = np.where(good, data, 0.0)
    model = np.zeros((ny, nx))
    items: list[tuple[int, _Stamp, np.ndarray, float]] = []
    for k in idx.tolist():
        if not np.isfinite(out.flux[k]):
            continue
        fx, fy = float(x[k] - round(x[k])), float(y[k] - round(y[k]))
        st = _stamp(band.psf.kernel(size=size, dx=fx, dy=fy), x[k], y[k], (0, 0), (ny, nx))
        p = st.cut()
        norm = float(np.sum(wgt[st.box] * p * p))
        if norm <= 0:
            continue
        model[st.box] += out.flux[k] * p
        items.append((k, st, p, norm))
    flux = {k: float(out.flux[k]) for k, _, _, _ in items}
    for _ in range(sweeps):
        for k, st, p, norm in items:
            rest = data[st.box] - model[st.box] + flux[k] * p
            new = float(np.sum(wgt[st.box] * p * rest)) / norm
            model[st.box] += (new - flux[k]) * p
            flux[k] = new
    for k, st, p, _ in items:
        out.flux[k] = flux[k]
        _aperture_alone(
            out, k, st, p, flux[k], (data, var, good, model), (x[k], y[k]), (0, 0), radius
        )


@dataclass
class _Stamp:
    """A PSF stamp placed in a group's box: its kernel and the overlapping slices."""

    kernel: np.ndarray
    box: tuple[slice, slice]
    kern: tuple[slice, slice]
    clipped: bool

    def cut(self) -> np.ndarray:
        return self.kernel[self.kern]


def _stamp(
    kernel: np.ndarray, xc: float, yc: float, origin: tuple[int, int], shape: tuple[int, int]
) -> _Stamp:
    """Place ``kernel`` centred on pixel (round(xc), round(yc)) in a box at ``origin`` (y0, x0)."""
    size = kernel.shape[0]
    half = size // 2
    h, w = shape
    sy0, sx0 = round(yc) - half - origin[0], round(xc) - half - origin[1]
    ky0, kx0 = max(-sy0, 0), max(-sx0, 0)
    ky1, kx1 = max(min(size, h - sy0), ky0), max(min(size, w - sx0), kx0)
    return _Stamp(
        kernel,
        (slice(sy0 + ky0, sy0 + ky1), slice(sx0 + kx0, sx0 + kx1)),
        (slice(ky0, ky1), slice(kx0, kx1)),
        ky0 > 0 or kx0 > 0 or ky1 < size or kx1 < size,
    )


def _design(stamps: list[_Stamp], shape: tuple[int, int]) -> csc_matrix:
    """Sparse design matrix: one column per stamp over the box's flattened pixels."""
    h, w = shape
    rows, cols, vals = [], [], []
    for k, st in enumerate(stamps):
        ys, xs = st.box
        yy, xx = np.mgrid[ys, xs]
        rows.append((yy * w + xx).ravel())
        cols.append(np.full(yy.size, k))
        vals.append(st.cut().ravel())
    return coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(h * w, len(stamps)),
    ).tocsc()


def _normal_equations(
    a: csc_matrix, data: np.ndarray, wgt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``A^T W A`` (dense, small) and ``A^T W d`` for the sparse design ``A``."""
    aw = a.multiply(wgt.reshape(-1, 1)).tocsc()
    return np.asarray((a.T @ aw).toarray()), np.asarray(aw.T @ data.reshape(-1))


def _fit_group(
    band: BandPlanes,
    xs: np.ndarray,
    ys: np.ndarray,
    index: np.ndarray,
    half: int,
    shape: tuple[int, int],
    radius: float,
    out: BandPhotometry,
) -> None:
    x0, x1, y0, y1 = _group_box(xs, ys, half, shape)
    if x1 <= x0 or y1 <= y0:
        return
    h, w = y1 - y0, x1 - x0
    m = xs.size
    size = 2 * half + 1
    stamps = []
    for k in range(m):
        fx, fy = float(xs[k] - round(xs[k])), float(ys[k] - round(ys[k]))
        st = _stamp(band.psf.kernel(size=size, dx=fx, dy=fy), xs[k], ys[k], (y0, x0), (h, w))
        stamps.append(st)
        out.clipped_stamp[index[k]] = st.clipped
    data = band.image[y0:y1, x0:x1].astype(np.float64)
    var = band.variance[y0:y1, x0:x1].astype(np.float64)
    good = ~band.bad[y0:y1, x0:x1] & np.isfinite(var) & (var > 0)
    wgt = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    a = _design(stamps, (h, w))
    normal, rhs = _normal_equations(a, np.where(good, data, 0.0), wgt)
    for k, st in enumerate(stamps):
        full = float(np.sum(st.kernel**2))
        out.psf_fraction[index[k]] = float(np.sum(st.cut() ** 2 * good[st.box])) / full
    active = np.diag(normal) > 0
    flux = np.zeros(m)
    if active.any():
        sub = normal[np.ix_(active, active)]
        try:
            cov = np.linalg.inv(sub)
        except np.linalg.LinAlgError:
            # Coincident positions: the pseudo-inverse splits the flux evenly.
            cov = np.linalg.pinv(sub)
        flux[active] = cov @ rhs[active]
        err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        out.flux[index[active]] = flux[active]
        out.flux_err[index[active]] = err
    # Aperture flux of each object with its neighbours' models removed, within
    # its own stamp (the aperture is no larger).
    total_model = np.asarray(a @ flux).reshape(h, w)
    for j in np.flatnonzero(active).tolist():
        st = stamps[j]
        _aperture_alone(
            out, index[j], st, st.cut(), float(flux[j]), (data, var, good, total_model),
            (xs[j], ys[j]), (x0, y0), radius,
        )  # fmt: skip


def _aperture_alone(
    out: BandPhotometry,
    k: int,
    st: _Stamp,
    p: np.ndarray,
    flux: float,
    planes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float],
    offset: tuple[int, int],
    radius: float,
) -> None:
    """Object ``k``'s aperture flux with its neighbours' models removed, within its stamp.

    ``planes`` are the data, variance, usable pixels and the model of every
    object, on a box whose pixel (0, 0) is ``offset`` (x, y) of the image;
    unusable pixels are replaced by the object's own model ``flux * p``.
    """
    data, var, good, model = planes
    ys_, xs_ = st.box
    own = flux * p
    g = good[st.box]
    alone = np.where(g, data[st.box] - (model[st.box] - own), own)
    yy, xx = np.mgrid[ys_, xs_]
    ap = (xx + offset[0] - centre[0]) ** 2 + (yy + offset[1] - centre[1]) ** 2 <= radius * radius
    frac = float(np.sum(p[ap]))
    if frac <= 0:
        return
    out.ap_flux[k] = float(np.sum(alone[ap])) / frac
    out.ap_flux_err[k] = float(np.sqrt(np.sum(var[st.box][ap & g]))) / frac


def big_aperture(
    band: BandPlanes, x: np.ndarray, y: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flux in a circle of ``radius`` pixels; NaN where it holds an unusable pixel
    or leaves the image."""
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    var = np.where(band.bad, 0.0, band.variance).astype(np.float64)
    flux, err, flag = sep.sum_circle(
        np.ascontiguousarray(band.image, dtype=np.float64),
        x,
        y,
        radius,
        var=np.ascontiguousarray(var),
        mask=np.ascontiguousarray(band.bad),
        subpix=5,
    )
    bad = (flag & (sep.APER_HASMASKED | sep.APER_TRUNC)) != 0
    return np.where(bad, np.nan, flux), np.where(bad, np.nan, err)


def _group_box(
    xs: np.ndarray, ys: np.ndarray, half: int, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    ny, nx = shape
    ix, iy = np.rint(xs).astype(int), np.rint(ys).astype(int)
    x0, x1 = max(int(ix.min()) - half, 0), min(int(ix.max()) + half + 1, nx)
    y0, y1 = max(int(iy.min()) - half, 0), min(int(iy.max()) + half + 1, ny)
    return x0, x1, y0, y1


def position_shifts(
    band: BandPlanes,
    x: np.ndarray,
    y: np.ndarray,
    groups: list[np.ndarray],
    *,
    stamp: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linearised PSF fit of position offsets in one band.

    Each group is fitted with, per object, the PSF and its derivatives with
    respect to the centre (central pixel differences): the
    model ``f P(x - x0 - dx) ~ f P + (f dx) dP/dx0 + (f dy) dP/dy0`` is
    linear in ``f``, ``f dx`` and ``f dy``.

    Returns
    -------
    dx, dy : numpy.ndarray
        Offsets to add to the positions (NaN where not measurable).
    var_dx, var_dy : numpy.ndarray
        Their variances from the variance plane.
    """
    n = x.size
    dx_out, dy_out = np.full(n, np.nan), np.full(n, np.nan)
    vx_out, vy_out = np.full(n, np.nan), np.full(n, np.nan)
    half = stamp // 2
    for g in groups:
        xs, ys = x[g], y[g]
        x0, x1, y0, y1 = _group_box(xs, ys, half, band.image.shape)
        if x1 <= x0 or y1 <= y0:
            continue
        h, w = y1 - y0, x1 - x0
        m = g.size
        stamps = []
        for k in range(m):
            fx, fy = float(xs[k] - round(xs[k])), float(ys[k] - round(ys[k]))
            kern = band.psf.kernel(size=stamp, dx=fx, dy=fy)
            # Moving the centre by +d moves the profile: dP/dx0 = -dP/dx.
            # Central pixel differences underestimate the slope by a few per
            # cent for sampled PSFs, which scales each step but not the fixed
            # point the iterations converge to (zero offset).
            ddy, ddx = np.gradient(kern)
            for plane in (kern, -ddx, -ddy):
                stamps.append(_stamp(plane, xs[k], ys[k], (y0, x0), (h, w)))
        data = band.image[y0:y1, x0:x1]
        var = band.variance[y0:y1, x0:x1]
        good = ~band.bad[y0:y1, x0:x1] & np.isfinite(var) & (var > 0)
        wgt = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
        normal, rhs = _normal_equations(
            _design(stamps, (h, w)), np.where(good, data, 0.0).astype(np.float64), wgt
        )
        try:
            cov = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            continue
        coef = cov @ rhs
        f = coef[0::3]
        ok = f > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            dx_out[g] = np.where(ok, coef[1::3] / f, np.nan)
            dy_out[g] = np.where(ok, coef[2::3] / f, np.nan)
            vx_out[g] = np.where(ok, np.diag(cov)[1::3] / f**2, np.nan)
            vy_out[g] = np.where(ok, np.diag(cov)[2::3] / f**2, np.nan)
    return dx_out, dy_out, vx_out, vy_out
