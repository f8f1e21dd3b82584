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
            found = sorted(
                c.id for c in sky.cells_overlapping(wcs, shape) if c.overlap_bbox(wcs, shape)
            )
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
