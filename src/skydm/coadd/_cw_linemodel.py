"""CompareWarp's line model: a PSF's line-spread profiles and the design matrix
of a straight streak (constant or node-linear flux per unit length, an
optional segment's ends), which :func:`skydm.coadd._cw_streaks.fit_streak`
fits.  Kept apart from the fit's decisions (which footprints are streaks,
when a model replaces the clipped pixels) because it is pure numerics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from skydm.image.psf import Psf

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


class DesignParts:
    """The parts of a line model's design matrix at pixels (``x``, ``y``), by the
    parameters each depends on: the line frame (angle and offset), the
    broadened profile (``p[2]``), the PSF part, the Gaussian part
    (``p[3]``), a segment's ends (``p[4:6]``) and the hat functions (the
    frame).  A finite-difference Jacobian moves one parameter at a time, so
    most parts of each step are those of the point it starts from; the last
    few of each are kept (the pixels are held, so that their identity keys
    the cache)."""

    #: Parts kept (a six-parameter Jacobian makes about 20).
    KEEP = 32

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.memo: dict[tuple[object, ...], Any] = {}

    def get(self, key: tuple[object, ...], make: Callable[[], Any]) -> Any:
        """The part under ``key``, made by ``make`` when not kept."""
        if key in self.memo:
            return self.memo[key]
        value = make()
        self.memo[key] = value
        if len(self.memo) > self.KEEP:
            # Dicts keep insertion order: drop the oldest.
            del self.memo[next(iter(self.memo))]
        return value


@dataclass
class LineModel:
    """The line model's design matrix: a flux per unit length (constant, or
    linear between ``nodes`` along the line) times the cross profile (and,
    for a segment, its ends), at angle ``p[0]`` through (``xc``, ``yc``)
    offset by ``p[1]``, broadened by ``p[2]``, with a Gaussian part of
    width ``p[3]``; ``p[4:]`` are a segment's centre and half-length."""

    prof: Profiles
    xc: float
    yc: float
    long: bool
    nodes: np.ndarray | None
    diffuse: bool = True
    # The parts of the last design, by the parameters they depend on: a
    # finite-difference Jacobian moves one parameter at a time, so most
    # parts are reused as they are (bit for bit; see DesignParts).
    _parts: DesignParts | None = field(default=None, init=False, repr=False, compare=False)

    def design(self, p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray | sparse.csr_matrix:
        """The design matrix at pixels (x, y): dense, or sparse with many nodes
        (a pixel lies on two hat functions of each part only).  The Gaussian
        part (width ``p[3]``) is zero but for a ``diffuse`` line (a zero
        column: the least-squares path, and so the fits, stay those of the
        two-part model)."""
        prof = self.prof
        parts = self._parts
        if parts is None or parts.x is not x or parts.y is not y:
            parts = self._parts = DesignParts(x, y)
        th, off = float(p[0]), float(p[1])
        t, dd = parts.get(
            ("frame", th, off), lambda: line_frame(p[0], p[1], x, y, (self.xc, self.yc))
        )
        # The PSF's line-spread function and a plain Gaussian across (a
        # diffuse trail without the PSF's wings), their fluxes fitted together.
        across = parts.get(("across", float(p[2])), lambda: broadened(prof, p[2]))
        psf_part = parts.get(
            ("psf", th, off, float(p[2])),
            lambda: np.interp(dd, prof.grid, across, left=0.0, right=0.0),
        )
        if self.diffuse:
            g = parts.get(
                ("g", th, off, float(p[3])),
                lambda: np.exp(-0.5 * (dd / p[3]) ** 2) / (math.sqrt(2 * math.pi) * p[3]),
            )
        else:
            g = np.zeros_like(dd)
        cross = np.column_stack([psf_part, g])
        if not self.long:

            def make_ends() -> np.ndarray:
                cum = prof.cumulative
                ends = np.interp(t - p[4] + p[5], prof.grid, cum, left=0.0, right=1.0)
                ends -= np.interp(t - p[4] - p[5], prof.grid, cum, left=0.0, right=1.0)
                return ends

            ends = parts.get(("ends", th, off, float(p[4]), float(p[5])), make_ends)
            cross *= ends[:, None]
        if self.nodes is None:
            return cross
        # Hat functions: a flux per unit length linear between nodes.
        nodes = self.nodes
        m = nodes.size
        n = t.size
        if n * m <= 100_000:
            hat = parts.get(
                ("hat", th, off),
                lambda: np.clip(
                    1 - np.abs(t[:, None] - nodes[None, :]) / (nodes[1] - nodes[0]), 0, None
                ),
            )
            return (cross[:, :, None] * hat[:, None, :]).reshape(n, -1)
        pos = np.clip((t - nodes[0]) / (nodes[1] - nodes[0]), 0.0, m - 1.0)
        j = np.minimum(pos.astype(np.int64), m - 2)
        u = pos - j
        # Part q's hats are columns q m to q m + m - 1.
        q = np.arange(cross.shape[1]) * m
        cols = np.stack([q[None, :] + j[:, None], q[None, :] + j[:, None] + 1], axis=2)
        vals = np.stack([cross * (1 - u)[:, None], cross * u[:, None]], axis=2)
        rows = np.repeat(np.arange(n), vals[0].size)
        shape = (n, cross.shape[1] * m)
        return sparse.csr_matrix((vals.reshape(-1), (rows, cols.reshape(-1))), shape=shape)

    def solve(
        self, p: np.ndarray, x: np.ndarray, y: np.ndarray, d: np.ndarray, iv: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The weighted least-squares fluxes for ``p`` and the model they make."""
        a_mat = self.design(p, x, y)
        if isinstance(a_mat, np.ndarray):
            aw = a_mat * iv[:, None]
            normal, rhs = aw.T @ aw, aw.T @ (d * iv)
        else:
            aw_s = sparse.diags(iv) @ a_mat
            normal, rhs = (aw_s.T @ aw_s).toarray(), aw_s.T @ (d * iv)
        # Normal equations: a few columns, many rows.  A zero column (the
        # Gaussian part of a line that is not diffuse) makes a zero row, which
        # LU always finds singular: straight to the least-squares solution
        # (what solve's error led to, without raising it at every step).
        if (normal == 0).all(axis=1).any():
            coef = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        else:
            try:
                coef = np.linalg.solve(normal, rhs)
            except np.linalg.LinAlgError:
                coef = np.linalg.lstsq(normal, rhs, rcond=None)[0]
        return np.asarray(a_mat @ coef), coef


def line_frame(
    theta: float, offset: float, x: np.ndarray, y: np.ndarray, centre: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels' positions along and across the line at angle ``theta`` through
    ``centre``, the latter from the line moved ``offset`` across."""
    xc, yc = centre
    ct, st = math.cos(theta), math.sin(theta)
    return (x - xc) * ct + (y - yc) * st, -(x - xc) * st + (y - yc) * ct - offset
