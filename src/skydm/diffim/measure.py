"""DIA source measurement: the LSST ``diaSource`` fields beyond detection.

:func:`measure_dia_sources` takes the detected source table (from
:func:`skydm.diffim.detect_dia_sources`) with the difference, science and
template images and adds one column per measured ``diaSource`` field, named
as in the LSST schema (fluxes in the difference image's counts, like the
table's other fluxes; angles, lengths and moments in the schema's sky
units).  What is measured and the rules that choose where the non-linear
fits run are in ``docs/alerts.md``; in short:

* every source: a 12-pixel aperture flux, a PSF fit's chi^2 and likelihood
  with position errors from its Fisher matrix, forced PSF fluxes on the
  science image and the template, adaptive second moments of the source
  and of the PSF, extendedness, a local detection footprint (its bounding
  box, and the mask bits under it for every ``pixelFlags_*``);
* a dipole fit (two PSFs of opposite sign) where significant pixels of both
  signs lie within ``dipole_max_separation`` FWHM of the peak;
* a trailed-source fit (Vereš et al. 2012) where the adaptive moments are
  elongated beyond the PSF's and the source is bright enough to tell.

Everything is vectorised over sources except the two fits, which run on the
few sources their rules select.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import fft as sfft
from scipy import ndimage, special

from skydm.diffim import _measure_fits, _stamps
from skydm.diffim._geometry import Geometry, sky_geometry
from skydm.diffim._mconfig import MeasureConfig
from skydm.image import Exposure
from skydm.image.mask import Mask
from skydm.image.psf import Psf

__all__ = [
    "FLUX_COLUMNS",
    "MEASURED_COLUMNS",
    "PIXEL_FLAG_BITS",
    "ForcedPhotometry",
    "MeasureConfig",
    "forced_psf_photometry",
    "measure_dia_sources",
]

#: pixelFlags_* names and the mask bits behind them ("Center" variants look
#: at the 3x3 pixels around the centroid, the others at the footprint).
PIXEL_FLAG_BITS: dict[str, int] = {
    "bad": Mask.BAD,
    "cr": Mask.CR,
    "edge": Mask.EDGE,
    "nodata": Mask.NO_DATA,
    "interpolated": Mask.INTRP,
    "saturated": Mask.SAT,
    "suspect": Mask.SUSPECT,
    "streak": Mask.STREAK,
    "injected": Mask.INJECTED,
}
#: Flags with a "...Center" twin in the schema.
_CENTRE_FLAGS = (
    "cr",
    "nodata",
    "interpolated",
    "saturated",
    "suspect",
    "streak",
    "injected",
)

#: Columns in flux units (the difference image's counts in the table, nJy in alerts).
FLUX_COLUMNS = (
    "apFlux",
    "apFluxErr",
    "scienceFlux",
    "scienceFluxErr",
    "templateFlux",
    "templateFluxErr",
    "dipoleMeanFlux",
    "dipoleMeanFluxErr",
    "dipoleFluxDiff",
    "dipoleFluxDiffErr",
    "trailFlux",
    "trailFluxErr",
)


#: Every column :func:`measure_dia_sources` writes (LSST ``diaSource`` names).
MEASURED_COLUMNS = frozenset(
    [
        "psfChi2",
        "psfLnL",
        "psfNdata",
        "psfFlux_flag",
        "psfFlux_flag_edge",
        "psfFlux_flag_noGoodPixels",
        "xErr",
        "yErr",
        "centroid_flag",
        "raErr",
        "decErr",
        "ra_dec_Cov",
        "apFlux",
        "apFluxErr",
        "apFlux_flag",
        "apFlux_flag_apertureTruncated",
        "scienceFlux",
        "scienceFluxErr",
        "templateFlux",
        "templateFluxErr",
        "forced_PsfFlux_flag",
        "forced_PsfFlux_flag_edge",
        "forced_PsfFlux_flag_noGoodPixels",
        "bboxSize",
        "pixelFlags",
        "pixelFlags_bad",
        "pixelFlags_cr",
        "pixelFlags_crCenter",
        "pixelFlags_edge",
        "pixelFlags_nodata",
        "pixelFlags_nodataCenter",
        "pixelFlags_interpolated",
        "pixelFlags_interpolatedCenter",
        "pixelFlags_saturated",
        "pixelFlags_saturatedCenter",
        "pixelFlags_suspect",
        "pixelFlags_suspectCenter",
        "pixelFlags_streak",
        "pixelFlags_streakCenter",
        "pixelFlags_injected",
        "pixelFlags_injectedCenter",
        "pixelFlags_offimage",
        "pixelFlags_injected_template",
        "pixelFlags_injected_templateCenter",
        "shape_flag",
        "shape_flag_no_pixels",
        "shape_flag_not_contained",
        "shape_flag_parent_source",
        "extendedness",
        "ixx",
        "iyy",
        "ixy",
        "ixxPSF",
        "iyyPSF",
        "ixyPSF",
        "dipoleFitAttempted",
        "isDipole",
        "dipoleNdata",
        *_measure_fits.DIPOLE_FIELDS,
        "trail_flag",
        "trail_flag_edge",
        "trailNdata",
        *_measure_fits.TRAIL_FIELDS,
    ]
)


def _positions_on(
    exposure: Exposure, reference: Exposure, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions on ``exposure`` of positions on ``reference`` (through the sky)."""
    if exposure is reference or exposure.wcs is None or reference.wcs is None or x.size == 0:
        return x, y
    ra, dec = reference.wcs.pixel_to_world_values(x, y)
    sx, sy = exposure.wcs.world_to_pixel_values(ra, dec)
    return np.asarray(sx, float), np.asarray(sy, float)


