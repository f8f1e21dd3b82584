"""Sky footprints of visit images, for deciding which sky cells a unit touches.

The graph must know which sky cells a detector-visit overlaps before its
calexp exists (a ``warp`` unit per overlap, a ``coadd`` unit per cell), so
footprints come from the raws' WCS.  Reading a header per raw on every graph
build would dominate large graphs, so each raw's border and centre on the
sky, and the cells it overlaps on a given grid, are cached in
``<repo>/pipeline/footprints.json``, keyed by the raw's checksum (a replaced
raw is looked at afresh).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skydm.coadd.skygrid import SkyGrid
from skydm.errors import BadFileError
from skydm.repo import DatasetRef
from skydm.repo.atomic import atomic_write_bytes

CACHE_NAME = "pipeline/footprints.json"


@dataclass(frozen=True)
class GridConfig:
    """The sky grid that warps and coadds are made on (see :class:`SkyGrid`)."""

    ra0: float = 0.0
    dec0: float = 0.0
    cell_size_deg: float = 0.1
    pixel_scale: float = 0.2
    margin: int = 50

    def grid(self) -> SkyGrid:
        """The :class:`SkyGrid` (validates the values)."""
        return SkyGrid(
            self.ra0, self.dec0, self.cell_size_deg, self.pixel_scale, margin=self.margin
        )

    @property
    def key(self) -> str:
        """A string naming the grid in the cache."""
        return f"{self.ra0}:{self.dec0}:{self.cell_size_deg}:{self.pixel_scale}:{self.margin}"


class RegionIndex:
    """Footprints of raws and the sky cells they overlap, cached in the repository.

    Parameters
    ----------
    root : Path
        Repository root; the cache lives under it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / CACHE_NAME
        self._entries: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path.exists():
            try:
                self._entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._entries = {}  # a cache: rebuilt from the raws when unreadable
        self._grids: dict[str, SkyGrid] = {}

    def _entry(self, ref: DatasetRef) -> dict[str, Any]:
        entry = self._entries.get(ref.checksum)
        if entry is None:
            # Registry paths are relative to the repository root.
            entry = footprint(*_image_wcs(self.root / ref.path))
            self._entries[ref.checksum] = entry
            self._dirty = True
        return entry

    def _grid(self, grid: GridConfig) -> SkyGrid:
        sky = self._grids.get(grid.key)
        if sky is None:
            sky = self._grids[grid.key] = grid.grid()
        return sky

    def cells(self, ref: DatasetRef, grid: GridConfig, *, min_overlap: int = 0) -> list[str]:
        """Ids of the cells of ``grid`` that the raw reaches ``min_overlap`` pixels into."""
        entry = self._entry(ref)
        cells = entry.setdefault("cells", {})
        key = f"{grid.key}:{min_overlap}"
        found = cells.get(key)
        if found is None:
            ra, dec = (np.asarray(v, dtype=float) for v in entry["border"])
            found = overlapping_cells(
                self._grid(grid), ra, dec, float(entry["centre"][0]), min_overlap=min_overlap
            )
            cells[key] = found
            self._dirty = True
        return list(found)

    def centre_cell(self, ref: DatasetRef, grid: GridConfig) -> str:
        """Id of the cell containing the raw's centre."""
        entry = self._entry(ref)
        key = f"centre:{grid.key}"
        found = entry.setdefault("cells", {}).get(key)
        if found is None:
            ra, dec = entry["centre"]
            found = self._grid(grid).cell_containing(float(ra), float(dec)).id
            entry["cells"][key] = found
            self._dirty = True
        return str(found)

    def save(self) -> None:
        """Write the cache back if it grew (atomically; a lost cache is only slower)."""
        if self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self._entries).encode())
            self._dirty = False

    def prime(self, checksum: str, entry: dict[str, Any]) -> None:
        """Record a :func:`footprint` without reading a file (synthetic registries)."""
        self._entries[checksum] = entry
        self._dirty = True


def footprint(wcs: WCS, shape: tuple[int, int]) -> dict[str, Any]:
    """A cache entry: the sky coordinates of an image's border and centre."""
    ny, nx = shape
    t = np.linspace(0.0, 1.0, 16)
    bx = np.concatenate([t * nx, np.full(16, nx), t * nx, np.zeros(16)]) - 0.5
    by = np.concatenate([np.zeros(16), t * ny, np.full(16, ny), t * ny]) - 0.5
    ra, dec = wcs.pixel_to_world_values(bx, by)
    cra, cdec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    return {
        "border": [np.asarray(ra).tolist(), np.asarray(dec).tolist()],
        "centre": [float(cra), float(cdec)],
        "cells": {},
    }


