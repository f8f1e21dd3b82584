"""Warping visit images onto a sky cell's pixel grid.

A warp is an :class:`~skydm.image.Exposure` on the cell's grid (the cell's
WCS and shape).  The image and the variance are resampled with the same
bilinear (or adaptive, flux-conserving) kernel through ``reproject``; the
variance is thus interpolated like the image, ignoring the covariance that
resampling creates between neighbouring pixels (as Rubin's warps do).  The
mask is resampled by nearest neighbour after OR-ing every bit over each
input pixel's 3x3 neighbourhood, so that a bit lands on every output pixel
whose interpolation kernel touched a flagged input pixel.  Pixels outside
the input's footprint get ``NO_DATA``, image 0 and infinite variance.
Pixel values are multiplied by the ratio of output to input pixel area, so
that fluxes are conserved when the scales differ.

The warp carries the input's PSF.  When the input and cell pixel scales are
equal (within 1%) the PSF in cell pixels is the input PSF; otherwise
analytic PSFs are rescaled and pixel PSFs resampled by the ratio of scales.
PSF rotation between grids is ignored (the simulator's and most ground-based
PSFs are near-circular).

Bilinear interpolation at a sub-pixel phase ``f`` convolves the image with
the two-tap kernel ``(1 - f, f)`` per axis, so a warp that is a translation
of its input broadens every star by the same amount.  Such a warp records
that phase (``WARPDX``/``WARPDY``: the fractional input-pixel coordinates
of the output pixel centres, see :func:`warp_phase`) and the coadd PSF uses
the exact kernel for it (:func:`skydm.coadd.combine.bilinear_psf`).
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from skydm.coadd.skygrid import SkyCell
from skydm.errors import BadValueError, UserError, require_extra
from skydm.image import (
    DoubleGaussianPsf,
    Exposure,
    GaussianPsf,
    Mask,
    MoffatPsf,
    PixelPsf,
    Psf,
)

#: Input mask bits that make a pixel unusable in a warp (its value is not trusted).
WARP_REJECT = Mask.BAD | Mask.SAT | Mask.CR | Mask.NO_DATA | Mask.SUSPECT


def pixel_scale_of(wcs: WCS) -> float:
    """Mean pixel scale of ``wcs`` in arcseconds."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def scale_psf(psf: Psf, factor: float) -> Psf:
    """``psf`` with its size multiplied by ``factor`` (input pixels to output pixels)."""
    if abs(factor - 1.0) < 0.01:
        return psf
    if isinstance(psf, GaussianPsf):
        return GaussianPsf(psf.sigma * factor)
    if isinstance(psf, DoubleGaussianPsf):
        return DoubleGaussianPsf(psf.sigma1 * factor, psf.sigma2 * factor, psf.frac)
    if isinstance(psf, MoffatPsf):
        return MoffatPsf(psf.fwhm * factor, psf.beta)
    img = psf.kernel()
    zoomed = ndimage.zoom(img, factor, order=3)
    n = zoomed.shape[0] | 1
    if n > zoomed.shape[0]:
        zoomed = np.pad(zoomed, ((0, 1), (0, 1)))
    return PixelPsf(np.clip(zoomed[:n, :n], 0.0, None))


#: How far (input pixels) the sub-pixel phase may drift over a warp for it to
#: count as a translation: the two-tap kernel's variance ``f (1 - f)`` moves
#: by at most 0.05 px^2 (a flux bias near 0.1% at FWHM 3.5 px) across it.
PHASE_TOLERANCE = 0.05


