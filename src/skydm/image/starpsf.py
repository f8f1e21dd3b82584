"""The calexp PSF: a Moffat profile fitted jointly to the stars of one image,
with a pixel residual in the core when the stars ask for one (PSFEx-like).

The model is what every PSF flux downstream is measured with (calexps, the
coadd PSF averaged from them, the Object table), so its errors become flux
errors: a model broader than the stars gives PSF fluxes too high, one cut at
a small stamp gives them too low, and a wing shape refitted from a handful of
noisy stars makes them scatter from image to image.  The choices (measured
in ``docs/drp.md``, *The PSF model*):

* **Stars, not compact galaxies.** Candidates are first those within 25% of
  the smallest half-light radius (galaxies, blends and transients on
  galaxies are only ever larger); then each candidate's own FWHM is fitted
  with the common profile's index, and those significantly broader than the
  common FWHM are dropped and the fit repeated, so that the sample converges
  on the narrowest population even where galaxies outnumber stars.
* **A parametric profile over the whole stamp** (3.5 FWHM each way, about
  0.2% of a Moffat beta = 3.5 outside): the FWHM is fitted to every star's
  pixels at once (each star with its own amplitude; the calexp's
  background, taken with the sources masked, is trusted); the Moffat index beta, which
  sets the light in the wings, is fitted with a Gaussian prior (``beta_prior``
  +- ``beta_sigma``), so that a few noisy stars cannot move it far and many
  bright ones can.
* **A second pass** with sources detected through the first PSF, so that
  the star sample does not depend on the detection filter.
* **A pixel residual** (the per-pixel median of the stars' residuals, within
  ``residual_radius`` FWHM) is added only when it is significant (its
  chi-square over the core exceeds its degrees of freedom by 5 sigma): an
  elliptical or lumpy PSF keeps its shape, while a Moffat field is not given
  the stars' noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.signal import fftconvolve

from skydm.errors import UserError
from skydm.image._starpsf_config import StarPsfConfig, StarPsfFit
from skydm.image.detect import detect_sources
from skydm.image.exposure import Exposure
from skydm.image.mask import UNUSABLE
from skydm.image.psf import MoffatPsf, PixelPsf

__all__ = ["StarPsfConfig", "StarPsfFit", "measure_star_psf"]

#: Half-light radius over FWHM of a Moffat beta = 3.5 profile (a Gaussian's
#: is 0.50): a first FWHM from the stars' measured radii.
_R50_PER_FWHM = 0.58
#: Half-width, in FWHM, of the stamps each candidate's own width is fitted on
#: (the core holds the width's information; the wings cost time).
_OWN_FWHM = 2.5


@dataclass
class _Stamps:
    """Star stamps on the image's pixel grid: data, inverse variance, offsets."""

    data: np.ndarray  # (n, side, side), background-subtracted
    ivar: np.ndarray  # (n, side, side), 0 where masked, off the image or a neighbour's
    dx: np.ndarray  # (n,) star centre minus the stamp's central pixel
    dy: np.ndarray
    snr: np.ndarray
    r2: np.ndarray  # (n, side, side): squared radius of each pixel's centre
    core: np.ndarray  # (side, side) bool: the pixels integrated on 5x5 sub-samples
    sub2: np.ndarray  # (n, ncore, 25): squared radii of the core pixels' sub-samples


