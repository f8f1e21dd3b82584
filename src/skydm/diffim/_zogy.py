"""ZOGY (Zackay, Ofek & Gal-Yam 2016): proper difference D, score S and S_corr.

With the template's flux scale ``F_r = 1`` and the science's ``F_n = beta``
(fitted from stars), background variances ``s2``/``r2`` and PSFs ``P_n``/``P_r``:

    D^ = (P_r^ N^ - beta P_n^ R^) / sqrt(s2 |P_r^|^2 + r2 beta^2 |P_n^|^2)
    S  = S_N - S_R,  S_N^ = k_n^ N^,  S_R^ = k_r^ R^
    k_n^ = beta |P_r^|^2 conj(P_n^) / den^2,  k_r^ = beta^2 |P_n^|^2 conj(P_r^) / den^2
    S_corr = S / sqrt(V_n * k_n^2 + V_r * k_r^2 + V_ast)

where ``V_ast = sx^2 ((dS_N/dx)^2 + (dS_R/dx)^2) + sy^2 (...)`` carries the
fitted registration noise.  D is returned on the science's photometric scale
(multiplied by ``beta / F_D``) with its PSF ``P_D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skydm.diffim import _common, _fft
from skydm.diffim._stars import astrometric_sigma, find_stars, flux_ratio
from skydm.errors import UserError
from skydm.image import Exposure, psf_photometry
from skydm.image.mask import Mask
from skydm.image.psf import PixelPsf, Psf


@dataclass
class ZogyOutput:
    """What the ZOGY path produces."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: PixelPsf
    score: np.ndarray
    flux_ratio: float
    astrometric_sigma: tuple[float, float]
    n_stars: int


def _bg_subtracted(exp: Exposure) -> np.ndarray:
    back = _common.smooth_background(exp.image, exp.msk, clip_sources=False)
    out = np.asarray(exp.image, dtype=np.float32) - back
    out[~np.isfinite(out)] = 0.0
    return out


def _fit_ratio(
    science: Exposure,
    template: Exposure,
    s_img: np.ndarray,
    r_img: np.ndarray,
    psf_s: Psf,
    psf_t: Psf,
    notes: list[str],
) -> tuple[float, tuple[float, float], int]:
    fwhm = max(_common.psf_fwhm(psf_s), _common.psf_fwhm(psf_t))
    half = max(psf_s.default_size(), psf_t.default_size()) // 2
    stars = find_stars(
        template, science, half=half, isolation=2 * fwhm, max_stars=200, min_snr=20.0
    )
    beta = math.nan
    if len(stars) >= 3:
        s_exp = Exposure(s_img, science.var, science.msk, psf=psf_s)
        r_exp = Exposure(r_img, template.var, template.msk, psf=psf_t)
        fs, es = psf_photometry(s_exp, stars.x, stars.y)
        fr, er = psf_photometry(r_exp, stars.x, stars.y)
        beta = flux_ratio(fs, es, fr, er)
    if not math.isfinite(beta):
        zs, zr = science.zero_point, template.zero_point
        if math.isfinite(zs) and math.isfinite(zr):
            notes.append("too few stars for the flux ratio: taken from the zero points")
            return 10 ** (0.4 * (zs - zr)), (0.0, 0.0), len(stars)
        raise UserError(
            f"{template.source or 'the template'}: found {len(stars)} isolated unsaturated "
            "stars with S/N >= 20 to fit the science/template flux ratio (need 3); give "
            "exposures with zero points or deeper images"
        )
    sigma = astrometric_sigma(s_img, r_img, stars.x, stars.y, stars.snr, fwhm)
    return beta, sigma, len(stars)


