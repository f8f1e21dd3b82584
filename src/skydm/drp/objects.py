"""The Object table of one sky cell: detection on every band's deep coadd
together, then forced PSF photometry of every detection in every band.

See ``docs/drp.md`` for the algorithm and the columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from skydm.drp._detect import BandPlanes, Detections, detect
from skydm.drp._photometry import (
    BandPhotometry,
    _has_neighbour,
    big_aperture,
    measure_band,
    position_shifts,
    stamp_groups,
)
from skydm.drp._residual import add_objects, residual_peaks
from skydm.drp.config import ObjectConfig, ObjectFlag
from skydm.errors import BadValueError, UserError
from skydm.image.detect import estimate_background
from skydm.image.exposure import NJY_AB_MAG, Exposure
from skydm.image.mask import UNUSABLE, Mask
from skydm.image.psf import Psf

_BAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,15}$")
#: Mask bits of a footprint and the Object flag each one sets.
_FOOTPRINT_BITS = (
    (Mask.NO_DATA | Mask.EDGE, ObjectFlag.EDGE),
    (Mask.SAT, ObjectFlag.SATURATED),
    (Mask.BAD | Mask.CR | Mask.SUSPECT, ObjectFlag.BAD),
    (Mask.CLIPPED, ObjectFlag.CLIPPED),
)


def measure_objects(coadds: Mapping[str, Exposure], config: ObjectConfig | None = None) -> Table:
    """Detect objects on one sky cell's coadds and measure them in every band.

    Parameters
    ----------
    coadds : mapping of str to Exposure
        Band name to that band's coadd of one sky cell; all on one pixel
        grid, each with a WCS, a PSF, a variance plane and a zero point.
    config : ObjectConfig, optional
        Tunables (defaults when omitted).

    Returns
    -------
    astropy.table.Table
        One row per object, in order of detection, with ``objectId`` the
        running number 1, 2, ... (make them unique across cells with
        :func:`skydm.drp.assign_object_ids`), ``coord_ra``, ``coord_dec``
        (degrees), ``x``, ``y`` (cell pixels), ``detect_snr``,
        ``footprintArea``, ``deblend_nPeaks``, ``extendedness``, ``flags``
        (:class:`~skydm.drp.ObjectFlag` bits) and per band
        ``<band>_psfFlux``, ``<band>_psfFluxErr`` (nJy), ``<band>_psfFlux_flag``,
        ``<band>_psfMag`` and ``<band>_psfMagErr``.  ``meta`` records the
        per-band aperture corrections (``APCORR_<band>``).

    Raises
    ------
    BadValueError
        For no coadds or a band name that cannot name a column.
    UserError
        When the coadds are not on one pixel grid, or one lacks a WCS, PSF or
        zero point.
    """
    config = config or ObjectConfig()
    bands, planes, scales = _prepare(coadds, config)
    first = coadds[bands[0]]
    wcs = first.require_wcs("the Object table's coordinates")
    found = detect(planes, config)
    stamps = [min(p.psf.default_size(), config.psf_stamp) | 1 for p in planes]
    stamp = max(stamps)
    groups = stamp_groups(found.x, found.y, stamp, config.max_group)
    found.x, found.y = _refine_positions(found, planes, groups, config)
    phot = _photometry(planes, found, groups, stamps, config)
    if config.residual_detection and len(found):
        rx, ry, rpeak = residual_peaks(planes, found, phot, stamps, config)
        if rx.size:
            n_old = len(found)
            found = add_objects(found, found.linear, rx, ry, rpeak)
            # Only the groups that the new objects changed are fitted again:
            # the others' positions and fluxes would come out the same.
            old = {tuple(g.tolist()) for g in groups}
            groups = stamp_groups(found.x, found.y, stamp, config.max_group)
            redo = [g for g in groups if tuple(g.tolist()) not in old]
            found.x, found.y = _refine_positions(found, planes, redo, config)
            if config.crowded_sweeps > 0:
                # Objects of split groups are refitted with their neighbours'
                # models removed, so a new object changes its neighbours'
                # fluxes too (their positions stay the first pass's).
                lone = [g for g in groups if g.size == 1 and tuple(g.tolist()) in old]
                if lone:
                    idx = np.concatenate(lone)
                    crowded = idx[_has_neighbour(found.x, found.y, idx, stamp)]
                    redo = redo + [np.array([i]) for i in crowded.tolist()]
            phot = [
                _merge(before, after, n_old, redo)
                for before, after in zip(
                    phot, _photometry(planes, found, redo, stamps, config), strict=True
                )
            ]
    n = len(found)
    flags = _footprint_flags(found, planes)
    flags[found.n_peaks > 1] |= ObjectFlag.DEBLENDED
    for ph in phot:
        flags[ph.psf_fraction < config.partial_psf_fraction] |= ObjectFlag.PARTIAL_PSF
        flags[~np.isfinite(ph.flux)] |= ObjectFlag.NO_FLUX
        flags[ph.clipped_stamp] |= ObjectFlag.EDGE
    calib = [
        _calibrate_band(p, found, ph, flags, config) for p, ph in zip(planes, phot, strict=True)
    ]
    if any(c.n_stars == 0 for c in calib):
        flags |= ObjectFlag.NO_APCORR
    extended = _extendedness(phot, scales, [c.locus for c in calib], config)

    table = Table(meta={"DETIMAGE": config.detection_image, "DETTHRES": config.threshold})
    table["objectId"] = np.arange(1, n + 1, dtype=np.int64)
    ra, dec = wcs.pixel_to_world_values(found.x, found.y) if n else (np.zeros(0), np.zeros(0))
    table["coord_ra"] = np.asarray(ra, dtype=np.float64) % 360.0
    table["coord_dec"] = np.asarray(dec, dtype=np.float64)
    table["x"], table["y"] = found.x, found.y
    table["detect_snr"] = found.peak.astype(np.float32)
    table["footprintArea"] = found.npix.astype(np.int32)
    table["deblend_nPeaks"] = found.n_peaks.astype(np.int32)
    table["extendedness"] = extended.astype(np.float32)
    for band, ph, scale, cal in zip(bands, phot, scales, calib, strict=True):
        apcorr = cal.apcorr
        table.meta[f"APCORR_{band}"] = apcorr
        table.meta[f"NSTARS_{band}"] = cal.n_stars
        band_flag = ~np.isfinite(ph.flux) | (ph.psf_fraction < config.partial_psf_fraction)
        flux = ph.flux * scale * apcorr
        err = ph.flux_err * scale * apcorr
        table[f"{band}_psfFlux"] = flux
        table[f"{band}_psfFluxErr"] = err
        table[f"{band}_psfFlux_flag"] = band_flag | ph.clipped_stamp
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = flux > 0
            table[f"{band}_psfMag"] = np.where(
                positive, NJY_AB_MAG - 2.5 * np.log10(np.where(positive, flux, 1.0)), np.nan
            ).astype(np.float32)
            table[f"{band}_psfMagErr"] = np.where(
                positive, 2.5 / math.log(10.0) * err / np.where(positive, flux, 1.0), np.nan
            ).astype(np.float32)
    table["flags"] = flags.astype(np.int64)
    return table


def _photometry(
    planes: list[BandPlanes],
    found: Detections,
    groups: list[np.ndarray],
    stamps: list[int],
    config: ObjectConfig,
) -> list[BandPhotometry]:
    """Forced PSF and aperture photometry of every object in every band."""
    return [
        measure_band(
            p,
            found.x,
            found.y,
            groups,
            stamp=size,
            aperture_radius=_aperture_px(p, config),
            crowded_sweeps=config.crowded_sweeps,
        )
        for p, size in zip(planes, stamps, strict=True)
    ]


def _merge(
    before: BandPhotometry, after: BandPhotometry, n_old: int, redo: list[np.ndarray]
) -> BandPhotometry:
    """First-pass measurements of the first ``n_old`` objects, replaced by ``after``'s
    for the objects in the refitted groups ``redo``."""
    idx = np.concatenate(redo) if redo else np.zeros(0, dtype=np.int64)
    fields = {}
    for name in ("flux", "flux_err", "psf_fraction", "ap_flux", "ap_flux_err", "clipped_stamp"):
        new = getattr(after, name).copy()
        keep = np.ones(new.size, dtype=bool)
        keep[idx] = False
        keep[n_old:] = False
        new[keep] = getattr(before, name)[keep[:n_old]]
        fields[name] = new
    return BandPhotometry(**fields)


def _prepare(
    coadds: Mapping[str, Exposure], config: ObjectConfig
) -> tuple[list[str], list[BandPlanes], list[float]]:
    """Validate the coadds; background-subtracted planes and nJy per count per band."""
    if not coadds:
        raise BadValueError("coadds", {}, "at least one band's coadd")
    bands = list(coadds)
    for band in bands:
        if not isinstance(band, str) or not _BAND_NAME.match(band):
            raise BadValueError("band", band, "a band name of letters and digits, e.g. 'r'")
    first = coadds[bands[0]]
    ref_wcs = first.require_wcs("Object detection")
    planes: list[BandPlanes] = []
    scales: list[float] = []
    for band in bands:
        exp = coadds[band]
        name = exp.source or f"the {band}-band coadd"
        psf = exp.require_psf(f"Object photometry in band {band}")
        scales.append(exp.nanojansky_per_count(f"Object fluxes in band {band}"))
        wcs = exp.require_wcs("Object detection")
        if exp.shape != first.shape or not _same_grid(ref_wcs, wcs, exp.shape):
            raise UserError(
                f"{name} is not on the pixel grid of the {bands[0]}-band coadd "
                f"(shape {exp.shape} vs {first.shape}); give coadds of one sky cell"
            )
        img = np.asarray(exp.image, dtype=np.float64)
        var = np.asarray(exp.var, dtype=np.float64)
        bad = ~np.isfinite(img) | ~np.isfinite(var) | (var <= 0)
        bad |= (exp.msk & np.uint32(UNUSABLE)) != 0
        if bad.all():
            raise UserError(f"{name}: every pixel is masked or non-finite; nothing to measure")
        if config.subtract_background:
            back, _ = estimate_background(exp, box=config.background_box)
            img = img - back
        planes.append(
            BandPlanes(
                image=np.where(bad, 0.0, img),
                variance=np.where(bad, np.inf, var),
                mask=exp.msk,
                bad=bad,
                psf=psf,
            )
        )
    return bands, planes, scales


def _refine_positions(
    found: Detections, planes: list[BandPlanes], groups: list[np.ndarray], config: ObjectConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Centroids refined by a multi-band linearised PSF fit of the position.

    Each band's offset (:func:`~skydm.drp._photometry.position_shifts`) is
    combined with inverse-variance weights; ``centroid_iterations`` rounds.
    An object whose offset is not measurable, or whose total move would
    exceed ``centroid_max_shift`` pixels, keeps its detection-image centroid.
    """
    x0, y0 = found.x.copy(), found.y.copy()
    x, y = x0.copy(), y0.copy()
    for _ in range(config.centroid_iterations):
        sx, sy, wx, wy = (np.zeros(x.size) for _ in range(4))
        for p in planes:
            stamp = min(p.psf.default_size(), config.psf_stamp) | 1
            dx, dy, vx, vy = position_shifts(p, x, y, groups, stamp=stamp)
            ok = np.isfinite(dx) & np.isfinite(dy) & (vx > 0) & (vy > 0)
            with np.errstate(divide="ignore"):
                sx += np.where(ok, dx / np.where(ok, vx, 1.0), 0.0)
                sy += np.where(ok, dy / np.where(ok, vy, 1.0), 0.0)
                wx += np.where(ok, 1.0 / np.where(ok, vx, 1.0), 0.0)
                wy += np.where(ok, 1.0 / np.where(ok, vy, 1.0), 0.0)
        has = (wx > 0) & (wy > 0)
        step_x = np.where(has, sx / np.where(has, wx, 1.0), 0.0)
        step_y = np.where(has, sy / np.where(has, wy, 1.0), 0.0)
        # One linearised step is good to ~0.1 px; larger steps are damped to
        # a pixel so that the next round stays in the linear regime.
        x = x + np.clip(step_x, -1.0, 1.0)
        y = y + np.clip(step_y, -1.0, 1.0)
    moved = np.hypot(x - x0, y - y0) > config.centroid_max_shift
    bad = moved | ~np.isfinite(x) | ~np.isfinite(y)
    return np.where(bad, x0, x), np.where(bad, y0, y)


