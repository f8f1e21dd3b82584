"""Vectorised per-source numerics on postage stamps: PSF fits, apertures, moments.

Every function here works on a stack of ``n`` stamps at once (arrays of
shape ``(n, s, s)``), so that a visit's thousand DIA sources cost a few
array operations rather than a thousand Python loops.  Pixels outside the
image are part of a stamp but never ``good``: a stamp that crosses the image
edge is measured with the pixels it has and says so (``inside``), which is
what lets forced photometry work up to the edge.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from skydm.image import UNUSABLE, Exposure
from skydm.image.mask import Mask
from skydm.image.psf import Psf

#: Sub-pixel phases at which PSF kernels are tabulated (a ninth of a pixel):
#: the flux error of using the nearest phase is far below the photon noise.
PHASES = 9

#: Bits that make a stamp "touch the edge" of the usable image.
EDGE_BITS = np.uint32(Mask.EDGE | Mask.NO_DATA)


@dataclass(frozen=True)
class Stamps:
    """Pixel stamps of ``n`` sources, centred on the pixel nearest each position.

    Attributes
    ----------
    data, var : numpy.ndarray
        ``(n, s, s)`` float64 image and variance (0 outside the image).
    mask : numpy.ndarray
        ``(n, s, s)`` uint32 mask bits (``NO_DATA`` outside the image).
    inside : numpy.ndarray
        ``(n, s, s)`` bool: the pixel lies on the image.
    good : numpy.ndarray
        ``(n, s, s)`` bool: on the image, finite, positive variance, no
        unusable mask bit.
    ix, iy : numpy.ndarray
        The central pixels.
    dx, dy : numpy.ndarray
        Offsets of the positions from the central pixels (in [-0.5, 0.5]).
    """

    data: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    inside: np.ndarray
    good: np.ndarray
    ix: np.ndarray
    iy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray

    @property
    def half(self) -> int:
        """Half the stamp side (the side is ``2 * half + 1``)."""
        return int(self.data.shape[1] // 2)

    def sub(self, half: int) -> Stamps:
        """The central ``2 * half + 1`` pixels of each stamp (views, no copy)."""
        c = self.half - half
        if c < 0:
            raise ValueError(f"sub-stamp half size {half} exceeds the stamps' {self.half}")
        sl = (slice(None), slice(c, c + 2 * half + 1), slice(c, c + 2 * half + 1))
        return Stamps(
            self.data[sl],
            self.var[sl],
            self.mask[sl],
            self.inside[sl],
            self.good[sl],
            self.ix,
            self.iy,
            self.dx,
            self.dy,
        )

    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel offsets (u along x, v along y) from each source position, ``(n, s, s)``."""
        off = np.arange(-self.half, self.half + 1, dtype=np.float64)
        u = off[None, None, :] - self.dx[:, None, None]
        v = off[None, :, None] - self.dy[:, None, None]
        return np.broadcast_to(u, self.data.shape), np.broadcast_to(v, self.data.shape)


def gather(exposure: Exposure, x: np.ndarray, y: np.ndarray, half: int) -> Stamps:
    """Stamps of side ``2 * half + 1`` around 0-based positions (``x`` the column)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ny, nx = exposure.shape
    finite = np.isfinite(x) & np.isfinite(y)
    ix = np.where(finite, np.rint(np.where(finite, x, 0.0)), 0).astype(np.int64)
    iy = np.where(finite, np.rint(np.where(finite, y, 0.0)), 0).astype(np.int64)
    off = np.arange(-half, half + 1)
    rows = iy[:, None, None] + off[None, :, None]
    cols = ix[:, None, None] + off[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx) & finite[:, None, None]
    rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    data = np.where(inside, exposure.image[rc, cc], 0.0).astype(np.float64)
    var = np.where(inside, exposure.var[rc, cc], 0.0).astype(np.float64)
    mask = np.where(inside, exposure.msk[rc, cc], np.uint32(Mask.NO_DATA)).astype(np.uint32)
    good = inside & np.isfinite(data) & np.isfinite(var) & (var > 0)
    good &= (mask & np.uint32(UNUSABLE)) == 0
    data = np.where(good, data, 0.0)
    var = np.where(good, var, 1.0)
    dx = np.where(finite, x - ix, 0.0)
    dy = np.where(finite, y - iy, 0.0)
    return Stamps(data, var, mask, inside, good, ix, iy, dx, dy)


def gather_mask(exposure: Exposure, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """Mask stamps as :func:`gather` cuts them, 0 outside the image."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ny, nx = exposure.shape
    finite = np.isfinite(x) & np.isfinite(y)
    ix = np.where(finite, np.rint(np.where(finite, x, 0.0)), -(10**6)).astype(np.int64)
    iy = np.where(finite, np.rint(np.where(finite, y, 0.0)), -(10**6)).astype(np.int64)
    off = np.arange(-half, half + 1)
    rows = iy[:, None, None] + off[None, :, None]
    cols = ix[:, None, None] + off[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    m = exposure.msk[np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)]
    return np.where(inside, m, np.uint32(0)).astype(np.uint32)


