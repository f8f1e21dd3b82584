"""Public entry points: :func:`subtract` and :func:`detect_dia_sources`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from skydm.diffim import _al, _noise, _prepare, _zogy
from skydm.diffim._al import AlConfig
from skydm.diffim._al_core import KernelSolution
from skydm.diffim._config import DiffimConfig
from skydm.diffim._detect import detect
from skydm.diffim._noise import NoiseCovariance
from skydm.diffim._stars import FluxRatio
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure
from skydm.image.psf import Psf
from skydm.progress import Progress

METHODS = ("al", "zogy")


@dataclass(frozen=True)
class NoiseModel:
    """Overrides of an image's noise metadata (``None`` keeps the header's value).

    Attributes
    ----------
    gain : float or None
        Electrons per ADU.
    read_noise : float or None
        Read noise in electrons.
    sky : float or None
        Sky level in ADU that was subtracted from the image.
    saturation : float or None
        Saturation level in the image's pixel values as stored.
    """

    gain: float | None = None
    read_noise: float | None = None
    sky: float | None = None
    saturation: float | None = None


@dataclass
class DiffimResult:
    """A difference image and how it was made.

    Attributes
    ----------
    difference : Exposure
        Science minus template on the science's pixel grid and photometric
        scale: image, variance, mask (input defects carried and grown by the
        kernel; EDGE where convolution wraps), PSF of the difference, the
        science's WCS and visit metadata.
    method : str
        ``"al"`` or ``"zogy"``.
    score : numpy.ndarray or None
        ZOGY's S_corr (significance per pixel); ``None`` for AL, whose
        detection computes the matched-filter significance itself.
    convolved : str
        AL: ``"template"``, ``"science"`` or ``"preconvolve"``; ZOGY: ``"both"``.
    flux_ratio : float
        Science counts per template count (kernel sum, or ZOGY's fitted beta).
    kernel : KernelSolution or None
        The AL kernel solution.
    astrometric_sigma : tuple of float or None
        ZOGY's fitted registration noise (x, y) in pixels.
    template : Exposure
        The template as used, on the science image's pixel grid (resampled
        when the grids differ; before PSF matching), with the science's WCS
        and ``template_psf``: cutouts of science, template and difference at
        the same pixel position show the same piece of sky.
    science_psf, template_psf : Psf
        The input PSFs used (given, or measured from the images).
    notes : list of str
        Fallbacks taken (noise model estimated, kernel order lowered, ...).
    science_noise, template_noise : NoiseCovariance
        The inputs' measured noise covariances (white when not measured).
    filter_factor : float
        Variance of a white-noise PSF-matched filter on the difference over
        the truth (1 when the difference's noise is white); detection
        divides the significance by its square root.
    warnings : list of str
        Measured and modelled noise disagreeing by more than
        ``noise.warn_tolerance``.
    """

    difference: Exposure
    method: str
    score: np.ndarray | None
    convolved: str
    flux_ratio: float
    science_psf: Psf
    template_psf: Psf
    template: Exposure
    kernel: KernelSolution | None = None
    astrometric_sigma: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    science_noise: NoiseCovariance = field(default_factory=NoiseCovariance.white)
    template_noise: NoiseCovariance = field(default_factory=NoiseCovariance.white)
    filter_factor: float = 1.0
    warnings: list[str] = field(default_factory=list)
    config: DiffimConfig = field(default_factory=DiffimConfig)


def subtract(
    science: Exposure,
    template: Exposure,
    *,
    method: str = "al",
    convolve: str = "auto",
    decorrelate: bool = True,
    al: AlConfig | None = None,
    config: DiffimConfig | None = None,
    science_noise: NoiseModel | None = None,
    template_noise: NoiseModel | None = None,
    quiet: bool = True,
) -> DiffimResult:
    """Subtract ``template`` from ``science`` with PSF matching.

    Parameters
    ----------
    science, template : Exposure
        The images.  The template is resampled onto the science's WCS when
        the pixel grids differ.  PSFs are measured from the images when the
        exposures carry none.
    method : {"al", "zogy"}
        Alard–Lupton matching (with decorrelation) or ZOGY.
    convolve : {"auto", "template", "science", "preconvolve"}
        AL only: which image gets convolved; ``auto`` convolves the sharper.
    decorrelate : bool
        AL only: whiten the difference's noise (DMTN-021's afterburner).
    al : AlConfig, optional
        AL kernel settings (overrides ``config.al``).
    config : DiffimConfig, optional
        Every setting: AL kernel, ZOGY fit, noise model, detection.
    science_noise, template_noise : NoiseModel, optional
        Gain, read noise, sky and saturation overriding the headers.
    quiet : bool
        Whether to stay silent (else progress goes to standard error).

    Returns
    -------
    DiffimResult

    Raises
    ------
    UserError
        Images that cannot be aligned (different shapes and no WCS), that do
        not overlap, that are entirely NaN, that have too few stars to fit
        the kernel or flux ratio, or whose flux ratio is not positive, not
        significant (unrelated images) or far from the zero points'.
    """
    if method not in METHODS:
        raise BadValueError("method", method, "'al' or 'zogy'")
    if convolve not in _al.CONVOLVE_MODES:
        raise BadValueError("convolve", convolve, f"one of {', '.join(_al.CONVOLVE_MODES)}")
    cfg = config or DiffimConfig()
    if al is not None:
        cfg = DiffimConfig(al=al, zogy=cfg.zogy, noise=cfg.noise, detection=cfg.detection)
    bar = Progress(f"diffim ({method})", 5, quiet=quiet)
    notes: list[str] = []
    sn, tn = science_noise or NoiseModel(), template_noise or NoiseModel()
    sci = _prepare.prepare(
        science,
        "science",
        gain=sn.gain,
        read_noise=sn.read_noise,
        sky=sn.sky,
        saturation=sn.saturation,
        notes=notes,
    )
    tmp = _prepare.prepare(
        template,
        "template",
        gain=tn.gain,
        read_noise=tn.read_noise,
        sky=tn.sky,
        saturation=tn.saturation,
        notes=notes,
    )
    bar.advance(note="inputs prepared")
    psf_s = _prepare.psf_for(sci, "science")
    # Measured on the template's own grid, before resampling (which changes
    # the PSF negligibly near the identity, and may cut stars off).
    psf_t = _prepare.psf_for(tmp, "template")
    tmp = _prepare.align(sci, tmp, notes)
    bar.advance(note="aligned, PSFs")
    # Measured after alignment: a template resampled here carries the
    # covariance its interpolation made.
    cov_s, cov_t = NoiseCovariance.white(), NoiseCovariance.white()
    if cfg.noise.correlated:
        radius, window = cfg.noise.radius, cfg.noise.window
        cov_s, cov_t = _noise.measure_pair(sci, tmp, radius=radius, window=window)
    bar.advance(note="noise measured")
    kernel = None
    sigma = None
    score = None
    box = cfg.detection.background_box
    if method == "al":
        out = _al.run(
            sci,
            tmp,
            psf_s,
            psf_t,
            convolve=convolve,
            decorrelate=decorrelate,
            config=cfg.al,
            notes=notes,
            cov_s=cov_s,
            cov_t=cov_t,
            background_box=box,
        )
        image, variance, mask, psf = out.image, out.variance, out.mask, out.psf
        kernel, convolved, factor = out.solution, out.convolved, out.filter_factor
        ksum, kerr = out.solution.kernel_sum, out.solution.kernel_sum_err
        excess = out.solution.kernel_sum_excess
        if out.convolved == "science" and ksum != 0:
            kerr, excess = kerr / ksum**2, excess / ksum**2
        n_used = max(out.solution.n_stamps, 1)
        # The unrelated-images check takes the stamps' scatter beyond their
        # noise: faint stars' sums scatter by a third of the ratio on a
        # single visit, and a 0.5 limit on the raw scatter refused correct pairs.
        fit = FluxRatio(out.flux_ratio, kerr, n_used, excess)
    else:
        if science.psf is None or template.psf is None:
            psf_s, psf_t = _al.kernel_psfs(sci, tmp, psf_s, psf_t, config=cfg.al, notes=notes)
        zo = _zogy.run(
            sci,
            tmp,
            psf_s,
            psf_t,
            notes=notes,
            config=cfg.zogy,
            cov_s=cov_s,
            cov_t=cov_t,
            background_box=box,
        )
        image, variance, mask, psf = zo.image, zo.variance, zo.mask, zo.psf
        fit, sigma, score, convolved = zo.flux_ratio, zo.astrometric_sigma, zo.score, "both"
        factor = 1.0
    _check_ratio(fit, science, template, cfg)
    ratio = fit.value
    bar.advance(note="subtracted")
    meta = sci.meta.copy()
    meta["DIFFMETH"] = (method, "difference imaging method")
    meta["DIFFCONV"] = (convolved, "image(s) convolved")
    meta["DIFFRAT"] = (ratio, "science/template flux ratio")
    meta["DIFFNCF"] = (factor, "matched-filter variance / white-noise value")
    meta["NOISERS"] = (cov_s.ratio, "science measured/modelled pixel variance")
    meta["NOISERT"] = (cov_t.ratio, "template measured/modelled pixel variance")
    if template.source:
        meta["TEMPLATE"] = str(template.source)[-60:]
    zero_point = sci.zero_point
    if not math.isfinite(zero_point) and math.isfinite(tmp.zero_point):
        # The difference is in science counts: the template's calibration
        # carried over by the fitted ratio.
        zero_point = tmp.zero_point + 2.5 * math.log10(ratio)
        notes.append(f"difference zero point {zero_point:.3f} from the template's and the ratio")
    diff = Exposure(
        image=image,
        variance=variance,
        mask=mask,
        wcs=sci.wcs,
        psf=psf,
        zero_point=zero_point,
        info=sci.info,
        meta=meta,
        source=None,
    )
    bar.advance(note="done")
    return DiffimResult(
        difference=diff,
        method=method,
        score=score,
        convolved=convolved,
        flux_ratio=float(ratio),
        science_psf=psf_s,
        template_psf=psf_t,
        template=_on_science_grid(tmp, sci, psf_t),
        kernel=kernel,
        astrometric_sigma=sigma,
        notes=notes,
        science_noise=cov_s,
        template_noise=cov_t,
        filter_factor=factor,
        warnings=_noise_warnings(cov_s, cov_t, science, template, cfg.noise.warn_tolerance),
        config=cfg,
    )


def _name(exp: Exposure, role: str) -> str:
    return str(exp.source) if exp.source else f"the {role} image"


def _check_ratio(fit: FluxRatio, science: Exposure, template: Exposure, cfg: DiffimConfig) -> None:
    """Refuse a flux ratio that says the two images do not show the same sky.

    Raises
    ------
    UserError
        A ratio that is not positive, not significant (``zogy.min_ratio_snr``
        times its error), or off by more than ``zogy.ratio_tolerance`` from
        what both zero points predict.
    """
    pair = f"science {_name(science, 'science')} and template {_name(template, 'template')}"
    beta, err = fit.value, fit.error
    if not (math.isfinite(beta) and beta > 0):
        raise UserError(
            f"{pair}: the fitted flux ratio is {beta:.3g}, not positive: the images do not "
            "show the same stars (unrelated images, or one is inverted); check the pair"
        )
    if math.isfinite(err) and err > 0 and beta < cfg.zogy.min_ratio_snr * err:
        raise UserError(
            f"{pair}: the fitted flux ratio {beta:.3g} +- {err:.2g} is consistent with zero: "
            "the images do not share their stars (unrelated images?); check the pair"
        )
    if fit.n_stars >= 3 and math.isfinite(fit.scatter) and fit.scatter > 0.5 * beta:
        raise UserError(
            f"{pair}: the single stars' flux ratios scatter by {fit.scatter:.3g} beyond their "
            f"noise around "
            f"{beta:.3g}: the images do not share their stars (unrelated images?); check "
            "the pair"
        )
    zs, zt = science.zero_point, template.zero_point
    if math.isfinite(zs) and math.isfinite(zt):
        predicted = 10 ** (0.4 * (zs - zt))
        tol = cfg.zogy.ratio_tolerance
        if not predicted / tol <= beta <= predicted * tol:
            raise UserError(
                f"{pair}: the fitted flux ratio {beta:.4g} is far from the {predicted:.4g} "
                f"that the zero points predict ({zs:.3f} and {zt:.3f}, tolerance a factor "
                f"{tol:g}); check --zp/--template-zp (or the ZP cards), or raise "
                "zogy.ratio_tolerance in a --config file"
            )


def _noise_warnings(
    cov_s: NoiseCovariance,
    cov_t: NoiseCovariance,
    science: Exposure,
    template: Exposure,
    tolerance: float,
) -> list[str]:
    """Inputs whose measured noise departs from their variance plane's by over ``tolerance``."""
    out = []
    for role, cov, exp in (("science", cov_s, science), ("template", cov_t, template)):
        if cov.n_pixels == 0:
            continue
        rms = math.sqrt(max(cov.ratio, 0.0))
        if abs(rms - 1.0) > tolerance:
            out.append(
                f"{_name(exp, role)}: measured pixel noise is {rms:.2f} x its variance plane's "
                f"(tolerance {tolerance:.0%}); the measured noise is used"
            )
    return out