def warp_phase(in_wcs: WCS, out_wcs: WCS, box: tuple[slice, slice]) -> tuple[float, float] | None:
    """The sub-pixel phase of a warp that is locally a translation.

    Parameters
    ----------
    in_wcs, out_wcs : astropy.wcs.WCS
        The input image's WCS and the output grid's.
    box : tuple of slice
        The (rows, columns) of the output grid the input covers.

    Returns
    -------
    tuple of float or None
        ``(fx, fy)`` in ``[0, 1)``: the fractional part of the input-pixel
        coordinates of the output pixel centres at the box's centre (the
        bilinear weight given to the next input pixel), or ``None`` when the
        phase drifts by more than :data:`PHASE_TOLERANCE` between the centre
        and the corners (rotation, scale change or distortion), where the mean
        kernel over phases is the right model.
    """
    ys, xs = box
    # Integer output pixels: the centre and the four corners of the box.
    px = np.array([(xs.start + xs.stop - 1) // 2, xs.start, xs.stop - 1, xs.start, xs.stop - 1])
    py = np.array([(ys.start + ys.stop - 1) // 2, ys.start, ys.start, ys.stop - 1, ys.stop - 1])
    ra, dec = out_wcs.pixel_to_world_values(px.astype(float), py.astype(float))
    x, y = in_wcs.world_to_pixel_values(ra, dec)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    fx, fy = x - np.floor(x), y - np.floor(y)
    for f in (fx, fy):
        # Phases wrap at 1: 0.99 and 0.01 are 0.02 apart.
        drift = np.abs((f[1:] - f[0] + 0.5) % 1.0 - 0.5)
        if float(drift.max()) > PHASE_TOLERANCE:
            return None
    return float(fx[0]), float(fy[0])


def _dilate_bits(mask: np.ndarray) -> np.ndarray:
    """OR of every bit over each pixel's 3x3 neighbourhood."""
    out = mask.copy()
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out[:] = rows
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def warp_exposure(
    exposure: Exposure,
    cell: SkyCell,
    *,
    method: str = "bilinear",
    zero_point: float | None = None,
) -> Exposure:
    """Resample ``exposure`` onto ``cell``'s pixel grid.

    Parameters
    ----------
    exposure : Exposure
        A background-subtracted visit image with a WCS (and usually a PSF).
    cell : SkyCell
        The target grid.
    method : {"bilinear", "bicubic", "adaptive"}
        ``reproject_interp`` with that order, or ``reproject_adaptive``
        (anti-aliased, flux-conserving; better when the scales differ).
    zero_point : float, optional
        Photometric zero point to scale the warp to (so that warps of visits
        with different calibrations can be averaged); ``None`` keeps the
        input's calibration.

    Returns
    -------
    Exposure
        The warp: image, variance, mask, cell WCS, PSF, zero point and the
        input's visit metadata.

    Raises
    ------
    UserError
        When the exposure does not overlap the cell.
    """
    if method not in ("bilinear", "bicubic", "adaptive"):
        raise BadValueError("method", method, "'bilinear', 'bicubic' or 'adaptive'")
    reproject = require_extra("reproject", "coadd")
    wcs = exposure.require_wcs("warping onto a sky cell")
    name = exposure.source or f"visit {exposure.info.visit}"
    box = cell.overlap_bbox(wcs, exposure.shape)
    if box is None:
        raise UserError(f"{name} does not overlap sky cell {cell.id}; pick a cell it covers")
    ys, xs = box
    sub_shape = (ys.stop - ys.start, xs.stop - xs.start)
    sub_wcs = cell.wcs
    sub_wcs.wcs.crpix = sub_wcs.wcs.crpix - np.array([xs.start, ys.start])
    sub_wcs.pixel_shape = (sub_shape[1], sub_shape[0])

    bad_in = (exposure.msk & np.uint32(WARP_REJECT)) != 0
    bad_in |= ~np.isfinite(exposure.image) | ~np.isfinite(exposure.var)
    # Zero the unusable pixels so that they cannot spread NaN or garbage;
    # the dilated mask flags every output pixel they touch.
    image = np.where(bad_in, 0.0, exposure.image).astype(np.float64)
    var = np.where(bad_in, 0.0, exposure.var).astype(np.float64)

    def resample(planes: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray]:
        # Planes stacked on a leading axis share one coordinate transformation;
        # TAN to TAN needs no round-trip check.
        if method == "adaptive" and order != "nearest-neighbor":
            out, foot = reproject.reproject_adaptive(
                (planes, wcs), sub_wcs, shape_out=sub_shape, conserve_flux=False
            )
        else:
            out, foot = reproject.reproject_interp(
                (planes, wcs), sub_wcs, shape_out=sub_shape, order=order, roundtrip_coords=False
            )
        return np.asarray(out), np.asarray(foot)

    both, foot = resample(np.stack([image, var]), "bilinear" if method == "adaptive" else method)
    img_w, var_w = both[0], both[1]
    foot = foot[0] if foot.ndim == 3 else foot
    mask_src = exposure.msk.astype(np.uint32)
    # Non-finite pixels that no bit explains yet are flagged NO_DATA.
    unexplained = bad_in & ((mask_src & np.uint32(WARP_REJECT)) == 0)
    if unexplained.any():
        mask_src = mask_src.copy()
        mask_src[unexplained] |= np.uint32(Mask.NO_DATA)
    mask_in = _dilate_bits(mask_src)
    mask_w, _ = resample(mask_in.astype(np.float64), "nearest-neighbor")

    outside = (foot <= 0) | ~np.isfinite(img_w) | ~np.isfinite(var_w) | ~np.isfinite(mask_w)
    full_img = np.zeros(cell.shape, dtype=np.float32)
    full_var = np.full(cell.shape, np.inf, dtype=np.float32)
    full_mask = np.full(cell.shape, np.uint32(Mask.NO_DATA), dtype=np.uint32)
    sub_mask = np.where(outside, 0, np.nan_to_num(mask_w)).astype(np.uint32)
    sub_mask[outside] |= np.uint32(Mask.NO_DATA)
    full_img[ys, xs] = np.where(outside, 0.0, img_w)
    full_var[ys, xs] = np.where(outside, np.inf, var_w)
    full_mask[ys, xs] = sub_mask
    if not (full_mask & np.uint32(Mask.NO_DATA) == 0).any():
        raise UserError(f"{name} has no usable pixels on sky cell {cell.id}")

    scale = 1.0
    zp = exposure.zero_point
    if zero_point is not None:
        if not math.isfinite(exposure.zero_point):
            raise BadValueError(
                "zero_point",
                zero_point,
                f"only for calibrated inputs; {name} has no zero point (set ZP)",
            )
        scale = 10.0 ** (0.4 * (zero_point - exposure.zero_point))
        zp = zero_point
    # Interpolation keeps counts per input pixel; conserve flux instead by the
    # ratio of pixel areas (1 when the scales match, as on a survey's grid).
    scale *= (cell.pixel_scale / pixel_scale_of(wcs)) ** 2
    if abs(scale - 1.0) > 1e-12:
        full_img *= np.float32(scale)
        full_var *= np.float32(scale * scale)

    psf = exposure.psf
    if psf is not None:
        psf = scale_psf(psf, pixel_scale_of(wcs) / cell.pixel_scale)
    info = exposure.info
    meta = exposure.meta.copy()
    meta["SKYCELL"] = (cell.id, "sky cell of this warp")
    meta["WARPMETH"] = (method, "resampling kernel")
    for key in ("WARPDX", "WARPDY"):
        meta.pop(key, None)
    phase = warp_phase(wcs, cell.wcs, box) if method == "bilinear" else None
    if phase is not None:
        meta["WARPDX"] = (round(phase[0], 6), "input x phase of output pixels (bilinear)")
        meta["WARPDY"] = (round(phase[1], 6), "input y phase of output pixels (bilinear)")
    meta["FLXSCALE"] = (scale, "flux scale applied to reach the warp zero point")
    return Exposure(
        image=full_img,
        variance=full_var,
        mask=full_mask,
        wcs=cell.wcs,
        psf=psf,
        zero_point=zp,
        info=info,
        meta=meta,
        source=exposure.source,
    )
