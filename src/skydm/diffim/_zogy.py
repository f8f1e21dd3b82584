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
    back = _common.smooth_background(exp.image, [exp.msk], clip_sources=False)
    return back.subtracted(exp.image)


def _add_gradient_variance(v: np.ndarray, img: np.ndarray, sx2: float, sy2: float) -> None:
    """``v += sx2 (d img/dx)^2 + sy2 (d img/dy)^2`` (as ``np.gradient``, without its copies)."""
    g = np.empty_like(img)
    for axis, s2 in ((1, sx2), (0, sy2)):
        if s2 <= 0 or img.shape[axis] < 2:
            continue
        a = np.moveaxis(img, axis, 0)
        d = np.moveaxis(g, axis, 0)
        np.subtract(a[2:], a[:-2], out=d[1:-1])
        d[1:-1] *= np.float32(0.5)
        np.subtract(a[1], a[0], out=d[0])
        np.subtract(a[-1], a[-2], out=d[-1])
        g *= g
        g *= np.float32(s2)
        v += g


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
    n_hat = _fft.rfft2(n_img)
    del n_img
    r_hat = _fft.rfft2(r_img)
    del r_img
    pn, pr = _fft.kernel_rfft2(ker_n, shape), _fft.kernel_rfft2(ker_r, shape)
    # Filters in place on float32 half spectra, scalars folded into the real
    # (half-size) arrays: every pass over a complex spectrum is 64 MB at 4096^2.
    pn2 = np.abs(pn)
    pn2 *= pn2
    pr2 = np.abs(pr)
    pr2 *= pr2
    den2 = pr2 * np.float32(s2)
    den2 += np.float32(r2 * beta**2) * pn2
    np.maximum(den2, np.float32(1e-30), out=den2)
    f_d = beta / math.sqrt(s2 + r2 * beta**2)
    # The S filters: w_n = |P_r^|^2 / den2 (its beta rides on P_n^ below) and
    # w_r = beta^2 |P_n^|^2 / den2.
    pr2 /= den2
    pn2 *= np.float32(beta**2)
    pn2 /= den2
    w_n, w_r = pr2, pn2
    # den2 becomes (beta / F_D) / sqrt(den2): D on the science's scale.
    np.sqrt(den2, out=den2)
    np.divide(np.float32(beta / f_d), den2, out=den2)
    # D^ = (P_r^ N^ - beta P_n^ R^) / sqrt(den2)
    pn *= np.float32(beta)
    buf = pr * n_hat
    tmp = pn * r_hat
    buf -= tmp
    buf *= den2
    del den2
    d_img = _fft.irfft2(buf, shape, overwrite=True)
    # S_N^ = w_n conj(beta P_n^) N^, S_R^ = w_r conj(P_r^) R^.
    np.conjugate(pn, out=tmp)
    tmp *= w_n
    tmp *= n_hat
    del n_hat, w_n, pn
    np.conjugate(pr, out=buf)
    buf *= w_r
    buf *= r_hat
    del r_hat, w_r, pr
    buf, tmp = tmp, buf  # buf: S_N^, tmp: S_R^
    s_n: np.ndarray | None = None
    s_r: np.ndarray | None = None
    if sx > 0 or sy > 0:
        # The astrometric term needs the gradients of S_N and S_R separately.
        s_n = _fft.irfft2(buf, shape, overwrite=True)
        s_r = _fft.irfft2(tmp, shape, overwrite=True)
        del buf, tmp
        score = s_n - s_r
    else:
        buf -= tmp
        del tmp
        score = _fft.irfft2(buf, shape, overwrite=True)
        del buf
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
    # Read-only below (filled returns the input plane when it is all finite).
    var_n = _common.filled(science.var, s2)
    var_r = _common.filled(template.var, r2)
    # Both variance terms in one inverse transform.
    v_spec = _fft.rfft2(var_n)
    v_spec *= _fft.kernel_rfft2(_fft.trimmed(kn**2), shape)
    tmp = _fft.rfft2(var_r)
    tmp *= _fft.kernel_rfft2(_fft.trimmed(kr**2), shape)
    v_spec += tmp
    del tmp
    v_score = _fft.irfft2(v_spec, shape, overwrite=True)
    del v_spec
    if s_n is not None and s_r is not None:
        _add_gradient_variance(v_score, s_n, sx**2, sy**2)
        _add_gradient_variance(v_score, s_r, sx**2, sy**2)
    del s_n, s_r
    # A constant c in N appears as c in D (science scale) and as
    # beta c / (s2 + r2 beta^2) in S: remove the difference's residual sky from both.
    back = _common.residual_background(d_img, [science.msk, template.msk])
    back.subtract_from(d_img)
    back.subtract_from(score, beta / (s2 + r2 * beta**2))
    del back
    np.maximum(v_score, np.float32(1e-30), out=v_score)
    np.sqrt(v_score, out=v_score)
    score /= v_score
    del v_score
    a = float(np.mean(np.abs(beta / f_d * pr_s / den_s) ** 2))
    b = float(np.mean(np.abs(beta / f_d * beta * pn_s / den_s) ** 2))
    variance = var_n * np.float32(a)
    variance += var_r * np.float32(b)
    psf_d = PixelPsf(
        _fft.centred_from_spectrum(beta * pr_s * pn_s / (f_d * den_s), min(2 * size + 1, m))
    )
    mask = _common.grow_masks([(science.msk, size), (template.msk, size)])
    _common.mark_edge(mask, size // 2)
    nodata = (mask & np.uint32(Mask.NO_DATA)) != 0
    if nodata.any():
        d_img[nodata] = np.nan
        variance[nodata] = np.inf
        score[nodata] = 0.0
    return ZogyOutput(d_img, variance, mask, psf_d, score, beta, (sx, sy), n_stars)