def _count_scale(exposure: Exposure, difference: Exposure, fallback: float) -> float:
    """Difference-image counts per count of ``exposure`` (from the zero points)."""
    if math.isfinite(exposure.zero_point) and math.isfinite(difference.zero_point):
        return float(10 ** (0.4 * (difference.zero_point - exposure.zero_point)))
    return fallback


@dataclass(frozen=True)
class ForcedPhotometry:
    """Forced PSF fluxes at fixed positions, to the image edge.

    Attributes
    ----------
    flux, err : numpy.ndarray
        In the image's counts; NaN only where no usable pixel lies under
        the PSF (``no_good_pixels``).
    edge : numpy.ndarray
        The PSF stamp is cut by the image edge (or EDGE / NO_DATA pixels):
        the flux is fitted on the part that is there.
    no_good_pixels : numpy.ndarray
        Too little of the PSF (below ``min_coverage``) lies on usable pixels.
    fit : _stamps.PsfFit
        The full fit (chi^2, likelihood, position covariance).
    """

    flux: np.ndarray
    err: np.ndarray
    edge: np.ndarray
    no_good_pixels: np.ndarray
    fit: _stamps.PsfFit

    @property
    def failed(self) -> np.ndarray:
        """The general failure flag: the fit is partial or impossible."""
        return self.edge | self.no_good_pixels


