"""The inputs' measured noise covariance, and what it does to filters.

Resampled images (warps, drizzled mosaics, a template aligned here) have
noise correlated between neighbouring pixels, which no variance plane can
describe: the per-pixel variance may be right while a sum over a PSF
scatters twice as much as white noise predicts.  Following Rubin's
``ip_diffim`` (DMTN-021 decorrelation with the inputs' noise spectra, and the
detection threshold computed with the noise autocorrelation), each input's
covariance is measured on its source-free pixels, in units of its variance
plane::

    rho(u) = < r(p) r(p + u) / sqrt(V(p) V(p + u)) >,   r = image - background

so that ``rho(0)`` is the measured/modelled per-pixel variance ratio (1 for a
correct variance plane) and ``C(k) = FT(rho)`` is the noise power spectrum
relative to white noise of the plane's variance.  Every filter then uses
``V(p) C(k)`` for the noise instead of ``V(p)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from skydm.diffim import _common, _fft
from skydm.diffim._prepare import robust_sigma
from skydm.image import Exposure
from skydm.image.mask import UNUSABLE

#: Smallest relative noise power allowed in a spectrum (a measured covariance
#: is a noisy estimate; its transform may dip below zero at some frequencies).
POWER_FLOOR = 0.05


@dataclass(frozen=True)
class NoiseCovariance:
    """An image's noise autocovariance in units of its variance plane.

    Attributes
    ----------
    kernel : numpy.ndarray
        ``(2R+1, 2R+1)``, centred: ``kernel[R, R]`` is the measured/modelled
        per-pixel variance ratio, the others the covariance at each lag.
    n_pixels : int
        Source-free pixels it was measured on (0: not measured, white).
    """

    kernel: np.ndarray
    n_pixels: int

    @classmethod
    def white(cls) -> NoiseCovariance:
        """White noise exactly as the variance plane says."""
        return cls(np.ones((1, 1)), 0)

    @property
    def ratio(self) -> float:
        """Measured per-pixel variance over the variance plane's."""
        r = self.kernel.shape[0] // 2
        return float(self.kernel[r, r])

    @property
    def is_white(self) -> bool:
        """Whether this is exactly the variance plane's white noise."""
        return self.kernel.shape == (1, 1) and self.kernel[0, 0] == 1.0

    @property
    def box_factor(self) -> float:
        """Noise power at zero frequency relative to the per-pixel variance.

        ``sum(rho) / rho(0)``: how much more a large-aperture sum scatters
        than white noise of the same per-pixel variance (1 for white noise).
        """
        return float(self.kernel.sum()) / max(self.ratio, 1e-12)

    def power_small(self, size: int) -> np.ndarray:
        """``C(k)`` on a full ``size`` x ``size`` FFT grid (real, floored)."""
        if self.is_white:
            return np.ones((size, size))
        power = np.real(_fft.small_spectrum(self.kernel, size))
        return np.maximum(power, POWER_FLOOR * self.ratio)

    def power_rfft(self, shape: tuple[int, int]) -> np.ndarray | float:
        """``C(k)`` on the half spectrum of ``shape`` (``float32``), or 1.0 when white."""
        if self.is_white:
            return 1.0
        power = _fft.symmetric_kernel_rfft2(self.kernel, shape)
        np.maximum(power, np.float32(POWER_FLOOR * self.ratio), out=power)
        return power


