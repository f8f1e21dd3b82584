"""Turning a raw exposure into a calibrated visit image (a "calexp").

This is instrument signature removal reduced to what a raw from the archive
needs before differencing and coadding: overscan, gain and saturation per
amplifier (:mod:`skydm.pipeline.isr`), saturated and non-finite pixels
masked, single-frame cosmic rays found (L.A.Cosmic, van Dokkum 2001, through
``astroscrappy``) and repaired, the sky background subtracted (and
remembered, so that the variance keeps its Poisson term), a CCD-equation
variance plane, and a PSF measured from the image's own stars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from skydm.errors import UserError
from skydm.image import Exposure, Mask, MoffatPsf
from skydm.image.psf import Psf
from skydm.image.starpsf import StarPsfConfig, measure_star_psf
from skydm.pipeline.cosmics import CosmicRayConfig, repair_cosmic_rays
from skydm.pipeline.isr import remove_signature
from skydm.pipeline.sky import BackgroundConfig, masked_background

# The cosmic-ray repair lives in its own module; its names stay importable here.
__all__ = ["CalibrateConfig", "CosmicRayConfig", "calibrate_raw", "repair_cosmic_rays"]


@dataclass(frozen=True)
class CalibrateConfig:
    """Everything :func:`calibrate_raw` can be told.

    Parameters
    ----------
    cosmic_rays : CosmicRayConfig
        Single-frame cosmic-ray repair.
    background : BackgroundConfig
        Sky background measured with the sources masked.
    psf_fallback : bool
        When too few stars are found to measure a PSF, use a Moffat profile
        with the header's seeing instead of failing.
    psf : StarPsfConfig
        The star PSF measurement (:func:`skydm.image.starpsf.measure_star_psf`).
    """

    cosmic_rays: CosmicRayConfig = field(default_factory=CosmicRayConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    psf_fallback: bool = True
    psf: StarPsfConfig = field(default_factory=StarPsfConfig)


def calibrate_raw(
    raw: Exposure, *, psf_fallback: bool = True, config: CalibrateConfig | None = None
) -> Exposure:
    """Calibrate one raw exposure.

    Parameters
    ----------
    raw : Exposure
        The raw image in ADU, sky not subtracted, with gain and read noise in
        its visit info.
    psf_fallback : bool
        When too few stars are found to measure a PSF, use a Moffat profile
        with the header's seeing (``SEEING`` card, arcsec, with the WCS pixel
        scale) instead of failing.  Ignored when ``config`` is given.
    config : CalibrateConfig, optional
        Cosmic-ray repair and PSF settings; the defaults otherwise.

    Returns
    -------
    Exposure
        Overscan-subtracted, trimmed image in counts of the amplifiers' mean
        gain, background-subtracted (``float32``), variance from the CCD
        equation, SAT/NO_DATA masks, cosmic rays masked (CR) and interpolated
        over (INTRP), a measured PSF, and ``info.sky`` set to the mean
        background that was removed.

    Raises
    ------
    MissingMetadataError
        When the raw has no gain (the variance plane needs it).
    UserError
        When no PSF can be measured and there is no seeing to fall back on.
    MissingExtraError
        When cosmic-ray repair is on and ``astroscrappy`` is not installed.
    """
    cfg = config if config is not None else CalibrateConfig(psf_fallback=psf_fallback)
    isr = remove_signature(raw)
    exp = isr.exposure
    gain = exp.require_gain("calibration (the variance plane)")
    rn = exp.info.read_noise if math.isfinite(exp.info.read_noise) else 0.0
    image = exp.image
    mask = exp.msk
    if cfg.cosmic_rays.enabled:
        image = repair_cosmic_rays(exp, image, gain=gain, read_noise=rn, config=cfg.cosmic_rays)
    exp.image = image
    back = masked_background(image, mask, fwhm=_seeing_pixels(exp), config=cfg.background)
    # A recorded sky level far above the measured background means the sky was
    # removed upstream (as in the DECam stamps' SKYDIP); its Poisson noise is
    # still in the pixels, so it stays in the variance.
    # (The background is smooth: its median from every 8th pixel.)
    level = abs(float(np.median(back[::8, ::8])))
    removed = exp.info.sky if exp.info.sky > 2.0 * level else 0.0
    back32 = back.astype(np.float32)
    image = np.asarray(image, dtype=np.float32) - back32
    exp.image = image
    exp.info.sky = float(np.mean(back)) + removed
    # The CCD equation on the signal with the sky put back, in float32 in
    # place (float64 full-frame temporaries cost 0.3 CPU s at 4096x4096).
    signal = np.add(image, back32, out=back32)
    if removed:
        signal += np.float32(removed)
    np.maximum(signal, np.float32(0.0), out=signal)
    signal *= np.float32(1.0 / gain)
    signal += np.float32((isr.read_noise / gain) ** 2)
    exp.variance = signal
    exp.variance[(mask & np.uint32(Mask.NO_DATA)) != 0] = np.inf
    exp.psf = _psf(exp, cfg.psf_fallback, cfg.psf)
    return exp


def _seeing_pixels(exp: Exposure) -> float:
    """The header's seeing FWHM in pixels; NaN when it or the WCS is missing."""
    if not math.isfinite(exp.info.seeing) or exp.wcs is None:
        return math.nan
    return exp.info.seeing / _pixel_scale(exp)


def _pixel_scale(exp: Exposure) -> float:
    assert exp.wcs is not None
    return float(np.sqrt(abs(np.linalg.det(exp.wcs.pixel_scale_matrix)))) * 3600.0


def _psf(exp: Exposure, fallback: bool, config: StarPsfConfig) -> Psf:
    # The stars' joint Moffat fit (skydm.image.starpsf; docs/drp.md, The PSF
    # model): a stacked pixel PSF took compact galaxies for stars and lost
    # its wings to a 25-pixel stamp.
    try:
        return measure_star_psf(exp, config).psf
    except UserError:
        if not fallback or not math.isfinite(exp.info.seeing) or exp.wcs is None:
            raise
    return MoffatPsf(exp.info.seeing / _pixel_scale(exp), beta=3.5)
