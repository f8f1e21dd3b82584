"""Noise bookkeeping and decorrelation of a PSF-matched difference (DMTN-021).

A difference ``D = F_S * S - F_T * T`` (``F_S``, ``F_T`` the kernels applied to
the science and template: the matching kernel on one side, a delta or the
science PSF on the other) has noise power ``s2 |F_S|^2 + t2 |F_T|^2`` for
white input noise of variances ``s2`` and ``t2``: correlated.  The afterburner
multiplies its spectrum by

    phi(k) = sqrt((s2 |F_S(0)|^2 + t2 |F_T(0)|^2) / (s2 |F_S(k)|^2 + t2 |F_T(k)|^2))

which whitens it and keeps fluxes (``phi(0) = 1``); the PSF becomes
``phi F_S P_S``.  The same formula with ``phi = 1`` gives the noise of an
undecorrelated difference.  Per-pixel variance follows from Parseval for
locally stationary noise: ``a var_S(x, y) + b var_T(x, y)`` with
``a = <phi^2 |F_S|^2>`` and ``b = <phi^2 |F_T|^2>`` averaged over frequency,
all divided by ``F_S(0)^2`` because the result is put on the science's
photometric scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skydm.diffim import _fft
from skydm.diffim._noise import NoiseCovariance
from skydm.image.psf import PixelPsf

_DELTA = np.ones((1, 1))


@dataclass
class NoiseTransfer:
    """How the inputs' noise and PSF reach the difference.

    Attributes
    ----------
    a, b : float
        Per-pixel variance of the difference is ``a var_S + b var_T``.
    psf : PixelPsf
        The difference's PSF on the science photometric scale.
    scale : float
        ``F_S(0)``: the difference is divided by this to be in science counts.
    filter_factor : float
        Variance of the PSF-matched filter on the difference over what white
        noise of the same per-pixel variance gives (1 after an exact
        decorrelation; larger for correlated noise).
    """

    a: float
    b: float
    psf: PixelPsf
    scale: float
    filter_factor: float = 1.0


#: Largest amplification of any frequency.  Where both filters have almost no
#: power (pre-convolution of a broad PSF) whitening exactly would only blow up
#: rounding errors; the variance weights use the same capped filter, so the
#: variance plane stays exact and the noise is merely not quite white there.
PHI2_MAX = 1e4


def _phi2(fs2: np.ndarray, ft2: np.ndarray, s2: float, t2: float, target: float) -> np.ndarray:
    denom = s2 * fs2 + t2 * ft2
    return np.minimum(target / np.maximum(denom, 1e-30), PHI2_MAX)


def transfer(
    f_s: np.ndarray | None,
    f_t: np.ndarray | None,
    psf_s: np.ndarray,
    s2: float,
    t2: float,
    *,
    decorrelate: bool,
    cov_s: NoiseCovariance | None = None,
    cov_t: NoiseCovariance | None = None,
) -> NoiseTransfer:
    """Variance weights and PSF of the difference, computed on a small grid.

    ``cov_s``/``cov_t`` are the inputs' noise covariances (white when
    omitted): their spectra multiply ``|F_S|^2`` and ``|F_T|^2`` wherever
    noise power is computed, so the afterburner whitens the noise actually
    there and the variance weights include the measured per-pixel ratio.
    """
    cs, ct = cov_s or NoiseCovariance.white(), cov_t or NoiseCovariance.white()
    ks = _DELTA if f_s is None else f_s
    kt = _DELTA if f_t is None else f_t
    size = max(ks.shape[0], kt.shape[0], psf_s.shape[0], cs.kernel.shape[0], ct.kernel.shape[0])
    m = 4 * size + 1
    fs = _fft.small_spectrum(ks, m)
    ft = _fft.small_spectrum(kt, m)
    fs0 = float(np.real(fs[0, 0]))
    fs2 = np.abs(fs) ** 2 * cs.power_small(m)
    ft2 = np.abs(ft) ** 2 * ct.power_small(m)
    target = s2 * float(fs2[0, 0]) + t2 * float(ft2[0, 0])
    phi2 = _phi2(fs2, ft2, s2, t2, target) if decorrelate else np.ones_like(fs2)
    a = float(np.mean(phi2 * fs2)) / fs0**2
    b = float(np.mean(phi2 * ft2)) / fs0**2
    spec = np.sqrt(phi2) * fs * _fft.small_spectrum(psf_s, m) / fs0
    out = min(m, psf_s.shape[0] + ks.shape[0] + (kt.shape[0] if decorrelate else 0)) | 1
    psf_img = _fft.centred_from_spectrum(spec, out)
    # The matched filter's variance under the difference's own noise power.
    noise = phi2 * (s2 * fs2 + t2 * ft2)
    p2 = np.abs(spec) ** 2
    factor = float(np.mean(p2 * noise) / (np.mean(p2) * np.mean(noise)))
    return NoiseTransfer(a=a, b=b, psf=PixelPsf(psf_img), scale=fs0, filter_factor=factor)


def _power(
    kernel: np.ndarray | None, shape: tuple[int, int], cov: NoiseCovariance | None
) -> tuple[np.ndarray | float, float]:
    """``|F(k)|^2 C(k)`` on the half spectrum of ``shape`` (``float32``) and its value at 0."""
    c = 1.0 if cov is None else cov.power_rfft(shape)
    if kernel is None:
        if isinstance(c, np.ndarray):
            return c, float(c[0, 0])
        return c, c
    hat = _fft.kernel_rfft2(kernel, shape)
    power = np.abs(hat)
    del hat
    power *= power
    if isinstance(c, np.ndarray):
        power *= c
    return power, float(power[0, 0])


def decorrelation_filter(
    f_s: np.ndarray | None,
    f_t: np.ndarray | None,
    s2: float,
    t2: float,
    shape: tuple[int, int],
    *,
    scale: float = 1.0,
    cov_s: NoiseCovariance | None = None,
    cov_t: NoiseCovariance | None = None,
) -> np.ndarray:
    """The afterburner ``phi / scale`` on the half spectrum of ``shape`` (``float32``).

    Multiplying a difference's rfft by this whitens its noise (of the
    inputs' covariances ``cov_s``/``cov_t``, white when omitted) and divides
    it by ``scale`` in the same pass.
    """
    fs2, fs20 = _power(f_s, shape, cov_s)
    ft2, ft20 = _power(f_t, shape, cov_t)
    target = s2 * fs20 + t2 * ft20
    # denom = s2 |F_S|^2 + t2 |F_T|^2, then phi^2 = target / denom, all in place.
    if isinstance(fs2, np.ndarray):
        denom = fs2
        denom *= np.float32(s2)
        denom += np.float32(t2) * ft2
    elif isinstance(ft2, np.ndarray):
        denom = ft2
        denom *= np.float32(t2)
        denom += np.float32(s2) * fs2
    else:
        denom = np.full((shape[0], shape[1] // 2 + 1), s2 * fs2 + t2 * ft2, dtype=np.float32)
    del fs2, ft2
    np.maximum(denom, np.float32(1e-30), out=denom)
    np.divide(np.float32(target), denom, out=denom)
    np.minimum(denom, np.float32(PHI2_MAX), out=denom)
    np.sqrt(denom, out=denom)
    if scale != 1.0:
        denom /= np.float32(scale)
    return denom


def decorrelate_image(
    diff: np.ndarray,
    f_s: np.ndarray | None,
    f_t: np.ndarray | None,
    s2: float,
    t2: float,
    *,
    scale: float = 1.0,
    cov_s: NoiseCovariance | None = None,
    cov_t: NoiseCovariance | None = None,
) -> np.ndarray:
    """Apply the afterburner ``phi`` (and divide by ``scale``) over the full frame (``float32``)."""
    spec = _fft.rfft2(diff.astype(np.float32, copy=False))
    spec *= decorrelation_filter(
        f_s, f_t, s2, t2, diff.shape, scale=scale, cov_s=cov_s, cov_t=cov_t
    )
    return _fft.irfft2(spec, diff.shape, overwrite=True)