def _radii(side: int, dx: np.ndarray, dy: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Squared distances from each star's centre of the points ``sub`` (offsets
    within a pixel) of every pixel: shape ``(n, side, side, len(sub)**2)``."""
    half = side // 2
    g = np.arange(-half, half + 1, dtype=np.float64)
    k = sub.size
    x = (
        g[None, None, :, None, None]
        - dx[:, None, None, None, None]
        + sub[None, None, None, None, :]
    )
    y = (
        g[None, :, None, None, None]
        - dy[:, None, None, None, None]
        + sub[None, None, None, :, None]
    )
    return np.asarray((x**2 + y**2).reshape(len(dx), side, side, k * k))


def _core_radius(fwhm: float, cfg: StarPsfConfig) -> float:
    """Radius (pixels) within which pixels are integrated on 5x5 sub-samples.

    Beyond it a pixel's 5x5 mean is its centre value plus the Laplacian term
    (:func:`_models`); the next (fourth-order) term, relative to the pixel,
    goes as ``(beta / r)**4 / 2000`` in the wings and as ``(1 / alpha)**4``
    near the core, and stays below 1e-4 beyond ``3.6 beta`` pixels and 1.5
    FWHM (tests/image/test_psf_star.py checks it against 5x5 integration).
    """
    return max(1.5 * fwhm, 3.6 * (cfg.beta_prior + 2 * cfg.beta_sigma))


def _geometry(
    side: int, dx: np.ndarray, dy: np.ndarray, rcore: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre radii, the core mask and the core's sub-sample radii."""
    half = side // 2
    g = np.arange(-half, half + 1, dtype=np.float64)
    # The core about the stamp's central pixel, widened by the star's offset
    # (at most half a pixel each way) so that it covers every star's core.
    core = np.hypot(g[None, :], g[:, None]) <= rcore + 1.0
    r2 = (g[None, None, :] - dx[:, None, None]) ** 2 + (g[None, :, None] - dy[:, None, None]) ** 2
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    # Sub-samples only for the central square that holds the core (a disc).
    m = min(side, 2 * math.ceil(rcore + 1.0) + 1)
    c = (side - m) // 2
    sub2 = _radii(m, dx, dy, sub)[:, core[c : c + m, c : c + m]]
    return r2, core, np.ascontiguousarray(sub2)


def measure_star_psf(exposure: Exposure, config: StarPsfConfig | None = None) -> StarPsfFit:
    """Measure the PSF of one image from its stars.

    Parameters
    ----------
    exposure : Exposure
        The image, with its variance plane and mask (its PSF, if any, is not used).
    config : StarPsfConfig, optional
        Tunables; the defaults otherwise.

    Returns
    -------
    StarPsfFit
        The PSF and the fitted profile.

    Raises
    ------
    UserError
        When fewer than ``min_stars`` usable stars are found.
    """
    cfg = config or StarPsfConfig()
    ny, nx = exposure.shape
    side = cfg.max_side
    best: StarPsfFit | None = None
    while max(ny, nx) > side:
        # One profile per image, from its ``max_stars`` best stars: a central
        # region holds them at survey densities, and detection over the whole
        # of a 4096^2 detector (twice) was most of the PSF step's time.
        centre = exposure.cutout((nx - 1) / 2, (ny - 1) / 2, side)
        try:
            fit = _two_passes(centre, cfg)
        except UserError:
            fit = None
        if fit is not None and fit.nstars >= cfg.region_stars:
            return fit
        best = fit or best
        side *= 2  # too few stars in the centre: a larger one
    try:
        return _two_passes(exposure, cfg)
    except UserError:
        if best is None:
            raise
        return best  # a region's fit with fewer than region_stars beats none


def _two_passes(exposure: Exposure, cfg: StarPsfConfig) -> StarPsfFit:
    """A first measurement, then one with sources detected through it."""
    first = _measure(exposure, cfg)
    # A second pass with sources detected through the measured PSF: the
    # first detection (with the image's PSF, often none: a 3-pixel Gaussian)
    # deblends and centres the stars differently, and the sample it gives
    # moved beta by 0.3 between two read-outs of one scene.
    saved = exposure.psf
    exposure.psf = first.psf
    try:
        return _measure(exposure, cfg)
    except UserError:
        return first
    finally:
        exposure.psf = saved


