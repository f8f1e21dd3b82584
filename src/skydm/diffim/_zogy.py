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
import sep
from scipy import ndimage
from scipy.signal import fftconvolve

from skydm.diffim import _common, _fft
from skydm.diffim._config import ZogyConfig
from skydm.diffim._noise import NoiseCovariance
from skydm.diffim._prepare import robust_sigma
from skydm.diffim._stars import FluxRatio, Stars, astrometric_sigma, find_stars, flux_ratio
from skydm.errors import UserError
from skydm.image import Exposure, psf_photometry
from skydm.image.mask import UNUSABLE, Mask
from skydm.image.psf import GaussianPsf, PixelPsf, Psf


@dataclass
class ZogyOutput:
    """What the ZOGY path produces."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: PixelPsf
    score: np.ndarray
    flux_ratio: FluxRatio
    astrometric_sigma: tuple[float, float]


def _bg_subtracted(exp: Exposure, box: int | None) -> np.ndarray:
    back = _common.smooth_background(exp.image, [exp.msk], clip_sources=False, box=box)
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


def _aperture_fraction(psf: Psf, radius: float) -> float:
    """Share of the PSF's light within ``radius`` pixels of its centre."""
    k = psf.kernel()
    h = k.shape[0] // 2
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    return float(k[np.hypot(x, y) <= radius].sum() / k.sum())


def _psf_ratio(
    science: Exposure,
    template: Exposure,
    s_img: np.ndarray,
    r_img: np.ndarray,
    psf_s: Psf,
    psf_t: Psf,
    stars: Stars,
) -> FluxRatio:
    s_exp = Exposure(s_img, science.var, science.msk, psf=psf_s)
    r_exp = Exposure(r_img, template.var, template.msk, psf=psf_t)
    fs, es = psf_photometry(s_exp, stars.x, stars.y)
    fr, er = psf_photometry(r_exp, stars.x, stars.y)
    return flux_ratio(fs, es, fr, er)


#: Where a PSF counts as reaching a pixel, relative to its peak (mask growth).
MASK_REACH = 1e-2

#: Fewest bright, unclipped pixels, and separate objects, for a pixel-based flux ratio.
MIN_RATIO_PIXELS = 30
MIN_RATIO_OBJECTS = 3


