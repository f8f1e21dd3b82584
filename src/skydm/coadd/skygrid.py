"""The sky grid: cells (tract/patch-like) that coadds are built on.

The sky is cut into rings of declination ``cell_size`` degrees high; each
ring is cut into as many cells in right ascension as it takes to keep cells
about ``cell_size`` wide at the ring's widest edge.  The grid is anchored so
that one cell is centred on ``(ra0, dec0)``.  Every cell has its own gnomonic
(TAN) projection centred on the cell, north up and east left, with a pixel
grid that covers the cell plus an overlap ``margin`` on every side so that
neighbouring coadds overlap (as Rubin's patches do).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from skydm.errors import BadValueError

_CELL_ID = re.compile(r"^c(\d+)_(\d+)$")


def tan_wcs(ra: float, dec: float, shape: tuple[int, int], pixel_scale: float) -> WCS:
    """A TAN WCS centred on ``(ra, dec)`` for an image of ``shape`` (rows, columns).

    Parameters
    ----------
    ra, dec : float
        Centre in degrees.
    shape : tuple of int
        (rows, columns) of the pixel grid.
    pixel_scale : float
        Arcseconds per pixel.
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra % 360.0, dec]
    # FITS pixels are 1-based: the centre of an n-pixel axis is at (n + 1) / 2.
    wcs.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    scale = pixel_scale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


@dataclass(frozen=True)
class SkyCell:
    """One cell of the sky grid: an id, a centre, and a pixel grid with a TAN WCS.

    Attributes
    ----------
    id : str
        ``"c<i>_<j>"`` with ``i`` the index in right ascension within ring ``j``.
    ra, dec : float
        Centre in degrees.
    shape : tuple of int
        (rows, columns) of the cell's pixel grid, overlap margin included.
    pixel_scale : float
        Arcseconds per pixel.
    margin : int
        Overlap margin in pixels on each side.
    """

    id: str
    ra: float
    dec: float
    shape: tuple[int, int]
    pixel_scale: float
    margin: int = 0

    @property
    def wcs(self) -> WCS:
        """The cell's TAN WCS (a fresh copy each time)."""
        return tan_wcs(self.ra, self.dec, self.shape, self.pixel_scale)

    @classmethod
    def centred(
        cls, ra: float, dec: float, shape: tuple[int, int], pixel_scale: float, *, id: str = "cell"
    ) -> SkyCell:
        """An ad-hoc cell of ``shape`` centred on ``(ra, dec)`` (not part of a grid)."""
        if shape[0] < 1 or shape[1] < 1:
            raise BadValueError("shape", shape, "positive (rows, columns)")
        if not pixel_scale > 0:
            raise BadValueError("pixel_scale", pixel_scale, "a positive number of arcsec/pixel")
        return cls(id, float(ra) % 360.0, float(dec), (int(shape[0]), int(shape[1])), pixel_scale)

    def pixels_of(self, wcs: WCS, shape: tuple[int, int], *, n_edge: int = 16) -> np.ndarray:
        """Points along the border of an image (``wcs``, ``shape``) in this cell's pixels.

        Returns an ``(n, 2)`` array of (x, y), NaN where the point is on the far
        side of the projection.
        """
        ny, nx = shape
        t = np.linspace(0.0, 1.0, n_edge)
        xs = np.concatenate(
            [t * (nx - 1), np.full(n_edge, nx - 1.0), t * (nx - 1), np.zeros(n_edge)]
        )
        ys = np.concatenate(
            [np.zeros(n_edge), t * (ny - 1), np.full(n_edge, ny - 1.0), t * (ny - 1)]
        )
        # Extend by half a pixel so that the border is the pixels' outer edge.
        xs = np.clip(xs, 0, nx - 1) + np.where(xs <= 0, -0.5, np.where(xs >= nx - 1, 0.5, 0.0))
        ys = np.clip(ys, 0, ny - 1) + np.where(ys <= 0, -0.5, np.where(ys >= ny - 1, 0.5, 0.0))
        ra, dec = wcs.pixel_to_world_values(xs, ys)
        # Points more than 90 degrees from the cell's centre do not project.
        c = _unit(self.ra, self.dec)
        far = (_unit(ra, dec) @ c) <= 0.05
        x, y = self.wcs.world_to_pixel_values(ra, dec)
        out = np.column_stack([x, y]).astype(np.float64)
        out[far] = np.nan
        return out

    def overlap_bbox(self, wcs: WCS, shape: tuple[int, int]) -> tuple[slice, slice] | None:
        """The (rows, columns) slices of this cell that an image covers, or ``None``."""
        pts = self.pixels_of(wcs, shape)
        if not np.all(np.isfinite(pts)):
            return None
        x0, y0 = np.floor(pts.min(axis=0) - 1).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) + 1).astype(int)
        ny, nx = self.shape
        x0, y0 = max(int(x0), 0), max(int(y0), 0)
        x1, y1 = min(int(x1) + 1, nx), min(int(y1) + 1, ny)
        if x1 <= x0 or y1 <= y0:
            return None
        return slice(y0, y1), slice(x0, x1)