def _measure(exposure: Exposure, cfg: StarPsfConfig) -> StarPsfFit:
    """One measurement, with sources detected through the exposure's PSF."""
    name = exposure.source or "image"
    sources = detect_sources(exposure, threshold=10.0, set_mask=False)
    if len(sources) == 0:
        raise UserError(f"{name}: no sources to measure a PSF from")
    var = np.asarray(exposure.var, dtype=np.float64)
    bad = (
        ~np.isfinite(exposure.image)
        | ~np.isfinite(var)
        | (var <= 0)
        | ((exposure.msk & np.uint32(UNUSABLE)) != 0)
    )
    # The image as it is: a calexp's background is already removed (with the
    # sources masked); a second, mesh background taken here would be pulled up
    # by the bright stars' wings and cut them (the profile then came out 4%
    # narrower on the real DECam stamps).  A level left over is fitted per star.
    img = np.ascontiguousarray(np.where(bad, 0.0, exposure.image), dtype=np.float64)
    sat = exposure.info.saturation if math.isfinite(exposure.info.saturation) else np.inf
    ok = (sources["flag"] == 0) & (sources["peak"] < 0.8 * sat)
    low = min(cfg.min_snr, max(20.0, cfg.min_snr / 2.5))
    cand, fwhm = _candidates(sources, ok & (sources["snr"] > low), img, bad, cfg)
    cut = cfg.min_snr
    if np.count_nonzero(cand["snr"] > cfg.min_snr) >= cfg.min_stars:
        cand = cand[cand["snr"] > cfg.min_snr]
    else:
        cut = low
    cand.sort("snr", reverse=True)
    cand = cand[: cfg.max_stars]
    if len(cand) < cfg.min_stars:
        raise UserError(
            f"{name}: only {len(cand)} isolated unsaturated stars above S/N {cut:g}; "
            f"a PSF needs at least {cfg.min_stars} (give a model PSF instead)"
        )
    side = 2 * math.ceil(cfg.stamp_fwhm * fwhm) + 1
    stamps = _cut(img, var, bad, cand, sources, side, fwhm, _core_radius(fwhm, cfg))
    beta = cfg.beta_prior
    keep = np.ones(len(cand), dtype=bool)
    # Fit, drop the candidates broader than the common profile, refit: the
    # sample converges on the narrowest population (the stars).
    for _ in range(4):
        fwhm, beta = _fit_profile(_subset(stamps, keep), fwhm, beta, cfg)
        # Undetected companions found in the residuals are masked; the fit
        # is repeated until no new one appears (and no candidate is dropped).
        masked = cfg.companion_snr > 0 and _mask_companions(stamps, fwhm, beta, cfg)
        own, err = _own_fwhm(stamps, fwhm, beta, cfg)
        # Against the sample's median own width as well as the common one:
        # the common fit weighs each candidate by its S/N, so one bright
        # compact galaxy among three stars sets it (seed 101: r_eff 0.34",
        # S/N 563, against two stars of S/N 95 gave a FWHM 15% broad) and
        # nothing is broader than it; the median is the stars'.
        ref = min(fwhm, float(np.median(own[keep]))) if cfg.median_reference else fwhm
        broad = (own > ref * (1 + cfg.reject_fraction)) & (own - ref > cfg.reject_nsigma * err)
        new = keep & ~broad
        if np.array_equal(new, keep) and not masked:
            break
        keep = new
        if np.count_nonzero(keep) < cfg.min_stars:
            raise UserError(
                f"{name}: only {np.count_nonzero(keep)} stars share one profile; "
                f"a PSF needs at least {cfg.min_stars} (give a model PSF instead)"
            )
    else:
        fwhm, beta = _fit_profile(_subset(stamps, keep), fwhm, beta, cfg)
    stars = _subset(stamps, keep)
    side = 2 * math.ceil(cfg.stamp_fwhm * fwhm) + 1
    model = MoffatPsf(fwhm, beta).kernel(side)
    res = _residual(stars, fwhm, beta, cfg)
    image = model if res is None else np.clip(model + _pad(res, side), 0.0, None)
    return StarPsfFit(PixelPsf(image), fwhm, beta, int(np.count_nonzero(keep)), res is not None)


