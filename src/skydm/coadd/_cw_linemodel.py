"""CompareWarp's line model: a PSF's line-spread profiles and the design matrix
of a straight streak (constant or node-linear flux per unit length, an
optional segment's ends), which :func:`skydm.coadd._cw_streaks.fit_streak`
fits.  Kept apart from the fit's decisions (which footprints are streaks,
when a model replaces the clipped pixels) because it is pure numerics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
from scipy import ndimage, sparse

from skydm.image.psf import Psf

#: A line model's design matrix: dense, or sparse with many nodes.
_Design: TypeAlias = np.ndarray | sparse.csr_matrix

_STEP = 0.1  # pixels: sampling of the tabulated line-spread functions


@dataclass
class Profiles:
    """Line-spread functions of one PSF across and along a line, tabulated."""

    grid: np.ndarray
    across: np.ndarray
    cumulative: np.ndarray
    psf_sigma: float


ProfileCache = dict[int, Profiles]
"""A PSF's profiles by line angle (2-degree steps), shared by its fits."""


def line_profiles(psf: Psf, theta: float, half: float) -> Profiles:
    """The PSF projected across (density) and along (cumulative) direction ``theta``.

    Each kernel pixel is spread over its projected width (a trapezoid, the
    convolution of boxes ``|cos|`` and ``|sin|`` wide), which makes the
    projection of a pixelated kernel continuous at any angle.
    """
    kern = psf.kernel(max(psf.default_size(), 2 * math.ceil(half) + 1))
    h = kern.shape[0] // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    c, s = math.cos(theta), math.sin(theta)
    n = math.ceil((1.5 * h + 3) / _STEP)  # a corner projects to h sqrt(2)
    grid = np.arange(-n, n + 1) * _STEP

    def project(p: np.ndarray, a: float, bb: float) -> np.ndarray:
        hist: np.ndarray = np.bincount(
            np.round(p.reshape(-1) / _STEP).astype(np.int64) + n,
            weights=kern.reshape(-1),
            minlength=grid.size,
        )
        for width in (abs(a), abs(bb)):
            m = max(1, round(width / _STEP))
            if m > 1:
                hist = np.convolve(hist, np.ones(m) / m, mode="same")
        return hist / (hist.sum() * _STEP)

    across = project(-xx * s + yy * c, c, s)
    along = project(xx * c + yy * s, c, s)
    cum = np.cumsum(along) * _STEP
    sigma = math.sqrt(float(np.sum(across * grid**2) * _STEP))
    return Profiles(grid, across, cum / cum[-1], sigma)


def broadened(p: Profiles, width: float) -> np.ndarray:
    """The cross profile convolved with a Gaussian of sigma ``width`` (pixels)."""
    if width < _STEP:
        return p.across
    return ndimage.gaussian_filter1d(p.across, width / _STEP, mode="constant", truncate=4.0)


@dataclass
class _Parts:
    """A line model's factors at some pixels for one parameter vector (``ends``
    None for a line crossing the footprint, ``hat`` None with one node)."""

    t: np.ndarray
    dd: np.ndarray
    across: np.ndarray
    cross: np.ndarray
    ends: np.ndarray | None
    hat: np.ndarray | None