def _unit(ra: np.ndarray | float, dec: np.ndarray | float) -> np.ndarray:
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    return np.stack(
        [np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)], axis=-1
    )


class SkyGrid:
    """A whole-sky grid of :class:`SkyCell` in rings of declination.

    Parameters
    ----------
    ra0, dec0 : float
        Degrees; one cell is centred here (the grid's anchor).
    cell_size_deg : float
        Side of a cell in degrees (without margin).
    pixel_scale : float
        Arcseconds per pixel of every cell.
    margin : int
        Overlap margin in pixels added on each side of a cell.
    """

    def __init__(
        self,
        ra0: float = 0.0,
        dec0: float = 0.0,
        cell_size_deg: float = 0.1,
        pixel_scale: float = 0.2,
        *,
        margin: int = 50,
    ) -> None:
        if not (0 < cell_size_deg <= 10):
            raise BadValueError("cell_size_deg", cell_size_deg, "a cell side in (0, 10] degrees")
        if not (pixel_scale > 0 and math.isfinite(pixel_scale)):
            raise BadValueError("pixel_scale", pixel_scale, "a positive number of arcsec/pixel")
        if not -90 <= dec0 <= 90:
            raise BadValueError("dec0", dec0, "a declination in [-90, 90] degrees")
        if margin < 0:
            raise BadValueError("margin", margin, "a non-negative number of pixels")
        self.ra0, self.dec0 = float(ra0) % 360.0, float(dec0)
        self.cell_size = float(cell_size_deg)
        self.pixel_scale = float(pixel_scale)
        self.margin = int(margin)
        # Ring j covers dec in [_dec_base + j*size, _dec_base + (j+1)*size); the
        # base is chosen so that dec0 is the centre of its ring and j >= 0.
        below = math.ceil((self.dec0 + 90.0) / self.cell_size - 0.5)
        self._dec_base = self.dec0 - self.cell_size / 2 - below * self.cell_size
        self.n_rings = math.ceil((90.0 - self._dec_base) / self.cell_size)
        side = math.ceil(self.cell_size * 3600.0 / self.pixel_scale) + 2 * self.margin
        self.cell_shape = (side, side)

    def _ring_dec(self, j: int) -> float:
        return self._dec_base + (j + 0.5) * self.cell_size

    def ring_of(self, dec: float) -> int:
        """Index of the ring holding declination ``dec`` (clipped to the grid's rings)."""
        j = math.floor((dec - self._dec_base) / self.cell_size)
        return min(max(j, 0), self.n_rings - 1)

    def centre(self, i: int, j: int) -> tuple[float, float]:
        """Centre (ra, dec) of cell ``(i, j)``, in degrees, without building the cell.

        As :meth:`cell` gives it (for code that tests many candidate cells).
        """
        n = self.n_cells(j)
        return (self.ra0 + i * 360.0 / n) % 360.0, min(max(self._ring_dec(j), -90.0), 90.0)

    def n_cells(self, j: int) -> int:
        """Number of cells in ring ``j``."""
        lo = self._dec_base + j * self.cell_size
        hi = lo + self.cell_size
        widest = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
        return max(1, math.ceil(360.0 * math.cos(math.radians(min(widest, 90.0))) / self.cell_size))

    def cell(self, i: int, j: int) -> SkyCell:
        """The cell with ring index ``j`` and index ``i`` in right ascension."""
        if not 0 <= j < self.n_rings:
            raise BadValueError("j", j, f"a ring index in [0, {self.n_rings - 1}]")
        n = self.n_cells(j)
        if not 0 <= i < n:
            raise BadValueError("i", i, f"a cell index in [0, {n - 1}] for ring {j}")
        dec = float(np.clip(self._ring_dec(j), -90.0, 90.0))
        ra = (self.ra0 + i * 360.0 / n) % 360.0
        return SkyCell(f"c{i}_{j}", ra, dec, self.cell_shape, self.pixel_scale, self.margin)

    def cell_by_id(self, cell_id: str) -> SkyCell:
        """The cell named ``cell_id`` (``"c<i>_<j>"``)."""
        m = _CELL_ID.match(cell_id)
        if not m:
            raise BadValueError("skycell", cell_id, 'a cell id like "c12_34"')
        return self.cell(int(m.group(1)), int(m.group(2)))

    def cell_containing(self, ra: float, dec: float) -> SkyCell:
        """The cell whose inner (margin-free) area contains ``(ra, dec)``."""
        j = math.floor((dec - self._dec_base) / self.cell_size)
        j = min(max(j, 0), self.n_rings - 1)
        n = self.n_cells(j)
        step = 360.0 / n
        i = math.floor(((ra - self.ra0) % 360.0) / step + 0.5) % n
        return self.cell(i, j)

    def cells_overlapping(self, wcs: WCS, shape: tuple[int, int]) -> list[SkyCell]:
        """Every cell whose pixel grid an image (``wcs``, ``shape``) overlaps.

        Returns the cells sorted by id; empty when the image touches none.
        """
        ny, nx = shape
        t = np.linspace(0.0, 1.0, 16)
        xs = np.concatenate([t * nx, np.full(16, nx), t * nx, np.zeros(16)]) - 0.5
        ys = np.concatenate([np.zeros(16), t * ny, np.full(16, ny), t * ny]) - 0.5
        ra, dec = wcs.pixel_to_world_values(xs, ys)
        cra, _ = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
        # A cell's grid reaches out by half a side plus the margin (in degrees).
        reach = self.cell_size / 2 + self.margin * self.pixel_scale / 3600.0
        dlo, dhi = float(np.min(dec)) - reach, float(np.max(dec)) + reach
        j_lo = max(math.floor((dlo - self._dec_base) / self.cell_size), 0)
        j_hi = min(math.floor((dhi - self._dec_base) / self.cell_size), self.n_rings - 1)
        found: list[SkyCell] = []
        for j in range(j_lo, j_hi + 1):
            n = self.n_cells(j)
            step = 360.0 / n
            ring_dec = self._ring_dec(j)
            candidates: Iterable[int]
            if abs(ring_dec) > 89.0 or n <= 4:
                candidates = range(n)
            else:
                # Half-width of the image in RA at this ring, padded by the cell's reach.
                dra = np.abs(((ra - cra + 180.0) % 360.0) - 180.0).max()
                pad = (reach * 1.5) / max(
                    math.cos(math.radians(min(abs(ring_dec) + reach, 89.9))), 1e-3
                )
                k0 = ((float(cra) - self.ra0) % 360.0) / step
                half = (dra + pad) / step
                candidates = (k % n for k in range(math.floor(k0 - half), math.ceil(k0 + half) + 1))
            for i in sorted(set(candidates)):
                cell = self.cell(i, j)
                if cell.overlap_bbox(wcs, shape) is not None:
                    found.append(cell)
        return sorted(found, key=lambda c: c.id)