def _same_grid(a: object, b: object, shape: tuple[int, int]) -> bool:
    """Whether two WCSs put the corners and centre of ``shape`` at the same place."""
    ny, nx = shape
    xs = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2])
    ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2])
    ra, dec = a.pixel_to_world_values(xs, ys)  # type: ignore[attr-defined]
    x2, y2 = b.world_to_pixel_values(ra, dec)  # type: ignore[attr-defined]
    return bool(np.all(np.hypot(np.asarray(x2) - xs, np.asarray(y2) - ys) < 0.01))


def _aperture_px(plane: BandPlanes, config: ObjectConfig) -> float:
    """The extendedness aperture in pixels, kept inside the PSF stamp."""
    half = (min(plane.psf.default_size(), config.psf_stamp) | 1) // 2
    return min(config.aperture_radius * plane.psf.fwhm, float(half))


def _footprint_flags(found: Detections, planes: list[BandPlanes]) -> np.ndarray:
    """Flags from the mask bits in each object's footprint or its PSF core, in any band.

    The core (a disk of one PSF FWHM about the centroid) counts too: pixels
    that are unusable in every band are no part of any footprint.
    """
    flags = np.zeros(len(found), dtype=np.int64)
    seg = found.segmap
    inside = seg > 0
    ny, nx = seg.shape
    for p in planes:
        mask = p.mask
        bits = np.zeros(len(found), dtype=np.uint32)
        for k, (xc, yc) in enumerate(zip(found.x, found.y, strict=True)):
            r = max(p.psf.fwhm, 1.0)
            x0, x1 = max(int(xc - r), 0), min(int(xc + r) + 2, nx)
            y0, y1 = max(int(yc - r), 0), min(int(yc + r) + 2, ny)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            disk = (xx - xc) ** 2 + (yy - yc) ** 2 <= r * r
            bits[k] = np.bitwise_or.reduce(mask[y0:y1, x0:x1][disk], initial=np.uint32(0))
        for bit, flag in _FOOTPRINT_BITS:
            hit = inside & ((mask & np.uint32(bit)) != 0)
            if hit.any():
                flags[np.unique(seg[hit]) - 1] |= int(flag)
            flags[(bits & np.uint32(bit)) != 0] |= int(flag)
    return flags