def forced_psf_photometry(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    *,
    psf: Psf | None = None,
    fit_radius_fwhm: float = 2.0,
    min_coverage: float = 0.05,
    full: bool = False,
    stamps: _stamps.Stamps | None = None,
) -> ForcedPhotometry:
    """PSF fluxes at many fixed positions, vectorised, measured up to the edge.

    The estimator is ``sum(P D / V) / sum(P^2 / V)`` over usable pixels, with
    the PSF tabulated at a ninth of a pixel.  Where the PSF stamp is cut by
    the image edge or by masked pixels the same estimator stays unbiased
    (the PSF is normalised over its full stamp), only noisier: the flux is
    kept and flagged ``edge`` rather than dropped.

    Parameters
    ----------
    exposure : Exposure
        The image (with a PSF unless ``psf`` is given).
    x, y : numpy.ndarray
        0-based pixel positions.
    psf : Psf, optional
        Overrides ``exposure.psf``.
    fit_radius_fwhm : float
        Radius of the chi^2 region in FWHM.
    min_coverage : float
        Smallest fraction of the PSF on usable pixels for a flux.
    full : bool
        Also the fit's chi^2, likelihood and position covariance.
    stamps : Stamps, optional
        Stamps of ``exposure`` at these positions already cut (at least as
        large as the PSF's), to reuse.
    """
    psf = psf or exposure.require_psf("forced PSF photometry")
    half = min(psf.default_size(), 31) // 2
    x, y = np.asarray(x, float), np.asarray(y, float)
    if stamps is None or stamps.half < half:
        stamps = _stamps.gather(exposure, x, y, half)
    fit = _stamps.psf_fit(
        stamps.sub(half),
        _stamps.psf_table(psf, half),
        fit_radius=fit_radius_fwhm * psf.fwhm,
        full=full,
    )
    nogood = ~(fit.coverage >= min_coverage) | ~np.isfinite(fit.flux)
    flux = np.where(nogood, np.nan, fit.flux)
    err = np.where(nogood, np.nan, fit.err)
    return ForcedPhotometry(flux, err, fit.edge | nogood, nogood, fit)


def _local_significance(stamps: _stamps.Stamps, psf: Psf) -> tuple[np.ndarray, np.ndarray]:
    """Matched-filter significance and flux maps on each stamp (0 where undefined)."""
    size = min(psf.default_size(), 2 * stamps.half + 1)
    kern = psf.kernel(size)
    w = np.where(stamps.good, 1.0 / stamps.var, 0.0)
    # Circular correlation on a grid just large enough that nothing wraps
    # into the stamp (stamp + half a kernel), by real FFTs.
    side = 2 * stamps.half + 1
    n = side + size // 2
    h = size // 2
    kpad = np.zeros((n, n))
    kpad[:size, :size] = kern[::-1, ::-1]
    kpad = np.roll(kpad, (-h, -h), axis=(0, 1))
    kspec = sfft.rfft2(kpad)
    k2spec = sfft.rfft2(kpad * kpad)
    num = sfft.irfft2(sfft.rfft2(stamps.data * w, s=(n, n)) * kspec, s=(n, n))[:, :side, :side]
    den = sfft.irfft2(sfft.rfft2(w, s=(n, n)) * k2spec, s=(n, n))[:, :side, :side]
    ok = den > 1e-12 * np.max(den, initial=0.0)
    z = np.where(ok, num / np.sqrt(np.where(ok, den, 1.0)), 0.0)
    flux = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
    return z, flux


