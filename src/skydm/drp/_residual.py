"""A second detection pass on the coadds with the first pass's PSF models removed.

A faint star three or four PSF FWHM from an object tens to hundreds of times
brighter sits on the slope of that object's matched-filter profile: the
detection map has no local maximum there, or one that does not rise
``peak_prominence`` above the saddle, so the peak deblender cannot see it.
Crowded-field photometry has long answered this by subtracting the fitted
models of what was found and looking again at the residual (DAOPHOT's
FIND/ALLSTAR cycle, Stetson 1987).  Here every first-pass object's forced
PSF model is subtracted from every band; the residual's detection image is
built exactly as the first one (same matched filter, same chi² sigma), with
the variance raised by ``(residual_model_error * model)²``, so that the
imperfect cores of subtracted bright objects do not come back as
detections, and beyond each model's stamp by the square of the model's
value at the stamp's edge, for the wing the stamp leaves out.  Its local
maxima above ``threshold``, inside a footprint, at least
``residual_min_separation`` PSF FWHM from every object and from each other,
and round (``residual_roundness``: the arcs a PSF model leaves around a
galaxy are not) are new objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from skydm.drp._detect import BandPlanes, Detections, _refine_peak, _watershed, detection_image
from skydm.drp._photometry import BandPhotometry, _stamp
from skydm.drp.config import ObjectConfig


def model_image(
    band: BandPlanes, x: np.ndarray, y: np.ndarray, flux: np.ndarray, stamp: int
) -> tuple[np.ndarray, np.ndarray]:
    """The band's image of PSF models of ``flux`` at (``x``, ``y``), and their unmodelled wings.

    Returns
    -------
    model : numpy.ndarray
        The sum of the models, each in its ``stamp``-pixel box (non-finite
        fluxes skipped).
    wing : numpy.ndarray
        The light each model leaves out beyond its box, taken to be of the
        order of the model at the box's edge, in a box twice the size: the
        residual's noise there has a term of that size (without it, a
        bright object's wing, cut off at the box's edge, is a ring of
        detections).
    """
    shape = band.image.shape
    model = np.zeros(shape, dtype=np.float64)
    wing = np.zeros(shape, dtype=np.float64)
    for xc, yc, f in zip(x.tolist(), y.tolist(), flux.tolist(), strict=True):
        if not (math.isfinite(f) and math.isfinite(xc) and math.isfinite(yc)):
            continue
        kernel = band.psf.kernel(size=stamp, dx=xc - round(xc), dy=yc - round(yc))
        st = _stamp(kernel, xc, yc, (0, 0), shape)
        model[st.box] += f * st.cut()
        edge = max(
            float(np.abs(kernel[0]).max()),
            float(np.abs(kernel[-1]).max()),
            float(np.abs(kernel[:, 0]).max()),
            float(np.abs(kernel[:, -1]).max()),
        )
        outer = np.full((2 * stamp + 1, 2 * stamp + 1), abs(f) * edge)
        h = stamp // 2
        outer[stamp - h : stamp + h + 1, stamp - h : stamp + h + 1] = 0.0
        so = _stamp(outer, xc, yc, (0, 0), shape)
        wing[so.box] = np.maximum(wing[so.box], so.cut())
    return model, wing


def residual_peaks(
    planes: Sequence[BandPlanes],
    found: Detections,
    phot: Sequence[BandPhotometry],
    stamps: Sequence[int],
    config: ObjectConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of the residual detection image that are new objects.

    Parameters
    ----------
    planes : sequence of BandPlanes
        The bands' planes, as detected on.
    found : Detections
        The first pass (positions already refined).
    phot : sequence of BandPhotometry
        The first pass's forced PSF fluxes, per band (counts).
    stamps : sequence of int
        PSF stamp side used for each band's fit.
    config : ObjectConfig
        ``threshold``, ``residual_model_error`` and ``residual_min_separation``.

    Returns
    -------
    x, y : numpy.ndarray
        Positions of the new peaks (the residual map's peak pixel refined by
        a parabola, as first-pass peaks are).
    peak : numpy.ndarray
        The residual detection image there (sigma).
    """
    residual = []
    for p, ph, size in zip(planes, phot, stamps, strict=True):
        model, wing = model_image(p, found.x, found.y, ph.flux, size)
        var = p.variance + (config.residual_model_error * model) ** 2 + wing**2
        residual.append(replace(p, image=np.where(p.bad, 0.0, p.image - model), variance=var))
    det, linear, _ = detection_image(residual, config.detection_image)
    maxf = ndimage.maximum_filter(linear, size=3, mode="nearest")
    cand = (linear >= maxf) & (det >= config.threshold) & (found.segmap > 0)
    py, px = np.nonzero(cand)
    if px.size and config.residual_roundness > 0:
        keep = roundness(linear, px, py) >= config.residual_roundness
        px, py = px[keep], py[keep]
    empty = np.zeros(0, dtype=np.int64)
    if px.size == 0:
        return empty, empty, np.zeros(0)
    fwhm = float(np.mean([p.psf.fwhm for p in planes]))
    min_sep = config.residual_min_separation * fwhm
    if len(found):
        d, _ = cKDTree(np.column_stack([found.x, found.y])).query(np.column_stack([px, py]))
        far = d >= min_sep
        px, py = px[far], py[far]
    # Highest first; a peak within the separation of a kept one is its own wing.
    order = np.argsort(-linear[py, px], kind="stable")
    kept: list[int] = []
    for i in order.tolist():
        if all((px[i] - px[k]) ** 2 + (py[i] - py[k]) ** 2 >= min_sep**2 for k in kept):
            kept.append(i)
    idx = np.asarray(kept, dtype=np.int64)
    rx, ry = _refine_peak(linear, px[idx], py[idx])
    return rx, ry, det[py[idx], px[idx]]


