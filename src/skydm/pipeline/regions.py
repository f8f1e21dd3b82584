"""Sky footprints of visit images, for deciding which sky cells a unit touches.

The graph must know which sky cells a detector-visit overlaps before its
calexp exists (a ``warp`` unit per overlap, a ``coadd`` unit per cell), so
footprints come from the raws' WCS.  Reading a header per raw on every graph
build would dominate large graphs, so two caches live under
``<repo>/pipeline/``, keyed by the raw's checksum (a replaced raw is looked
at afresh):

* ``footprints.npz``: each raw's border and centre on the sky (numpy arrays:
  a graph of 100,000 units reads them in well under a second, where JSON
  took many);
* ``cells/<grid>.json``: per sky grid, the cells each raw overlaps.  A
  rebuilt graph reads only this small file; the borders are loaded only
  for raws the grid has not placed yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skydm.coadd.skygrid import SkyGrid
from skydm.errors import BadFileError
from skydm.repo import DatasetRef
from skydm.repo.atomic import atomic_write_bytes

#: Borders and centres of raws (relative to the repository root).
CACHE_NAME = "pipeline/footprints.npz"
#: Cells each raw overlaps, one JSON file per grid.
CELLS_DIR = "pipeline/cells"
#: Points along a footprint's border (16 per side).
BORDER_POINTS = 64


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

    @cached_property
    def key(self) -> str:
        """A string naming the grid in the cache (formatted once: asked per raw)."""
        return f"{self.ra0}:{self.dec0}:{self.cell_size_deg}:{self.pixel_scale}:{self.margin}"


@dataclass(frozen=True)
class Footprint:
    """A raw's outline on the sky (degrees): border points and centre."""

    ra: np.ndarray
    dec: np.ndarray
    centre: tuple[float, float]


class RegionIndex:
    """Footprints of raws and the sky cells they overlap, cached in the repository.

    Parameters
    ----------
    root : Path
        Repository root; the caches live under it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / CACHE_NAME
        # Loaded on first need: a graph whose raws are all placed on its grid
        # never reads the borders.
        self._borders: dict[str, Footprint] | None = None
        self._new: dict[str, Footprint] = {}
        self._cells: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty_grids: set[str] = set()
        self._paths: dict[str, Path] = {}
        self._grids: dict[str, SkyGrid] = {}

    # -- the borders ------------------------------------------------------------
    def _load_borders(self) -> dict[str, Footprint]:
        if self._borders is None:
            self._borders = {}
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    sums, border, centre = z["checksum"], z["border"], z["centre"]
                for k, c in enumerate(sums.tolist()):
                    self._borders[c] = Footprint(
                        border[k, 0], border[k, 1], (float(centre[k, 0]), float(centre[k, 1]))
                    )
            except (OSError, ValueError, KeyError, IndexError):
                self._borders = {}  # a cache: rebuilt from the raws when unreadable
        return self._borders

    def footprint_of(self, ref: DatasetRef) -> Footprint:
        """The raw's :class:`Footprint` (its header read once, then cached)."""
        borders = self._load_borders()
        found = borders.get(ref.checksum)
        if found is None:
            # Registry paths are relative to the repository root.
            found = as_footprint(footprint(*_image_wcs(self.root / ref.path)))
            borders[ref.checksum] = self._new[ref.checksum] = found
        return found

    def prime(self, checksum: str, entry: dict[str, Any]) -> None:
        """Record a :func:`footprint` without reading a file (synthetic registries)."""
        self._load_borders()[checksum] = self._new[checksum] = as_footprint(entry)

    # -- the cells --------------------------------------------------------------
    def _grid(self, grid: GridConfig) -> SkyGrid:
        sky = self._grids.get(grid.key)
        if sky is None:
            sky = self._grids[grid.key] = grid.grid()
        return sky

    def _cells_path(self, grid: GridConfig) -> Path:
        name = hashlib.sha256(grid.key.encode()).hexdigest()[:16]
        return self.root / CELLS_DIR / f"{name}.json"

    def _placed(self, grid: GridConfig) -> dict[str, dict[str, Any]]:
        found = self._cells.get(grid.key)
        if found is None:
            found = {}
            try:
                doc = json.loads(self._cells_path(grid).read_bytes())
                if isinstance(doc, dict) and doc.get("grid") == grid.key:
                    found = doc["cells"]
            except (OSError, ValueError, KeyError):
                pass  # a cache: recomputed from the borders
            self._cells[grid.key] = found
            self._paths[grid.key] = self._cells_path(grid)
        return found

    def cells(self, ref: DatasetRef, grid: GridConfig, *, min_overlap: int = 0) -> list[str]:
        """Ids of the cells of ``grid`` that the raw reaches ``min_overlap`` pixels into."""
        placed = self._placed(grid).setdefault(ref.checksum, {})
        key = f"o{min_overlap}"
        found = placed.get(key)
        if found is None:
            fp = self.footprint_of(ref)
            found = placed[key] = overlapping_cells(
                self._grid(grid), fp.ra, fp.dec, fp.centre[0], min_overlap=min_overlap
            )
            self._dirty_grids.add(grid.key)
        return list(found)

    def prepare(self, refs: list[DatasetRef], grid: GridConfig, *, min_overlap: int = 0) -> None:
        """Place every raw of ``refs`` not yet placed on ``grid``, in batches.

        :meth:`cells` then only looks them up.  A raw whose footprint
        cannot be read is left for :meth:`cells` to raise about.
        """
        placed = self._placed(grid)
        key = f"o{min_overlap}"
        todo: list[tuple[str, Footprint]] = []
        for ref in refs:
            if key in placed.get(ref.checksum, ()):
                continue
            try:
                todo.append((ref.checksum, self.footprint_of(ref)))
            except (BadFileError, OSError, ValueError):
                continue
        if not todo:
            return
        found = overlapping_cells_many(
            self._grid(grid), [fp for _, fp in todo], min_overlap=min_overlap
        )
        for (checksum, _), cells in zip(todo, found, strict=True):
            placed.setdefault(checksum, {})[key] = cells
        self._dirty_grids.add(grid.key)

    def centre_cell(self, ref: DatasetRef, grid: GridConfig) -> str:
        """Id of the cell containing the raw's centre."""
        placed = self._placed(grid).setdefault(ref.checksum, {})
        found = placed.get("centre")
        if found is None:
            ra, dec = self.footprint_of(ref).centre
            found = placed["centre"] = self._grid(grid).cell_containing(ra, dec).id
            self._dirty_grids.add(grid.key)
        return str(found)

    def save(self) -> None:
        """Write the caches back where they grew (atomically; a lost cache is only slower)."""
        if self._new:
            borders = self._load_borders()
            sums = list(borders)
            buf = io.BytesIO()
            np.savez(
                buf,
                checksum=np.array(sums, dtype="U64"),
                border=np.stack([np.stack([borders[c].ra, borders[c].dec]) for c in sums]),
                centre=np.array([borders[c].centre for c in sums], dtype=float),
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, buf.getvalue())
            self._new = {}
        for key in sorted(self._dirty_grids):
            path = self._paths[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps({"grid": key, "cells": self._cells[key]}).encode())
        self._dirty_grids.clear()