def _candidates(
    sources: Table, pool: np.ndarray, img: np.ndarray, bad: np.ndarray, cfg: StarPsfConfig
) -> tuple[Table, float]:
    """Isolated candidates of ``sources[pool]`` near the smallest half-light
    radius, and a first FWHM (pixels)."""
    cand = sources[pool]
    if len(cand) == 0:
        return cand, math.nan
    x, y = np.asarray(cand["x"], float), np.asarray(cand["y"], float)
    # sep's moments on the matched-filter map (sigma^2 there is twice the
    # PSF's) bound the radius within which the flux is measured.
    guess = 2.3548 * float(np.median(np.sqrt(np.asarray(cand["a"]) * cand["b"]))) / math.sqrt(2)
    rmax = np.full(x.size, max(6.0, 2.5 * guess))
    r50, rflag = sep.flux_radius(img, x, y, rmax, 0.5, mask=bad, subpix=5)
    good = (rflag == 0) & np.isfinite(r50) & (r50 > 0)
    cand, r50 = cand[good], np.asarray(r50)[good]
    if len(cand) == 0:
        return cand, math.nan
    # Stars are the smallest objects; a percentile or the densest clump of
    # the radii lands on the compact galaxies, which can outnumber them.
    near = r50 <= r50.min() * (1.0 + cfg.locus_tolerance)
    fwhm = float(np.median(r50[near])) / _R50_PER_FWHM
    cand = cand[near]
    # Windowed centroids with the stars' own width (detection's window was
    # sized before the PSF was known).
    x, y = np.asarray(cand["x"], float), np.asarray(cand["y"], float)
    xw, yw, wflag = sep.winpos(img, x, y, np.full(x.size, fwhm / 2.3548), mask=bad)
    moved = (wflag != 0) | ~np.isfinite(xw) | (np.hypot(xw - x, yw - y) > fwhm)
    cand["x"], cand["y"] = np.where(moved, x, xw), np.where(moved, y, yw)
    # Isolation: no other detection within 2.5 FWHM; fainter ones further out
    # are masked in the stamps.
    xy = np.column_stack([sources["x"], sources["y"]])
    alone = [
        np.count_nonzero(np.hypot(xy[:, 0] - r["x"], xy[:, 1] - r["y"]) < 2.5 * fwhm) == 1
        for r in cand
    ]
    cand = cand[np.asarray(alone, dtype=bool)]
    # The core (1.5 FWHM) must be on the image; the wings may run off it.
    ny, nx = img.shape
    m = 1.5 * fwhm + 1
    x, y = np.asarray(cand["x"]), np.asarray(cand["y"])
    return cand[(x > m) & (x < nx - 1 - m) & (y > m) & (y < ny - 1 - m)], fwhm


def _cut(
    img: np.ndarray,
    var: np.ndarray,
    bad: np.ndarray,
    cand: Table,
    sources: Table,
    side: int,
    fwhm: float,
    rcore: float,
) -> _Stamps:
    """Stamps about each candidate; pixels off the image, masked, or within
    2 FWHM of another detection get no weight."""
    half = side // 2
    pad = half + 1
    pimg = np.pad(img, pad)
    pivar = np.pad(np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, var)), pad)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    sx, sy = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    data, ivar, dx, dy = [], [], [], []
    for row in cand:
        xc, yc = float(row["x"]), float(row["y"])
        ix, iy = round(xc), round(yc)
        box = (
            slice(iy - half + pad, iy + half + 1 + pad),
            slice(ix - half + pad, ix + half + 1 + pad),
        )
        w = pivar[box].copy()
        others = (np.abs(sx - xc) < half + 2 * fwhm) & (np.abs(sy - yc) < half + 2 * fwhm)
        for ox, oy in zip(sx[others], sy[others], strict=True):
            if math.hypot(ox - xc, oy - yc) > 0.5:
                w[np.hypot(xx + ix - ox, yy + iy - oy) < 2.0 * fwhm] = 0.0
        data.append(pimg[box])
        ivar.append(w)
        dx.append(xc - ix)
        dy.append(yc - iy)
    ddx, ddy = np.array(dx), np.array(dy)
    r2, core, sub2 = _geometry(side, ddx, ddy, rcore)
    return _Stamps(
        np.array(data), np.array(ivar), ddx, ddy, np.asarray(cand["snr"], float), r2, core, sub2
    )


