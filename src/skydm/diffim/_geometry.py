"""Local sky geometry of sources: the WCS Jacobian at each position."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from skydm.image import Exposure


@dataclass(frozen=True)
class Geometry:
    """Per-source local sky geometry: the WCS Jacobian in degrees per pixel.

    Attributes
    ----------
    jac : numpy.ndarray or None
        ``(n, 2, 2)``: rows (east, north), columns (x, y).
    """

    jac: np.ndarray | None

    def sky_cov(self, cov: np.ndarray) -> np.ndarray:
        """(n, 2, 2) covariance in degrees^2 (RA*cos(Dec), Dec) of a pixel covariance."""
        assert self.jac is not None
        return np.einsum("nij,njk,nlk->nil", self.jac, cov, self.jac)

    def bearing(self, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
        """Bearing (degrees east of north, in [0, 360)) of pixel vectors."""
        assert self.jac is not None
        east = self.jac[:, 0, 0] * vx + self.jac[:, 0, 1] * vy
        north = self.jac[:, 1, 0] * vx + self.jac[:, 1, 1] * vy
        return np.degrees(np.arctan2(east, north)) % 360.0

    def arcsec(self, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
        """Angular length (arcsec) of pixel vectors."""
        assert self.jac is not None
        east = self.jac[:, 0, 0] * vx + self.jac[:, 0, 1] * vy
        north = self.jac[:, 1, 0] * vx + self.jac[:, 1, 1] * vy
        return 3600.0 * np.hypot(east, north)


def sky_geometry(exposure: Exposure, x: np.ndarray, y: np.ndarray) -> Geometry:
    """The WCS Jacobian at each position (``jac`` None without a WCS)."""
    if exposure.wcs is None:
        return Geometry(None)
    if x.size == 0:
        return Geometry(np.zeros((0, 2, 2)))
    w = exposure.wcs
    ra0, dec0 = (np.asarray(a, float) for a in w.pixel_to_world_values(x, y))
    ra1, dec1 = (np.asarray(a, float) for a in w.pixel_to_world_values(x + 1, y))
    ra2, dec2 = (np.asarray(a, float) for a in w.pixel_to_world_values(x, y + 1))
    cos = np.cos(np.radians(dec0))
    jac = np.empty((x.size, 2, 2))
    jac[:, 0, 0] = ((ra1 - ra0 + 180.0) % 360.0 - 180.0) * cos
    jac[:, 1, 0] = dec1 - dec0
    jac[:, 0, 1] = ((ra2 - ra0 + 180.0) % 360.0 - 180.0) * cos
    jac[:, 1, 1] = dec2 - dec0
    return Geometry(jac)
