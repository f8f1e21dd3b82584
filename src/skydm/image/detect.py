"""Background estimation, source detection and measurement (with sep), and
PSF measurement from stars."""

from __future__ import annotations

import math

import numpy as np
import sep
from astropy.table import Table

from skydm.errors import BadValueError, UserError
from skydm.image.exposure import Exposure
from skydm.image.mask import UNUSABLE, Mask
from skydm.image.psf import GaussianPsf, PixelPsf, Psf


def _native(a: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    # sep needs native byte order and C-contiguous arrays.
    return np.ascontiguousarray(a, dtype=dtype)


def estimate_background(
    exposure: Exposure, *, box: int = 64, filter_size: int = 3
) -> tuple[np.ndarray, float]:
    """Smooth background map and its global rms, masking unusable pixels.

    Returns
    -------
    background : numpy.ndarray
        The background at every pixel.
    rms : float
        The global background rms.
    """
    if box < 8:
        raise BadValueError("box", box, "a mesh size of at least 8 pixels")
    img = _native(exposure.image)
    bad = ~np.isfinite(img) | ((exposure.msk & np.uint32(UNUSABLE)) != 0)
    img = np.where(bad, 0.0, img)
    bkg = sep.Background(img, mask=bad, bw=box, bh=box, fw=filter_size, fh=filter_size)
    return np.asarray(bkg.back()), float(bkg.globalrms)


def subtract_background(exposure: Exposure, *, box: int = 64) -> np.ndarray:
    """Subtract the background in place; returns the background that was removed."""
    back, _ = estimate_background(exposure, box=box)
    exposure.image = (exposure.image - back).astype(exposure.image.dtype)
    return back


def matched_filter_snr(image: np.ndarray, variance: np.ndarray, psf: Psf) -> np.ndarray:
    """Signal-to-noise map of a point source at every pixel (the PSF-matched filter).

    ``S/N = (I/V * P) / sqrt((1/V) * P^2)`` with ``*`` the correlation with
    the PSF ``P``; pixels with infinite variance carry no weight.  On pure
    noise with a correct variance plane the map has unit variance.
    """
    from scipy.signal import fftconvolve

    kernel = psf.kernel(size=min(psf.default_size(), 31))
    flipped = kernel[::-1, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(np.isfinite(variance) & (variance > 0), 1.0 / variance, 0.0)
    num = fftconvolve(np.where(inv > 0, image, 0.0) * inv, flipped, mode="same")
    den = fftconvolve(inv, flipped**2, mode="same")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(den > 1e-30, num / np.sqrt(np.clip(den, 1e-30, None)), 0.0)
    return np.ascontiguousarray(snr, dtype=np.float64)


def detect_sources(
    exposure: Exposure,
    *,
    threshold: float = 5.0,
    min_area: int = 5,
    subtract_bkg: bool = True,
    deblend: bool = True,
    set_mask: bool = True,
) -> Table:
    """Detect and measure sources above ``threshold`` sigma of the variance plane.

    Detection thresholds the PSF-matched-filter S/N map (:func:`matched_filter_snr`,
    with the exposure's PSF or a 3-pixel Gaussian when it has none); positions
    and aperture fluxes are measured on the background-subtracted image.

    Returns
    -------
    astropy.table.Table
        One row per source with ``x``, ``y`` (0-based pixels, ``x`` the
        column), ``flux``/``flux_err`` (aperture of radius 2 FWHM, or 6 pixels
        with no PSF), ``peak``, ``a``, ``b``, ``theta``, ``npix``, ``snr`` and
        ``flag`` (sep's flags), plus ``ra``/``dec`` when there is a WCS.
    """
    if not (threshold > 0):
        raise BadValueError("threshold", threshold, "a positive number of sigma")
    img = _native(exposure.image)
    var = _native(exposure.var)
    bad = ~np.isfinite(img) | ~np.isfinite(var) | ((exposure.msk & np.uint32(UNUSABLE)) != 0)
    if bad.all():
        raise UserError(f"{exposure.source or 'image'}: every pixel is masked or non-finite")
    img = np.where(bad, 0.0, img)
    var = np.where(bad | (var <= 0), np.inf, var)
    if subtract_bkg:
        back, _ = estimate_background(exposure)
        img = img - np.where(bad, 0.0, back)
    psf = exposure.psf if exposure.psf is not None else GaussianPsf.from_fwhm(3.0)
    snr = matched_filter_snr(img, var, psf)
    sep.set_extract_pixstack(max(300000, img.size))
    sep.set_sub_object_limit(4096)
    # The S/N map already is the PSF-matched filter, so it is thresholded with
    # unit noise and no further filtering.
    objs, segmap = sep.extract(
        snr,
        threshold,
        err=np.ones_like(snr),
        mask=bad,
        minarea=min_area,
        filter_kernel=None,
        deblend_cont=0.005 if deblend else 1.0,
        segmentation_map=True,
    )
    # Barycentres of thresholded pixels of the smoothed map are noisy for faint
    # sources; windowed centroids on the image itself (SExtractor's XWIN) are not.
    sig = np.full(len(objs), psf.fwhm / 2.3548)
    xwin, ywin, wflag = sep.winpos(img, objs["x"], objs["y"], sig, mask=bad)
    moved = (
        (wflag != 0)
        | ~np.isfinite(xwin)
        | (np.hypot(xwin - objs["x"], ywin - objs["y"]) > psf.fwhm)
    )
    x = np.where(moved, objs["x"], xwin).astype(np.float64)
    y = np.where(moved, objs["y"], ywin).astype(np.float64)
    radius = 2.0 * psf.fwhm if exposure.psf is not None else 6.0
    flux, ferr, fflag = sep.sum_circle(img, x, y, radius, var=var, mask=bad)
    table = Table()
    table["x"] = x
    table["y"] = y
    table["flux"] = flux
    table["flux_err"] = ferr
    table["peak"] = objs["peak"]
    table["a"], table["b"], table["theta"] = objs["a"], objs["b"], objs["theta"]
    table["npix"] = objs["npix"]
    with np.errstate(divide="ignore", invalid="ignore"):
        table["snr"] = np.where(ferr > 0, flux / ferr, 0.0)
    table["flag"] = objs["flag"] | fflag
    if exposure.wcs is not None and len(table):
        sky = exposure.wcs.pixel_to_world_values(table["x"], table["y"])
        table["ra"], table["dec"] = sky[0], sky[1]
    if set_mask:
        exposure.msk[segmap > 0] |= np.uint32(Mask.DETECTED)
    return table


def measure_psf(
    exposure: Exposure,
    *,
    size: int = 25,
    max_stars: int = 200,
    min_snr: float = 50.0,
) -> PixelPsf:
    """Measure a pixelized PSF by stacking bright, isolated, unsaturated stars.

    Each star is shifted to a common centre with sub-pixel interpolation,
    normalised, and the stack is the per-pixel median, so that the occasional
    galaxy or blend does not bias the result.  When fewer than 5 stars pass
    ``min_snr`` (small images), the cut is relaxed once, to ``min_snr / 2.5``
    but not below 20.

    Raises
    ------
    UserError
        When fewer than 5 usable stars are found.
    """
    sources = detect_sources(exposure, threshold=10.0, set_mask=False)
    if len(sources) == 0:
        raise UserError(f"{exposure.source or 'image'}: no sources to measure a PSF from")
    sat = exposure.info.saturation if math.isfinite(exposure.info.saturation) else np.inf
    ok = (sources["flag"] == 0) & (sources["peak"] < 0.8 * sat)
    # Small images may hold too few bright stars: the S/N cut is relaxed (to
    # no less than 20, where a stack of >= 5 stars still has S/N > 40) before
    # giving up.
    for cut in (min_snr, min(min_snr, max(20.0, min_snr / 2.5))):
        cand = _psf_candidates(sources, sources[ok & (sources["snr"] > cut)], size, exposure)
        if len(cand) >= 5:
            break
    cand.sort("snr", reverse=True)
    cand = cand[:max_stars]
    if len(cand) < 5:
        raise UserError(
            f"{exposure.source or 'image'}: only {len(cand)} isolated unsaturated stars above "
            f"S/N {cut:g}; a PSF needs at least 5 (give a model PSF instead)"
        )
    return _stack_stars(exposure, cand, size)


def _psf_candidates(sources: Table, cand: Table, size: int, exposure: Exposure) -> Table:
    """Isolated, compact candidates whose stamps fit in the image."""
    half = size // 2
    ny, nx = exposure.shape
    cand = cand[
        (cand["x"] > half + 1)
        & (cand["x"] < nx - half - 2)
        & (cand["y"] > half + 1)
        & (cand["y"] < ny - half - 2)
    ]
    if len(cand) > 1:
        # Isolation: no other detection within a stamp half-width.
        xy = np.column_stack([sources["x"], sources["y"]])
        keep = []
        for row in cand:
            d = np.hypot(xy[:, 0] - row["x"], xy[:, 1] - row["y"])
            keep.append(np.count_nonzero(d < half) == 1)
        cand = cand[np.asarray(keep, dtype=bool)]
    # Stars are the compact population: keep those near the modal size.
    if len(cand) > 5:
        size_metric = np.sqrt(np.asarray(cand["a"]) * np.asarray(cand["b"]))
        med = np.median(size_metric)
        cand = cand[np.abs(size_metric - med) < 0.2 * med + 0.1]
    return cand


def _stack_stars(exposure: Exposure, cand: Table, size: int) -> PixelPsf:
    """Median of the normalised, recentred star stamps."""
    from scipy import ndimage

    half = size // 2
    back, _ = estimate_background(exposure)
    img = exposure.image - back
    stamps = []
    for row in cand:
        xc, yc = float(row["x"]), float(row["y"])
        ix, iy = round(xc), round(yc)
        stamp = np.asarray(img[iy - half - 1 : iy + half + 2, ix - half - 1 : ix + half + 2])
        m = exposure.msk[iy - half - 1 : iy + half + 2, ix - half - 1 : ix + half + 2]
        if (m & np.uint32(UNUSABLE)).any() or not np.all(np.isfinite(stamp)):
            continue
        shifted = ndimage.shift(stamp.astype(np.float64), (iy - yc, ix - xc), order=3)
        stamp = shifted[1:-1, 1:-1]
        total = stamp.sum()
        if total > 0:
            stamps.append(stamp / total)
    if len(stamps) < 5:
        raise UserError(f"{exposure.source or 'image'}: fewer than 5 clean star stamps for a PSF")
    psf_img = np.median(np.stack(stamps), axis=0)
    psf_img = np.clip(psf_img, 0.0, None)
    return PixelPsf(psf_img)


def psf_photometry(
    exposure: Exposure, x: np.ndarray, y: np.ndarray, *, psf: Psf | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-weighted flux and error at fixed positions (forced photometry).

    Uses the optimal linear estimator ``sum(P I / V) / sum(P^2 / V)`` with the
    PSF shifted to each position; masked pixels get zero weight.
    """
    psf = psf or exposure.require_psf("PSF photometry")
    size = min(psf.default_size(), 31)
    half = size // 2
    flux = np.full(len(x), np.nan)
    err = np.full(len(x), np.nan)
    ny, nx = exposure.shape
    for i, (xc, yc) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y), strict=True)):
        ix, iy = round(float(xc)), round(float(yc))
        if ix - half < 0 or iy - half < 0 or ix + half >= nx or iy + half >= ny:
            continue
        sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        p = psf.kernel(size=size, dx=float(xc) - ix, dy=float(yc) - iy)
        data, var = exposure.image[sl], exposure.var[sl]
        good = np.isfinite(data) & np.isfinite(var) & (var > 0)
        good &= (exposure.msk[sl] & np.uint32(UNUSABLE)) == 0
        if not good.any():
            continue
        w = np.where(good, p / np.where(good, var, 1.0), 0.0)
        denom = float(np.sum(w * p))
        if denom <= 0:
            continue
        flux[i] = float(np.sum(w * np.where(good, data, 0.0))) / denom
        err[i] = math.sqrt(1.0 / denom)
    return flux, err