def as_footprint(entry: dict[str, Any]) -> Footprint:
    """A :class:`Footprint` from a :func:`footprint` entry (64 border points)."""
    ra, dec = (np.asarray(v, dtype=float) for v in entry["border"])
    if ra.shape != (BORDER_POINTS,) or dec.shape != (BORDER_POINTS,):
        raise ValueError(f"a footprint has {BORDER_POINTS} border points, not {ra.shape}")
    return Footprint(ra, dec, (float(entry["centre"][0]), float(entry["centre"][1])))


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
    dra = ((ra - cra + 180.0) % 360.0) - 180.0
    ids, ra0, dec0 = _candidates(
        grid, float(dec.min()), float(dec.max()), float(dra.min()), float(dra.max()), cra
    )
    if not ids:
        return []
    grow = 1 if min_overlap <= 0 else -min_overlap
    hit = _reaches(
        np.array(ra0), np.array(dec0), grid.pixel_scale, grid.cell_shape,
        _Border.of(ra[None, :], dec[None, :]), np.zeros(len(ids), dtype=np.intp), grow=grow,
    )  # fmt: skip
    return sorted(c for c, h in zip(ids, hit.tolist(), strict=True) if h)


#: Cell-raw pairs tested at once by :func:`overlapping_cells_many` (bounds its memory).
PAIRS_PER_CHUNK = 16_384


def overlapping_cells_many(
    grid: SkyGrid, footprints: list[Footprint], *, min_overlap: int = 0
) -> list[list[str]]:
    """:func:`overlapping_cells` of many raws, their candidate cells tested in large batches.

    A cold graph places every raw; one numpy pass over thousands of
    (cell, raw) pairs costs far less than thousands of small passes, and
    the borders' trigonometry is done once per raw.  The answers are the
    same, raw for raw.
    """
    if not footprints:
        return []
    ra = np.stack([fp.ra for fp in footprints])
    dec = np.stack([fp.dec for fp in footprints])
    cra = np.array([fp.centre[0] for fp in footprints])
    dra = ((ra - cra[:, None] + 180.0) % 360.0) - 180.0
    per_raw = [
        _candidates(grid, *bounds)
        for bounds in zip(
            dec.min(axis=1).tolist(), dec.max(axis=1).tolist(),
            dra.min(axis=1).tolist(), dra.max(axis=1).tolist(), cra.tolist(), strict=True,
        )
    ]  # fmt: skip
    owner = np.repeat(np.arange(len(per_raw)), [len(ids) for ids, _, _ in per_raw])
    ra0 = np.array([x for _, r, _ in per_raw for x in r], dtype=float)
    dec0 = np.array([x for _, _, d in per_raw for x in d], dtype=float)
    border = _Border.of(ra, dec)
    grow = 1 if min_overlap <= 0 else -min_overlap
    hit = np.empty(len(owner), dtype=bool)
    for lo in range(0, len(owner), PAIRS_PER_CHUNK):
        sl = slice(lo, lo + PAIRS_PER_CHUNK)
        hit[sl] = _reaches(
            ra0[sl], dec0[sl], grid.pixel_scale, grid.cell_shape, border, owner[sl], grow=grow
        )
    out: list[list[str]] = []
    start = 0
    flags = hit.tolist()
    for ids, _, _ in per_raw:
        mine = flags[start : start + len(ids)]
        out.append(sorted(c for c, h in zip(ids, mine, strict=True) if h))
        start += len(ids)
    return out


