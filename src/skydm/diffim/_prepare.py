"""Getting a science/template pair ready to difference.

Each input is copied into ``float32`` planes, its noise model is settled
(header gain, an override, or the documented empirical fallback), saturated
pixels are masked, its PSF is found (given or measured) and the template is
resampled onto the science image's pixel grid when the two differ.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from skydm.diffim._common import dilate_sparse
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure, Mask, estimate_background, measure_psf
from skydm.image.mask import UNUSABLE
from skydm.image.psf import Psf
from skydm.image.visit import VisitInfo


def _name(exp: Exposure, role: str) -> str:
    return exp.source or f"the {role} image"


def prepare(
    exp: Exposure,
    role: str,
    *,
    gain: float | None = None,
    read_noise: float | None = None,
    sky: float | None = None,
    saturation: float | None = None,
    notes: list[str],
) -> Exposure:
    """A ``float32`` copy of ``exp`` with a trustworthy variance plane and SAT mask.

    Parameters
    ----------
    exp : Exposure
        The input (not modified).
    role : str
        ``"science"`` or ``"template"``, for messages.
    gain, read_noise, sky : float, optional
        Overrides of the header values (e-/ADU, electrons, ADU already
        subtracted).  Giving any of them rebuilds the variance from the CCD
        equation.
    saturation : float, optional
        Saturation level in the image's pixel values as stored (after any
        sky subtraction); pixels at or above it are masked SAT.
    notes : list of str
        Fallbacks taken are appended here.

    Raises
    ------
    UserError
        When every pixel is non-finite or masked, when a gain is given
        without the sky level of a sky-subtracted image, or when the
        variance plane is not positive on usable pixels.
    """
    # A shallow copy: no plane is ever written to in place, so planes that
    # need no change are shared with the input (new arrays replace them).
    image = np.asarray(exp.image, dtype=np.float32)
    finite = np.isfinite(image)
    # Sentinels (-3.4e38, 1e30 and the like) stand for "no data": made NaN,
    # hence NO_DATA, so that no fill or filter ever sees them.
    with np.errstate(invalid="ignore"):
        finite &= np.abs(image) < np.float32(SENTINEL)
    all_finite = bool(finite.all())
    if not all_finite:
        n_bad = int(image.size - np.count_nonzero(finite))
        image = np.where(finite, image, np.float32(np.nan))
        notes.append(f"{role}: {n_bad} NaN or sentinel (|value| >= 1e30) pixels masked NO_DATA")
    out = Exposure(
        image=image,
        variance=np.asarray(exp.var, dtype=np.float32),
        # Exposure() flags non-finite pixels in the mask in place: a copy then.
        mask=exp.msk if all_finite else exp.msk.copy(),
        wcs=exp.wcs,
        psf=exp.psf,
        zero_point=exp.zero_point,
        info=VisitInfo(**{k: getattr(exp.info, k) for k in exp.info.__dataclass_fields__}),
        meta=exp.meta,
        source=exp.source,
    )
    name = _name(exp, role)
    for label, value in (("gain", gain), ("read_noise", read_noise), ("sky", sky)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise BadValueError(label, value, "a finite non-negative number")
    if saturation is not None:
        if not math.isfinite(saturation):
            raise BadValueError("saturation", saturation, "a finite pixel value")
        out.info.saturation = float(saturation) + (
            out.info.sky if math.isfinite(out.info.sky) else 0.0
        )
    if gain is not None:
        if gain <= 0:
            raise BadValueError("gain", gain, "a positive number of electrons per ADU")
        out.info.gain = float(gain)
    if read_noise is not None:
        out.info.read_noise = float(read_noise)
    if sky is not None:
        out.info.sky = float(sky)
    if not finite.any() or _all_unusable(out.msk):
        raise UserError(f"{name}: every pixel is NaN or masked; nothing to difference")
    override = gain is not None or read_noise is not None or sky is not None
    if override and out.info.gain > 0:
        if gain is not None and sky is None:
            _check_sky(out, role, name)
        out.variance = _ccd_variance(out)
        notes.append(f"{role}: variance from the CCD equation with gain {out.info.gain:g}")
    elif not (out.info.gain > 0) and np.ptp(out.var[np.isfinite(out.var)]) == 0:
        # A flat plane means the reader had no gain and guessed: replace it by
        # the documented empirical model (see docs/diffim.md, "Noise").
        out.variance = empirical_variance(out)
        notes.append(
            f"{role}: no gain in {name}; variance estimated from the image's own noise "
            "(give --gain for the CCD equation)"
        )
    if not all_finite:
        out.variance = np.where(finite, out.var, np.inf).astype(np.float32)
    _check_variance(out, name)
    _mask_saturation(out)
    return out


#: Pixel values at or beyond this magnitude are sentinels for missing data.
SENTINEL = 1e30


def _check_sky(exp: Exposure, role: str, name: str) -> None:
    """Refuse a gain without a sky level on a sky-subtracted image.

    The CCD equation needs the counts the sky put on the detector; on a
    sky-subtracted image without them it predicts a variance near zero
    (and zero where the read noise is unknown), whatever the real noise.
    """
    sample = exp.image[::3, ::3]
    usable = np.isfinite(sample) & ((exp.msk[::3, ::3] & np.uint32(UNUSABLE)) == 0)
    values = sample[usable]
    if values.size < 50:
        return
    sigma = robust_sigma(values)
    level = float(np.median(values)) + (exp.info.sky if math.isfinite(exp.info.sky) else 0.0)
    rn = exp.info.read_noise if math.isfinite(exp.info.read_noise) else 0.0
    predicted = max(level, 0.0) / exp.info.gain + (rn / exp.info.gain) ** 2
    if sigma > 0 and predicted < 0.25 * sigma**2:
        option = "--sky" if role == "science" else "--template-sky"
        raise UserError(
            f"{name}: a gain of {exp.info.gain:g} e-/ADU was given without the sky level, "
            f"but the image looks sky-subtracted (median {level:.4g} ADU, noise "
            f"{sigma:.4g} ADU): the CCD equation would predict a variance of {predicted:.3g} "
            f"instead of about {sigma**2:.3g}; give {option} LEVEL (the sky subtracted, in "
            "ADU), or leave the gain out to use the measured noise"
        )


def _check_variance(exp: Exposure, name: str) -> None:
    """Refuse a variance plane that is zero, negative or NaN on usable pixels."""
    var = exp.var
    with np.errstate(invalid="ignore"):
        bad = ~(var > 0)
    if not bad.any():
        return
    bad &= np.isfinite(exp.image)
    bad &= (exp.msk & np.uint32(UNUSABLE)) == 0
    n = int(np.count_nonzero(bad))
    if n:
        iy, ix = (int(v[0]) for v in np.nonzero(bad))
        raise UserError(
            f"{name}: the variance plane is zero, negative or NaN on {n} usable pixel(s) "
            f"(first at x={ix}, y={iy}, value {float(var[iy, ix]):.3g}); fix the VARIANCE "
            "plane or mask those pixels, or give --gain (with --sky for a sky-subtracted "
            "image) to rebuild it from the CCD equation"
        )


def _all_unusable(mask: np.ndarray) -> bool:
    unusable = np.uint32(UNUSABLE)
    # A sparse sample settles the usual case (some usable pixel) cheaply.
    if ((mask[::7, ::7] & unusable) == 0).any():
        return False
    return bool(((mask & unusable) != 0).all())


def _ccd_variance(exp: Exposure) -> np.ndarray:
    rn = exp.info.read_noise if math.isfinite(exp.info.read_noise) else 0.0
    signal = np.clip(np.nan_to_num(exp.image) + exp.info.sky, 0.0, None)
    return (signal / exp.info.gain + (rn / exp.info.gain) ** 2).astype(np.float32)


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation of the core of ``values`` (3-sigma clipped, 3 passes)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan
    med = float(np.median(v))
    sig = 1.4826 * float(np.median(np.abs(v - med)))
    for _ in range(3):
        core = v[np.abs(v - med) < 3 * sig]
        if core.size < 10:
            break
        med = float(np.mean(core))
        # 0.9733: std of a unit Gaussian truncated at +-3 sigma.
        sig = float(np.std(core)) / 0.9733
    return sig


def empirical_variance(exp: Exposure) -> np.ndarray:
    """Variance when the gain is unknown: sky noise measured, source noise inferred.

    The sky variance is the clipped variance of the background-subtracted
    pixels.  When the image still carries its sky (background well above its
    noise) an effective gain ``background / sky variance`` gives the Poisson
    term of the sources; on a sky-subtracted image the sources get none.
    """
    back, _ = estimate_background(exp)
    resid = exp.image - back
    good = np.isfinite(resid) & ((exp.msk & np.uint32(UNUSABLE)) == 0)
    sigma = robust_sigma(resid[good])
    if not (sigma > 0):
        raise UserError(f"{_name(exp, 'input')}: cannot measure the image noise (flat image?)")
    var = np.full(exp.shape, sigma**2, dtype=np.float32)
    level = float(np.median(back[good]))
    if level > 10 * sigma:
        g_eff = level / sigma**2
        var += np.clip(np.nan_to_num(resid), 0.0, None).astype(np.float32) / np.float32(g_eff)
    return var


def saturation_level(exp: Exposure) -> float:
    """Saturation in the image's own units (after any sky subtraction), NaN if unknown.

    Without a SATURATE card, three or more pixels sitting exactly at the
    image maximum (a clipped plateau) mark that maximum as saturation.
    """
    if math.isfinite(exp.info.saturation):
        return exp.info.saturation - exp.info.sky
    img = exp.image[np.isfinite(exp.image)]
    top = float(img.max())
    if np.count_nonzero(img == top) >= 3 and top > float(np.median(img)) + 50 * float(
        np.sqrt(np.median(exp.var))
    ):
        return top
    return math.nan


def _mask_saturation(exp: Exposure) -> None:
    level = saturation_level(exp)
    if not math.isfinite(level):
        return
    with np.errstate(invalid="ignore"):
        sat = exp.image >= level
    if sat.any():
        # Pixels next to a saturated one are nonlinear too: grow by one pixel.
        sat = dilate_sparse(sat, 1, lambda p: ndimage.binary_dilation(p, iterations=1))
        bit = np.uint32(Mask.SAT)
        if not np.all(exp.msk[sat] & bit):
            # A new plane: the input's mask may be shared (see prepare).
            exp.mask = exp.msk.copy()
            exp.mask[sat] |= bit


def psf_for(exp: Exposure, role: str) -> Psf:
    """The exposure's PSF, measured from its stars when it has none."""
    if exp.psf is not None:
        return exp.psf
    last: UserError | None = None
    for min_snr, size in ((50.0, 25), (20.0, 25), (15.0, 19)):
        try:
            return measure_psf(exp, min_snr=min_snr, size=size)
        except UserError as exc:
            last = exc
    raise UserError(
        f"{_name(exp, role)}: no PSF given and none could be measured ({last}); give "
        + (
            "--psf FILE or --fwhm PIXELS"
            if role == "science"
            else "--template-psf or --template-fwhm"
        )
    )


