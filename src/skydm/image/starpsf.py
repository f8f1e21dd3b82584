"""PSF measurement from the stars of one image: star selection by size, a
stamp large enough for the wings, a median stack, Moffat wings.

The model is what every PSF flux downstream is measured with (calexps, the
coadd PSF averaged from them, the Object table), so its errors become flux
errors: a model broader than the stars gives PSF fluxes too high, one cut at
a small stamp (and renormalised to unit sum) gives them too low.  Three
choices follow from that (measured in ``docs/drp.md``):

* **Stars, not compact galaxies.** Candidates are ranked by half-light
  radius; stars are those within 15% of the smallest (galaxies, blends and
  transients on galaxies are only ever larger).
* **A stamp of 3.5 FWHM half-width** (at least ``size``), so that about
  0.2% of a Moffat (beta 3.5) profile's light falls outside it.
* **Amplitudes, not stamp sums**, normalise the stars before they are
  stacked (a large stamp's sum is dominated by noise and neighbours); the
  stack is their per-pixel median; the
  wings beyond 2 FWHM are those of a Moffat profile (amplitude, width,
  index and a constant level free) fitted to the core, and the core loses
  that level: measured in the stack, the wings' light hangs on the
  background to a part in 10^4 of a star's flux per pixel.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage
from scipy.optimize import least_squares

from skydm.errors import UserError
from skydm.image.detect import detect_sources, estimate_background
from skydm.image.exposure import Exposure
from skydm.image.mask import UNUSABLE
from skydm.image.psf import MoffatPsf, PixelPsf

#: Fewest stars a PSF is stacked from (a galaxy among five stamps biases the
#: stack more than a fifth star helps it).
MIN_STARS = 4
#: Half-light radius over FWHM, between a Gaussian's (0.50) and a Moffat
#: beta=3.5's (0.60): sizes the stamp from the stars' measured radii.
_R50_PER_FWHM = 0.55
#: Stars are within this fraction above the smallest half-light radius.
_LOCUS_TOLERANCE = 0.15
#: Half-width of the stamp, in FWHM.
_STAMP_FWHM = 3.5


def measure_psf(
    exposure: Exposure,
    *,
    size: int | None = None,
    max_stars: int = 200,
    min_snr: float = 50.0,
) -> PixelPsf:
    """Measure a pixelized PSF by stacking bright, isolated, unsaturated stars.

    Stars are told from galaxies by their half-light radius (the tight locus
    at the low end); each is shifted to a common centre with sub-pixel
    interpolation and scaled by its fitted amplitude; the stack is their
    per-pixel median inside 2 FWHM and a Moffat
    profile fitted to that core beyond.  When fewer than 4 stars pass
    ``min_snr`` (small images), stars down to ``min_snr / 2.5`` (but not
    below 20) are used.

    Parameters
    ----------
    exposure : Exposure
        The image (its PSF, if any, is not used).
    size : int, optional
        Smallest side of the PSF image, pixels (25 when omitted); the side
        is 3.5 FWHM each way from the centre where the stars allow.
    max_stars : int
        Most stars stacked (the highest S/N).
    min_snr : float
        S/N of the stars (aperture flux) before relaxation.

    Raises
    ------
    UserError
        When fewer than 4 usable stars are found.
    """
    name = exposure.source or "image"
    sources = detect_sources(exposure, threshold=10.0, set_mask=False)
    if len(sources) == 0:
        raise UserError(f"{name}: no sources to measure a PSF from")
    back, _ = estimate_background(exposure)
    bad = ~np.isfinite(exposure.image) | ((exposure.msk & np.uint32(UNUSABLE)) != 0)
    img = np.ascontiguousarray(np.where(bad, 0.0, exposure.image - back), dtype=np.float64)
    sat = exposure.info.saturation if math.isfinite(exposure.info.saturation) else np.inf
    ok = (sources["flag"] == 0) & (sources["peak"] < 0.8 * sat)
    # Stars are told from galaxies on every candidate down to the relaxed cut
    # (the stellar locus needs numbers); the stack uses those above
    # ``min_snr`` when there are 4, else all (small images hold few bright
    # stars; at S/N 20 a stack of >= 4 still has S/N > 40).
    low = min(min_snr, max(20.0, min_snr / 2.5))
    cand, fwhm = _stars(sources, ok & (sources["snr"] > low), img, bad)
    cut = min_snr
    if np.count_nonzero(cand["snr"] > min_snr) >= MIN_STARS:
        cand = cand[cand["snr"] > min_snr]
    else:
        cut = low
    if len(cand) < MIN_STARS:
        raise UserError(
            f"{name}: only {len(cand)} isolated unsaturated stars above S/N {cut:g}; "
            f"a PSF needs at least {MIN_STARS} (give a model PSF instead)"
        )
    side = max(size or 25, 2 * math.ceil(_STAMP_FWHM * fwhm) + 1) | 1
    # Windowed centroids with the stars' own width: detection's window is
    # sized for a PSF not yet known, and a centroid error broadens the stack.
    x, y = np.asarray(cand["x"], float), np.asarray(cand["y"], float)
    sig = np.full(x.size, fwhm / 2.3548)
    xw, yw, wflag = sep.winpos(img, x, y, sig, mask=bad)
    good = (wflag == 0) & np.isfinite(xw) & (np.hypot(xw - x, yw - y) < fwhm)
    cand["x"], cand["y"] = np.where(good, xw, x), np.where(good, yw, y)
    # Stars near the border are kept by a smaller stamp (down to ``size``)
    # rather than lost: small images hold few stars.
    floor = max(size or 25, 5) | 1
    inside = _fits(cand, side // 2, img.shape)
    while len(inside) < MIN_STARS and side > floor:
        side = max(side - 4, floor)
        inside = _fits(cand, side // 2, img.shape)
    cand = inside
    cand.sort("snr", reverse=True)
    cand = cand[:max_stars]
    if len(cand) < MIN_STARS:
        raise UserError(
            f"{name}: only {len(cand)} stars with a {side}-pixel stamp inside the image; "
            f"a PSF needs at least {MIN_STARS} (give a model PSF instead)"
        )
    return _stack(img, bad, cand, side, fwhm, name)


def _stars(
    sources: Table, pool: np.ndarray, img: np.ndarray, bad: np.ndarray
) -> tuple[Table, float]:
    """Isolated stars of ``sources[pool]`` and an estimate of the FWHM (pixels).

    Sizes are half-light radii on the image; stars are those within
    ``_LOCUS_TOLERANCE`` above the smallest (galaxies are the larger
    objects, often the majority of the bright ones).
    """
    cand = sources[pool]
    if len(cand) == 0:
        return cand, math.nan
    x, y = np.asarray(cand["x"], float), np.asarray(cand["y"], float)
    # A first guess of the size from sep's moments on the matched-filter map
    # (sigma^2 there is twice the PSF's) bounds the radius of the flux.
    guess = (
        2.3548
        * float(np.median(np.sqrt(np.asarray(cand["a"]) * np.asarray(cand["b"]))))
        / math.sqrt(2)
    )
    rmax = np.full(x.size, max(6.0, 2.5 * guess))
    r50, rflag = sep.flux_radius(img, x, y, rmax, 0.5, mask=bad, subpix=5)
    good = (rflag == 0) & np.isfinite(r50) & (r50 > 0)
    cand, r50 = cand[good], np.asarray(r50)[good]
    if len(cand) == 0:
        return cand, math.nan
    # Stars are the smallest objects: those within ``_LOCUS_TOLERANCE`` of
    # the smallest radius.  Bright compact galaxies can outnumber them and
    # are spread over larger radii, so a percentile, the densest clump or an
    # iterated median of the radii lands on them; on few candidates the
    # stars' radii scatter by 10%, so a tight clump is not found either.
    stars = cand[r50 <= r50.min() * (1.0 + _LOCUS_TOLERANCE)]
    locus = float(np.median(r50[r50 <= r50.min() * (1.0 + _LOCUS_TOLERANCE)]))
    fwhm = locus / _R50_PER_FWHM
    if len(stars) > 1:
        # Isolation: no other detection within 2.5 FWHM (fainter ones further
        # out are outvoted by the median of the stack).
        xy = np.column_stack([sources["x"], sources["y"]])
        keep = [
            np.count_nonzero(np.hypot(xy[:, 0] - r["x"], xy[:, 1] - r["y"]) < 2.5 * fwhm) == 1
            for r in stars
        ]
        stars = stars[np.asarray(keep, dtype=bool)]
    return stars, fwhm


def _fits(cand: Table, half: int, shape: tuple[int, int]) -> Table:
    """Candidates whose stamp (plus a pixel for the shift) is inside the image."""
    ny, nx = shape
    x, y = np.asarray(cand["x"]), np.asarray(cand["y"])
    inside = (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    return cand[inside]


def _stack(
    img: np.ndarray,
    bad: np.ndarray,
    cand: Table,
    side: int,
    fwhm: float,
    name: str,
) -> PixelPsf:
    """Median of the recentred, amplitude-scaled star stamps in the core,
    Moffat wings beyond."""
    half = side // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(xx, yy)
    core = r <= 2.0 * fwhm
    ap = r <= 1.5 * fwhm
    stamps = []
    for row in cand:
        xc, yc = float(row["x"]), float(row["y"])
        ix, iy = round(xc), round(yc)
        box = (slice(iy - half - 1, iy + half + 2), slice(ix - half - 1, ix + half + 2))
        # Masked pixels (bad columns, cosmic rays) are left out of the stack
        # rather than losing the star, unless they fall in its core aperture.
        if bad[box][1:-1, 1:-1][ap].any():
            continue
        shift = (iy - yc, ix - xc)
        shifted = ndimage.shift(img[box], shift, order=3)
        lost = ndimage.shift(bad[box].astype(np.float64), shift, order=1) > 0.01
        stamps.append(np.where(lost, np.nan, shifted)[1:-1, 1:-1])
    if len(stamps) < MIN_STARS:
        raise UserError(f"{name}: fewer than {MIN_STARS} clean star stamps for a PSF")
    cube = np.stack(stamps)
    # First pass: each star scaled by its flux within 1.5 FWHM; then by its
    # least-squares amplitude against the median of those over the core,
    # where the star's S/N is.
    norm = np.nansum(cube[:, ap], axis=1)
    use = norm > 0
    if np.count_nonzero(use) < MIN_STARS:
        raise UserError(f"{name}: fewer than {MIN_STARS} clean star stamps for a PSF")
    t = np.nanmedian(cube[use] / norm[use, None, None], axis=0)[core]
    c = cube[:, core]
    ok = np.isfinite(c) & np.isfinite(t)
    amp = np.sum(np.where(ok, c * t, 0.0), axis=1) / np.sum(np.where(ok, t * t, 0.0), axis=1)
    use = amp > 0
    if np.count_nonzero(use) < MIN_STARS:
        raise UserError(f"{name}: fewer than {MIN_STARS} clean star stamps for a PSF")
    cube = cube[use] / amp[use, None, None]
    # The per-pixel median: a galaxy that slipped into the sample is outvoted
    # (an inverse-variance weighted mean lets the brightest object, often a
    # compact galaxy, decide the shape).
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        stack = np.nanmedian(cube, axis=0)
    # Beyond the core the stack is noise and neighbours' light, and its
    # level hangs on the background to a part in 10^4 of the star: the wings
    # are those of a Moffat profile fitted to the core (atmospheric PSFs have
    # Moffat wings; Racine 1996), so that the light they hold, 2-5% of the
    # total, is not lost to a truncated stamp nor inflated by the sky.
    wings, level = _moffat_wings(stack, r, core, fwhm)
    psf_img = np.where(core & np.isfinite(stack), np.clip(stack - level, 0.0, None), wings)
    return PixelPsf(psf_img)


def _moffat_wings(
    stack: np.ndarray, r: np.ndarray, core: np.ndarray, fwhm: float
) -> tuple[np.ndarray, float]:
    """A Moffat profile (amplitude, FWHM and index free) fitted to the stack's core,
    rendered on the stack's pixels."""
    side = stack.shape[0]
    fit_px = core & np.isfinite(stack)
    data = stack[fit_px]

    def resid(p: np.ndarray) -> np.ndarray:
        model = MoffatPsf(p[1], p[2]).kernel(side)
        return np.asarray(p[0] * model[fit_px] + p[3] - data)

    start = np.array([float(np.nansum(stack)), fwhm, 3.5, 0.0])
    fit = least_squares(
        resid,
        start,
        bounds=([0.0, 0.3 * fwhm, 1.2, -np.inf], [np.inf, 3.0 * fwhm, 20.0, np.inf]),
        x_scale="jac",
    )
    amp, width, beta, level = fit.x
    return np.asarray(amp * MoffatPsf(width, beta).kernel(side)), float(level)
