"""The Exposure model shared by every stage: planes, masks, PSF, WCS, metadata,
FITS I/O, background, detection and measurement."""

from skydm.image.detect import (
    detect_sources,
    estimate_background,
    measure_psf,
    psf_photometry,
    subtract_background,
)
from skydm.image.exposure import Exposure, wcs_from_header
from skydm.image.io import (
    exposure_from_hdulist,
    open_fits,
    read_exposure,
    visit_info_from_header,
)
from skydm.image.mask import UNUSABLE, Mask, mask_names
from skydm.image.psf import DoubleGaussianPsf, GaussianPsf, MoffatPsf, PixelPsf, Psf
from skydm.image.visit import VisitInfo

__all__ = [
    "UNUSABLE",
    "DoubleGaussianPsf",
    "Exposure",
    "GaussianPsf",
    "Mask",
    "MoffatPsf",
    "PixelPsf",
    "Psf",
    "VisitInfo",
    "detect_sources",
    "estimate_background",
    "exposure_from_hdulist",
    "mask_names",
    "measure_psf",
    "open_fits",
    "psf_photometry",
    "read_exposure",
    "subtract_background",
    "visit_info_from_header",
    "wcs_from_header",
]