def _subset(s: _Stamps, keep: np.ndarray) -> _Stamps:
    return _Stamps(
        s.data[keep], s.ivar[keep], s.dx[keep], s.dy[keep], s.snr[keep], s.r2[keep], s.core,
        s.sub2[keep],
    )  # fmt: skip


def _crop(s: _Stamps, side: int) -> _Stamps:
    """The central ``side`` pixels of every stamp."""
    c = (s.data.shape[1] - side) // 2
    if c <= 0:
        return s
    sl = (slice(None), slice(c, c + side), slice(c, c + side))
    window = np.zeros(s.core.shape, dtype=bool)
    window[sl[1:]] = True
    # The core pixels inside the window, in the same (row-major) order.
    sub2 = s.sub2[:, window[s.core]]
    return _Stamps(s.data[sl], s.ivar[sl], s.dx, s.dy, s.snr, s.r2[sl], s.core[sl[1:]], sub2)


def _models(s: _Stamps, fwhm: float, beta: float) -> np.ndarray:
    """The Moffat profile integrated over each pixel at each star's sub-pixel
    position (unnormalised: the fitted amplitudes absorb the scale), as the
    sum of its values on 5x5 sub-samples (as :meth:`Psf.kernel` does).

    In the core that sum is evaluated; outside it, where the profile curves
    slowly, it is the centre value plus the Laplacian term of the midpoint
    rule, ``25 f + (1 - 1/25) * 25/24 * lap f`` = ``25 f + lap f``, with the
    Moffat Laplacian ``4 beta / alpha^2 (beta u - 1) (1 + u)^(-beta-2)``
    (``u = r^2 / alpha^2``): one power instead of 25 per pixel.
    """
    alpha2 = MoffatPsf(fwhm, beta).alpha ** 2
    u = s.r2 / alpha2
    f = np.exp(-beta * np.log1p(u))
    model = f * (25.0 + (4.0 * beta / alpha2) * (beta * u - 1.0) / (1.0 + u) ** 2)
    flat = model.reshape(model.shape[0], -1)
    flat[:, s.core.ravel()] = np.exp(-beta * np.log1p(s.sub2 / alpha2)).sum(axis=-1)
    return np.asarray(model)