def _candidates(
    grid: SkyGrid, dec_lo: float, dec_hi: float, dra_lo: float, dra_hi: float, cra: float
) -> tuple[list[str], list[float], list[float]]:
    """Cells an image might overlap: ids and centres (ra, dec) of every candidate.

    The image spans declinations ``dec_lo..dec_hi`` and right ascensions
    ``dra_lo..dra_hi`` about its centre's ``cra``.  Candidates are the cells
    of every ring it touches, grown by a cell and a half (a cell's square
    pixel grid reaches past its own part of the sky), over the range it
    spans in that ring; centres as :meth:`SkyGrid.centre` gives them,
    computed here without building cells (a cold graph asks this of every
    raw).
    """
    reach = 1.5 * grid.cell_size + grid.margin * grid.pixel_scale / 3600.0
    dlo, dhi = dec_lo - reach, dec_hi + reach
    j_lo, j_hi = grid.ring_of(max(dlo, -90.0)), grid.ring_of(min(dhi, 90.0))
    polar = dhi >= 89.0 or dlo <= -89.0  # rings around a pole: every cell of them
    ids: list[str] = []
    ras: list[float] = []
    decs: list[float] = []
    ra_grid = grid.ra0
    for j in range(j_lo, j_hi + 1):
        n = grid.n_cells(j)
        ring_dec = grid.centre(0, j)[1]
        if polar:
            columns: Iterable[int] = range(n)
        else:
            step = 360.0 / n
            widen = reach / max(math.cos(math.radians(min(abs(ring_dec) + reach, 89.0))), 1e-3)
            k0 = (cra - ra_grid) / step
            lo = math.floor(k0 + (dra_lo - widen) / step)
            hi = math.ceil(k0 + (dra_hi + widen) / step)
            columns = sorted({k % n for k in range(lo, hi + 1)})
        for i in columns:
            ids.append(f"c{i}_{j}")
            ras.append((ra_grid + i * 360.0 / n) % 360.0)
        decs += [ring_dec] * (len(ids) - len(decs))
    return ids, ras, decs


@dataclass(frozen=True)
class _Border:
    """Sines and cosines of border points (one row per image), computed once."""

    sin_ra: np.ndarray
    cos_ra: np.ndarray
    sin_dec: np.ndarray
    cos_dec: np.ndarray

    @classmethod
    def of(cls, ra: np.ndarray, dec: np.ndarray) -> _Border:
        r, d = np.radians(ra), np.radians(dec)
        return cls(np.sin(r), np.cos(r), np.sin(d), np.cos(d))


def _reaches(
    ra0: np.ndarray, dec0: np.ndarray, pixel_scale: float, shape: tuple[int, int],
    border: _Border, rows: np.ndarray, *, grow: int = 1,
) -> np.ndarray:  # fmt: skip
    """For cells centred on (ra0, dec0): does an image's border overlap their pixel grid?

    As :meth:`SkyCell.overlap_bbox`: every point must project (be on the
    cell's side of the sky) and the points' bounding box, grown by a pixel,
    must meet the grid (``grow`` < 0 shrinks the box instead).  Cell ``k``
    is tested against the border in row ``rows[k]`` of ``border``; the
    angle differences come from sum formulas on precomputed sines and
    cosines (no trigonometry per cell-point pair).
    """
    r0, d0 = np.radians(ra0)[:, None], np.radians(dec0)[:, None]
    sr0, cr0, sd0, cd0 = np.sin(r0), np.cos(r0), np.sin(d0), np.cos(d0)
    sr, cr = border.sin_ra[rows], border.cos_ra[rows]
    sd, cd = border.sin_dec[rows], border.cos_dec[rows]
    cos_a = cr * cr0 + sr * sr0  # cos(ra - ra0)
    sin_a = sr * cr0 - cr * sr0  # sin(ra - ra0)
    cosc = sd0 * sd + cd0 * cd * cos_a
    safe = np.where(cosc > 0.05, cosc, 1.0)
    xi = np.degrees(cd * sin_a / safe)
    eta = np.degrees((cd0 * sd - sd0 * cd * cos_a) / safe)
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