def _extendedness(
    phot: list[BandPhotometry], scales: list[float], loci: list[float], config: ObjectConfig
) -> np.ndarray:
    """1 where the aperture flux exceeds the PSF flux (all bands together), else 0.

    In each band the aperture flux is normalised by the PSF model's own
    fraction in that aperture and by the band's stellar locus, so a point
    source has ``ap - psf = 0`` in expectation; the variance of the
    difference is ``var(ap) - var(psf)`` (the PSF flux being the optimal
    linear estimator).  The bands are summed
    in nJy; NaN where no band has both fluxes.
    """
    n = phot[0].flux.size if phot else 0
    diff = np.zeros(n)
    var = np.zeros(n)
    total = np.zeros(n)
    used = np.zeros(n, dtype=bool)
    for ph, s, locus in zip(phot, scales, loci, strict=True):
        ap, ap_err = ph.ap_flux / locus, ph.ap_flux_err / locus
        ok = np.isfinite(ph.flux) & np.isfinite(ap)
        d = np.where(ok, ap - ph.flux, 0.0) * s
        v_ap = np.where(ok, ap_err, 0.0) ** 2
        v_psf = np.where(ok, ph.flux_err, 0.0) ** 2
        # Floor: the difference's variance is never below a twentieth of the
        # aperture's (guards round-off where the two estimators nearly agree).
        var += np.maximum(v_ap - v_psf, 0.05 * v_ap) * s * s
        diff += d
        total += np.where(ok, ap, 0.0) * s
        used |= ok
    with np.errstate(invalid="ignore"):
        extended = (diff > config.extended_fraction * np.abs(total)) & (
            diff > config.extended_nsigma * np.sqrt(var)
        )
    return np.where(used, extended.astype(np.float64), np.nan)