class PsfTable:
    """A PSF tabulated at ``PHASES`` x ``PHASES`` sub-pixel shifts, with its gradients.

    Parameters
    ----------
    psf : Psf
        The PSF model.
    half : int
        Half the stamp side.
    """

    def __init__(self, psf: Psf, half: int) -> None:
        size = 2 * half + 1
        steps = (np.arange(PHASES) - (PHASES - 1) / 2) / PHASES
        self.half = half
        self.kernels = np.array([[psf.kernel(size, dx, dy) for dx in steps] for dy in steps])
        # Gradients by Fourier differentiation: finite differences would
        # underestimate them by ~10% on a 1.5-pixel-sigma PSF (and with them
        # the position errors).  The kernels are zero-padded so the
        # derivative does not wrap around.
        pad = np.pad(self.kernels, ((0, 0), (0, 0), (half, half), (half, half)))
        n = pad.shape[-1]
        spec = sfft.rfft2(pad)
        kx = 2j * np.pi * np.fft.rfftfreq(n)
        ky = 2j * np.pi * np.fft.fftfreq(n)
        cut = (Ellipsis, slice(half, half + size), slice(half, half + size))
        self.grad_x = sfft.irfft2(spec * kx[None, :], s=(n, n))[cut]
        self.grad_y = sfft.irfft2(spec * ky[:, None], s=(n, n))[cut]

    def _phase(self, d: np.ndarray) -> np.ndarray:
        p = np.rint(d * PHASES) + (PHASES - 1) // 2
        return np.clip(p, 0, PHASES - 1).astype(np.int64)

    def at(self, stamps: Stamps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The PSF and its x, y gradients at each stamp's sub-pixel phase, ``(n, s, s)``."""
        py, px = self._phase(stamps.dy), self._phase(stamps.dx)
        return self.kernels[py, px], self.grad_x[py, px], self.grad_y[py, px]


@functools.lru_cache(maxsize=16)
def psf_table(psf: Psf, half: int) -> PsfTable:
    """A cached :class:`PsfTable` (PSF models are not changed once made)."""
    return PsfTable(psf, half)


@dataclass(frozen=True)
class PsfFit:
    """Linear PSF-flux fits at fixed positions.

    Attributes
    ----------
    flux, err : numpy.ndarray
        ``sum(P D / V) / sum(P^2 / V)`` over the good pixels and its error
        (NaN where no good pixel carries PSF weight).
    chi2, lnl : numpy.ndarray
        chi^2 and the Gaussian log likelihood of the fit over ``ndata`` pixels.
    ndata : numpy.ndarray
        Good pixels in the fit region.
    coverage : numpy.ndarray
        Fraction of the PSF's weight on good pixels (1 for a clean stamp).
    edge : numpy.ndarray
        The PSF stamp leaves the image or touches EDGE / NO_DATA pixels.
    pos_cov : numpy.ndarray
        ``(n, 2, 2)`` covariance of (x, y) from the fit's Fisher matrix, the
        flux marginalised (NaN where singular).
    """

    flux: np.ndarray
    err: np.ndarray
    chi2: np.ndarray
    lnl: np.ndarray
    ndata: np.ndarray
    coverage: np.ndarray
    edge: np.ndarray
    pos_cov: np.ndarray


def psf_fit(stamps: Stamps, table: PsfTable, *, fit_radius: float, full: bool = True) -> PsfFit:
    """Fit a PSF's amplitude at each stamp's position (see :class:`PsfFit`).

    ``fit_radius`` (pixels) bounds the region over which chi^2, the
    likelihood and ``ndata`` are counted; the flux uses the whole stamp, the
    PSF itself down-weighting the wings.  With ``full=False`` only the flux,
    its error, the coverage and the edge flag are computed (NaN elsewhere).
    """
    p, gx, gy = table.at(stamps)
    w = np.where(stamps.good, 1.0 / stamps.var, 0.0)
    pw = p * w
    den = np.sum(pw * p, axis=(1, 2))
    num = np.sum(pw * stamps.data, axis=(1, 2))
    fine = den > 0
    flux = np.where(fine, num / np.where(fine, den, 1.0), np.nan)
    err = np.where(fine, 1.0 / np.sqrt(np.where(fine, den, 1.0)), np.nan)
    total = np.sum(p, axis=(1, 2))
    coverage = np.sum(np.where(stamps.good, p, 0.0), axis=(1, 2)) / total
    # Where the PSF has weight (above a thousandth of its peak): any pixel off
    # the image or in the EDGE / NO_DATA planes makes the fit an edge fit.
    weighty = p > 1e-3 * p.max(axis=(1, 2), keepdims=True)
    off = ~stamps.inside | ((stamps.mask & EDGE_BITS) != 0)
    edge = np.any(weighty & off, axis=(1, 2))
    n = p.shape[0]
    if not full:
        nan = np.full(n, np.nan)
        return PsfFit(
            flux, err, nan, nan, np.zeros(n, np.int64), coverage, edge, np.full((n, 2, 2), np.nan)
        )
    u, v = stamps.offsets()
    region = stamps.good & (u * u + v * v <= fit_radius * fit_radius)
    f0 = np.where(fine, flux, 0.0)
    resid = stamps.data - f0[:, None, None] * p
    chi = np.where(region, resid * resid * w, 0.0)
    chi2 = np.sum(chi, axis=(1, 2))
    logs = np.where(region, np.log(2 * math.pi * stamps.var), 0.0)
    lnl = -0.5 * (chi2 + np.sum(logs, axis=(1, 2)))
    ndata = np.count_nonzero(region, axis=(1, 2))
    chi2 = np.where(fine & (ndata > 0), chi2, np.nan)
    lnl = np.where(fine & (ndata > 0), lnl, np.nan)
    # Fisher matrix of (flux, x0, y0): the model is f P(u - x0, v - y0).
    a = -gx * f0[:, None, None]
    b = -gy * f0[:, None, None]
    fisher = np.empty((p.shape[0], 3, 3))
    cols = (p, a, b)
    for i in range(3):
        for j in range(i, 3):
            fisher[:, i, j] = fisher[:, j, i] = np.sum(cols[i] * cols[j] * w, axis=(1, 2))
    pos_cov = np.full((p.shape[0], 2, 2), np.nan)
    det = np.linalg.det(fisher)
    ok = fine & np.isfinite(det) & (np.abs(det) > 0)
    if ok.any():
        inv = np.linalg.inv(fisher[ok])
        pos_cov[ok] = inv[:, 1:, 1:]
        bad = ~(inv[:, 1, 1] > 0) | ~(inv[:, 2, 2] > 0)
        pos_cov[np.flatnonzero(ok)[bad]] = np.nan
    return PsfFit(flux, err, chi2, lnl, ndata, coverage, edge, pos_cov)


@dataclass(frozen=True)
class Aperture:
    """Circular-aperture sums.

    Attributes
    ----------
    flux, err : numpy.ndarray
        Sum of the good pixels weighted by their area inside the circle.
    truncated : numpy.ndarray
        Part of the aperture lies off the image.
    masked : numpy.ndarray
        Some pixels inside the aperture were unusable (left out of the sum).
    """

    flux: np.ndarray
    err: np.ndarray
    truncated: np.ndarray
    masked: np.ndarray


def aperture(stamps: Stamps, radius: float) -> Aperture:
    """Aperture flux within ``radius`` pixels of each position.

    Each pixel counts with the fraction of its area inside the circle,
    approximated by ``clip(radius + 0.5 - distance, 0, 1)`` (exact along the
    circle's radius, within a few thousandths of the aperture's area).
    """
    u, v = stamps.offsets()
    frac = np.clip(radius + 0.5 - np.hypot(u, v), 0.0, 1.0)
    inner = frac > 0
    w = np.where(stamps.good, frac, 0.0)
    # No usable pixel in the aperture at all (off the image): no flux.
    some = np.any(w > 0, axis=(1, 2))
    flux = np.where(some, np.sum(w * stamps.data, axis=(1, 2)), np.nan)
    err = np.where(some, np.sqrt(np.sum(w * w * stamps.var, axis=(1, 2))), np.nan)
    truncated = np.any(inner & ~stamps.inside, axis=(1, 2))
    masked = np.any(inner & stamps.inside & ~stamps.good, axis=(1, 2))
    return Aperture(flux, err, truncated, masked)


@dataclass(frozen=True)
class Moments:
    """Adaptive second moments (pixels^2) and whether they converged.

    Attributes
    ----------
    xx, yy, xy : numpy.ndarray
        The moments of the best-matching elliptical Gaussian.
    ok : numpy.ndarray
        Converged to a positive-definite matrix with positive weighted flux.
    """

    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    ok: np.ndarray

    @property
    def trace(self) -> np.ndarray:
        """``xx + yy``."""
        return self.xx + self.yy

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Major and minor variances and the major axis' angle (radians from +x)."""
        mean = 0.5 * (self.xx + self.yy)
        d = np.hypot(0.5 * (self.xx - self.yy), self.xy)
        theta = 0.5 * np.arctan2(2 * self.xy, self.xx - self.yy)
        return mean + d, mean - d, theta


def adaptive_moments(
    data: np.ndarray,
    good: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    start: float,
    *,
    iterations: int = 20,
    tol: float = 1e-3,
) -> Moments:
    """Adaptive (HSM-style) second moments of a stack of stamps.

    The weight is an elliptical Gaussian with covariance ``W``; each step sets
    ``W`` to twice the weighted covariance, whose fixed point is the
    covariance of the source itself when the source is Gaussian (Bernstein &
    Jarvis 2002).  The weight's centre follows the weighted centroid.

    Parameters
    ----------
    data, good : numpy.ndarray
        ``(n, s, s)`` pixel values (positive sources) and usable pixels.
    u, v : numpy.ndarray
        ``(n, s, s)`` pixel offsets from the nominal centre.
    start : float
        Initial weight variance (pixels^2), e.g. the PSF's.
    """
    n = data.shape[0]
    wxx = np.full(n, float(start))
    wyy = np.full(n, float(start))
    wxy = np.zeros(n)
    cx = np.zeros(n)
    cy = np.zeros(n)
    ok = np.ones(n, dtype=bool)
    done = np.zeros(n, dtype=bool)
    # float32 inside: exp and the weighted sums over a few hundred pixels
    # lose nothing that matters at 1e-6, and take half the time.
    d = np.where(good, data, 0.0).astype(np.float32)
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    limit = float(data.shape[1]) ** 2
    # Only the stamps still iterating are computed: most converge in a few
    # steps, and the few slow ones would otherwise cost as much as all.
    active = np.arange(n)
    for _ in range(iterations):
        if active.size == 0:
            break
        a = active
        det = wxx[a] * wyy[a] - wxy[a] * wxy[a]
        good_a = det > 0
        sdet = np.where(good_a, det, 1.0)
        ixx, iyy, ixy = wyy[a] / sdet, wxx[a] / sdet, -wxy[a] / sdet
        du = u[a] - cx[a, None, None].astype(np.float32)
        dv = v[a] - cy[a, None, None].astype(np.float32)
        f32 = np.float32
        q = ixx[:, None, None].astype(f32) * du * du + iyy[:, None, None].astype(f32) * dv * dv
        q += 2 * ixy[:, None, None].astype(f32) * du * dv
        wd = np.exp(np.float32(-0.5) * np.minimum(q, np.float32(50.0))) * d[a]
        s0 = np.sum(wd, axis=(1, 2), dtype=np.float64)
        good_a &= s0 > 0
        s0 = np.where(good_a, s0, 1.0)
        mu = np.sum(wd * du, axis=(1, 2), dtype=np.float64) / s0
        mv = np.sum(wd * dv, axis=(1, 2), dtype=np.float64) / s0
        du -= mu[:, None, None].astype(np.float32)
        dv -= mv[:, None, None].astype(np.float32)
        nxx = 2 * np.sum(wd * du * du, axis=(1, 2), dtype=np.float64) / s0
        nyy = 2 * np.sum(wd * dv * dv, axis=(1, 2), dtype=np.float64) / s0
        nxy = 2 * np.sum(wd * du * dv, axis=(1, 2), dtype=np.float64) / s0
        good_a &= (nxx > 0) & (nyy > 0) & (nxx * nyy - nxy * nxy > 0)
        good_a &= (nxx < limit) & (nyy < limit)
        change = np.abs(nxx - wxx[a]) + np.abs(nyy - wyy[a]) + np.abs(nxy - wxy[a])
        conv = good_a & (change <= tol * (wxx[a] + wyy[a]))
        step = good_a & ~conv
        ok[a[~good_a]] = False
        done[a[conv]] = True
        wxx[a[step]], wyy[a[step]], wxy[a[step]] = nxx[step], nyy[step], nxy[step]
        # Half steps for the centre: a full step can oscillate on noisy stamps.
        cx[a[step]] += 0.5 * mu[step]
        cy[a[step]] += 0.5 * mv[step]
        active = a[step]
    # Stamps still moving after the last iteration keep their last estimate.
    ok &= np.isfinite(wxx) & np.isfinite(wyy)
    return Moments(
        np.where(ok, wxx, np.nan), np.where(ok, wyy, np.nan), np.where(ok, wxy, np.nan), ok
    )
