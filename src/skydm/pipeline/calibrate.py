"""Turning a raw exposure into a calibrated visit image (a "calexp").

This is instrument signature removal reduced to what a raw from the archive
needs before differencing and coadding: saturated and non-finite pixels
masked, the sky background subtracted (and remembered, so that the variance
keeps its Poisson term), a CCD-equation variance plane, and a PSF measured
from the image's own stars.
"""

from __future__ import annotations

import math

import numpy as np

from skydm.errors import UserError
from skydm.image import Exposure, Mask, MoffatPsf, estimate_background, measure_psf
from skydm.image.psf import Psf


def calibrate_raw(raw: Exposure, *, psf_fallback: bool = True) -> Exposure:
    """Calibrate one raw exposure.

    Parameters
    ----------
    raw : Exposure
        The raw image in ADU, sky not subtracted, with gain and read noise in
        its visit info.
    psf_fallback : bool
        When too few stars are found to measure a PSF, use a Moffat profile
        with the header's seeing (``SEEING`` card, arcsec, with the WCS pixel
        scale) instead of failing.

    Returns
    -------
    Exposure
        Background-subtracted image (``float32``), variance from the CCD
        equation, SAT/NO_DATA masks, a measured PSF, and ``info.sky`` set to
        the mean background that was removed.

    Raises
    ------
    MissingMetadataError
        When the raw has no gain (the variance plane needs it).
    UserError
        When no PSF can be measured and there is no seeing to fall back on.
    """
    gain = raw.require_gain("calibration (the variance plane)")
    rn = raw.info.read_noise if math.isfinite(raw.info.read_noise) else 0.0
    exp = raw.copy()
    image = exp.image.astype(np.float32)
    mask = exp.msk
    if math.isfinite(exp.info.saturation):
        mask[image >= exp.info.saturation] |= np.uint32(Mask.SAT)
    back, _ = estimate_background(exp)
    # A recorded sky level far above the measured background means the sky was
    # removed upstream (as in the DECam stamps' SKYDIP); its Poisson noise is
    # still in the pixels, so it stays in the variance.
    removed = exp.info.sky if exp.info.sky > 2.0 * abs(float(np.median(back))) else 0.0
    sky = back + removed
    image = image - back.astype(np.float32)
    exp.image = image
    exp.info.sky = float(np.mean(sky))
    signal = np.clip(image + sky, 0.0, None)
    exp.variance = (signal / gain + (rn / gain) ** 2).astype(np.float32)
    exp.variance[(mask & np.uint32(Mask.NO_DATA)) != 0] = np.inf
    exp.psf = _psf(exp, psf_fallback)
    return exp


def _psf(exp: Exposure, fallback: bool) -> Psf:
    try:
        return measure_psf(exp)
    except UserError:
        if not fallback or not math.isfinite(exp.info.seeing) or exp.wcs is None:
            raise
    scale = float(np.sqrt(abs(np.linalg.det(exp.wcs.pixel_scale_matrix)))) * 3600.0
    return MoffatPsf(exp.info.seeing / scale, beta=3.5)