def _normalised(exp: Exposure, sl: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """(background-subtracted image / sqrt(variance), usable pixels) in window ``sl``."""
    img, var, msk = exp.image[sl], exp.var[sl], exp.msk[sl]
    good = np.isfinite(img) & np.isfinite(var) & (var > 0)
    good &= (msk & np.uint32(UNUSABLE)) == 0
    x = np.zeros(img.shape, dtype=np.float64)
    if np.count_nonzero(good) < 500:
        return x, good
    back = _common.smooth_background(img, [msk], clip_sources=True)
    resid = back.subtracted(img)
    np.divide(resid, np.sqrt(np.where(good, var, 1.0)), out=x, where=good)
    return x, good


def _levels(x: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|5x5 mean| and |pixel| of ``x`` in units of their own robust sigma."""
    smooth = ndimage.uniform_filter(x, 5, mode="constant")
    s_sig = robust_sigma(smooth[good])
    p_sig = robust_sigma(x[good])
    if not (s_sig > 0 and p_sig > 0):
        return np.zeros(x.shape), np.zeros(x.shape)
    np.abs(smooth, out=smooth)
    smooth /= s_sig
    return smooth, np.abs(x) / p_sig


def _sources(x: np.ndarray, good: np.ndarray, nsigma: float) -> np.ndarray:
    """Pixels whose 5x5 mean departs more than ``nsigma`` from zero, or alone 6 sigma."""
    mean, pixel = _levels(x, good)
    return np.asarray((mean > nsigma) | (pixel > 6))


def measure_covariance(
    exp: Exposure,
    *,
    radius: int,
    window: int,
    source_sigma: float = 4.0,
    other: Exposure | None = None,
    other_sigma: float = 3.0,
) -> NoiseCovariance:
    """Measure ``exp``'s noise autocovariance (see the module docstring).

    Parameters
    ----------
    exp : Exposure
        A prepared input (``float32`` planes, unusable pixels masked).
    radius : int
        Largest lag measured, pixels.
    window : int
        Measured on the central ``window`` x ``window`` pixels at most
        (512^2 pixels estimate each lag to about 0.2% of the variance).
    source_sigma : float
        Pixels whose 5x5 mean departs more than this many sigma from the
        background (or that alone depart more than 6 sigma), grown by
        ``radius + 2``, count as sources and are left out.  The cut must be
        one that pure noise almost never reaches: keeping only pixels whose
        neighbourhood is quiet would itself anticorrelate neighbours.
    other : Exposure, optional
        The other image of the pair, on the same grid: sources found in it
        at ``other_sigma`` are left out too.  Its noise is independent of
        ``exp``'s, so this deep cut biases nothing, and it removes the faint
        static sources whose wings would pass for correlated noise.

    Returns
    -------
    NoiseCovariance
        White when fewer than 500 source-free pixels remain.
    """
    sl = _window(exp.shape, window)
    x, good = _normalised(exp, sl)
    if np.count_nonzero(good) < 500:
        return NoiseCovariance.white()
    src = _sources(x, good, source_sigma)
    if other is not None and other.shape == exp.shape:
        ox, ogood = _normalised(other, sl)
        if np.count_nonzero(ogood) >= 500:
            src |= _sources(ox, ogood, other_sigma)
    return _from_normalised(x, good, src, radius)


def _window(shape: tuple[int, int], window: int) -> tuple[slice, slice]:
    ny, nx = shape
    wy, wx = min(ny, window), min(nx, window)
    y0, x0 = (ny - wy) // 2, (nx - wx) // 2
    return np.s_[y0 : y0 + wy, x0 : x0 + wx]


def measure_pair(
    science: Exposure,
    template: Exposure,
    *,
    radius: int,
    window: int,
    source_sigma: float = 4.0,
    other_sigma: float = 3.0,
) -> tuple[NoiseCovariance, NoiseCovariance]:
    """Both images' covariances, each with the other's sources left out.

    The same as two :func:`measure_covariance` calls with ``other`` given,
    with each image normalised and searched for sources once.
    """
    if science.shape != template.shape:
        return (
            measure_covariance(science, radius=radius, window=window),
            measure_covariance(template, radius=radius, window=window),
        )
    sl = _window(science.shape, window)
    xs, gs = _normalised(science, sl)
    xt, gt = _normalised(template, sl)
    masks: list[tuple[np.ndarray, np.ndarray] | None] = []
    for x, good in ((xs, gs), (xt, gt)):
        if np.count_nonzero(good) < 500:
            masks.append(None)
            continue
        mean, pixel = _levels(x, good)
        # (own sources at a safe cut, sources at a deep cut for the other image)
        masks.append(((mean > source_sigma) | (pixel > 6), (mean > other_sigma) | (pixel > 6)))
    ms, mt = masks
    cov_s = cov_t = NoiseCovariance.white()
    if ms is not None:
        cov_s = _from_normalised(xs, gs, ms[0] | (mt[1] if mt is not None else False), radius)
    if mt is not None:
        cov_t = _from_normalised(xt, gt, mt[0] | (ms[1] if ms is not None else False), radius)
    return cov_s, cov_t


def _from_normalised(
    x: np.ndarray, good: np.ndarray, src: np.ndarray, radius: int
) -> NoiseCovariance:
    """The covariance of normalised residuals ``x`` on ``good`` pixels off sources ``src``."""
    grow = 2 * (radius + 2) + 1
    src = ndimage.maximum_filter(src.view(np.uint8), size=grow).view(bool)
    good &= ~src
    n = int(np.count_nonzero(good))
    if n < 500:
        return NoiseCovariance.white()
    x[~good] = 0.0
    w = good.astype(np.float64)
    # A local mean over a box much wider than any resampling kernel removes
    # what the smooth background left (halos, gradients), which would
    # otherwise add the same spurious covariance at every lag.
    box = 8 * radius + 1
    local = ndimage.uniform_filter(x, box, mode="constant")
    local /= np.maximum(ndimage.uniform_filter(w, box, mode="constant"), 1e-3)
    x -= local
    x[~good] = 0.0
    shape = (x.shape[0] + radius + 1, x.shape[1] + radius + 1)
    fx = sfft.rfft2(x, s=shape)
    fw = sfft.rfft2(w, s=shape)
    acf = sfft.irfft2(fx * np.conj(fx), s=shape)
    cnt = sfft.irfft2(fw * np.conj(fw), s=shape)
    lags = np.arange(-radius, radius + 1)
    num = acf[np.ix_(lags % shape[0], lags % shape[1])]
    den = np.round(cnt[np.ix_(lags % shape[0], lags % shape[1])])
    kernel = np.where(den > 100, num / np.maximum(den, 1.0), 0.0)
    # Lags consistent with zero are set to zero: on small images their
    # sampling noise would otherwise add up in the noise power.
    floor = 2.5 * kernel[radius, radius] / math.sqrt(n)
    off = np.ones(kernel.shape, dtype=bool)
    off[radius, radius] = False
    kernel[off & (np.abs(kernel) < floor)] = 0.0
    # Symmetrise (rho(u) = rho(-u) by definition; rounding aside).
    kernel = 0.5 * (kernel + kernel[::-1, ::-1])
    return NoiseCovariance(kernel, n)


def filter_factor(psf: np.ndarray, cov: NoiseCovariance) -> float:
    """Variance of the PSF-matched filter under ``cov``, over that for white noise.

    ``sum_uv P(u) P(v) rho(u - v) / (rho(0) sum_u P(u)^2)``: the factor by
    which the detection significance of a white-noise filter is too wide
    (its square root), with the per-pixel variance itself taken as right.
    """
    if cov.is_white:
        return 1.0
    m = 2 * max(psf.shape[0], cov.kernel.shape[0]) + 1
    p2 = np.abs(_fft.small_spectrum(psf, m)) ** 2
    power = cov.power_small(m)
    return float(np.mean(p2 * power) / (np.mean(p2) * cov.ratio))