def _linear(
    data: np.ndarray, ivar: np.ndarray, model: np.ndarray, sky: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares amplitude (and sky level when ``sky``) of one or more stamps."""
    ax = (-2, -1)
    if not sky:
        smm = (ivar * model * model).sum(ax)
        with np.errstate(divide="ignore", invalid="ignore"):
            amp = np.where(smm > 0, (ivar * model * data).sum(ax) / smm, 0.0)
        return amp, np.zeros_like(amp)
    sw, sm, sd = ivar.sum(ax), (ivar * model).sum(ax), (ivar * data).sum(ax)
    smm, smd = (ivar * model * model).sum(ax), (ivar * model * data).sum(ax)
    det = smm * sw - sm * sm
    with np.errstate(divide="ignore", invalid="ignore"):
        amp = np.where(det > 0, (smd * sw - sm * sd) / det, 0.0)
        level = np.where(det > 0, (smm * sd - sm * smd) / det, 0.0)
    return amp, level


def _chi(s: _Stamps, fwhm: float, beta: float, cfg: StarPsfConfig) -> np.ndarray:
    model = _models(s, fwhm, beta)
    amp, sky = _linear(s.data, s.ivar, model, cfg.fit_sky)
    resid = (s.data - amp[:, None, None] * model - sky[:, None, None]) * np.sqrt(s.ivar)
    return np.asarray(resid)


def _fit_profile(s: _Stamps, fwhm: float, beta: float, cfg: StarPsfConfig) -> tuple[float, float]:
    """FWHM (and, with a prior of non-zero width, beta) of the Moffat profile
    common to the stars.

    The stamps are cut to ``fit_fwhm`` each way (the whole stamp by default:
    with beta free the wings are what constrain it).
    """
    free = cfg.beta_sigma > 0
    s = _crop(s, 2 * math.ceil(cfg.fit_fwhm * fwhm) + 1)
    # A candidate's chi-square weight goes as its S/N squared; above the cap
    # (max_weight times the median candidate's) its residuals are scaled down.
    scale = np.ones(len(s.snr))
    if cfg.max_weight > 0 and len(s.snr):
        ref = float(np.median(s.snr)) * math.sqrt(cfg.max_weight)
        scale = np.minimum(1.0, ref / np.maximum(s.snr, 1e-12))
    scale = scale[:, None, None]

    def resid(p: np.ndarray) -> np.ndarray:
        if not free:
            return (_chi(s, float(p[0]), beta, cfg) * scale).ravel()
        prior = (p[1] - cfg.beta_prior) / cfg.beta_sigma
        chi = _chi(s, float(p[0]), float(p[1]), cfg) * scale
        return np.concatenate([chi.ravel(), [prior]])

    start = np.array([fwhm, beta]) if free else np.array([fwhm])
    lo = [0.5, 1.2] if free else [0.5]
    hi = [max(2 * fwhm, 3.0), 20.0] if free else [max(2 * fwhm, 3.0)]
    fit = least_squares(
        resid,
        start,
        bounds=(lo, hi),
        x_scale=np.array([0.05 * fwhm, 0.1][: start.size]),
        diff_step=np.full(start.size, 1e-3),
        xtol=1e-4,
        ftol=1e-6,
    )
    return float(fit.x[0]), float(fit.x[1]) if free else beta


def _mask_companions(s: _Stamps, fwhm: float, beta: float, cfg: StarPsfConfig) -> bool:
    """Mask (in ``s.ivar``, in place) a disc about every significant peak of
    each stamp's residual from the profile; whether anything new was masked.

    The residual less its azimuthal median (the part a wrong profile leaves,
    the same all round) is correlated with the PSF's core, as detection does,
    so that its peaks are in true sigma; peaks within
    ``companion_min_radius`` FWHM of the centre are the star's own.
    """
    model = _models(s, fwhm, beta)
    amp, sky = _linear(s.data, s.ivar, model, cfg.fit_sky)
    resid = s.data - amp[:, None, None] * model - sky[:, None, None]
    half = s.data.shape[1] // 2
    rad = np.sqrt(s.r2)
    ring = np.floor(rad).astype(np.int64) + 1
    flat = np.zeros_like(resid)
    for i in range(len(s.dx)):
        use = s.ivar[i] > 0
        if not use.any():
            continue
        labels = np.where(use, ring[i], 0)
        med = np.asarray(ndimage.median(resid[i], labels, np.arange(1, int(labels.max()) + 1)))
        flat[i] = np.where(use, resid[i] - np.nan_to_num(med)[np.maximum(labels - 1, 0)], 0.0)
    # The PSF's core as the matched filter (symmetric: convolution is
    # correlation), all stamps in one FFT each for the signal and its noise.
    kernel = MoffatPsf(fwhm, beta).kernel(2 * math.ceil(fwhm) + 1)[None]
    num = fftconvolve(flat * s.ivar, kernel, mode="same", axes=(1, 2))
    den = fftconvolve(s.ivar, kernel * kernel, mode="same", axes=(1, 2))
    # FFT rounding leaves ~1e-16 of the largest value where there is no data.
    floor = 1e-9 * float(den.max()) if den.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(den > floor, num / np.sqrt(np.maximum(den, floor)), 0.0)
    peak = (
        (snr > cfg.companion_snr)
        & (snr == ndimage.maximum_filter(snr, size=(1, 3, 3)))
        & (rad > cfg.companion_min_radius * fwhm)
    )
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    found = False
    for i, py, px in zip(*np.nonzero(peak), strict=True):
        w = s.ivar[i]
        disc = np.hypot(xx - (px - half), yy - (py - half)) < cfg.companion_radius * fwhm
        if np.any(w[disc] > 0):
            w[disc] = 0.0
            found = True
    return found


def _own_fwhm(
    s: _Stamps, fwhm: float, beta: float, cfg: StarPsfConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Each star's own FWHM (with the common beta) and its error.

    The chi-square of every star is evaluated on a grid of widths at once
    (the core only: the wings hold no information on the width and cost
    time); a parabola through the lowest point and its neighbours gives the
    minimum and, from its curvature, the error.
    """
    core = _crop(s, 2 * math.ceil(_OWN_FWHM * fwhm) + 1)
    scales = np.array([0.8, 0.85, 0.9, 0.95, 1.0, 1.03, 1.06, 1.1, 1.15, 1.22, 1.3, 1.4])
    chi2 = np.array([np.sum(_chi(core, fwhm * k, beta, cfg) ** 2, axis=(1, 2)) for k in scales]).T
    n = len(s.dx)
    i = np.clip(np.argmin(chi2, axis=1), 1, len(scales) - 2)
    x0, x1, x2 = scales[i - 1], scales[i], scales[i + 1]
    rows = np.arange(n)
    y0, y1, y2 = chi2[rows, i - 1], chi2[rows, i], chi2[rows, i + 1]
    # The parabola through three points: curvature a, vertex at -b / 2a.
    d01, d12, d02 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1), x2 - x0
    a = (d12 - d01) / d02
    b = d01 - a * (x0 + x1)
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a > 0, -b / (2 * a), x1)
        err = np.where(a > 0, 1.0 / np.sqrt(np.where(a > 0, a, 1.0)), np.inf)
    vertex = np.clip(vertex, scales[0], scales[-1])
    return fwhm * vertex, fwhm * err