def run(
    science: Exposure, template: Exposure, psf_s: Psf, psf_t: Psf, *, notes: list[str]
) -> ZogyOutput:
    """The ZOGY difference, its variance, mask and PSF, and S_corr."""
    shape = science.shape
    n_img = _bg_subtracted(science)
    r_img = _bg_subtracted(template)
    beta, (sx, sy), n_stars = _fit_ratio(science, template, n_img, r_img, psf_s, psf_t, notes)
    s2 = _common.typical_variance(science.var, science.msk)
    r2 = _common.typical_variance(template.var, template.msk)
    ker_n = psf_s.kernel().astype(np.float32)
    ker_r = psf_t.kernel().astype(np.float32)
    size = max(ker_n.shape[0], ker_r.shape[0])
    pn, pr = _fft.kernel_rfft2(ker_n, shape), _fft.kernel_rfft2(ker_r, shape)
    pn2 = (pn.real**2 + pn.imag**2).astype(np.float32)
    pr2 = (pr.real**2 + pr.imag**2).astype(np.float32)
    den2 = np.maximum(s2 * pr2 + r2 * beta**2 * pn2, np.float32(1e-30))
    n_hat = _fft.rfft2(n_img)
    r_hat = _fft.rfft2(r_img)
    del n_img, r_img
    f_d = beta / math.sqrt(s2 + r2 * beta**2)
    scale = np.float32(beta / f_d)
    d_img = _fft.irfft2((pr * n_hat - np.float32(beta) * pn * r_hat) / np.sqrt(den2), shape)
    d_img = (d_img * scale).astype(np.float32)
    s_n = _fft.irfft2(np.float32(beta) * pr2 * np.conj(pn) * n_hat / den2, shape)
    del n_hat
    s_r = _fft.irfft2(np.float32(beta**2) * pn2 * np.conj(pr) * r_hat / den2, shape)
    del r_hat, pn, pr, pn2, pr2, den2
    score = (s_n - s_r).astype(np.float32)
    # Small-grid versions of the filters: variance kernels, P_D and noise weights.
    m = 4 * size + 1
    pn_s, pr_s = _fft.small_spectrum(ker_n, m), _fft.small_spectrum(ker_r, m)
    den_s = np.sqrt(s2 * np.abs(pr_s) ** 2 + r2 * beta**2 * np.abs(pn_s) ** 2)
    kn = _fft.centred_from_spectrum(
        beta * np.abs(pr_s) ** 2 * np.conj(pn_s) / den_s**2, 2 * size + 1
    )
    kr = _fft.centred_from_spectrum(
        beta**2 * np.abs(pn_s) ** 2 * np.conj(pr_s) / den_s**2, 2 * size + 1
    )
    var_n = _common.filled(np.where(np.isfinite(science.var), science.var, np.nan), s2)
    var_r = _common.filled(np.where(np.isfinite(template.var), template.var, np.nan), r2)
    # Both variance terms in one inverse transform.
    v_spec = _fft.rfft2(var_n) * _fft.kernel_rfft2((kn**2).astype(np.float32), shape)
    v_spec += _fft.rfft2(var_r) * _fft.kernel_rfft2((kr**2).astype(np.float32), shape)
    v_score = _fft.irfft2(v_spec, shape).astype(np.float32, copy=False)
    del v_spec
    if sx > 0 or sy > 0:
        for s_img in (s_n, s_r):
            gy, gx = np.gradient(s_img)
            v_score += np.float32(sx**2) * gx**2 + np.float32(sy**2) * gy**2
            del gy, gx
    del s_n, s_r
    # A constant c in N appears as c in D (science scale) and as
    # beta c / (s2 + r2 beta^2) in S: remove the difference's residual sky from both.
    back = _common.residual_background(d_img, science.msk | template.msk)
    d_img -= back
    score -= np.float32(beta / (s2 + r2 * beta**2)) * back
    del back
    score /= np.sqrt(np.maximum(v_score, np.float32(1e-30)))
    del v_score
    a = float(np.mean(np.abs(beta / f_d * pr_s / den_s) ** 2))
    b = float(np.mean(np.abs(beta / f_d * beta * pn_s / den_s) ** 2))
    variance = (a * var_n + b * var_r).astype(np.float32)
    psf_d = PixelPsf(
        _fft.centred_from_spectrum(beta * pr_s * pn_s / (f_d * den_s), min(2 * size + 1, m))
    )
    mask = _common.grow_mask(science.msk, size) | _common.grow_mask(template.msk, size)
    _common.mark_edge(mask, size // 2)
    nodata = (mask & np.uint32(Mask.NO_DATA)) != 0
    d_img[nodata] = np.nan
    variance[nodata] = np.inf
    score[nodata] = 0.0
    return ZogyOutput(d_img, variance, mask, psf_d, score, beta, (sx, sy), n_stars)
