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
from scipy import ndimage

from skydm.errors import BadValueError, UserError, require_extra
from skydm.image import Exposure, Mask, MoffatPsf
from skydm.image.psf import Psf
from skydm.image.starpsf import measure_star_psf
from skydm.pipeline.isr import remove_signature
from skydm.pipeline.sky import BackgroundConfig, masked_background

#: Pixels by which the image is mirrored outwards for L.A.Cosmic (more than
#: the half-width of its 7x7 median filters).
_PAD = 8


@dataclass(frozen=True)
class CosmicRayConfig:
    """How single-frame cosmic rays are found and repaired (L.A.Cosmic).

    Parameters
    ----------
    enabled : bool
        Find and repair cosmic rays at all.
    sigclip : float
        Laplacian-to-noise limit of a cosmic-ray pixel (``astroscrappy``'s
        ``sigclip``); lower finds fainter hits and more false ones.
    sigfrac : float
        Fraction of ``sigclip`` for the neighbours of a cosmic-ray pixel.
    objlim : float
        Least contrast between the Laplacian and the fine-structure image;
        it keeps the cores of stars (blurred by the PSF) out of the mask.
    niter : int
        L.A.Cosmic iterations (each finds hits next to ones already found).
    grow : int
        Pixels by which the mask is grown around each hit, to take its faint
        wings (charge diffusion) too.
    saturation_margin : int
        Pixels around saturated ones where no cosmic ray is flagged (the
        steep wings of a saturated star pass the Laplacian test).
    """

    enabled: bool = True
    sigclip: float = 5.0
    sigfrac: float = 0.3
    objlim: float = 5.0
    niter: int = 4
    grow: int = 1
    saturation_margin: int = 4

    def __post_init__(self) -> None:
        for name in ("sigclip", "objlim"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise BadValueError(f"CosmicRayConfig.{name}", value, "a positive finite number")
        if not 0 < self.sigfrac <= 1:
            raise BadValueError("CosmicRayConfig.sigfrac", self.sigfrac, "a fraction in (0, 1]")
        if not 1 <= int(self.niter) <= 10:
            raise BadValueError("CosmicRayConfig.niter", self.niter, "an integer from 1 to 10")
        if not 0 <= int(self.grow) <= 3:
            raise BadValueError("CosmicRayConfig.grow", self.grow, "an integer from 0 to 3")
        if not 0 <= int(self.saturation_margin) <= 50:
            raise BadValueError(
                "CosmicRayConfig.saturation_margin", self.saturation_margin, "0 to 50 pixels"
            )


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
    """

    cosmic_rays: CosmicRayConfig = CosmicRayConfig()
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    psf_fallback: bool = True


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
    removed = exp.info.sky if exp.info.sky > 2.0 * abs(float(np.median(back))) else 0.0
    sky = back + removed
    image = image - back.astype(np.float32)
    exp.image = image
    exp.info.sky = float(np.mean(sky))
    signal = np.clip(image + sky, 0.0, None)
    exp.variance = (signal / gain + (isr.read_noise / gain) ** 2).astype(np.float32)
    exp.variance[(mask & np.uint32(Mask.NO_DATA)) != 0] = np.inf
    exp.psf = _psf(exp, cfg.psf_fallback)
    return exp


def repair_cosmic_rays(
    exp: Exposure,
    image: np.ndarray,
    *,
    gain: float,
    read_noise: float,
    config: CosmicRayConfig,
) -> np.ndarray:
    """Find cosmic rays in ``image`` with L.A.Cosmic, mask and interpolate them.

    Parameters
    ----------
    exp : Exposure
        Its mask plane gets CR and INTRP on every repaired pixel; its visit
        info gives the saturation and the sky removed upstream.
    image : numpy.ndarray
        The pixels in ADU (``float32``).
    gain, read_noise : float
        Electrons per ADU and read noise in electrons (the noise model).
    config : CosmicRayConfig
        Detection limits.

    Returns
    -------
    numpy.ndarray
        The image with cosmic-ray pixels replaced by a masked 5x5 mean of
        their good neighbours (``float32``).
    """
    astroscrappy = require_extra("astroscrappy", "calibrate")
    mask = exp.msk
    finite = np.isfinite(image)
    ignored = ((mask & np.uint32(Mask.BAD | Mask.NO_DATA)) != 0) | ~finite
    saturated = (mask & np.uint32(Mask.SAT)) != 0
    level = float(np.median(image[~ignored])) if (~ignored).any() else 0.0
    # The noise model needs the sky in the pixels; a sky removed upstream
    # (recorded in the visit info, far above what the pixels still hold) is
    # added back for the detection only.
    sky = exp.info.sky if exp.info.sky > 2.0 * abs(level) else 0.0
    # Unusable pixels take the typical level rather than zero, so that their
    # edges do not look like sharp features; saturated pixels keep their
    # values, which is how L.A.Cosmic recognises (and spares) saturated stars.
    data = (np.where(ignored, level, image) + sky).astype(np.float32)
    sat = exp.info.saturation if math.isfinite(exp.info.saturation) else float(np.inf)
    # L.A.Cosmic's median filters are blind at the border (a star cut by the
    # edge looks sharp): the image is mirrored outwards for the detection.
    pad = _PAD
    found, _ = astroscrappy.detect_cosmics(
        np.pad(data, pad, mode="symmetric"),
        inmask=np.pad(ignored, pad, mode="symmetric"),
        sigclip=config.sigclip,
        sigfrac=config.sigfrac,
        objlim=config.objlim,
        gain=gain,
        readnoise=read_noise,
        # astroscrappy compares the saturation with pixels in electrons.
        satlevel=min((sat + sky) * gain, 1e30),
        niter=config.niter,
        sepmed=True,
        cleantype="meanmask",
    )
    found = np.asarray(found, dtype=bool)[pad:-pad, pad:-pad] & ~ignored & ~saturated
    if saturated.any():
        # The steep wings of a saturated core pass the Laplacian test; the
        # cores are masked SAT anyway, and their surroundings are no place to
        # interpolate.
        near = ndimage.binary_dilation(saturated, iterations=config.saturation_margin)
        found &= ~near
    if config.grow and found.any():
        found = ndimage.binary_dilation(found, iterations=config.grow) & ~ignored & ~saturated
    if not found.any():
        return image
    mask[found] |= np.uint32(Mask.CR | Mask.INTRP)
    return _interpolate(image, found | ignored, found)


def _interpolate(image: np.ndarray, unusable: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Replace ``targets`` by the mean of the usable pixels of a growing box.

    A 5x5 box first, wider where a long track leaves no usable neighbour.
    """
    out = image.copy()
    good = np.where(unusable, 0.0, image).astype(np.float64)
    weight = (~unusable).astype(np.float64)
    todo = targets.copy()
    for size in (5, 9, 17, 33):
        total = ndimage.uniform_filter(good, size, mode="constant")
        count = ndimage.uniform_filter(weight, size, mode="constant")
        fill = todo & (count > 0.5 / size**2)
        out[fill] = (total[fill] / count[fill]).astype(out.dtype)
        todo &= ~fill
        if not todo.any():
            break
    return out


def _seeing_pixels(exp: Exposure) -> float:
    """The header's seeing FWHM in pixels; NaN when it or the WCS is missing."""
    if not math.isfinite(exp.info.seeing) or exp.wcs is None:
        return math.nan
    return exp.info.seeing / _pixel_scale(exp)


def _pixel_scale(exp: Exposure) -> float:
    assert exp.wcs is not None
    return float(np.sqrt(abs(np.linalg.det(exp.wcs.pixel_scale_matrix)))) * 3600.0


def _psf(exp: Exposure, fallback: bool) -> Psf:
    # The stars' joint Moffat fit (skydm.image.starpsf; docs/drp.md, The PSF
    # model): a stacked pixel PSF took compact galaxies for stars and lost
    # its wings to a 25-pixel stamp.
    try:
        return measure_star_psf(exp).psf
    except UserError:
        if not fallback or not math.isfinite(exp.info.seeing) or exp.wcs is None:
            raise
    return MoffatPsf(exp.info.seeing / _pixel_scale(exp), beta=3.5)