def psf_apcorr(psf: Psf, stamp: int) -> float:
    """Aperture correction from the PSF model: its whole light over that in the fitted stamp.

    PSF fluxes are fitted with the model cut to ``min(model size, stamp)``
    and normalised to unit sum there, so they miss the model's light
    outside the stamp.  Unlike a median over a cell's few bright stars, it
    is not moved by a star's faint companion or its noise; it trusts the
    coadd PSF's wings (the calexp PSFs' Moffat profiles within 3.5 FWHM,
    the warps' resampling included).
    """
    full = psf.kernel()
    size = min(full.shape[0], stamp) | 1
    if size >= full.shape[0]:
        return 1.0
    c = (full.shape[0] - size) // 2
    inner = float(full[c : c + size, c : c + size].sum())
    return float(full.sum()) / inner if inner > 0 else 1.0


@dataclass(frozen=True)
class BandCalibration:
    """A band's corrections measured on its bright isolated stars.

    Attributes
    ----------
    apcorr : float
        Total flux over PSF flux: multiplies PSF fluxes (the PSF model is a
        finite stamp normalised to unit sum, so PSF fluxes miss the light
        in the wings beyond it; Rubin's aperture corrections put it back).
        From the PSF model (:func:`psf_apcorr`) by default, or measured on
        the stars with ``apcorr="stars"``.
    locus : float
        The stars' extendedness-aperture flux over PSF flux: divides
        aperture fluxes so that point sources have equal PSF and aperture
        fluxes whatever the PSF model's small errors (Rubin corrects PSF and
        model fluxes alike for the same reason).
    n_stars : int
        Stars used; 0 (and the locus 1, and with ``apcorr="stars"`` the
        correction too) when fewer than ``apcorr_min_stars`` qualified.
    """

    apcorr: float
    locus: float
    n_stars: int


