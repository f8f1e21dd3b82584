"""Image geometry for association, and forced photometry at DIA object positions.

Forced photometry measures every known DIA object on the image, detected or
not, with the PSF at the object's mean position: on the difference image
(``psfFlux``, the flux change against the template) and, when given, on the
science image (``scienceFlux``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skydm.ap.association import make_id
from skydm.image import Exposure, psf_photometry


def visit_region(
    exposure: Exposure, *, margin_arcsec: float = 5.0
) -> tuple[list[tuple[float, float]], tuple[float, float]]:
    """RA ranges and Dec range (degrees) that cover an exposure plus a margin.

    RA ranges are split at RA = 0 when the image straddles it; near a pole the
    RA range is the whole circle.
    """
    wcs = exposure.require_wcs("DIA object association")
    ny, nx = exposure.shape
    xs = np.array([0, nx / 2, nx - 1, 0, nx - 1, 0, nx / 2, nx - 1]) - 0.0
    ys = np.array([0, 0, 0, ny / 2, ny / 2, ny - 1, ny - 1, ny - 1]) - 0.0
    ra, dec = wcs.pixel_to_world_values(xs, ys)
    ra, dec = np.asarray(ra) % 360.0, np.asarray(dec)
    m = margin_arcsec / 3600.0
    dec_lo, dec_hi = float(dec.min()) - m, float(dec.max()) + m
    if dec_hi >= 89.0 or dec_lo <= -89.0:
        return [(0.0, 360.0)], (max(dec_lo, -90.0), min(dec_hi, 90.0))
    cos = max(np.cos(np.radians(max(abs(dec_lo), abs(dec_hi)))), 1e-3)
    mra = m / cos
    # Unwrap around the centre so that an image across RA = 0 is one interval.
    centre = float(ra[0])
    rel = (ra - centre + 180.0) % 360.0 - 180.0
    lo, hi = centre + rel.min() - mra, centre + rel.max() + mra
    if hi - lo >= 360.0:
        return [(0.0, 360.0)], (dec_lo, dec_hi)
    lo, hi = lo % 360.0, hi % 360.0
    if lo <= hi:
        return [(lo, hi)], (dec_lo, dec_hi)
    return [(lo, 360.0), (0.0, hi)], (dec_lo, dec_hi)


def on_image(exposure: Exposure, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel positions of sky positions and whether each falls on the image."""
    wcs = exposure.require_wcs("forced photometry")
    x, y = wcs.world_to_pixel_values(np.asarray(ra, float), np.asarray(dec, float))
    x, y = np.asarray(x, float), np.asarray(y, float)
    ny, nx = exposure.shape
    inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (y >= 0) & (x <= nx - 1) & (y <= ny - 1)
    return x, y, inside


def forced_photometry(
    objects: Sequence[dict[str, Any]],
    difference: Exposure,
    *,
    science: Exposure | None = None,
    time_processed: float,
) -> list[dict[str, Any]]:
    """Forced sources (latest-schema field names) of every object on the image.

    Parameters
    ----------
    objects : sequence of dict
        DIA object rows (``diaObjectId``, ``ra``, ``dec``).
    difference : Exposure
        The difference image, with its PSF and WCS; its ``info`` gives visit,
        detector, band and time.
    science : Exposure, optional
        The science image on the same pixel grid, for ``scienceFlux``.
    time_processed : float
        MJD at which the measurements are made.

    Returns
    -------
    list of dict
        One forced source per object whose position is on the image and whose
        PSF footprint has usable pixels; ids are made from the visit,
        detector and the object's position in ``objects``.
    """
    if not objects:
        return []
    info = difference.info
    ra = np.array([o["ra"] for o in objects], float)
    dec = np.array([o["dec"] for o in objects], float)
    x, y, inside = on_image(difference, ra, dec)
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return []
    flux, err = psf_photometry(difference, x[idx], y[idx])
    if science is not None and science.psf is not None:
        sflux, serr = psf_photometry(science, x[idx], y[idx])
    else:
        sflux = serr = np.full(idx.size, np.nan)
    out: list[dict[str, Any]] = []
    for n, i in enumerate(idx):
        if not np.isfinite(flux[n]):
            continue  # no usable pixels under the PSF (edge or masked)
        obj = objects[int(i)]
        out.append(
            {
                "diaForcedSourceId": make_id(int(info.visit), int(info.detector), len(out)),
                "diaObjectId": int(obj["diaObjectId"]),
                "visit": int(info.visit),
                "detector": int(info.detector),
                "band": info.band,
                "midpointMjdTai": float(info.mjd),
                "ra": float(ra[i]),
                "dec": float(dec[i]),
                "psfFlux": float(flux[n]),
                "psfFluxErr": float(err[n]),
                "scienceFlux": float(sflux[n]),
                "scienceFluxErr": float(serr[n]),
                "timeProcessedMjdTai": float(time_processed),
            }
        )
    return out