@dataclass
class LineModel:
    """The line model's design matrix: a flux per unit length (constant, or
    linear between ``nodes`` along the line) times the cross profile (and,
    for a segment, its ends), at angle ``p[0]`` through (``xc``, ``yc``)
    offset by ``p[1]``, broadened by ``p[2]``, with a Gaussian part of
    width ``p[3]``; ``p[4:]`` are a segment's centre and half-length.

    :meth:`residual` and :meth:`jacobian` are the non-linear fit's
    function and its analytic Jacobian, with the fluxes solved linearly at
    each point (variable projection)."""

    prof: Profiles
    xc: float
    yc: float
    long: bool
    nodes: np.ndarray | None
    diffuse: bool = True
    # The last point's factors, fluxes and design: least_squares asks for
    # the Jacobian at the point whose residual it has just had.
    _last: tuple[bytes, np.ndarray, _Parts, np.ndarray, _Design] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _parts(self, p: np.ndarray, x: np.ndarray, y: np.ndarray) -> _Parts:
        prof = self.prof
        t, dd = line_frame(float(p[0]), float(p[1]), x, y, (self.xc, self.yc))
        # The PSF's line-spread function and a plain Gaussian across (a
        # diffuse trail without the PSF's wings), their fluxes fitted
        # together; a line that is not diffuse has the PSF part alone.
        across = broadened(prof, float(p[2]))
        rows = [np.interp(dd, prof.grid, across, left=0.0, right=0.0)]
        if self.diffuse:
            s3 = float(p[3])
            rows.append(np.exp(-0.5 * (dd / s3) ** 2) / (math.sqrt(2 * math.pi) * s3))
        ends = None
        if not self.long:
            cum = prof.cumulative
            ends = np.interp(t - p[4] + p[5], prof.grid, cum, left=0.0, right=1.0)
            ends -= np.interp(t - p[4] - p[5], prof.grid, cum, left=0.0, right=1.0)
        hat = None
        if self.nodes is not None and t.size * self.nodes.size <= 100_000:
            step = self.nodes[1] - self.nodes[0]
            hat = np.clip(1 - np.abs(t[:, None] - self.nodes[None, :]) / step, 0, None)
        return _Parts(t, dd, across, np.array(rows), ends, hat)

    def _columns(self, f: _Parts) -> np.ndarray | sparse.csr_matrix:
        cross = f.cross.T if f.ends is None else f.cross.T * f.ends[:, None]
        if self.nodes is None:
            return cross
        n, m = f.t.size, self.nodes.size
        if f.hat is not None:
            return (cross[:, :, None] * f.hat[:, None, :]).reshape(n, -1)
        # Many nodes: a pixel lies on two hat functions of each part only.
        nodes = self.nodes
        pos = np.clip((f.t - nodes[0]) / (nodes[1] - nodes[0]), 0.0, m - 1.0)
        j = np.minimum(pos.astype(np.int64), m - 2)
        u = pos - j
        # Part q's hats are columns q m to q m + m - 1.
        q = np.arange(cross.shape[1]) * m
        cols = np.stack([q[None, :] + j[:, None], q[None, :] + j[:, None] + 1], axis=2)
        vals = np.stack([cross * (1 - u)[:, None], cross * u[:, None]], axis=2)
        rows = np.repeat(np.arange(n), vals[0].size)
        shape = (n, cross.shape[1] * m)
        return sparse.csr_matrix((vals.reshape(-1), (rows, cols.reshape(-1))), shape=shape)

    def model(self, p: np.ndarray, x: np.ndarray, y: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """The model of fluxes ``coef`` (of both parts, as :meth:`solve` gives
        them) at pixels (x, y)."""
        a_mat = self._columns(self._parts(p, x, y))
        return np.asarray(a_mat @ coef[: a_mat.shape[1]])

    def solve(
        self, p: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray, iv: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The weighted least-squares fluxes for ``p`` and the model they make."""
        f = self._parts(p, x, y)
        a_mat = self._columns(f)
        coef = _lsq(a_mat, d, iv)
        self._last = (p.tobytes(), x, f, coef, a_mat)
        # Both parts' fluxes (the Gaussian part's zero if not diffuse).
        full = coef if self.diffuse else np.concatenate([coef, np.zeros_like(coef)])
        return np.asarray(a_mat @ coef), full

    def residual(
        self, p: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray, iv: np.ndarray
    ) -> np.ndarray:
        """The normalised residual of the best fluxes at ``p``."""
        return (d - self.solve(p, x, y, d, iv)[0]) * iv

    def jacobian(
        self, p: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray, iv: np.ndarray
    ) -> np.ndarray:
        """The analytic Jacobian of :meth:`residual` (``nodes`` few enough for
        dense hat functions).

        With the fluxes ``c`` solved at each point, the residual
        ``r = W (d - A c)`` moves by ``-P (W A_j c) - W A N^-1 (W A_j)^T r``
        for a parameter that moves the design by ``A_j`` (``P`` projects
        out the weighted design's columns, ``N`` is the normal matrix):
        the variable-projection Jacobian of Golub and Pereyra."""
        last = self._last
        if last is None or last[0] != p.tobytes() or last[1] is not x:
            self.solve(p, x, y, d, iv)
            last = self._last
        assert last is not None
        f, coef, a_mat = last[2], last[3], last[4]
        if self.nodes is not None and f.hat is None:
            raise ValueError("jacobian: too many nodes for dense hat functions")
        prof, t, dd, n, parts = self.prof, f.t, f.dd, f.t.size, f.cross.shape[0]
        u = dd + float(p[1])  # d t / d theta (d dd / d theta is -t)
        # The hat functions along the line and their slopes (one flat node
        # without nodes).
        hat = np.ones((n, 1)) if f.hat is None else f.hat
        slope = np.zeros_like(hat)
        if self.nodes is not None:
            step = self.nodes[1] - self.nodes[0]
            slope = np.where(hat > 0, -np.sign(t[:, None] - self.nodes[None, :]) / step, 0.0)
        # The parts across, and their derivatives across (d/d dd), in the
        # broadening (width w: the heat equation, d/dw = w d2/dd2) and in
        # the Gaussian part's width.
        cross, zero, s3, p2 = f.cross, np.zeros(n), float(p[3]), float(p[2])
        dp = np.gradient(f.across, _STEP)
        d2 = p2 * np.gradient(dp, _STEP) if p2 >= _STEP else np.zeros_like(dp)
        cd = np.array([_at(dd, prof.grid, dp), -dd / s3**2 * cross[-1]][:parts])
        width = np.array([_at(dd, prof.grid, d2), zero][:parts])
        gauss = np.array([zero, cross[-1] * (dd * dd / s3**3 - 1 / s3)][:parts])
        e, e_t, e_5 = np.ones(n), zero, zero
        if f.ends is not None:
            dens = np.gradient(prof.cumulative, _STEP)
            hi = _at(t - p[4] + p[5], prof.grid, dens)
            lo = _at(t - p[4] - p[5], prof.grid, dens)
            e, e_t, e_5 = f.ends, hi - lo, hi + lo
        # Per parameter, the design's derivative (pixel, part, node): its
        # factor by part times the hats, plus (the angle) the hats' slopes.
        by_part = [-t * cd * e + u * cross * e_t, -cd * e, width * e, gauss * e]
        if not self.long:
            by_part += [-cross * e_t, cross * e_5]
        da = np.array([b.T[:, :, None] * hat[:, None, :] for b in by_part])
        da[0] += u[:, None, None] * (cross * e).T[:, :, None] * slope[:, None, :]
        da = da.reshape(len(by_part), n, -1) * iv[None, :, None]
        assert isinstance(a_mat, np.ndarray)  # dense with dense hats
        aw = a_mat * iv[:, None]
        r = (d * iv) - aw @ coef
        dm = (da @ coef).T  # (pixel, parameter)
        rhs = aw.T @ dm - np.einsum("jnk,n->kj", da, r)
        return -dm + aw @ _solve_normal(aw.T @ aw, rhs)


def _at(z: np.ndarray, grid: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table`` interpolated at ``z``, zero off the grid."""
    return np.interp(z, grid, table, left=0.0, right=0.0)


def _solve_normal(normal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``normal^-1 rhs``, by least squares where ``normal`` is singular."""
    try:
        return np.linalg.solve(normal, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(normal, rhs, rcond=None)[0]


def _lsq(a_mat: np.ndarray | sparse.csr_matrix, d: np.ndarray, iv: np.ndarray) -> np.ndarray:
    """The weighted least-squares coefficients of ``a_mat`` for data ``d``
    (normal equations: a few columns, many rows)."""
    if isinstance(a_mat, np.ndarray):
        aw = a_mat * iv[:, None]
        return _solve_normal(aw.T @ aw, aw.T @ (d * iv))
    aw_s = sparse.diags(iv) @ a_mat
    return _solve_normal((aw_s.T @ aw_s).toarray(), aw_s.T @ (d * iv))


def line_frame(
    theta: float, offset: float, x: np.ndarray, y: np.ndarray, centre: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels' positions along and across the line at angle ``theta`` through
    ``centre``, the latter from the line moved ``offset`` across."""
    xc, yc = centre
    ct, st = math.cos(theta), math.sin(theta)
    return (x - xc) * ct + (y - yc) * st, -(x - xc) * st + (y - yc) * ct - offset