def _calibrate_band(
    plane: BandPlanes,
    found: Detections,
    phot: BandPhotometry,
    flags: np.ndarray,
    config: ObjectConfig,
) -> BandCalibration:
    """Aperture correction and stellar locus of one band (see :class:`BandCalibration`).

    Candidates are bright (PSF S/N above ``apcorr_min_snr``), unflagged,
    single-peak, isolated objects.  Stars are the tight locus at the low end
    of their aperture-to-PSF flux ratios (galaxies only ever add aperture
    flux): starting from the candidates' first quartile, the locus is the
    median of the candidates within 3 sigma (or ``extended_fraction``) of it,
    three times over.
    """
    model = psf_apcorr(plane.psf, config.psf_stamp) if config.apcorr == "psf" else 1.0
    none = BandCalibration(model, 1.0, 0)
    radius = config.apcorr_radius * plane.psf.fwhm
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = phot.flux / phot.flux_err
        ratio = phot.ap_flux / phot.flux
        ratio_err = np.abs(ratio) * np.hypot(
            phot.ap_flux_err / phot.ap_flux, phot.flux_err / phot.flux
        )
    cand = (
        (snr > config.apcorr_min_snr)
        & (flags == 0)
        & (found.n_peaks == 1)
        & ~phot.clipped_stamp
        & np.isfinite(ratio)
    )
    idx = np.flatnonzero(cand)
    if idx.size and len(found) > 1:
        # Isolated: no other object within the large aperture plus a PSF FWHM.
        tree = cKDTree(np.column_stack([found.x, found.y]))
        near = tree.query_ball_point(
            np.column_stack([found.x[idx], found.y[idx]]), radius + plane.psf.fwhm
        )
        idx = idx[np.array([len(v) == 1 for v in near], dtype=bool)]
    if idx.size < config.apcorr_min_stars:
        return none
    locus = float(np.percentile(ratio[idx], 25))
    for _ in range(3):
        tol = np.maximum(3.0 * ratio_err[idx], config.extended_fraction)
        stars = idx[np.abs(ratio[idx] - locus) < tol]
        if stars.size == 0:
            return none
        locus = float(np.median(ratio[stars]))
    if stars.size < config.apcorr_min_stars:
        return none
    if config.apcorr == "psf":
        return BandCalibration(model, locus, int(stars.size))
    big, _ = big_aperture(plane, found.x[stars], found.y[stars], radius)
    corr = big / phot.flux[stars]
    corr = corr[np.isfinite(corr)]
    if corr.size < config.apcorr_min_stars:
        return none
    return BandCalibration(float(np.median(corr)), locus, int(corr.size))
