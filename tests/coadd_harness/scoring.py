"""Scoring coadds against simulator truth: artefact leakage, noise, star fluxes,
variable stars and spurious detections.

The simulator gives every visit twice: with artefacts (``raw``) and without
(``clean``), with the same noise.  A coadd method run on both gives two
coadds whose difference is exactly what the artefacts left behind, so the
metrics below are exact rather than statistical.

*Leakage* of an artefact class is

    sum over the class's footprint of (coadd with artefacts - coadd without)
    / the same sum for the plain weighted mean,

i.e. the fraction of the artefacts' flux that the method lets through
(0 = all rejected, 1 = none).  The same harness scores SWarp's output.

The footprints of the classes overlap (a field's trails cross much of it,
a slow mover's track is under every epoch), and the leakage of a class
takes each pixel of its footprint whole: it also holds what was left of
other classes' light there, and the noise of pixels clipped for another
class.  :func:`own_light_leakage` splits it exactly (for CompareWarp)
into the class's own light, the other classes' and the replacement
noise; the acceptance still judges :func:`leakage` (docs/coadd.md,
"Issue 19, cosmic-ray round").

Both runs use the same per-warp weights (those of the artefact-free warps),
so that the metrics measure the rejection, not a weight change that the
artefacts cause in the median variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table

from skydm.coadd.skygrid import SkyCell
from skydm.coadd.warp import warp_exposure
from skydm.errors import UserError, require_extra
from skydm.image import Exposure, Mask, psf_photometry
from skydm.sim.config import FOOTPRINT_CLASSES

if TYPE_CHECKING:
    from skydm.coadd.compare_warp import CompareWarpConfig
    from skydm.coadd.stack import WarpStack
    from skydm.sim import Survey


@dataclass
class SimWarps:
    """Warps of a simulated survey onto one cell, with and without artefacts.

    Attributes
    ----------
    cell : SkyCell
    art, clean : list of Exposure
        Warps of the raw (artefact) and clean exposures, sky subtracted.
    footprints : dict of str to numpy.ndarray
        Per artefact class, the union over visits of its warped footprint.
    weights : numpy.ndarray
        Per-warp weights (of the clean warps), used for every coadd.
    truth : astropy.table.Table
        The survey's object catalog with cell pixel positions ``x``, ``y``.
    visits : list
        The simulator's visits.
    epoch_footprints : list of dict of str to numpy.ndarray
        Per warp, the warped footprint of each class present in it (what
        :func:`own_light_leakage` splits the artefact light by).
    """

    cell: SkyCell
    art: list[Exposure]
    clean: list[Exposure]
    footprints: dict[str, np.ndarray]
    weights: np.ndarray
    truth: Table
    visits: list[Any] = field(default_factory=list)
    epoch_footprints: list[dict[str, np.ndarray]] = field(default_factory=list)


def warp_masks(
    masks: dict[str, np.ndarray], exposure: Exposure, cell: SkyCell
) -> dict[str, np.ndarray]:
    """Boolean masks of an exposure, warped onto ``cell``: True on every cell
    pixel whose bilinear interpolation touches a True input pixel."""
    reproject = require_extra("reproject", "coadd")
    wcs = exposure.require_wcs("warping a footprint")
    names = [k for k, m in masks.items() if m.any()]
    if not names:
        return {}
    planes = np.stack([masks[k].astype(np.float32) for k in names])
    out, _ = reproject.reproject_interp(
        (planes, wcs), cell.wcs, shape_out=cell.shape, order="bilinear", roundtrip_coords=False
    )
    warped = np.nan_to_num(np.asarray(out)) > 0
    return {k: warped[i] for i, k in enumerate(names)}


def warps_from_survey(
    survey: Survey, cell: SkyCell, *, zero_point: float | None = None, quiet: bool = True
) -> SimWarps:
    """Warp every visit of ``survey`` (raw and clean) onto ``cell``.

    The simulator's sky is flat and known: ``info.sky`` is subtracted from
    both images before warping (a calibration pipeline fits it instead).
    Every warp is scaled to ``zero_point`` (default: the median visit's).
    """
    from skydm.coadd.stack import WarpStack

    visits = list(survey.visits)
    if not visits:
        raise UserError("the survey has no visits")
    zp = zero_point if zero_point is not None else float(np.median([v.zero_point for v in visits]))
    art: list[Exposure] = []
    clean: list[Exposure] = []
    foot = {c: np.zeros(cell.shape, dtype=bool) for c in FOOTPRINT_CLASSES}
    per_epoch: list[dict[str, np.ndarray]] = []
    for v in visits:
        for src, out in ((v.raw, art), (v.clean, clean)):
            exp = src.copy()
            exp.image = (exp.image - np.float32(exp.info.sky)).astype(np.float32)
            out.append(warp_exposure(exp, cell, zero_point=zp))
        wanted = {c: m for c, m in v.artefacts.items() if c in foot}
        warped = warp_masks(wanted, v.raw, cell)
        for cls, m in warped.items():
            foot[cls] |= m
        per_epoch.append(warped)
        v.release()
    weights = WarpStack(clean).weights
    truth = survey.truth
    x, y = cell.wcs.world_to_pixel_values(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    truth["x"], truth["y"] = x, y
    return SimWarps(cell, art, clean, foot, weights, truth, visits, per_epoch)


def leakage(
    coadd_art: np.ndarray,
    coadd_clean: np.ndarray,
    ref_art: np.ndarray,
    ref_clean: np.ndarray,
    footprints: dict[str, np.ndarray],
    *,
    valid: np.ndarray | None = None,
) -> dict[str, float]:
    """Leakage per artefact class (see the module docs).

    Parameters
    ----------
    coadd_art, coadd_clean : numpy.ndarray
        The method's coadds of the warps with and without artefacts.
    ref_art, ref_clean : numpy.ndarray
        The plain weighted mean of the same warps.
    footprints : dict of str to numpy.ndarray
        Boolean footprint per class on the coadd grid.
    valid : numpy.ndarray, optional
        Pixels to score (e.g. where every coadd has data); default all finite.

    Returns
    -------
    dict of str to float
        Leakage per class whose footprint has scored pixels; NaN (which
        fails every bound) where the plain mean's excess there is not
        positive, rather than leaving the class out.
    """
    ok = np.isfinite(coadd_art) & np.isfinite(coadd_clean)
    ok &= np.isfinite(ref_art) & np.isfinite(ref_clean)
    if valid is not None:
        ok &= valid
    out: dict[str, float] = {}
    for cls, fp in footprints.items():
        sel = fp & ok
        if not sel.any():
            continue
        num = float(np.sum(coadd_art[sel].astype(np.float64) - coadd_clean[sel]))
        den = float(np.sum(ref_art[sel].astype(np.float64) - ref_clean[sel]))
        out[cls] = num / den if den > 0 else math.nan
    return out


def leakage_snr(
    ref_art: Exposure,
    ref_clean: Exposure,
    footprints: dict[str, np.ndarray],
    *,
    valid: np.ndarray | None = None,
) -> dict[str, float]:
    """Per class, the plain mean's artefact excess over the class's footprint in
    units of that sum's noise (the clean mean's variance summed there).

    A class that only grazes the cell (a trail crossing a corner in a few
    pixels at 0.1 sigma) has a leakage that no method can lower, because
    nothing there is distinguishable from noise; a test judges a class only
    where this is large (its leakage is still reported).
    """
    ok = np.isfinite(ref_art.image) & np.isfinite(ref_clean.image) & np.isfinite(ref_clean.var)
    if valid is not None:
        ok &= valid
    out: dict[str, float] = {}
    for cls, fp in footprints.items():
        sel = fp & ok
        if not sel.any():
            continue
        excess = float(np.sum(ref_art.image[sel].astype(np.float64) - ref_clean.image[sel]))
        noise = math.sqrt(float(np.sum(ref_clean.var[sel].astype(np.float64))))
        out[cls] = excess / noise if noise > 0 else math.nan
    return out


def _source_free(coadd: Exposure, truth: Table, radius: float) -> np.ndarray:
    """Pixels farther than ``radius`` from every truth object and with data."""
    from scipy import ndimage

    marks = np.zeros(coadd.shape, dtype=bool)
    ny, nx = coadd.shape
    for x, y in zip(np.asarray(truth["x"]), np.asarray(truth["y"]), strict=True):
        ix, iy = round(x), round(y)
        if 0 <= ix < nx and 0 <= iy < ny:
            marks[iy, ix] = True
    dist = ndimage.distance_transform_edt(~marks)
    return (dist > radius) & ((coadd.msk & np.uint32(Mask.NO_DATA)) == 0)


def leakage_parts(
    art: WarpStack,
    clean: WarpStack,
    coadd_art: Exposure,
    coadd_clean: Exposure,
    ref_art: Exposure,
    ref_clean: Exposure,
    footprints: dict[str, np.ndarray],
    *,
    valid: np.ndarray | None = None,
    config: CompareWarpConfig | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """CompareWarp's leakage split into the artefacts' own light and the noise of
    the pixels it replaced.

    Replacing an epoch's clipped pixels by other epochs' swaps that epoch's
    noise for theirs, so the coadds with and without artefacts differ there
    by noise even when every artefact photon is removed: for a class with a
    single small footprint that noise alone can reach a few per cent.  The
    artefact-free warps assembled with the clips found on the artefact warps
    (``twin``) separate the two exactly: ``coadd_art - twin`` is the
    artefacts' light that the kept pixels let through (the same coefficients
    on both), and ``twin - coadd_clean`` is the replacement noise (and any
    difference between the clips of the two runs).  The two parts add up to
    :func:`leakage`.

    Parameters
    ----------
    art, clean : WarpStack
        The warps with and without artefacts, with the same weights.
    coadd_art, coadd_clean : Exposure
        Their CompareWarp coadds (with ``config``).
    ref_art, ref_clean : Exposure
        Their plain weighted means.
    footprints, valid
        As for :func:`leakage`.
    config : CompareWarpConfig, optional
        The configuration the coadds were made with.

    Returns
    -------
    light, noise : dict of str to float
        Per class, the two parts of the leakage.
    """
    from skydm.coadd._cw_assemble import assemble_clipped
    from skydm.coadd.compare_warp import find_clips

    twin = assemble_clipped(clean, find_clips(art, config=config), subtract_streaks=False).image
    refs = (ref_art.image, ref_clean.image)
    light = leakage(coadd_art.image, twin, *refs, footprints, valid=valid)
    noise = leakage(twin, coadd_clean.image, *refs, footprints, valid=valid)
    return light, noise


def own_light_leakage(
    sim: SimWarps, *, config: CompareWarpConfig | None = None
) -> dict[str, dict[str, float]]:
    """CompareWarp's leakage of each class split into its own light, other
    classes' light and the replacement noise (exact; for diagnosis: it
    costs a search for clips and an assembly per class).

    Each epoch's artefact light (raw less clean warp) is split among the
    classes whose footprints cover the pixel in that epoch (equally where
    several do, which is rare within one epoch, unlike over a field's
    epochs); the coadd of the warps is linear in their pixels once the
    clips are found, so assembling one class's light alone with the clips
    found on the artefact warps gives exactly what is left of it.

    Returns
    -------
    dict of str to dict of str to float
        Per class judged by :func:`leakage` (same footprint and
        denominator): ``leakage`` (:func:`leakage`'s figure, which the
        three parts add up to), ``own`` (its own light left), ``others``
        (other classes' light left on its footprint, streak models
        included), ``replacement`` (the clipped pixels' noise, as in
        :func:`leakage_parts`); and ``own_fraction``, the fraction of the
        class's own light in the plain mean that the coadd keeps.
    """
    from skydm.coadd._cw_assemble import assemble_clipped
    from skydm.coadd.assemble import assemble_coadd
    from skydm.coadd.compare_warp import find_clips
    from skydm.coadd.stack import WarpStack

    if len(sim.epoch_footprints) != len(sim.art):
        raise UserError(
            "own_light_leakage needs the per-epoch footprints: make the warps with "
            "warps_from_survey"
        )
    w = sim.weights
    art, clean = WarpStack(sim.art, weights=w), WarpStack(sim.clean, weights=w)
    clips = find_clips(art, config=config)
    coadd_art = assemble_clipped(art, clips).image.astype(np.float64)
    twin = assemble_clipped(clean, clips, subtract_streaks=False).image.astype(np.float64)
    coadd_clean = assemble_clipped(clean, find_clips(clean, config=config)).image
    ref_art, ref_clean = assemble_coadd(art, "mean"), assemble_coadd(clean, "mean")
    ok = ((ref_art.msk | ref_clean.msk) & np.uint32(Mask.NO_DATA)) == 0
    ok &= np.isfinite(coadd_art) & np.isfinite(coadd_clean)
    excess = ref_art.image.astype(np.float64) - ref_clean.image
    # Per epoch, how many classes cover each pixel (to share the few shared ones).
    covers = [
        sum((m.astype(np.float32) for m in fp.values()), np.float32(0))
        for fp in sim.epoch_footprints
    ]

    def left(cls: str) -> tuple[np.ndarray, np.ndarray]:
        # The class's light per epoch, its coadd with the clips and its plain mean.
        parts = []
        for a, c, fp, n in zip(sim.art, sim.clean, sim.epoch_footprints, covers, strict=True):
            own = np.zeros(a.shape, dtype=np.float32)
            if cls in fp:
                share = fp[cls] / np.maximum(n, np.float32(1))
                own = ((a.image - c.image) * share).astype(np.float32)
            e = c.copy()
            e.image = own
            parts.append(e)
        stack = WarpStack(parts, weights=w)
        kept = assemble_clipped(stack, clips, subtract_streaks=False).image.astype(np.float64)
        return kept, assemble_coadd(stack, "mean").image.astype(np.float64)

    out: dict[str, dict[str, float]] = {}
    for cls, fp in sim.footprints.items():
        sel = fp & ok
        den = float(excess[sel].sum()) if sel.any() else 0.0
        if den <= 0:
            continue
        kept, mean = left(cls)
        total = float((coadd_art - coadd_clean)[sel].sum())
        own = float(kept[sel].sum())
        light = float((coadd_art - twin)[sel].sum())
        mine = float(mean[sel].sum())
        out[cls] = {
            "leakage": total / den,
            "own": own / den,
            "others": (light - own) / den,
            "replacement": float((twin - coadd_clean)[sel].sum()) / den,
            "own_fraction": own / mine if mine > 0 else math.nan,
        }
    return out


#: Fewest source-free pixels that the noise ratio is measured over.
NOISE_MIN_PIXELS = 500


def noise_ratio(coadd: Exposure, reference: Exposure, truth: Table) -> float:
    """Robust rms of ``coadd`` over source-free pixels, relative to ``reference``'s."""
    fwhm = reference.psf.fwhm if reference.psf is not None else 5.0
    # A crowded field (a thousand stars in a 200-px cell) leaves no pixel
    # 3 FWHM from every object: the radius shrinks until enough pixels are
    # left for a robust rms (the same pixels in both coadds, so the ratio
    # stays fair); failing that, every pixel with data (the MAD ignores the
    # few bright ones).
    enough = max(NOISE_MIN_PIXELS, coadd.image.size // 50)
    with_data = ((reference.msk | coadd.msk) & np.uint32(Mask.NO_DATA)) == 0
    sel = with_data
    for radius in (3.0 * fwhm + 5, 2.0 * fwhm + 3, 1.5 * fwhm, fwhm):
        free = _source_free(reference, truth, radius) & _source_free(coadd, truth, radius)
        if np.count_nonzero(free) >= enough:
            sel = free
            break

    def rms(a: np.ndarray) -> float:
        v = a[sel].astype(np.float64)
        return 1.4826 * float(np.median(np.abs(v - np.median(v))))

    ref = rms(reference.image)
    return rms(coadd.image) / ref if ref > 0 else float("nan")


def star_flux_bias(
    coadd: Exposure, reference: Exposure, truth: Table, *, snr: tuple[float, float] = (30, 300)
) -> tuple[float, int]:
    """Median over stars of (flux in ``coadd`` - flux in ``reference``) / flux error.

    Forced PSF photometry at the true positions with the reference's PSF;
    stars with reference S/N in ``snr`` and no NO_DATA near them.

    Returns
    -------
    bias : float
        Median bias in units of the flux error.
    n : int
        Number of stars used.
    """
    stars = truth[truth["kind"] == "star"]
    x, y = np.asarray(stars["x"], dtype=float), np.asarray(stars["y"], dtype=float)
    psf = reference.require_psf("star photometry")
    f_ref, e_ref = psf_photometry(reference, x, y, psf=psf)
    f, _ = psf_photometry(coadd, x, y, psf=psf)
    s = f_ref / e_ref
    sel = np.isfinite(f) & np.isfinite(f_ref) & (s >= snr[0]) & (s <= snr[1])
    if not sel.any():
        return math.nan, 0
    return float(np.median((f[sel] - f_ref[sel]) / e_ref[sel])), int(sel.sum())


def variable_flux_ratios(coadd: Exposure, ideal: Exposure, truth: Table) -> np.ndarray:
    """Flux of each variable star in ``coadd`` over its flux in ``ideal`` (PSF photometry)."""
    var = truth[truth["kind"] == "variable"]
    x, y = np.asarray(var["x"], dtype=float), np.asarray(var["y"], dtype=float)
    psf = ideal.require_psf("variable-star photometry")
    f_ideal, _ = psf_photometry(ideal, x, y, psf=psf)
    f, _ = psf_photometry(coadd, x, y, psf=psf)
    return np.asarray(f / f_ideal)


def variables_clear(sim: SimWarps, *, radius: int = 4) -> np.ndarray:
    """Per variable star of ``sim.truth`` (in order), whether no artefact
    footprint of any epoch comes within ``radius`` pixels of it.

    A variable under an artefact loses that epoch like any pixel there, so
    its coadd flux is not the mean of all epochs; only the clear ones can be
    held to the weighted mean.
    """
    union = np.zeros(sim.cell.shape, dtype=bool)
    for fp in sim.footprints.values():
        union |= fp
    ny, nx = union.shape
    clear = []
    for row in sim.truth[sim.truth["kind"] == "variable"]:
        x, y = round(float(row["x"])), round(float(row["y"]))
        inside = 0 <= x < nx and 0 <= y < ny
        box = union[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1]
        clear.append(inside and not box.any())
    return np.asarray(clear, dtype=bool)


def detection_map(coadd: Exposure) -> np.ndarray:
    """Matched-filter S/N of a point source at every pixel (the coadd's PSF)."""
    from scipy.signal import oaconvolve

    psf = coadd.require_psf("a detection map")
    k = psf.kernel(min(psf.default_size(), 31))
    usable = ((coadd.msk & np.uint32(Mask.NO_DATA)) == 0) & np.isfinite(coadd.var)
    img = np.where(usable, coadd.image, 0.0)
    var = np.where(usable, coadd.var, 0.0)
    num = oaconvolve(img, k, mode="same")
    den = np.sqrt(np.maximum(oaconvolve(var, k * k, mode="same"), 1e-30))
    return np.where(usable, num / den, 0.0)


def spurious_detections(
    coadd_art: Exposure,
    coadd_clean: Exposure,
    *,
    sky: Exposure | None = None,
    threshold: float = 5.0,
    margin: float = 1.0,
) -> int:
    """Number of ``threshold``-sigma detections in ``coadd_art`` that ``coadd_clean`` lacks.

    A detection is a connected region (8-connected, as detection footprints
    are) of the matched-filter S/N map (:func:`detection_map`) at or above
    ``threshold``; it is spurious where the clean coadd's map stays below
    ``threshold - margin`` (the margin keeps the clean coadd's own
    threshold-crossing sources, whose S/N moves a little with the clipped
    noise, from counting).  Comparing pixels rather than catalogs avoids
    counting every change of deblending between two nearly equal images.

    ``sky``, the plain weighted mean of the artefact-free warps, tells real
    sky from spurious: where its map reaches ``threshold - margin`` too, the
    detection is of real sources, which the method's clean coadd may have
    lowered by clipping a noisy epoch of the clean warps (a false clip the
    artefact coadd happened not to make) rather than the artefacts raised.
    """
    from scipy import ndimage

    snr_a = detection_map(coadd_art)
    snr_c = detection_map(coadd_clean)
    new = (snr_a >= threshold) & (snr_c < threshold - margin)
    if sky is not None:
        new &= detection_map(sky) < threshold - margin
    _, n = ndimage.label(new, structure=np.ones((3, 3), dtype=bool))
    return int(n)


Coadder = Callable[[Sequence[Exposure], np.ndarray], Exposure]


def score(sim: SimWarps, coadder: Coadder, *, reference: Coadder | None = None) -> dict[str, Any]:
    """Every metric of a coadd method on simulated warps.

    Parameters
    ----------
    sim : SimWarps
        From :func:`warps_from_survey`.
    coadder : callable
        ``coadder(warps, weights) -> Exposure``.
    reference : callable, optional
        The plain weighted mean (default: :func:`assemble_coadd` "mean").

    Returns
    -------
    dict
        ``leakage`` (per class), ``leakage_max``, ``leakage_snr`` (per
        class, how far above the noise its light is: :func:`leakage_snr`),
        ``noise_ratio`` (the
        method's clean coadd against the plain mean, source-free pixels),
        ``star_bias`` and ``n_stars`` (the method's clean coadd against the
        plain mean, in flux errors), ``star_bias_art`` (its coadd of the
        artefact warps against the plain mean of the clean ones),
        ``variable_ratio`` (per variable, artefact coadd over the clean
        plain mean), ``variable_clear`` (per variable, clear of every
        artefact: :func:`variables_clear`), ``spurious_vs_mean``
        (detections in the artefact coadd that the plain mean of the clean
        warps lacks), ``spurious`` (those that the method's clean coadd
        lacks too), ``spurious_vs_clean`` (those not in the clean coadd
        alone), ``holes`` (pixels of the artefact coadd without data where
        the plain means have data), and the four coadds (``coadd_art``, ``coadd_clean``,
        ``ref_art``, ``ref_clean``).
    """
    from skydm.coadd.assemble import assemble_coadd
    from skydm.coadd.stack import WarpStack

    def mean(warps: Sequence[Exposure], w: np.ndarray) -> Exposure:
        return assemble_coadd(WarpStack(warps, weights=w), "mean")

    ref = reference or mean
    ca, cc = coadder(sim.art, sim.weights), coadder(sim.clean, sim.weights)
    ra, rc = ref(sim.art, sim.weights), ref(sim.clean, sim.weights)
    valid = ((rc.msk | ra.msk) & np.uint32(Mask.NO_DATA)) == 0
    leak = leakage(ca.image, cc.image, ra.image, rc.image, sim.footprints, valid=valid)
    snr = leakage_snr(ra, rc, sim.footprints, valid=valid)
    bias, n_stars = star_flux_bias(cc, rc, sim.truth)
    bias_art, _ = star_flux_bias(ca, rc, sim.truth)
    return {
        "leakage": leak,
        "leakage_max": max(leak.values()) if leak else math.nan,
        "leakage_snr": snr,
        "noise_ratio": noise_ratio(cc, rc, sim.truth),
        "star_bias": bias,
        "star_bias_art": bias_art,
        "n_stars": n_stars,
        "variable_ratio": variable_flux_ratios(ca, rc, sim.truth),
        "variable_clear": variables_clear(sim),
        "spurious_vs_mean": spurious_detections(ca, rc),
        "spurious": spurious_detections(ca, cc, sky=rc),
        "spurious_vs_clean": spurious_detections(ca, cc),
        # Pixels the method left without data where the plain mean has
        # some: the leakage reads them as 0, so a hole in a star's core
        # scores as a large negative leakage, and one on an artefact hides it.
        "holes": int(np.count_nonzero(valid & ((ca.msk & np.uint32(Mask.NO_DATA)) != 0))),
        "coadd_art": ca,
        "coadd_clean": cc,
        "ref_art": ra,
        "ref_clean": rc,
    }