def same_grid(science: Exposure, template: Exposure, tol: float = 0.02) -> bool:
    """Whether the two images share a pixel grid (to ``tol`` pixels)."""
    if science.shape != template.shape:
        return False
    if science.wcs is None or template.wcs is None:
        return True
    ny, nx = science.shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    world = science.wcs.pixel_to_world_values(gx.ravel(), gy.ravel())
    tx, ty = template.wcs.world_to_pixel_values(*world)
    return bool(np.max(np.hypot(tx - gx.ravel(), ty - gy.ravel())) < tol)


def align(science: Exposure, template: Exposure, notes: list[str]) -> Exposure:
    """``template`` on the science pixel grid, resampled with its variance and mask.

    Image and variance are interpolated bilinearly; the mask is taken from
    the nearest template pixel; science pixels that no template pixel covers
    are NO_DATA.  The template PSF is carried over unchanged (resampling near
    the identity changes it negligibly).

    Raises
    ------
    UserError
        When the grids differ and either image has no WCS.
    """
    if same_grid(science, template):
        if science.shape == template.shape and (science.wcs is None or template.wcs is None):
            notes.append("no WCS on one image: assumed to share the science pixel grid")
        return template
    if science.wcs is None or template.wcs is None:
        missing = _name(science, "science") if science.wcs is None else _name(template, "template")
        raise UserError(
            f"science {science.shape} and template {template.shape} are on different pixel "
            f"grids and {missing} has no WCS to align them; give images on the same grid "
            "or add a WCS"
        )
    from skydm.diffim._resample import pixel_map, warp

    # One science -> template pixel mapping, then the three planes sampled in
    # one compiled pass (reproject_interp would redo the full-frame WCS
    # transforms per plane).
    pm = pixel_map(science.wcs, template.wcs, science.shape, template.shape)
    img, var, mask = warp(pm, template.image, template.var, template.msk, Mask.NO_DATA)
    nodata = ~np.isfinite(img)  # exactly the pixels no template pixel covers
    if nodata.all():
        raise UserError(
            f"{_name(template, 'template')} does not overlap {_name(science, 'science')}"
        )
    notes.append("template resampled onto the science WCS (bilinear)")
    out = Exposure(
        image=img,
        variance=var,
        mask=mask,
        wcs=science.wcs,
        psf=template.psf,
        zero_point=template.zero_point,
        info=template.info,
        meta=template.meta,
        source=template.source,
    )
    return out
