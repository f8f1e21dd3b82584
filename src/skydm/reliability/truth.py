"""What a DIA source really is, by the simulator's truth.

Each DIA source of a simulated visit is matched to the visit's truth table
(objects and injected artefacts, with pixel positions) and given one class:
a real change on the sky (a transient, a variable, a moving object) or a
kind of bogus detection (a cosmic ray, a satellite trail, a ghost, the
residual of a star or a galaxy, or nothing at all: noise).  The classes are
tried in the order of :data:`CLASSES`, so that a transient on a galaxy is a
transient and a cosmic ray on a star's wing is a cosmic ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from skydm.errors import BadValueError

#: Classes a DIA source can be given, in the order they are tried.
CLASSES = (
    "transient",
    "variable",
    "mover",
    "cosmic_ray",
    "trail",
    "ghost",
    "star",
    "galaxy",
    "noise",
)

#: Classes that are real changes of the sky: the classifier's positives.
#: Moving objects are real too, but they are not what the reliability score
#: is trained to keep (Rubin sends them to the solar-system pipeline); they
#: are left out of training and of the acceptance figures, and reported apart.
REAL = ("transient", "variable")

#: Classes counted neither as real nor as bogus.
IGNORED = ("mover",)


@dataclass(frozen=True)
class MatchConfig:
    """Distances (in PSF FWHMs, or pixels where said) within which a DIA source
    belongs to a truth entry.

    Parameters
    ----------
    point_fwhm : float
        A point source (transient, variable, mover, star core) within this
        many FWHMs.
    min_point_px : float
        At least this many pixels for point sources (sharp seeing).
    cosmic_ray_px : float
        Pixels from a cosmic ray's track.
    trail_widths : float
        Trail widths (Gaussian sigmas) from a satellite trail's line.
    star_fwhm : float
        FWHMs from a star or a galaxy centre for a residual.
    min_change_snr : float
        Least signal-to-noise (PSF-optimal, on the sky noise) of the true
        flux change of a transient or variable between the template epochs
        and the visit for a DIA source on it to count as a detection of it;
        a source on a transient that has not changed detectably is whatever
        else is there (a cosmic ray, noise...).
    star_min_snr : float
        Least signal-to-noise (PSF-optimal, on the sky noise) of a star or
        galaxy that can leave a residual; fainter ones do not count.
    """

    point_fwhm: float = 0.75
    min_point_px: float = 2.0
    cosmic_ray_px: float = 3.0
    trail_widths: float = 5.0
    star_fwhm: float = 3.0
    min_change_snr: float = 3.0
    star_min_snr: float = 50.0

    def __post_init__(self) -> None:
        names = ("point_fwhm", "min_point_px", "cosmic_ray_px", "trail_widths", "star_fwhm")
        for name in (*names, "min_change_snr", "star_min_snr"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise BadValueError(f"MatchConfig.{name}", value, "a positive distance")


def _segment_distance(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """Distance of points from the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 <= 0:
        return np.hypot(x - x0, y - y0)
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / length2, 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _line_distance(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """Distance of points from the infinite line through two points."""
    length = math.hypot(x1 - x0, y1 - y0)
    return np.abs((x - x0) * (y1 - y0) - (y - y0) * (x1 - x0)) / length


def label_sources(
    sources: Table,
    truth: Table,
    wcs: WCS | None,
    fwhm: float,
    *,
    sky_sigma: float | None = None,
    reference_flux: Mapping[int, float] | None = None,
    config: MatchConfig | None = None,
) -> np.ndarray:
    """The class of each DIA source by the simulator's truth.

    Parameters
    ----------
    sources : astropy.table.Table
        DIA sources with ``ra`` and ``dec`` (degrees), or with ``x`` and
        ``y`` on the visit's pixel grid when ``wcs`` is None.
    truth : astropy.table.Table
        The visit's truth table (``SimVisit.truth``): ``kind``, ``x``, ``y``
        and for artefacts ``x0``, ``y0``, ``x1``, ``y1``, ``size``.
    wcs : astropy.wcs.WCS or None
        The WCS of the visit the truth's pixel positions refer to; None when
        the sources' ``x``, ``y`` are on that grid already.
    fwhm : float
        PSF FWHM of the visit, pixels.
    sky_sigma : float, optional
        Sky noise per pixel (ADU); when given, only stars and galaxies
        brighter than ``config.star_min_snr`` can leave residuals.
    reference_flux : mapping of int to float, optional
        True flux (ADU) of each transient and variable (by truth ``id``) in
        the template (the mean over its epochs); with ``sky_sigma``, only
        those whose flux changed by ``config.min_change_snr`` or more count.
    config : MatchConfig, optional
        Matching distances.

    Returns
    -------
    numpy.ndarray
        One class name of :data:`CLASSES` per source (``<U10``).
    """
    cfg = config or MatchConfig()
    n = len(sources)
    labels = np.full(n, "noise", dtype="U10")
    if n == 0:
        return labels
    if wcs is None:
        x, y = np.asarray(sources["x"], dtype=float), np.asarray(sources["y"], dtype=float)
    else:
        x, y = wcs.wcs_world2pix(np.asarray(sources["ra"]), np.asarray(sources["dec"]), 0)
    kind = np.asarray(truth["kind"])
    point = max(cfg.point_fwhm * fwhm, cfg.min_point_px)
    near: dict[str, np.ndarray] = {c: np.zeros(n, dtype=bool) for c in CLASSES}

    # PSF-optimal noise on the sky: sigma sqrt(4 pi s^2), s = FWHM / 2.355.
    noise = sky_sigma * math.sqrt(4 * math.pi) * fwhm / 2.3548 if sky_sigma is not None else 0.0
    flux = np.asarray(truth["flux"], dtype=float)
    changed = np.ones(len(truth), dtype=bool)
    if reference_flux is not None and sky_sigma is not None:
        ref = np.array([reference_flux.get(int(i), 0.0) for i in truth["id"]])
        changed = np.abs(flux - ref) >= cfg.min_change_snr * noise

    def points(k: str, radius: float, min_flux: float = -np.inf) -> np.ndarray:
        rows = truth[(kind == k) & (flux >= min_flux) & changed]
        if len(rows) == 0:
            return np.zeros(n, dtype=bool)
        d = np.hypot(
            x[:, None] - np.asarray(rows["x"])[None, :], y[:, None] - np.asarray(rows["y"])[None, :]
        )
        return np.asarray(np.any(d < radius, axis=1))

    near["transient"] = points("transient", point)
    near["variable"] = points("variable", point)
    for row in truth[kind == "mover"]:
        near["mover"] |= _segment_distance(x, y, row["x0"], row["y0"], row["x1"], row["y1"]) < point
    for row in truth[kind == "cosmic_ray"]:
        d = _segment_distance(x, y, row["x0"], row["y0"], row["x1"], row["y1"])
        near["cosmic_ray"] |= d < cfg.cosmic_ray_px
    for row in truth[kind == "trail"]:
        d = _line_distance(x, y, row["x0"], row["y0"], row["x1"], row["y1"])
        near["trail"] |= d < cfg.trail_widths * max(float(row["size"]), 1.0)
    for row in truth[kind == "ghost"]:
        near["ghost"] |= np.hypot(x - row["x"], y - row["y"]) < float(row["size"]) + 2 * fwhm
    min_flux = cfg.star_min_snr * noise if sky_sigma is not None else -np.inf
    near["star"] = points("star", cfg.star_fwhm * fwhm, min_flux)
    near["galaxy"] = points("galaxy", cfg.star_fwhm * fwhm, min_flux)
    done = np.zeros(n, dtype=bool)
    for cls in CLASSES[:-1]:
        hit = near[cls] & ~done
        labels[hit] = cls
        done |= hit
    return labels
