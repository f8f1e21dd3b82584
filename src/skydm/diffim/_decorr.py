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
    """

    a: float
    b: float
    psf: PixelPsf
    scale: float


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
) -> NoiseTransfer:
    """Variance weights and PSF of the difference, computed on a small grid."""
    ks = _DELTA if f_s is None else f_s
    kt = _DELTA if f_t is None else f_t
    size = max(ks.shape[0], kt.shape[0], psf_s.shape[0])
    m = 4 * size + 1
    fs = _fft.small_spectrum(ks, m)
    ft = _fft.small_spectrum(kt, m)
    fs0 = float(np.real(fs[0, 0]))
    fs2, ft2 = np.abs(fs) ** 2, np.abs(ft) ** 2
    target = s2 * fs0**2 + t2 * float(np.real(ft[0, 0])) ** 2
    phi2 = _phi2(fs2, ft2, s2, t2, target) if decorrelate else np.ones_like(fs2)
    a = float(np.mean(phi2 * fs2)) / fs0**2
    b = float(np.mean(phi2 * ft2)) / fs0**2
    spec = np.sqrt(phi2) * fs * _fft.small_spectrum(psf_s, m) / fs0
    out = min(m, psf_s.shape[0] + ks.shape[0] + (kt.shape[0] if decorrelate else 0)) | 1
    psf_img = _fft.centred_from_spectrum(spec, out)
    return NoiseTransfer(a=a, b=b, psf=PixelPsf(psf_img), scale=fs0)


def decorrelate_image(
    diff: np.ndarray,
    f_s: np.ndarray | None,
    f_t: np.ndarray | None,
    s2: float,
    t2: float,
) -> np.ndarray:
    """Apply the afterburner ``phi`` to ``diff`` over the full frame (``float32``)."""
    shape = diff.shape
    spec = _fft.rfft2(diff.astype(np.float32, copy=False))
    if f_s is None:
        fs2: np.ndarray | float = 1.0
        fs0 = 1.0
    else:
        fs_hat = _fft.kernel_rfft2(f_s, shape)
        fs0 = float(np.real(fs_hat[0, 0]))
        fs2 = (fs_hat.real**2 + fs_hat.imag**2).astype(np.float32)
        del fs_hat
    if f_t is None:
        ft2: np.ndarray | float = 1.0
        ft0 = 1.0
    else:
        ft_hat = _fft.kernel_rfft2(f_t, shape)
        ft0 = float(np.real(ft_hat[0, 0]))
        ft2 = (ft_hat.real**2 + ft_hat.imag**2).astype(np.float32)
        del ft_hat
    target = s2 * fs0**2 + t2 * ft0**2
    phi = np.sqrt(_phi2(np.asarray(fs2), np.asarray(ft2), s2, t2, target)).astype(np.float32)
    del fs2, ft2
    spec *= phi
    del phi
    return _fft.irfft2(spec, shape).astype(np.float32, copy=False)
