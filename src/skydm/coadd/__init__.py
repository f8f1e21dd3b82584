"""Coadds: the sky grid, warping onto it, and assembly with artefact rejection
(CompareWarp, DMTN-080), whose output is the template for differencing."""

from skydm.coadd.assemble import METHODS, assemble_coadd, coadd_psf
from skydm.coadd.compare_warp import CompareWarpConfig, compare_warp
from skydm.coadd.skygrid import SkyCell, SkyGrid, tan_wcs
from skydm.coadd.stack import WarpStack
from skydm.coadd.warp import warp_exposure

__all__ = [
    "METHODS",
    "CompareWarpConfig",
    "SkyCell",
    "SkyGrid",
    "WarpStack",
    "assemble_coadd",
    "coadd_psf",
    "compare_warp",
    "tan_wcs",
    "warp_exposure",
]