def measure_dia_sources(
    sources: Table,
    difference: Exposure,
    *,
    science: Exposure | None = None,
    template: Exposure | None = None,
    science_psf: Psf | None = None,
    template_psf: Psf | None = None,
    config: MeasureConfig | None = None,
) -> Table:
    """Add the measured LSST ``diaSource`` columns to a DIA source table.

    Parameters
    ----------
    sources : astropy.table.Table
        Detected sources: ``x``, ``y`` (0-based pixels on the difference),
        and optionally ``snr``/``psf_flux`` (their sign), ``flag_dipole``.
    difference : Exposure
        The difference image with its PSF (and WCS for the sky units).
    science : Exposure, optional
        The science image, for ``scienceFlux`` and its mask bits.
    template : Exposure, optional
        The template (on any grid with a WCS, or on the difference's grid),
        for ``templateFlux`` and ``pixelFlags_injected_template``.
    science_psf, template_psf : Psf, optional
        The images' PSFs where the Exposures carry none (a
        :class:`~skydm.diffim.DiffimResult` has both, measured or given).
    config : MeasureConfig, optional
        The tunables.

    Returns
    -------
    astropy.table.Table
        A copy of ``sources`` with the measured columns (LSST names) and
        ``meta["measured"] = True``.
    """
    cfg = config or MeasureConfig()
    psf = difference.require_psf("DIA source measurement")
    out = sources.copy(copy_data=False)
    n = len(out)
    x = np.asarray(out["x"], float) if n else np.zeros(0)
    y = np.asarray(out["y"], float) if n else np.zeros(0)
    fwhm = float(psf.fwhm)
    sigma_psf = fwhm / (2 * math.sqrt(2 * math.log(2)))
    geo = sky_geometry(difference, x, y)
    cols: dict[str, np.ndarray] = {}

    # PSF fit on the difference: chi^2, likelihood, position errors.
    # One set of stamps of the difference serves the PSF fit, the aperture
    # and the footprint (cutting stamps is a good part of the cost).
    half_ap = math.ceil(cfg.aperture_radius) + 1
    half = int(min(25, max(5, math.ceil(cfg.footprint_half_fwhm * fwhm))))
    big = _stamps.gather(difference, x, y, max(half_ap, half, min(psf.default_size(), 31) // 2))
    forced = forced_psf_photometry(
        difference, x, y, psf=psf, fit_radius_fwhm=cfg.psf_fit_radius, full=True, stamps=big
    )
    fit = forced.fit
    if "psf_flux" in out.colnames:
        sign = np.where(np.asarray(out["psf_flux"], float) < 0, -1.0, 1.0)
    else:
        sign = np.where(np.nan_to_num(forced.flux) < 0, -1.0, 1.0)
    cols["psfChi2"], cols["psfLnL"] = fit.chi2, fit.lnl
    cols["psfNdata"] = fit.ndata.astype(np.int32)
    cols["psfFlux_flag"] = forced.failed
    cols["psfFlux_flag_edge"] = forced.edge
    cols["psfFlux_flag_noGoodPixels"] = forced.no_good_pixels
    snr = forced.flux / forced.err
    if "snr" in out.colnames:
        snr = np.where(np.isfinite(np.asarray(out["snr"], float)), out["snr"], snr)
    x_err = np.sqrt(fit.pos_cov[:, 0, 0])
    y_err = np.sqrt(fit.pos_cov[:, 1, 1])
    cols["xErr"], cols["yErr"] = x_err, y_err
    cols["centroid_flag"] = ~(np.isfinite(x_err) & np.isfinite(y_err)) | forced.edge
    if geo.jac is not None:
        sky = geo.sky_cov(fit.pos_cov)
        cols["raErr"], cols["decErr"] = np.sqrt(sky[:, 0, 0]), np.sqrt(sky[:, 1, 1])
        cols["ra_dec_Cov"] = sky[:, 0, 1]

    # Aperture flux on the difference.
    ap = _stamps.aperture(big.sub(half_ap), cfg.aperture_radius)
    cols["apFlux"], cols["apFluxErr"] = ap.flux, ap.err
    cols["apFlux_flag"] = ap.truncated | ap.masked
    cols["apFlux_flag_apertureTruncated"] = ap.truncated

    # Forced photometry on the science image and the template, both
    # expressed in difference-image counts.
    nan = np.full(n, np.nan)
    cols["scienceFlux"] = cols["scienceFluxErr"] = nan
    cols["templateFlux"] = cols["templateFluxErr"] = nan
    science_psf = science_psf or (science.psf if science is not None else None)
    template_psf = template_psf or (template.psf if template is not None else None)
    if science is not None and science_psf is not None:
        sx, sy = _positions_on(science, difference, x, y)
        fs = forced_psf_photometry(
            science, sx, sy, psf=science_psf, fit_radius_fwhm=cfg.psf_fit_radius
        )
        k = _count_scale(science, difference, 1.0)
        cols["scienceFlux"], cols["scienceFluxErr"] = fs.flux * k, fs.err * k
        cols["forced_PsfFlux_flag"] = fs.failed
        cols["forced_PsfFlux_flag_edge"] = fs.edge
        cols["forced_PsfFlux_flag_noGoodPixels"] = fs.no_good_pixels
    if template is not None and template_psf is not None:
        tx, ty = _positions_on(template, difference, x, y)
        ft = forced_psf_photometry(
            template, tx, ty, psf=template_psf, fit_radius_fwhm=cfg.psf_fit_radius
        )
        k = _count_scale(template, difference, float(out.meta.get("flux_ratio", math.nan)))
        cols["templateFlux"], cols["templateFluxErr"] = ft.flux * k, ft.err * k

    # Local footprint, moments, pixel flags.
    st = big.sub(half)
    z, fmap = _local_significance(st, psf)
    thr = cfg.footprint_threshold or float(out.meta.get("threshold", 5.0))
    foot, bbox, contained = _footprints(sign[:, None, None] * z >= thr, half)
    cols["bboxSize"] = bbox
    cols.update(_pixel_flags(difference, science, template, x, y, half, foot))
    cols["pixelFlags_edge"] = cols["pixelFlags_edge"] | forced.edge
    cols.update(_shapes(st, sign, foot, contained, psf, sigma_psf, snr, geo, cfg))

    # Dipole and trail fits on the sources their rules select.
    cols.update(_measure_fits.dipoles(st, z, fmap, sign, psf, fwhm, geo, cfg))
    cols.update(_measure_fits.trails(difference, x, y, sign, snr, cols, sigma_psf, half, geo, cfg))
    for name, values in cols.items():
        out[name] = values
    out.meta["measured"] = True
    return out


def _footprints(above: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected region above threshold holding each stamp's centre.

    Returns the footprints (the 3x3 centre where the centre is not above
    threshold), their bounding-box sides, and whether the centre was above.
    """
    n = above.shape[0]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a stamp, never across stamps
    labels, _ = ndimage.label(above, structure=structure)
    centre = labels[:, half, half]
    contained = centre > 0
    foot = (labels == centre[:, None, None]) & contained[:, None, None]
    foot[~contained, half - 1 : half + 2, half - 1 : half + 2] = True
    rows = np.any(foot, axis=2)
    cols = np.any(foot, axis=1)
    idx = np.arange(2 * half + 1)

    def extent(m: np.ndarray) -> np.ndarray:
        lo = np.where(m, idx, 2 * half + 1).min(axis=1)
        hi = np.where(m, idx, -1).max(axis=1)
        return hi - lo + 1

    bbox = np.maximum(extent(rows), extent(cols)).astype(np.int32) if n else np.zeros(0, np.int32)
    return foot, bbox, contained


def _pixel_flags(
    difference: Exposure,
    science: Exposure | None,
    template: Exposure | None,
    x: np.ndarray,
    y: np.ndarray,
    half: int,
    foot: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every ``pixelFlags_*`` from the mask bits under each footprint and centre."""
    n = x.size
    bits = np.zeros(n, dtype=np.uint32)
    centre = np.zeros(n, dtype=np.uint32)
    c = slice(half - 1, half + 2)
    for exp in (difference, science):
        if exp is None:
            continue
        ex, ey = _positions_on(exp, difference, x, y)
        # Only bits on the image count here (being cut by the edge is
        # pixelFlags_edge's business, set from the PSF fit).
        m = _stamps.gather_mask(exp, ex, ey, half)
        bits |= np.bitwise_or.reduce(np.where(foot, m, np.uint32(0)), axis=(1, 2))
        centre |= np.bitwise_or.reduce(m[:, c, c], axis=(1, 2))
    out: dict[str, np.ndarray] = {"pixelFlags": np.zeros(n, dtype=bool)}
    for name, bit in PIXEL_FLAG_BITS.items():
        out[f"pixelFlags_{name}"] = (bits & np.uint32(bit)) != 0
        if name in _CENTRE_FLAGS:
            out[f"pixelFlags_{name}Center"] = (centre & np.uint32(bit)) != 0
    out["pixelFlags_crCenter"] = (centre & np.uint32(Mask.CR)) != 0
    ny, nx = difference.shape
    off = ~((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
    out["pixelFlags_offimage"] = off
    out["pixelFlags_edge"] = out["pixelFlags_edge"] | out["pixelFlags_nodata"] | off
    inj = np.zeros(n, dtype=np.uint32)
    inj_c = np.zeros(n, dtype=np.uint32)
    if template is not None:
        tx, ty = _positions_on(template, difference, x, y)
        m = _stamps.gather_mask(template, tx, ty, half)
        inj = np.bitwise_or.reduce(np.where(foot, m, np.uint32(0)), axis=(1, 2))
        inj_c = np.bitwise_or.reduce(m[:, c, c], axis=(1, 2))
    out["pixelFlags_injected_template"] = (inj & np.uint32(Mask.INJECTED)) != 0
    out["pixelFlags_injected_templateCenter"] = (inj_c & np.uint32(Mask.INJECTED)) != 0
    return out


def _shapes(
    st: _stamps.Stamps,
    sign: np.ndarray,
    foot: np.ndarray,
    contained: np.ndarray,
    psf: Psf,
    sigma_psf: float,
    snr: np.ndarray,
    geo: Geometry,
    cfg: MeasureConfig,
) -> dict[str, np.ndarray]:
    """Adaptive moments of the sources and the PSF, extendedness, shape flags."""
    n = st.data.shape[0]
    u, v = st.offsets()
    mom = _stamps.adaptive_moments(sign[:, None, None] * st.data, st.good, u, v, sigma_psf**2)
    size = 2 * st.half + 1
    kern = psf.kernel(size)[None]
    off = np.arange(-st.half, st.half + 1, dtype=float)
    pu = np.broadcast_to(off[None, None, :], kern.shape)
    pv = np.broadcast_to(off[None, :, None], kern.shape)
    pmom = _stamps.adaptive_moments(kern, np.ones(kern.shape, bool), pu, pv, sigma_psf**2)
    no_pixels = ~np.any(st.good & foot, axis=(1, 2))
    out: dict[str, np.ndarray] = {
        "shape_flag": ~mom.ok | no_pixels | ~contained,
        "shape_flag_no_pixels": no_pixels,
        "shape_flag_not_contained": ~contained,
        # No deblending in difference imaging: no source is a parent.
        "shape_flag_parent_source": np.zeros(n, dtype=bool),
    }
    ratio = mom.trace / float(pmom.trace[0])
    noise = cfg.extendedness_size_noise * ratio / np.maximum(np.abs(snr), 1e-3)
    ext = 0.5 * (1 + special.erf((ratio - 1 - cfg.extendedness_margin) / (math.sqrt(2) * noise)))
    out["extendedness"] = np.where(mom.ok, ext, np.nan)
    out["_mxx"], out["_myy"], out["_mxy"] = mom.xx, mom.yy, mom.xy
    # The PSF's Gaussian-equivalent variance as the pixels see it (the
    # pixel's own 1/12 included): what the trail model convolves with.
    out["_psf_var"] = np.full(n, 0.5 * float(pmom.trace[0]))
    if geo.jac is not None:
        m = np.empty((n, 2, 2))
        m[:, 0, 0], m[:, 1, 1] = mom.xx, mom.yy
        m[:, 0, 1] = m[:, 1, 0] = mom.xy
        sky = geo.sky_cov(m) * 3600.0**2
        out["ixx"], out["iyy"], out["ixy"] = sky[:, 0, 0], sky[:, 1, 1], sky[:, 0, 1]
        p = np.zeros((n, 2, 2))
        p[:, 0, 0], p[:, 1, 1] = pmom.xx[0], pmom.yy[0]
        p[:, 0, 1] = p[:, 1, 0] = pmom.xy[0]
        psky = geo.sky_cov(p) * 3600.0**2
        out["ixxPSF"], out["iyyPSF"], out["ixyPSF"] = psky[:, 0, 0], psky[:, 1, 1], psky[:, 0, 1]
    return out
