"""Alard–Lupton subtraction with decorrelation: choosing the side, fitting, applying."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skydm.diffim import _al_core as core
from skydm.diffim import _common, _decorr, _fft
from skydm.diffim._noise import NoiseCovariance
from skydm.diffim._stars import find_stars
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure
from skydm.image.mask import Mask
from skydm.image.psf import PixelPsf, Psf

CONVOLVE_MODES = ("auto", "template", "science", "preconvolve")


@dataclass(frozen=True)
class AlConfig:
    """Settings of the Alard–Lupton kernel fit.

    Attributes
    ----------
    basis : str
        ``"alard-lupton"`` (Gaussians times polynomials) or ``"delta"``
        (one basis kernel per pixel; needs many stamps).
    degrees : tuple of int
        Polynomial degree for each of the three Gaussians.
    kernel_order, background_order : int
        Spatial polynomial orders of the kernel shape and the differential
        background.  The kernel order is lowered automatically when there are
        too few stamps to constrain it (4 stamps per spatial term).
    max_stamps : int
        Stars used for the fit at most.
    kernel_half : int or None
        Kernel half-width in pixels; by default from the PSF widths.
    min_snr : float
        Faintest star used as a stamp.
    """

    basis: str = "alard-lupton"
    degrees: tuple[int, ...] = (4, 2, 2)
    kernel_order: int = 1
    background_order: int = 1
    max_stamps: int = 100
    kernel_half: int | None = None
    min_snr: float = 20.0

    def __post_init__(self) -> None:
        if self.basis not in ("alard-lupton", "delta"):
            raise BadValueError("basis", self.basis, "'alard-lupton' or 'delta'")
        for name in ("kernel_order", "background_order"):
            if not 0 <= getattr(self, name) <= 3:
                raise BadValueError(name, getattr(self, name), "an integer from 0 to 3")
        if self.max_stamps < 3:
            raise BadValueError("max_stamps", self.max_stamps, "at least 3")
        if self.kernel_half is not None and not 1 <= self.kernel_half <= 30:
            raise BadValueError("kernel_half", self.kernel_half, "1 to 30 pixels")
        if not (math.isfinite(self.min_snr) and 3 <= self.min_snr <= 1e4):
            raise BadValueError("min_snr", self.min_snr, "a star S/N from 3 to 10000")
        if len(self.degrees) != 3 or not all(0 <= d <= 8 for d in self.degrees):
            raise BadValueError("degrees", self.degrees, "three polynomial degrees from 0 to 8")


@dataclass
class AlOutput:
    """What the Alard–Lupton path produces."""

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: Psf
    solution: core.KernelSolution
    convolved: str
    flux_ratio: float
    filter_factor: float


def choose_side(convolve: str, fwhm_s: float, fwhm_t: float) -> str:
    """Which image gets convolved: the sharper one unless told otherwise."""
    if convolve not in CONVOLVE_MODES:
        raise BadValueError("convolve", convolve, f"one of {', '.join(CONVOLVE_MODES)}")
    if convolve != "auto":
        return convolve
    return "template" if fwhm_t <= fwhm_s else "science"


def _sigmas(sig_match: float) -> tuple[float, float, float]:
    s = max(sig_match, 0.5)
    return (max(0.4, s / 2), s, 2 * s)


@dataclass
class KernelFit:
    """A fitted matching kernel with the images it maps between."""

    side: str
    solution: core.KernelSolution
    src_image: np.ndarray
    tgt_image: np.ndarray
    half: int


def fit_kernel(
    science: Exposure,
    template: Exposure,
    psf_s: Psf,
    psf_t: Psf,
    *,
    convolve: str,
    config: AlConfig,
    notes: list[str],
) -> KernelFit:
    """Choose the side to convolve and fit the spatially varying matching kernel."""
    fwhm_s, fwhm_t = _common.psf_fwhm(psf_s), _common.psf_fwhm(psf_t)
    side = choose_side(convolve, fwhm_s, fwhm_t)
    if side == "template" and fwhm_t > 1.1 * fwhm_s:
        notes.append("template convolved although it is the broader: deconvolution is ill-posed")
    sig_s, sig_t = fwhm_s / 2.3548, fwhm_t / 2.3548
    psf_s_img = psf_s.kernel()
    if side == "science":
        source, target, src_sig, tgt_sig = science, template, sig_s, sig_t
        tgt_image = _common.filled(template.image)
        tgt_var = (template.var, 1.0)
    else:
        source, target, src_sig, tgt_sig = template, science, sig_t, sig_s
        tgt_image = _common.filled(science.image)
        tgt_var = (science.var, 1.0)
        if side == "preconvolve":
            # Matching onto S * P_S, which is always broader than the template.
            tgt_image = _fft.convolve(tgt_image, psf_s_img.astype(np.float32))
            tgt_var = (science.var, float(np.sum(psf_s_img**2)))
            tgt_sig = math.sqrt(2) * sig_s
    sig_match = math.sqrt(max(tgt_sig**2 - src_sig**2, 0.0))
    sigmas = _sigmas(sig_match)
    tgt_fwhm = 2.3548 * tgt_sig
    half = config.kernel_half or int(np.clip(math.ceil(max(3 * sigmas[2], tgt_fwhm)), 4, 20))
    half_fit = max(half, math.ceil(2 * tgt_fwhm))
    if config.basis == "delta":
        basis = core.delta_basis(half)
    else:
        basis = core.alard_lupton_basis(sigmas, config.degrees, half)
    ridge = 1e-3 if config.basis == "delta" else 1e-9
    src_image = _common.filled(source.image)
    # Neighbours inside a stamp do no harm (the model convolves the whole
    # cutout), so isolation only guards against blends; faint stars are
    # admitted when bright ones are too few to constrain the fit.
    min_snr = config.min_snr
    while True:
        stars = find_stars(
            source,
            target,
            half=half_fit + half,
            isolation=max(3.0, tgt_fwhm),
            max_stars=config.max_stamps,
            min_snr=min_snr,
        )
        if len(stars) >= 12 or min_snr <= 8.0:
            break
        min_snr = max(min_snr / 2, 8.0)
    if len(stars) < 3:
        raise UserError(
            f"{source.source or 'the ' + side + ' image'}: found {len(stars)} isolated "
            f"unsaturated stars with S/N >= {min_snr:g} to fit the matching kernel; "
            "at least 3 are needed (lower al.min_snr in a --config file, give the PSFs with "
            "--psf/--template-psf and use --method zogy)"
        )
    positions = np.column_stack([np.round(stars.x), np.round(stars.y)]).astype(int)
    stamps = core.build_stamps(
        src_image, tgt_image, [tgt_var, (source.var, 1.0)], positions, basis, half_fit
    )
    order = config.kernel_order
    while order > 0 and len(stamps.x) < 4 * len(core.poly_exponents(order)):
        order -= 1
    if order < config.kernel_order:
        notes.append(f"kernel spatial order lowered to {order}: only {len(stamps.x)} stamps")
    solution = core.fit_spatial(
        stamps,
        basis,
        science.shape,
        kernel_order=order,
        background_order=config.background_order,
        ridge=ridge,
    )
    return KernelFit(side, solution, src_image, tgt_image, half)


def run(
    science: Exposure,
    template: Exposure,
    psf_s: Psf,
    psf_t: Psf,
    *,
    convolve: str,
    decorrelate: bool,
    config: AlConfig,
    notes: list[str],
    cov_s: NoiseCovariance | None = None,
    cov_t: NoiseCovariance | None = None,
    background_box: int = 64,
) -> AlOutput:
    """PSF-match, subtract and (optionally) decorrelate; the result is in science counts.

    ``cov_s``/``cov_t`` are the inputs' measured noise covariances (see
    :mod:`skydm.diffim._noise`); ``background_box`` the mesh of the
    difference's residual background, pixels.
    """
    fit = fit_kernel(science, template, psf_s, psf_t, convolve=convolve, config=config, notes=notes)
    side, solution, half = fit.side, fit.solution, fit.half
    tgt_image = fit.tgt_image
    # diff holds the model first, then becomes the difference in place.
    diff = core.convolve_spatial(fit.src_image, solution)
    del fit  # the source copy is no longer needed
    solution.add_background(diff)
    psf_s_img = psf_s.kernel()
    kernel = solution.centre_kernel()
    if side == "science":
        diff -= tgt_image
        f_s, f_t = kernel, None
    elif side == "preconvolve":
        np.subtract(tgt_image, diff, out=diff)
        f_s, f_t = psf_s_img, kernel
    else:
        np.subtract(tgt_image, diff, out=diff)
        f_s, f_t = None, kernel
    del tgt_image
    _common.residual_background(
        diff, [science.msk, template.msk], box=background_box
    ).subtract_from(diff)
    s2 = _common.typical_variance(science.var, science.msk)
    t2 = _common.typical_variance(template.var, template.msk)
    noise = _decorr.transfer(
        f_s, f_t, psf_s_img, s2, t2, decorrelate=decorrelate, cov_s=cov_s, cov_t=cov_t
    )
    if decorrelate:
        # Whitening and the rescaling to science counts in one spectral pass.
        spec = _fft.rfft2(diff)
        del diff
        spec *= _decorr.decorrelation_filter(
            f_s, f_t, s2, t2, science.shape, scale=noise.scale, cov_s=cov_s, cov_t=cov_t
        )
        diff = _fft.irfft2(spec, science.shape, overwrite=True)
        del spec
    elif noise.scale != 1.0:
        diff /= np.float32(noise.scale)
    variance = science.var * np.float32(noise.a)
    variance += template.var * np.float32(noise.b)
    ks = solution.basis.size
    grow_other = ks if (decorrelate or side == "preconvolve") else 1
    if side == "science":
        mask = _common.grow_masks([(science.msk, ks), (template.msk, grow_other)])
    else:
        mask = _common.grow_masks([(template.msk, ks), (science.msk, grow_other)])
    _common.mark_edge(mask, half * (2 if decorrelate else 1))
    nodata = (mask & np.uint32(Mask.NO_DATA)) != 0
    if nodata.any():
        diff[nodata] = np.nan
        variance[nodata] = np.inf
    ratio = solution.kernel_sum
    if side == "science":
        ratio = 1.0 / ratio
    return AlOutput(diff, variance, mask, noise.psf, solution, side, ratio, noise.filter_factor)


def kernel_psfs(
    science: Exposure,
    template: Exposure,
    psf_s: Psf,
    psf_t: Psf,
    *,
    config: AlConfig,
    notes: list[str],
) -> tuple[Psf, Psf]:
    """(science PSF, template PSF) made consistent through the matching kernel.

    ZOGY's residuals on stars come from errors in the *relative* PSF.  Two
    PSFs measured separately from a handful of stars each disagree by more
    than the kernel fitted on every stamp does, so the broader PSF is taken
    as the sharper one convolved with the (unit-sum) kernel at the centre.
    Falls back on the measured PSFs when there are too few stars for a kernel.
    """
    from scipy.signal import fftconvolve

    try:
        fit = fit_kernel(
            science, template, psf_s, psf_t, convolve="auto", config=config, notes=notes
        )
    except UserError as exc:
        notes.append(f"ZOGY uses the separately measured PSFs ({exc})")
        return psf_s, psf_t
    kernel = fit.solution.centre_kernel() / fit.solution.kernel_sum
    if fit.side == "template":
        psf_s = PixelPsf(np.clip(fftconvolve(psf_t.kernel(), kernel, mode="full"), 0, None))
        notes.append("ZOGY science PSF = template PSF convolved with the matching kernel")
    else:
        psf_t = PixelPsf(np.clip(fftconvolve(psf_s.kernel(), kernel, mode="full"), 0, None))
        notes.append("ZOGY template PSF = science PSF convolved with the matching kernel")
    return psf_s, psf_t
