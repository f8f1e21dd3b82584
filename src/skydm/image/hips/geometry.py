"""HEALPix geometry of HiPS tiles: orders, tile pixel positions, tiles an image touches.

A HiPS tile of order ``k`` and width ``W = 2**w`` is HEALPix pixel ``index`` of
order ``k`` (nested scheme); its ``W x W`` pixels are the HEALPix pixels of
order ``k + w`` inside it.  Pixel ``n`` of the tile (the nested index within
the tile) has its even bits as ``x`` and its odd bits as ``y``; HiPS stores it
at FITS row ``W - 1 - x`` and column ``y`` (the orientation Aladin and
reproject's tile WCS use, checked in the tests).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from astropy.wcs import WCS

from skydm.errors import BadValueError

#: Orders a tree may have (HiPS 1.0 allows up to 29 minus the tile's order).
MAX_ORDER = 20
#: Lowest order of every tree: ``Norder3/Allsky`` is made from it.
MIN_ORDER = 3


def check_width(width: int) -> int:
    """``log2(width)`` of a valid tile width (a power of two, 64 to 1024)."""
    w = int(width).bit_length() - 1
    if width != 1 << w or not 6 <= w <= 10:
        raise BadValueError("tile width", width, "a power of two from 64 to 1024 (512)")
    return w


def tile_pixel_deg(order: int, width: int) -> float:
    """Side (degrees) of one tile pixel at ``order``: sqrt of the HEALPix pixel area."""
    nside = (1 << order) * width
    return math.degrees(math.sqrt(4 * math.pi / (12 * nside * nside)))


def choose_order(pixel_deg: float, width: int = 512) -> int:
    """Lowest order whose tile pixels are no larger than ``pixel_deg`` (no detail lost)."""
    if not (math.isfinite(pixel_deg) and pixel_deg > 0):
        raise BadValueError("coadd pixel scale", pixel_deg, "a positive scale in the WCS")
    for order in range(MIN_ORDER, MAX_ORDER + 1):
        if tile_pixel_deg(order, width) <= pixel_deg:
            return order
    return MAX_ORDER


def pixel_scale_deg(wcs: WCS) -> float:
    """Mean pixel side (degrees) of a celestial WCS at its reference point."""
    return float(math.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))))


@lru_cache(maxsize=8)
def _layout(width: int) -> tuple[np.ndarray, np.ndarray]:
    """For each tile pixel in FITS order, its nested index within the tile; and the inverse."""
    bits = check_width(width)
    n = np.arange(width * width, dtype=np.int64)
    x = np.zeros_like(n)
    y = np.zeros_like(n)
    for b in range(bits):
        x |= ((n >> (2 * b)) & 1) << b
        y |= ((n >> (2 * b + 1)) & 1) << b
    flat = (width - 1 - x) * width + y  # FITS (row, column) of nested pixel n
    nested_of_flat = np.empty_like(n)
    nested_of_flat[flat] = n
    nested_of_flat.setflags(write=False)
    flat.setflags(write=False)
    return nested_of_flat, flat


def tile_lonlat(
    order: int, index: int, width: int, *, edge: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in degrees of every pixel centre of a tile, each (width, width).

    With ``edge``, only the pixels on the tile's border, flat.
    """
    from astropy_healpix import healpix_to_lonlat

    nested, _ = _layout(width)
    if edge:
        grid = nested.reshape(width, width)
        nested = np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])
    bits = check_width(width)
    nside = 1 << (order + bits)
    lon, lat = healpix_to_lonlat(int(index) * width * width + nested, nside, order="nested")
    if edge:
        return lon.deg, lat.deg
    shape = (width, width)
    return lon.deg.reshape(shape), lat.deg.reshape(shape)


def tiles_touched(wcs: WCS, shape: tuple[int, int], order: int, width: int) -> set[int]:
    """Tiles of ``order`` that an image (``shape`` = rows, columns) touches.

    The image is sampled on a grid finer than an eighth of a tile (its edges
    included), so that every tile holding at least a few of its pixels is found.
    """
    from astropy_healpix import lonlat_to_healpix

    ny, nx = shape
    step = tile_pixel_deg(order, width) * width / 8
    pix = pixel_scale_deg(wcs)
    n_x = max(2, math.ceil(nx * pix / step) + 1)
    n_y = max(2, math.ceil(ny * pix / step) + 1)
    gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, n_x), np.linspace(-0.5, ny - 0.5, n_y))
    ra, dec = wcs.celestial.all_pix2world(gx.ravel(), gy.ravel(), 0)
    good = np.isfinite(ra) & np.isfinite(dec)
    import astropy.units as u

    found = lonlat_to_healpix(ra[good] * u.deg, dec[good] * u.deg, 1 << order, order="nested")
    touched = {int(i) for i in np.unique(found)}
    # A tile the grid missed can only hold a corner of the image that one of
    # its own edges crosses: look along the edges of the neighbouring tiles.
    return touched | {
        t for t in _neighbours(touched, order) if _edge_on(wcs, shape, order, t, width)
    }


def _neighbours(tiles: set[int], order: int) -> set[int]:
    from astropy_healpix import neighbours

    if not tiles:
        return set()
    found = neighbours(np.array(sorted(tiles), dtype=np.int64), 1 << order, order="nested")
    return {int(i) for i in np.unique(found) if i >= 0} - tiles


def _edge_on(wcs: WCS, shape: tuple[int, int], order: int, index: int, width: int) -> bool:
    ra, dec = tile_lonlat(order, index, width, edge=True)
    with np.errstate(invalid="ignore"):
        x, y = wcs.celestial.all_world2pix(ra, dec, 0)
    ny, nx = shape
    return bool(np.any((x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)))


def children(index: int) -> tuple[int, int, int, int]:
    """The four tiles of the next order inside tile ``index`` (nested)."""
    return (4 * index, 4 * index + 1, 4 * index + 2, 4 * index + 3)


def child_slot(child: int, width: int) -> tuple[slice, slice]:
    """Where child tile ``child`` (its index mod 4) lies, halved, in its parent (FITS order)."""
    sub = child & 3
    x, y = sub & 1, sub >> 1  # the child's bits: x even, y odd, as within a tile
    half = width // 2
    rows = slice((1 - x) * half, (2 - x) * half)
    cols = slice(y * half, (y + 1) * half)
    return rows, cols