def overlapping_cells(
    grid: SkyGrid, ra: np.ndarray, dec: np.ndarray, cra: float, *, min_overlap: int = 0
) -> list[str]:
    """Ids of the cells of ``grid`` whose pixel grid an image overlaps, sorted.

    Parameters
    ----------
    grid : SkyGrid
    ra, dec : numpy.ndarray
        Degrees: points along the image's border (its pixels' outer edge).
    cra : float
        Right ascension of the image's centre.
    min_overlap : int
        Pixels the image's bounding box must reach into a cell (0: any
        overlap, as the grid's own test; a warp needs a few pixels more than
        the edge its resampling masks).

    Returns the same answer as :meth:`SkyGrid.cells_overlapping` (the border,
    projected into each cell, must reach inside its pixel grid) in a
    fraction of the time, since graphs ask it of every raw: the gnomonic
    projection is done here in numpy rather than through a WCS per cell.
    Candidates are the cells of every ring the image, grown by a cell and a
    half (a cell's square pixel grid reaches past its own part of the sky),
    touches, over the right-ascension range it spans in that ring.
    """
    reach = 1.5 * grid.cell_size + grid.margin * grid.pixel_scale / 3600.0
    dlo, dhi = float(dec.min()) - reach, float(dec.max()) + reach
    if dhi >= 89.0 or dlo <= -89.0:  # rings around a pole: every cell of them
        j_lo, j_hi = _ring(grid, cra, dlo), _ring(grid, cra, dhi)
        pairs = [(i, j) for j in range(j_lo, j_hi + 1) for i in range(grid.n_cells(j))]
    else:
        dra = ((ra - cra + 180.0) % 360.0) - 180.0
        pairs = []
        for j in range(_ring(grid, cra, dlo), _ring(grid, cra, dhi) + 1):
            n = grid.n_cells(j)
            step = 360.0 / n
            ring_dec = grid.cell(0, j).dec
            widen = reach / max(np.cos(np.radians(min(abs(ring_dec) + reach, 89.0))), 1e-3)
            k0 = (cra - grid.ra0) / step
            lo = int(np.floor(k0 + (float(dra.min()) - widen) / step))
            hi = int(np.ceil(k0 + (float(dra.max()) + widen) / step))
            pairs += [(i, j) for i in sorted({k % n for k in range(lo, hi + 1)})]
    if not pairs:
        return []
    cells = [grid.cell(i, j) for i, j in pairs]
    centres = np.array([(c.ra, c.dec) for c in cells])
    grow = 1 if min_overlap <= 0 else -min_overlap
    hit = _reaches(
        centres[:, 0], centres[:, 1], grid.pixel_scale, grid.cell_shape, ra, dec, grow=grow
    )
    return sorted(c.id for c, h in zip(cells, hit, strict=True) if h)


def _ring(grid: SkyGrid, ra: float, dec: float) -> int:
    return int(grid.cell_containing(ra, float(np.clip(dec, -90.0, 90.0))).id.split("_")[1])


def _reaches(
    ra0: np.ndarray, dec0: np.ndarray, pixel_scale: float, shape: tuple[int, int],
    ra: np.ndarray, dec: np.ndarray, *, grow: int = 1,
) -> np.ndarray:  # fmt: skip
    """For cells centred on (ra0, dec0): does a border (ra, dec) overlap their pixel grid?

    As :meth:`SkyCell.overlap_bbox`: every point must project (be on the
    cell's side of the sky) and the points' bounding box, grown by a pixel,
    must meet the grid (``grow`` < 0 shrinks the box instead).  Cells along
    the first axis, border points along the second.
    """
    a = np.radians(ra[None, :] - ra0[:, None])
    d, d0 = np.radians(dec)[None, :], np.radians(dec0)[:, None]
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    safe = np.where(cosc > 0.05, cosc, 1.0)
    xi = np.degrees(np.cos(d) * np.sin(a) / safe)
    eta = np.degrees((np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / safe)
    s = pixel_scale / 3600.0
    ny, nx = shape
    x = (nx - 1) / 2.0 - xi / s  # the cells' CD matrix is diag(-s, s), east left
    y = (ny - 1) / 2.0 + eta / s
    x0 = np.maximum(np.floor(x.min(axis=1) - grow), 0)
    x1 = np.minimum(np.ceil(x.max(axis=1) + grow) + 1, nx)
    y0 = np.maximum(np.floor(y.min(axis=1) - grow), 0)
    y1 = np.minimum(np.ceil(y.max(axis=1) + grow) + 1, ny)
    return np.all(cosc > 0.05, axis=1) & (x1 > x0) & (y1 > y0)


def _image_wcs(path: Path) -> tuple[WCS, tuple[int, int]]:
    """The WCS and shape of the first 2-d image in a FITS file."""
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                header = hdu.header
                if header.get("NAXIS") == 2 and isinstance(
                    hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU
                ):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FITSFixedWarning)
                        wcs = WCS(header)
                    if not wcs.has_celestial:
                        break
                    return wcs, (int(header["NAXIS2"]), int(header["NAXIS1"]))
    except OSError as exc:
        raise BadFileError(path, f"cannot be read for its footprint: {exc}") from exc
    raise BadFileError(
        path, "has no 2-d image with a celestial WCS; the pipeline needs one to place it on the sky"
    )
