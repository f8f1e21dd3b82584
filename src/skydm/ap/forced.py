"""Image geometry for association, and forced photometry at DIA object positions.

Forced photometry measures every known DIA object on the image, detected or
not, with the PSF at the object's mean position: on the difference image
(``psfFlux``, the flux change against the template) and, when given, on the
science image (``scienceFlux``).  It works to the image edge: a PSF cut by
the edge is fitted on its remaining pixels and flagged, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skydm.ap.association import make_id
from skydm.diffim.measure import forced_psf_photometry
from skydm.image import Exposure


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
    # A position on any part of a pixel is on the image (pixel centres are
    # integers, pixels extend half a pixel either side).
    inside = np.isfinite(x) & np.isfinite(y)
    inside &= (x >= -0.5) & (y >= -0.5) & (x < nx - 0.5) & (y < ny - 0.5)
    return x, y, inside


def psf_fluxes(exposure: Exposure, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSF-weighted fluxes and errors at many fixed positions, vectorised.

    The estimator is that of :func:`skydm.image.psf_photometry`
    (``sum(P I / V) / sum(P^2 / V)``, masked pixels weighted 0), computed by
    :func:`skydm.diffim.measure.forced_psf_photometry`: positions whose PSF
    stamp is cut by the image edge are measured on the part that is there;
    only positions with no usable pixel under the PSF get NaN.
    """
    res = forced_psf_photometry(exposure, x, y)
    return res.flux, res.err


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
        The difference image, with its PSF, WCS and zero point (fluxes are
        in nJy); its ``info`` gives visit, detector, band and time.
    science : Exposure, optional
        The science image on the same pixel grid, for ``scienceFlux``.
    time_processed : float
        MJD at which the measurements are made.

    Returns
    -------
    list of dict
        One forced source per object whose position is on the image, also
        where the PSF is cut by the image edge or masked pixels: the flux is
        then fitted on the pixels that are there and ``psfFlux_flag_edge``
        is set (``psfFlux_flag_noGoodPixels`` with a null flux where no
        usable pixel remains).  Ids are made from the visit and detector.
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
    # LSST fluxes are in nJy: each image's counts are scaled by its zero point.
    scale = difference.nanojansky_per_count("forced photometry in nJy")
    diff = forced_psf_photometry(difference, x[idx], y[idx])
    flux, err = diff.flux * scale, diff.err * scale
    sedge = np.zeros(idx.size, dtype=bool)
    if science is not None and science.psf is not None:
        sci = forced_psf_photometry(science, x[idx], y[idx])
        sscale = science.nanojansky_per_count("science-image forced photometry in nJy")
        sflux, serr, sedge = sci.flux * sscale, sci.err * sscale, sci.failed
    else:
        sflux = serr = np.full(idx.size, np.nan)
    out: list[dict[str, Any]] = []
    for n, i in enumerate(idx):
        # Kept even where the PSF is cut by the edge (flagged) or has no
        # usable pixel at all (null flux, flagged): never silently dropped.
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
                "psfFlux_flag": bool(diff.failed[n]),
                "psfFlux_flag_edge": bool(diff.edge[n]),
                "psfFlux_flag_noGoodPixels": bool(diff.no_good_pixels[n]),
                "scienceFlux": float(sflux[n]),
                "scienceFluxErr": float(serr[n]),
                "forced_PsfFlux_flag": bool(sedge[n]),
                "timeProcessedMjdTai": float(time_processed),
            }
        )
    return out
