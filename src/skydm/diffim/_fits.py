"""Non-linear model fits on single stamps: the dipole and the trailed source.

Both are small least-squares problems (six and five parameters over a few
hundred pixels) solved with ``scipy.optimize.least_squares`` and analytic
Jacobians; they run only on the sources the measurement's rules select (see
:mod:`skydm.diffim.measure`).  Errors come from the inverse of ``J^T J`` at
the solution, the residuals being in units of each pixel's sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from scipy import optimize, special

from skydm.diffim._stamps import PHASES, psf_table
from skydm.image.psf import Psf

_SQRT2 = math.sqrt(2.0)
_T = TypeVar("_T")


@dataclass(frozen=True)
class FitResult:
    """Best-fit parameters of one stamp's model.

    Attributes
    ----------
    params : numpy.ndarray
        The parameters (their meaning depends on the model).
    cov : numpy.ndarray
        Their covariance (NaN where ``J^T J`` is singular).
    chi2 : float
        chi^2 at the solution.
    ndata : int
        Pixels fitted.
    success : bool
        The optimiser converged to finite values.
    """

    params: np.ndarray
    cov: np.ndarray
    chi2: float
    ndata: int
    success: bool


def _solve(fun: object, jac: object, p0: np.ndarray, ndata: int) -> FitResult:
    """Levenberg-Marquardt (MINPACK): unbounded, a few times faster than the
    bounded trust-region solver on these small problems; the callers check
    that the solution is physical."""
    try:
        res = optimize.least_squares(
            fun,  # type: ignore[arg-type]
            p0,
            jac=jac,  # type: ignore[arg-type]
            method="lm",
            x_scale="jac",
        )
    except (ValueError, np.linalg.LinAlgError):
        nan = np.full(p0.size, np.nan)
        return FitResult(nan, np.full((p0.size, p0.size), np.nan), math.nan, ndata, False)
    jtj = res.jac.T @ res.jac
    try:
        cov = np.linalg.inv(jtj)
    except np.linalg.LinAlgError:
        cov = np.full(jtj.shape, np.nan)
    ok = bool(res.status > 0 and np.all(np.isfinite(res.x)))
    return FitResult(res.x, cov, float(2 * res.cost), ndata, ok)


class _Last(Generic[_T]):
    """``func`` with its last result kept: the optimiser asks for the
    residuals and the Jacobian at the same parameters, which share the work."""

    def __init__(self, func: Callable[[np.ndarray], _T]) -> None:
        self.func = func
        self.key: bytes | None = None
        self.value: _T | None = None

    def __call__(self, p: np.ndarray) -> _T:
        key = p.tobytes()
        if key != self.key or self.value is None:
            self.value, self.key = self.func(p), key
        return self.value


class ShiftedPsf:
    """A PSF placed anywhere on a stamp, with its position derivatives.

    The PSF is tabulated at a ninth of a pixel (:class:`~skydm.diffim._stamps.PsfTable`)
    and the remaining sub-phase offset is applied to first order with the
    tabulated gradients, so that a model evaluation is a few slices rather
    than a spline evaluation per pixel (a fit costs milliseconds).
    """

    def __init__(self, psf: Psf) -> None:
        half = min(psf.default_size(), 31) // 2
        self.table = psf_table(psf, half)
        self.half = half

    def render(self, cx: float, cy: float, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The PSF centred at (``cx``, ``cy``) (offsets from the centre of a
        ``2h+1`` stamp) and its derivatives with respect to ``cx`` and ``cy``."""
        size = 2 * h + 1
        out = np.zeros((3, size, size))
        # Python floats: rounding numpy scalars costs more than the slicing.
        cx, cy = float(cx), float(cy)
        nx, ny = math.floor(cx + 0.5), math.floor(cy + 0.5)
        fx, fy = cx - nx, cy - ny
        px = min(max(math.floor(fx * PHASES + 0.5), -(PHASES // 2)), PHASES // 2)
        py = min(max(math.floor(fy * PHASES + 0.5), -(PHASES // 2)), PHASES // 2)
        rx, ry = fx - px / PHASES, fy - py / PHASES
        i, j = py + PHASES // 2, px + PHASES // 2
        k = self.table.kernels[i, j]
        gx, gy = self.table.grad_x[i, j], self.table.grad_y[i, j]
        hk = self.half
        # Rows of the stamp covered by the kernel centred at row ny (offset).
        r0, r1 = max(ny - hk, -h), min(ny + hk, h)
        c0, c1 = max(nx - hk, -h), min(nx + hk, h)
        if r0 > r1 or c0 > c1:
            return out[0], out[1], out[2]
        ks = (slice(r0 - ny + hk, r1 - ny + hk + 1), slice(c0 - nx + hk, c1 - nx + hk + 1))
        ss = (slice(r0 + h, r1 + h + 1), slice(c0 + h, c1 + h + 1))
        out[0][ss] = k[ks] - rx * gx[ks] - ry * gy[ks]
        out[1][ss] = -gx[ks]
        out[2][ss] = -gy[ks]
        return out[0], out[1], out[2]


def fit_dipole(
    data: np.ndarray,
    sigma: np.ndarray,
    good: np.ndarray,
    centre: tuple[float, float],
    psf: ShiftedPsf,
    start: np.ndarray,
    *,
    max_offset: float,
) -> FitResult:
    """Fit two PSFs of opposite sign: ``f+ P(r - r+) - f- P(r - r-)``.

    Parameters
    ----------
    data, sigma, good : numpy.ndarray
        One square stamp: values, noise sigma and usable pixels.
    centre : tuple of float
        (dx, dy) of the source position from the stamp's central pixel;
        positions are offsets from the source position.
    psf : ShiftedPsf
        The difference image's PSF.
    start : numpy.ndarray
        ``(f+, f-, x+, y+, x-, y-)`` to start from (fluxes positive).
    max_offset : float
        How far (pixels) a lobe may move from the source position.

    Returns
    -------
    FitResult
        ``params`` as ``start``.
    """
    h = data.shape[0] // 2
    d, s = data[good], sigma[good]
    dx, dy = centre

    def _parts(p: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        pos = psf.render(dx + p[2], dy + p[3], h)
        neg = psf.render(dx + p[4], dy + p[5], h)
        return tuple(a[good] for a in pos), tuple(a[good] for a in neg)

    parts = _Last(_parts)

    def fun(p: np.ndarray) -> np.ndarray:
        pos, neg = parts(p)
        return (p[0] * pos[0] - p[1] * neg[0] - d) / s

    def jac(p: np.ndarray) -> np.ndarray:
        pos, neg = parts(p)
        j = np.empty((d.size, 6))
        j[:, 0] = pos[0]
        j[:, 1] = -neg[0]
        j[:, 2] = p[0] * pos[1]
        j[:, 3] = p[0] * pos[2]
        j[:, 4] = -p[1] * neg[1]
        j[:, 5] = -p[1] * neg[2]
        return j / s[:, None]

    res = _solve(fun, jac, start, int(d.size))
    p = res.params
    # Lobes that swapped sign or wandered off the stamp: no dipole here.
    physical = bool(res.success and p[0] > 0 and p[1] > 0 and np.all(np.abs(p[2:]) <= max_offset))
    return FitResult(p, res.cov, res.chi2, res.ndata, physical)


def trail_model(
    p: np.ndarray, u: np.ndarray, v: np.ndarray, sigma_psf: float
) -> tuple[np.ndarray, np.ndarray]:
    """The Vereš et al. (2012) trailed source and its Jacobian.

    A line segment of length ``L`` and flux ``F`` centred on (``x0``,
    ``y0``) at angle ``theta`` (radians from +x), convolved with a circular
    Gaussian of ``sigma_psf``::

        I = F / (2 L sqrt(2 pi) s) exp(-b^2 / 2 s^2)
            [erf((a + L/2) / (sqrt2 s)) - erf((a - L/2) / (sqrt2 s))]

    with ``a``, ``b`` the offsets along and across the line.  ``p`` is
    ``(F, x0, y0, L, theta)``.
    """
    flux, x0, y0, length, theta = p
    # The model is even in the length; near 0 it tends to the PSF.
    length = math.copysign(max(abs(float(length)), 1e-3), float(length))
    s = sigma_psf
    c, sn = math.cos(theta), math.sin(theta)
    du, dv = u - x0, v - y0
    a = du * c + dv * sn
    b = -du * sn + dv * c
    norm = 1.0 / (2 * length * math.sqrt(2 * math.pi) * s)
    across = np.exp(-0.5 * (b / s) ** 2)
    hi, lo = (a + length / 2) / (_SQRT2 * s), (a - length / 2) / (_SQRT2 * s)
    along = special.erf(hi) - special.erf(lo)
    shape = norm * across * along
    model = flux * shape
    # Derivatives of the erf terms: d erf(z) / dz = 2 / sqrt(pi) exp(-z^2).
    ghi = 2 / math.sqrt(math.pi) * np.exp(-hi * hi) / (_SQRT2 * s)
    glo = 2 / math.sqrt(math.pi) * np.exp(-lo * lo) / (_SQRT2 * s)
    d_along_da = ghi - glo
    d_along_dl = 0.5 * (ghi + glo)
    d_across_db = -b / (s * s) * across
    fn = flux * norm
    d_da = fn * across * d_along_da
    d_db = fn * d_across_db * along
    jac = np.empty((u.size, 5))
    jac[:, 0] = shape
    jac[:, 1] = -(d_da * c - d_db * sn)
    jac[:, 2] = -(d_da * sn + d_db * c)
    jac[:, 3] = -model / length + fn * across * d_along_dl
    # da/dtheta = b, db/dtheta = -a.
    jac[:, 4] = d_da * b - d_db * a
    return model, jac


def fit_trail(
    data: np.ndarray,
    sigma: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    sigma_psf: float,
    start: np.ndarray,
    *,
    max_length: float,
    max_offset: float,
) -> FitResult:
    """Fit :func:`trail_model` to the good pixels of one stamp.

    Parameters
    ----------
    data, sigma, u, v : numpy.ndarray
        1-d arrays over the good pixels (see :func:`fit_dipole`).
    sigma_psf : float
        The Gaussian PSF's sigma in pixels.
    start : numpy.ndarray
        ``(F, x0, y0, L, theta)``.
    max_length, max_offset : float
        Bounds on the length and on the centre's offset (pixels).
    """

    model = _Last(lambda p: trail_model(p, u, v, sigma_psf))

    def fun(p: np.ndarray) -> np.ndarray:
        return (model(p)[0] - data) / sigma

    def jac(p: np.ndarray) -> np.ndarray:
        return model(p)[1] / sigma[:, None]

    res = _solve(fun, jac, start, int(data.size))
    p = res.params.copy()
    # The model is even in L (and theta is periodic): fold both afterwards.
    p[3] = abs(p[3])
    p[4] = p[4] % math.pi
    physical = bool(
        res.success and p[3] <= max_length and abs(p[1]) <= max_offset and abs(p[2]) <= max_offset
    )
    return FitResult(p, res.cov, res.chi2, res.ndata, physical)