def _residual(s: _Stamps, fwhm: float, beta: float, cfg: StarPsfConfig) -> np.ndarray | None:
    """The stars' median residual from the profile within ``residual_radius``
    FWHM, recentred, or None when it is not significant."""
    model = _models(s, fwhm, beta)
    # Unit sum, as the PSF image the residual is added to.
    model = model / model.sum(axis=(1, 2))[:, None, None]
    amp, sky = _linear(s.data, s.ivar, model, cfg.fit_sky)
    use = amp > 0
    if np.count_nonzero(use) < cfg.min_stars:
        return None
    side = s.data.shape[1]
    half = side // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    core = np.hypot(xx, yy) <= cfg.residual_radius * fwhm
    res, sig = [], []
    for i in np.flatnonzero(use):
        r = (s.data[i] - sky[i]) / amp[i] - model[i]
        shift = (-float(s.dy[i]), -float(s.dx[i]))
        lost = ndimage.shift((s.ivar[i] <= 0).astype(np.float64), shift, order=1) > 0.01
        r = ndimage.shift(np.where(s.ivar[i] > 0, r, 0.0), shift, order=3)
        with np.errstate(divide="ignore"):
            sd = np.where(
                s.ivar[i] > 0, 1.0 / np.sqrt(np.where(s.ivar[i] > 0, s.ivar[i], 1.0)), 0.0
            )
        res.append(np.where(lost, np.nan, r))
        sig.append(np.where(lost, np.nan, sd / amp[i]))
    cube, scube = np.array(res), np.array(sig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        med = np.nanmedian(cube, axis=0)
        n = np.sum(np.isfinite(cube), axis=0)
        # The median's error: 1.2533 times that of the mean.
        err = 1.2533 * np.sqrt(np.nansum(scube**2, axis=0)) / np.maximum(n, 1)
    px = core & np.isfinite(med) & (n >= cfg.min_stars) & (err > 0)
    dof = int(np.count_nonzero(px))
    if dof == 0:
        return None
    chi2 = float(np.sum((med[px] / err[px]) ** 2))
    if chi2 <= dof + 5.0 * math.sqrt(2.0 * dof):
        return None
    return np.where(px, med, 0.0)


def _pad(res: np.ndarray, side: int) -> np.ndarray:
    """A centred image cut or padded to ``side``."""
    n = res.shape[0]
    if n == side:
        return res
    if n > side:
        c = (n - side) // 2
        return res[c : c + side, c : c + side]
    p = (side - n) // 2
    return np.pad(res, p)