def roundness(linear: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Ratio of the smaller to the larger curvature of ``linear`` at peaks (``px``, ``py``).

    The matched-filter map of a point source is the PSF's autocorrelation,
    round at its peak (ratio near 1 for a round PSF); a bump on the arc that
    a PSF model leaves around a subtracted galaxy is curved across the arc
    and nearly flat along it (ratio near 0), which is how DAOFIND's
    roundness test tells stars from such residuals.  Second differences over
    two pixels (the map is smooth on the PSF's scale); 0 where a curvature is
    not negative.
    """
    ny, nx = linear.shape
    xm, xp = np.clip(px - 2, 0, nx - 1), np.clip(px + 2, 0, nx - 1)
    ym, yp = np.clip(py - 2, 0, ny - 1), np.clip(py + 2, 0, ny - 1)
    c = linear[py, px]
    dxx = (linear[py, xp] - 2.0 * c + linear[py, xm]) / 4.0
    dyy = (linear[yp, px] - 2.0 * c + linear[ym, px]) / 4.0
    dxy = (linear[yp, xp] - linear[yp, xm] - linear[ym, xp] + linear[ym, xm]) / 16.0
    half = 0.5 * (dxx + dyy)
    root = np.sqrt(0.25 * (dxx - dyy) ** 2 + dxy**2)
    lo, hi = half - root, half + root  # lo <= hi; both negative at a round maximum
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((hi < 0) & (lo < 0), hi / lo, 0.0)
    return np.asarray(ratio, dtype=np.float64)


def add_objects(
    found: Detections, linear: np.ndarray, x: np.ndarray, y: np.ndarray, peak: np.ndarray
) -> Detections:
    """``found`` with objects added at (``x``, ``y``) inside its footprints.

    The parents' footprints are split again by watershed among all their
    peaks (old objects seeded at their rounded centroids), so footprint
    areas, parents and ``n_peaks`` count the new objects too.
    """
    if x.size == 0:
        return found
    parents = np.zeros_like(found.segmap)
    inside = found.segmap > 0
    parents[inside] = found.parent[found.segmap[inside] - 1]
    ny, nx = parents.shape
    ox = np.clip(np.rint(found.x), 0, nx - 1).astype(np.int64)
    oy = np.clip(np.rint(found.y), 0, ny - 1).astype(np.int64)
    # An old centroid can fall outside its own footprint (a deblended child
    # pulled by the position fit): seed it where its footprint is instead.
    off = parents[oy, ox] == 0
    for k in np.flatnonzero(off).tolist():
        yy, xx = np.nonzero(found.segmap == k + 1)
        if yy.size:
            j = int(np.argmax(linear[yy, xx]))
            oy[k], ox[k] = yy[j], xx[j]
    nxp = np.clip(np.rint(x), 0, nx - 1).astype(np.int64)
    nyp = np.clip(np.rint(y), 0, ny - 1).astype(np.int64)
    all_x = np.concatenate([ox, nxp])
    all_y = np.concatenate([oy, nyp])
    segmap = _watershed(linear, parents, all_x, all_y)
    n = all_x.size
    npix = np.bincount(segmap.ravel(), minlength=n + 1)[1:]
    parent = np.concatenate([found.parent, parents[nyp, nxp].astype(np.int64)])
    counts = np.bincount(parent, minlength=1)
    return Detections(
        x=np.concatenate([found.x, np.asarray(x, dtype=np.float64)]),
        y=np.concatenate([found.y, np.asarray(y, dtype=np.float64)]),
        peak=np.concatenate([found.peak, peak]),
        npix=npix.astype(np.int64),
        parent=parent,
        n_peaks=counts[parent].astype(np.int64),
        segmap=segmap,
        image=found.image,
        linear=linear,
    )