def _on_science_grid(template: Exposure, science: Exposure, psf: Psf) -> Exposure:
    """The aligned template with the science's WCS and the PSF used (planes shared)."""
    return Exposure(
        image=template.image,
        variance=template.var,
        mask=template.msk,
        wcs=science.wcs,
        psf=psf,
        zero_point=template.zero_point,
        info=template.info,
        meta=template.meta,
        source=template.source,
    )


def detect_dia_sources(
    result: DiffimResult | Exposure, *, threshold: float | None = None, set_mask: bool = True
) -> Table:
    """Detect and measure DIA sources on a difference image.

    Parameters
    ----------
    result : DiffimResult or Exposure
        A :func:`subtract` result (ZOGY's S_corr is then the significance
        image), or a difference Exposure with a PSF and a calibrated variance
        plane (the PSF-matched filter is then computed from them).
    threshold : float, optional
        Detection threshold in sigma, applied to both signs; by default the
        result's ``config.detection.threshold`` (5).
    set_mask : bool
        Set DETECTED / DETECTED_NEGATIVE on the difference's mask.

    Returns
    -------
    astropy.table.Table
        One row per source; columns documented in ``docs/diffim.md``:
        ``id``, ``x``, ``y`` (0-based, ``x`` the column), ``x_err``, ``y_err``,
        ``snr`` (signed), ``flux``, ``flux_err``, ``psf_flux``,
        ``psf_flux_err``, ``score``, ``npix``, ``is_negative``, the flags
        ``flag_dipole``, ``flag_edge``, ``flag_sat``, ``flag_cr``,
        ``flag_bad``, ``flagged`` (any flag), ``mask_bits``, and ``ra``,
        ``dec`` (degrees) when the difference has a WCS.
    """
    if isinstance(result, DiffimResult):
        if threshold is None:
            threshold = result.config.detection.threshold
        table = detect(
            result.difference, threshold=threshold, score=result.score, set_mask=set_mask
        )
        table.meta["method"] = result.method
        table.meta["flux_ratio"] = result.flux_ratio
        table.meta["noise_ratio_science"] = result.science_noise.ratio
        table.meta["noise_ratio_template"] = result.template_noise.ratio
        table.meta["noise_box_science"] = result.science_noise.box_factor
        table.meta["noise_box_template"] = result.template_noise.box_factor
        warnings = list(result.warnings)
        tolerance = result.config.noise.warn_tolerance
    else:
        if threshold is None:
            threshold = DiffimConfig().detection.threshold
        table = detect(result, threshold=threshold, set_mask=set_mask)
        warnings, tolerance = [], DiffimConfig().noise.warn_tolerance
    rms = table.meta.get("score_rms", math.nan)
    if math.isfinite(rms) and abs(rms - 1.0) > tolerance:
        warnings.append(
            f"the significance image's rms on quiet pixels is {rms:.2f}, not 1 (tolerance "
            f"{tolerance:.0%}): thresholds are not in true sigma"
        )
    if warnings:
        table.meta["noise_warning"] = "; ".join(warnings)
    table.meta["n_positive"] = int(np.count_nonzero(~table["is_negative"]))
    table.meta["n_negative"] = int(np.count_nonzero(table["is_negative"]))
    table.meta["n_unflagged"] = int(np.count_nonzero(~table["flagged"])) if len(table) else 0
    if not math.isfinite(table.meta.get("score_rms", math.nan)):
        table.meta.pop("score_rms", None)
    return table