def _pixel_ratio(
    science: Exposure,
    template: Exposure,
    s_img: np.ndarray,
    r_img: np.ndarray,
    psf_s: Psf,
    psf_t: Psf,
) -> FluxRatio:
    """The flux ratio as a clipped regression of ``P_r * N`` on ``P_n * R``.

    Cross-convolved, both images have the same PSF, so their bright pixels
    (stars, galaxies) are related by the ratio alone; pixels where they are
    not (a transient, a variable, a cosmic ray) are clipped as outliers.
    Only pixels at least 5 sigma bright in the template count, so that its
    noise hardly dilutes the slope.
    """
    # Smoothed further by a Gaussian as wide as the broader PSF: a slightly
    # wrong PSF (given, or Gaussian for a real profile) then shifts light
    # within the smoothing scale only, as an aperture would tolerate.
    wide = GaussianPsf.from_fwhm(max(psf_s.fwhm, psf_t.fwhm)).kernel()
    ker_n = fftconvolve(psf_s.kernel(), wide).astype(np.float32)
    ker_r = fftconvolve(psf_t.kernel(), wide).astype(np.float32)
    a = _fft.convolve(s_img, ker_r)
    b = _fft.convolve(r_img, ker_n)
    h = max(ker_n.shape[0], ker_r.shape[0]) // 2
    h = min(h, (min(a.shape) - 8) // 2)
    usable = np.zeros(a.shape, dtype=bool)
    usable[h:-h, h:-h] = True
    for m in (science.msk, template.msk):
        usable &= (m & np.uint32(UNUSABLE)) == 0
    s2 = _common.typical_variance(science.var, science.msk) * float(np.sum(ker_r**2))
    r2 = _common.typical_variance(template.var, template.msk) * float(np.sum(ker_n**2))
    bright = usable & (b > 5 * math.sqrt(r2))
    if np.count_nonzero(bright) < MIN_RATIO_PIXELS:
        return FluxRatio(math.nan, math.nan, int(np.count_nonzero(bright)))
    # One object (a host galaxy under a transient) cannot tell the ratio
    # from the transient: several separate objects are needed.
    labels, _ = ndimage.label(bright)
    sizes = np.bincount(labels.ravel())[1:]
    if np.count_nonzero(sizes >= 5) < MIN_RATIO_OBJECTS:
        return FluxRatio(math.nan, math.nan, 0)
    av, bv = a[bright].astype(float), b[bright].astype(float)
    keep = np.ones(av.size, dtype=bool)
    beta = float(np.sum(av * bv) / np.sum(bv * bv))
    for _ in range(10):
        resid = av - beta * bv
        # Noise of the residual: both images' sky noise and the sources' own.
        sigma = max(robust_sigma(resid[keep]), math.sqrt(s2 + beta**2 * r2))
        new = np.abs(resid) < 4 * sigma
        if new.sum() < MIN_RATIO_PIXELS:
            return FluxRatio(math.nan, math.nan, int(new.sum()))
        beta = float(np.sum(av[new] * bv[new]) / np.sum(bv[new] ** 2))
        if np.array_equal(new, keep):
            break
        keep = new
    # Neighbouring pixels are correlated (a PSF's worth): count PSF areas.
    n_eff = max(keep.sum() / max(math.pi * (psf_s.fwhm / 2) ** 2, 1.0), 1.0)
    err = sigma / math.sqrt(float(np.sum(bv[keep] ** 2)) / keep.sum() * n_eff)
    return FluxRatio(beta, err, int(keep.sum()))


def _fit_ratio(
    science: Exposure,
    template: Exposure,
    s_img: np.ndarray,
    r_img: np.ndarray,
    psf_s: Psf,
    psf_t: Psf,
    config: ZogyConfig,
    notes: list[str],
) -> tuple[FluxRatio, tuple[float, float]]:
    """The flux ratio from aperture fluxes of common stars, and the registration noise.

    PSF-fit fluxes give the more precise ratio, but a PSF that is wrong
    (given on the command line, or stacked from few stars) biases it by tens
    of percent on small images; aperture fluxes (radius two of the broader
    FWHM, corrected by each PSF's share of light inside it) are biased by
    the small aperture correction only.  The PSF-fit ratio is used when the
    two agree within ``zogy.psf_ratio_tolerance``, the aperture ratio
    otherwise.
    """
    fwhm = max(_common.psf_fwhm(psf_s), _common.psf_fwhm(psf_t))
    half = max(psf_s.default_size(), psf_t.default_size()) // 2
    radius = 2.0 * fwhm
    stars = find_stars(
        template,
        science,
        half=min(half, max(math.ceil(radius) + 1, 3)),
        isolation=2 * fwhm,
        max_stars=config.max_stars,
        min_snr=config.min_snr,
    )
    fit = FluxRatio(math.nan, math.nan, len(stars))
    if len(stars):
        fs, es, _ = sep.sum_circle(s_img, stars.x, stars.y, radius, var=science.var)
        fr, er, _ = sep.sum_circle(r_img, stars.x, stars.y, radius, var=template.var)
        corr = _aperture_fraction(psf_t, radius) / _aperture_fraction(psf_s, radius)
        fit = flux_ratio(fs * corr, es * corr, fr, er)
        psf_fit = _psf_ratio(science, template, s_img, r_img, psf_s, psf_t, stars)
        if math.isfinite(fit.value) and math.isfinite(psf_fit.value):
            if abs(psf_fit.value / fit.value - 1) <= config.psf_ratio_tolerance:
                fit = psf_fit  # the PSFs agree with the light: the more precise fit
            else:
                notes.append(
                    f"PSF-fit flux ratio {psf_fit.value:.4g} disagrees with the aperture "
                    f"ratio {fit.value:.4g}: the PSFs look wrong; the aperture ratio is used"
                )
    if not math.isfinite(fit.value):
        # Fewer than three stars (a small cutout): every bright pixel instead.
        fit = _pixel_ratio(science, template, s_img, r_img, psf_s, psf_t)
        if math.isfinite(fit.value):
            notes.append(
                f"only {len(stars)} star(s) for the flux ratio: fitted on {fit.n_stars} bright "
                "pixels of the cross-convolved images"
            )
    if not math.isfinite(fit.value):
        zs, zr = science.zero_point, template.zero_point
        if math.isfinite(zs) and math.isfinite(zr):
            notes.append("too few stars for the flux ratio: taken from the zero points")
            return FluxRatio(10 ** (0.4 * (zs - zr)), 0.0, 0), (0.0, 0.0)
        raise UserError(
            f"{template.source or 'the template'}: found {len(stars)} isolated unsaturated "
            f"stars with S/N >= {config.min_snr:g} to fit the science/template flux ratio "
            "(need 3, or bright pixels for a pixel fit); give both zero points (--zp and "
            "--template-zp) or lower zogy.min_snr in a --config file"
        )
    sigma = (0.0, 0.0)
    if config.astrometric_noise:
        sigma = astrometric_sigma(s_img, r_img, stars.x, stars.y, stars.snr, fwhm)
    return fit, sigma


def run(
    science: Exposure,
    template: Exposure,
    psf_s: Psf,
    psf_t: Psf,
    *,
    notes: list[str],
    config: ZogyConfig | None = None,
    cov_s: NoiseCovariance | None = None,
    cov_t: NoiseCovariance | None = None,
    background_box: int = 64,
) -> ZogyOutput:
    """The ZOGY difference, its variance, mask and PSF, and S_corr.

    With measured noise covariances (``cov_s``, ``cov_t``; white when
    omitted) the white-noise variances ``s2``/``r2`` of ZOGY's filters become
    the noise spectra ``s2 C_n(k)``/``r2 C_r(k)``: D is then white, and
    S_corr's variance kernels carry each input's covariance.
    """
    config = config or ZogyConfig()
    cn, cr = cov_s or NoiseCovariance.white(), cov_t or NoiseCovariance.white()
    shape = science.shape
    # The inputs' own sky on the usual coarse mesh; the finer residual-
    # background mesh (background_box) acts on the difference only.
    n_img = _bg_subtracted(science, None)
    r_img = _bg_subtracted(template, None)
    fit, (sx, sy) = _fit_ratio(science, template, n_img, r_img, psf_s, psf_t, config, notes)
    beta = fit.value
    if not beta > 0:
        # Left to the caller's ratio check, which names both images.
        return ZogyOutput(
            n_img, science.var, science.msk, PixelPsf(psf_s.kernel()), n_img, fit, (sx, sy)
        )
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
    cn_h, cr_h = cn.power_rfft(shape), cr.power_rfft(shape)
    cn0 = float(cn_h[0, 0]) if isinstance(cn_h, np.ndarray) else cn_h
    cr0 = float(cr_h[0, 0]) if isinstance(cr_h, np.ndarray) else cr_h
    # The noise spectra s2 C_n(k), r2 C_r(k) where ZOGY has white s2, r2.
    den2 = pr2 * np.float32(s2)
    if isinstance(cn_h, np.ndarray):
        den2 *= cn_h
    term = pn2 * np.float32(r2 * beta**2)
    if isinstance(cr_h, np.ndarray):
        term *= cr_h
    den2 += term
    del cn_h, cr_h, term
    np.maximum(den2, np.float32(1e-30), out=den2)
    sky_den = s2 * cn0 + r2 * beta**2 * cr0
    f_d = beta / math.sqrt(sky_den)
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
    cn_s, cr_s = cn.power_small(m), cr.power_small(m)
    den_s = np.sqrt(s2 * np.abs(pr_s) ** 2 * cn_s + r2 * beta**2 * np.abs(pn_s) ** 2 * cr_s)
    kn_hat = beta * np.abs(pr_s) ** 2 * np.conj(pn_s) / den_s**2
    kr_hat = beta**2 * np.abs(pn_s) ** 2 * np.conj(pr_s) / den_s**2
    kn = _fft.centred_from_spectrum(kn_hat, min(2 * size + 1, m))
    kr = _fft.centred_from_spectrum(kr_hat, min(2 * size + 1, m))
    # var * k^2 is the variance of k applied to white noise; correlated noise
    # multiplies it by sum_uv k(u) k(v) rho(u - v) / sum k^2 (Parseval).
    corr_n = float(np.mean(np.abs(kn_hat) ** 2 * cn_s) / np.mean(np.abs(kn_hat) ** 2))
    corr_r = float(np.mean(np.abs(kr_hat) ** 2 * cr_s) / np.mean(np.abs(kr_hat) ** 2))
    # Read-only below (filled returns the input plane when it is all finite).
    var_n = _common.filled(science.var, s2)
    var_r = _common.filled(template.var, r2)
    # Both variance terms in one inverse transform.
    v_spec = _fft.rfft2(var_n)
    v_spec *= _fft.kernel_rfft2(_fft.trimmed(kn**2 * corr_n), shape)
    tmp = _fft.rfft2(var_r)
    tmp *= _fft.kernel_rfft2(_fft.trimmed(kr**2 * corr_r), shape)
    v_spec += tmp
    del tmp
    v_score = _fft.irfft2(v_spec, shape, overwrite=True)
    del v_spec
    if s_n is not None and s_r is not None:
        _add_gradient_variance(v_score, s_n, sx**2, sy**2)
        _add_gradient_variance(v_score, s_r, sx**2, sy**2)
    del s_n, s_r
    # A constant c in N appears as c in D (science scale) and as
    # beta c / (s2 C_n(0) + r2 beta^2 C_r(0)) in S: remove the difference's
    # residual sky from both.
    back = _common.residual_background(d_img, [science.msk, template.msk], box=background_box)
    back.subtract_from(d_img)
    back.subtract_from(score, beta / sky_den)
    del back
    np.maximum(v_score, np.float32(1e-30), out=v_score)
    np.sqrt(v_score, out=v_score)
    score /= v_score
    del v_score
    a = float(np.mean(np.abs(beta / f_d * pr_s / den_s) ** 2 * cn_s))
    b = float(np.mean(np.abs(beta / f_d * beta * pn_s / den_s) ** 2 * cr_s))
    variance = var_n * np.float32(a)
    variance += var_r * np.float32(b)
    psf_d = PixelPsf(
        _fft.centred_from_spectrum(beta * pr_s * pn_s / (f_d * den_s), min(2 * size + 1, m))
    )
    # A bad input pixel reaches D through the other image's PSF: grown by
    # that PSF's core (to 1% of its peak), not by its whole stamp.
    reach_n = _fft.trimmed(ker_r, MASK_REACH).shape[0]
    reach_r = _fft.trimmed(ker_n, MASK_REACH).shape[0]
    mask = _common.grow_masks([(science.msk, reach_n), (template.msk, reach_r)])
    _common.mark_edge(mask, size // 2)
    nodata = (mask & np.uint32(Mask.NO_DATA)) != 0
    if nodata.any():
        d_img[nodata] = np.nan
        variance[nodata] = np.inf
        score[nodata] = 0.0
    return ZogyOutput(d_img, variance, mask, psf_d, score, fit, (sx, sy))
