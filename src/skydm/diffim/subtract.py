"""Public entry points: :func:`subtract` and :func:`detect_dia_sources`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table

from skydm.diffim import _al, _prepare, _zogy
from skydm.diffim._al import AlConfig
from skydm.diffim._al_core import KernelSolution
from skydm.diffim._detect import detect
from skydm.errors import BadValueError
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
    """

    gain: float | None = None
    read_noise: float | None = None
    sky: float | None = None


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


def subtract(
    science: Exposure,
    template: Exposure,
    *,
    method: str = "al",
    convolve: str = "auto",
    decorrelate: bool = True,
    al: AlConfig | None = None,
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
        AL kernel settings.
    science_noise, template_noise : NoiseModel, optional
        Gain, read noise and sky overriding the headers.
    quiet : bool
        Whether to stay silent (else progress goes to standard error).

    Returns
    -------
    DiffimResult

    Raises
    ------
    UserError
        Images that cannot be aligned (different shapes and no WCS), that do
        not overlap, that are entirely NaN, or that have too few stars to fit
        the kernel or flux ratio.
    """
    if method not in METHODS:
        raise BadValueError("method", method, "'al' or 'zogy'")
    if convolve not in _al.CONVOLVE_MODES:
        raise BadValueError("convolve", convolve, f"one of {', '.join(_al.CONVOLVE_MODES)}")
    bar = Progress(f"diffim ({method})", 4, quiet=quiet)
    notes: list[str] = []
    sn, tn = science_noise or NoiseModel(), template_noise or NoiseModel()
    sci = _prepare.prepare(
        science, "science", gain=sn.gain, read_noise=sn.read_noise, sky=sn.sky, notes=notes
    )
    tmp = _prepare.prepare(
        template, "template", gain=tn.gain, read_noise=tn.read_noise, sky=tn.sky, notes=notes
    )
    bar.advance(note="inputs prepared")
    psf_s = _prepare.psf_for(sci, "science")
    # Measured on the template's own grid, before resampling (which changes
    # the PSF negligibly near the identity, and may cut stars off).
    psf_t = _prepare.psf_for(tmp, "template")
    tmp = _prepare.align(sci, tmp, notes)
    bar.advance(note="aligned, PSFs")
    kernel = None
    sigma = None
    score = None
    if method == "al":
        out = _al.run(
            sci,
            tmp,
            psf_s,
            psf_t,
            convolve=convolve,
            decorrelate=decorrelate,
            config=al or AlConfig(),
            notes=notes,
        )
        image, variance, mask, psf = out.image, out.variance, out.mask, out.psf
        ratio, kernel, convolved = out.flux_ratio, out.solution, out.convolved
    else:
        if science.psf is None or template.psf is None:
            psf_s, psf_t = _al.kernel_psfs(
                sci, tmp, psf_s, psf_t, config=al or AlConfig(), notes=notes
            )
        zo = _zogy.run(sci, tmp, psf_s, psf_t, notes=notes)
        image, variance, mask, psf = zo.image, zo.variance, zo.mask, zo.psf
        ratio, sigma, score, convolved = zo.flux_ratio, zo.astrometric_sigma, zo.score, "both"
    bar.advance(note="subtracted")
    meta = sci.meta.copy()
    meta["DIFFMETH"] = (method, "difference imaging method")
    meta["DIFFCONV"] = (convolved, "image(s) convolved")
    meta["DIFFRAT"] = (ratio, "science/template flux ratio")
    if template.source:
        meta["TEMPLATE"] = str(template.source)[-60:]
    diff = Exposure(
        image=image,
        variance=variance,
        mask=mask,
        wcs=sci.wcs,
        psf=psf,
        zero_point=sci.zero_point,
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
    )


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
    result: DiffimResult | Exposure, *, threshold: float = 5.0, set_mask: bool = True
) -> Table:
    """Detect and measure DIA sources on a difference image.

    Parameters
    ----------
    result : DiffimResult or Exposure
        A :func:`subtract` result (ZOGY's S_corr is then the significance
        image), or a difference Exposure with a PSF and a calibrated variance
        plane (the PSF-matched filter is then computed from them).
    threshold : float
        Detection threshold in sigma, applied to both signs.
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
        table = detect(
            result.difference, threshold=threshold, score=result.score, set_mask=set_mask
        )
        table.meta["method"] = result.method
        table.meta["flux_ratio"] = result.flux_ratio
    else:
        table = detect(result, threshold=threshold, set_mask=set_mask)
    table.meta["n_positive"] = int(np.count_nonzero(~table["is_negative"]))
    table.meta["n_negative"] = int(np.count_nonzero(table["is_negative"]))
    table.meta["n_unflagged"] = int(np.count_nonzero(~table["flagged"])) if len(table) else 0
    if not math.isfinite(table.meta.get("score_rms", math.nan)):
        table.meta.pop("score_rms", None)
    return table
