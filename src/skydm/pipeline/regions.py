"""Sky footprints of visit images, for deciding which sky cells a unit touches.

The graph must know which sky cells a detector-visit overlaps before its
calexp exists (a ``warp`` unit per overlap, a ``coadd`` unit per cell), so
footprints come from the raws' WCS.  Reading a header per raw on every graph
build would dominate large graphs, so each raw's WCS, shape and the cells it
overlaps on a given grid are cached in ``<repo>/pipeline/footprints.json``,
keyed by the raw's checksum (a replaced raw is looked at afresh).
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
        self.path = Path(root) / CACHE_NAME
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
            header, shape = _image_header(Path(ref.path))
            entry = {"wcs": header, "shape": list(shape), "cells": {}}
            self._entries[ref.checksum] = entry
            self._dirty = True
        return entry

    def wcs(self, ref: DatasetRef) -> tuple[WCS, tuple[int, int]]:
        """The WCS and (rows, columns) of a raw."""
        entry = self._entry(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(fits.Header.fromstring(entry["wcs"]))
        return wcs, (int(entry["shape"][0]), int(entry["shape"][1]))

    def cells(self, ref: DatasetRef, grid: GridConfig) -> list[str]:
        """Ids of the cells of ``grid`` that the raw overlaps, sorted."""
        entry = self._entry(ref)
        cells = entry.setdefault("cells", {})
        found = cells.get(grid.key)
        if found is None:
            sky = self._grids.get(grid.key) or self._grids.setdefault(grid.key, grid.grid())
            wcs, shape = self.wcs(ref)
            found = overlapping_cells(sky, wcs, shape)
            cells[grid.key] = found
            self._dirty = True
        return list(found)

    def centre_cell(self, ref: DatasetRef, grid: GridConfig) -> str:
        """Id of the cell containing the raw's centre."""
        entry = self._entry(ref)
        key = f"centre:{grid.key}"
        found = entry.setdefault("cells", {}).get(key)
        if found is None:
            sky = self._grids.get(grid.key) or self._grids.setdefault(grid.key, grid.grid())
            wcs, (ny, nx) = self.wcs(ref)
            ra, dec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
            found = sky.cell_containing(float(ra), float(dec)).id
            entry["cells"][key] = found
            self._dirty = True
        return str(found)

    def save(self) -> None:
        """Write the cache back if it grew (atomically; a lost cache is only slower)."""
        if self._dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self._entries).encode())
            self._dirty = False

    def prime(self, checksum: str, wcs: WCS, shape: tuple[int, int]) -> None:
        """Record a footprint without reading a file (synthetic registries, tests)."""
        self._entries[checksum] = {
            "wcs": wcs.to_header().tostring(),
            "shape": [int(shape[0]), int(shape[1])],
            "cells": {},
        }
        self._dirty = True


def overlapping_cells(grid: SkyGrid, wcs: WCS, shape: tuple[int, int]) -> list[str]:
    """Ids of the cells of ``grid`` whose pixel grid an image overlaps, sorted.

    The same answer as :meth:`SkyGrid.cells_overlapping` (the border of the
    image, projected into each cell, must reach inside its pixel grid) in a
    fraction of the time: graphs ask this of every raw, so the gnomonic
    projection is done here in numpy rather than through a WCS per cell.
    Candidates are the cells containing a lattice of points over the image
    grown by half a cell and the margin (a cell's square pixel grid reaches
    that far past its own part of the sky), spaced finer than a cell.
    """
    ny, nx = shape
    t = np.linspace(0.0, 1.0, 16)
    bx = np.concatenate([t * nx, np.full(16, nx), t * nx, np.zeros(16)]) - 0.5
    by = np.concatenate([np.zeros(16), t * ny, np.full(16, ny), t * ny]) - 0.5
    ra, dec = (np.asarray(v, dtype=float) for v in wcs.pixel_to_world_values(bx, by))
    # The lattice: the image's pixel box grown by the margin (in image pixels).
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    grow = (grid.margin + 2) * grid.pixel_scale / scale + grid.cell_size * 3600.0 / scale * 1.5
    step = max(grid.cell_size * 3600.0 / scale / 3.0, 1.0)
    gx = np.linspace(-grow, nx + grow, max(2, int(np.ceil((nx + 2 * grow) / step)) + 1))
    gy = np.linspace(-grow, ny + grow, max(2, int(np.ceil((ny + 2 * grow) / step)) + 1))
    lx, ly = np.meshgrid(gx, gy)
    lra, ldec = wcs.pixel_to_world_values(lx.ravel(), ly.ravel())
    ids = {grid.cell_containing(float(a), float(d)).id for a, d in zip(lra, ldec, strict=True)}
    found = []
    for cell_id in ids:
        cell = grid.cell_by_id(cell_id)
        if _reaches(cell.ra, cell.dec, cell.pixel_scale, cell.shape, ra, dec):
            found.append(cell_id)
    return sorted(found)


def _reaches(
    ra0: float, dec0: float, pixel_scale: float, shape: tuple[int, int], ra: np.ndarray,
    dec: np.ndarray,
) -> bool:  # fmt: skip
    """Whether a border (ra, dec) projected on a cell's TAN grid overlaps its pixels.

    As :meth:`SkyCell.overlap_bbox`: every point must project (be on the
    cell's side of the sky) and the points' bounding box, grown by a pixel,
    must meet the grid.
    """
    a, d = np.radians(ra - ra0), np.radians(dec)
    d0 = np.radians(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    if np.any(cosc <= 0.05):
        return False
    xi = np.degrees(np.cos(d) * np.sin(a) / cosc)
    eta = np.degrees((np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cosc)
    s = pixel_scale / 3600.0
    ny, nx = shape
    x = (nx - 1) / 2.0 - xi / s  # the cell's CD matrix is diag(-s, s), east left
    y = (ny - 1) / 2.0 + eta / s
    x0, x1 = max(np.floor(x.min() - 1), 0), min(np.ceil(x.max() + 1) + 1, nx)
    y0, y1 = max(np.floor(y.min() - 1), 0), min(np.ceil(y.max() + 1) + 1, ny)
    return bool(x1 > x0 and y1 > y0)


def _image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """The WCS cards and shape of the first 2-d image in a FITS file."""
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
                    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
                    return wcs.to_header().tostring(), shape
    except OSError as exc:
        raise BadFileError(path, f"cannot be read for its footprint: {exc}") from exc
    raise BadFileError(
        path, "has no 2-d image with a celestial WCS; the pipeline needs one to place it on the sky"
    )
