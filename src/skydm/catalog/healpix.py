"""HEALPix (nested) indexing of positions and cone coverage as index ranges.

Every stored row carries ``_healpix``: its nested pixel at order 29 (the
finest a 64-bit integer holds, as in HATS/LSDB).  Because nested pixels of a
coarser order k are contiguous ranges at order 29 (pixel p at order k covers
``[p << 2(29-k), (p+1) << 2(29-k))``), a cone is turned into a short list of
``_healpix`` ranges by computing its coverage at an order matched to its
radius and merging neighbouring pixels.  Files are sorted by ``_healpix`` so
the ranges select a few Parquet row groups; an exact distance test then
removes the rows of the covering pixels that lie outside the cone.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

ORDER = 29
_SHIFT_BITS = 2


def lonlat_to_index(
    ra_deg: npt.ArrayLike, dec_deg: npt.ArrayLike, order: int = ORDER
) -> np.ndarray:
    """Nested HEALPix index at ``order`` of positions in degrees (NaN positions give -1)."""
    import astropy.units as u
    from astropy_healpix import core

    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    bad = ~(np.isfinite(ra) & np.isfinite(dec)) | (np.abs(dec) > 90)
    ra = np.where(bad, 0.0, np.mod(ra, 360.0))
    dec = np.where(bad, 0.0, dec)
    idx = core.lonlat_to_healpix(ra * u.deg, dec * u.deg, 2**order, order="nested")
    idx = np.asarray(idx, dtype=np.int64)
    idx[bad] = -1
    return idx


def coarsen(index: np.ndarray, order: int) -> np.ndarray:
    """Order-29 indexes reduced to ``order`` (negative indexes stay -1)."""
    out = np.right_shift(index, _SHIFT_BITS * (ORDER - order))
    out[index < 0] = -1
    return out


def _order_for_radius(radius_deg: float) -> int:
    # Pixels about the radius across: a cone touches about a dozen of them, and
    # the coverage search (whose cost grows with nside) stays in the tens of
    # microseconds for an arcminute cone (165 us with pixels of half the radius).
    resolution0 = 58.6  # degrees, the size of an order-0 pixel
    if radius_deg <= 0:
        return 20
    order = math.ceil(math.log2(resolution0 / radius_deg))
    return max(0, min(order, 20))


def cone_ranges(
    ra_deg: float, dec_deg: float, radius_deg: float, *, merged: bool = True
) -> list[tuple[int, int]]:
    """Inclusive order-29 index ranges covering a cone (a superset of it).

    The last cones asked for are remembered: a query's ranges are needed twice
    (in its SQL, and by the engine's direct cone reader), and services see the
    same cones again.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre in degrees (ICRS).
    radius_deg : float
        Radius in degrees.
    merged : bool
        Merge ranges that are close (see :func:`coalesce`; for SQL, where each
        range is a term evaluated on every row read); False gives the exact
        coverage, a smaller superset of the cone.

    Returns
    -------
    list of (int, int)
        Sorted, disjoint inclusive ranges ``(lo, hi)`` of ``_healpix`` values.
    """
    order, ranges = _cone_cover(float(ra_deg), float(dec_deg), float(radius_deg))
    if not merged:
        return list(ranges)
    return list(_merged(order, ranges))


@dataclass(frozen=True)
class ConeCover:
    """The exact coverage of a cone as inclusive order-29 ranges, also as arrays.

    Attributes
    ----------
    ranges : tuple of (int, int)
        Sorted, disjoint inclusive ranges ``(lo, hi)`` of ``_healpix`` values.
    lo, hi : numpy.ndarray
        Their bounds (int64, read-only), for vectorised comparisons.
    """

    ranges: tuple[tuple[int, int], ...]
    lo: np.ndarray
    hi: np.ndarray


@functools.lru_cache(maxsize=1024)
def cone_cover(ra_deg: float, dec_deg: float, radius_deg: float) -> ConeCover:
    """The exact coverage of a cone (``cone_ranges(..., merged=False)``), remembered."""
    _, ranges = _cone_cover(float(ra_deg), float(dec_deg), float(radius_deg))
    bounds = np.array(ranges, dtype=np.int64).reshape(-1, 2)
    lo, hi = bounds[:, 0].copy(), bounds[:, 1].copy()
    lo.setflags(write=False)  # shared by every caller through the cache
    hi.setflags(write=False)
    return ConeCover(ranges, lo, hi)


@functools.lru_cache(maxsize=1024)
def _merged(order: int, ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple(coalesce(list(ranges), max(order - COALESCE_LEVELS, 0)))


@functools.lru_cache(maxsize=1024)
def _cone_cover(
    ra_deg: float, dec_deg: float, radius_deg: float
) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(order, ranges) of the pixels covering a cone at the order matched to its radius."""
    if radius_deg >= 180:
        return 0, ((0, 12 * 4**ORDER - 1),)
    order = _order_for_radius(radius_deg)
    moc = _moc_core()
    if moc is not None:
        return order, _moc_cover(moc, ra_deg % 360.0, dec_deg, radius_deg, order)
    # The C search itself: the public wrapper spends more time on Quantity
    # conversions than the search takes for a small cone.
    from astropy_healpix import _core

    nside = 2**order
    # Pad by half a pixel so that pixels which only graze the cone are never
    # lost to rounding in the coverage computation; the exact test follows.
    pad = math.degrees(math.sqrt(math.pi / 3) / nside) * 0.5  # half the pixel size
    pixels = _core.healpix_cone_search(
        ra_deg % 360.0, dec_deg, min(radius_deg + pad, 180.0), nside, "nested"
    )
    return order, tuple(pixels_to_ranges(np.asarray(pixels, dtype=np.int64), order))


def warm_up() -> None:
    """Load the cone coverage code now (at an engine's opening), not in the first search."""
    _moc_core()


#: Radius added to a cone whose coverage mocpy computes (degrees, 3.6 mas): a
#: cell the circle only touches within rounding is kept; the exact test follows.
_MOC_PAD_DEG = 1e-6


@functools.cache
def _moc_core() -> Any:
    """mocpy's compiled core (CDS healpix) when installed with the calls used, else None.

    Its cone coverage is a superset of the cone (cells that may overlap it,
    computed two orders deeper, so tighter than the pixels astropy-healpix
    returns) and costs a fifth of astropy-healpix's search for an arcminute
    cone.  Only the compiled module is loaded: the ``mocpy`` package imports
    matplotlib (over a second), which a catalog service has no use for.  It
    is registered as ``mocpy.mocpy``, so a later ``import mocpy`` uses it.
    """
    core = sys.modules.get("mocpy.mocpy")
    if core is None:
        try:
            core = _load_extension("mocpy", "mocpy")
        except (ImportError, OSError):
            return None
    if all(hasattr(core, name) for name in ("from_cone", "to_ranges", "drop")):
        return core
    return None


def _load_extension(package: str, name: str) -> Any:
    """The compiled module ``package.name`` loaded without running the package's ``__init__``."""
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed")
    full = f"{package}.{name}"
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, name + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader(full, path)
                found = importlib.util.spec_from_file_location(full, path, loader=loader)
                if found is None:
                    break
                module = importlib.util.module_from_spec(found)
                sys.modules[full] = module
                try:
                    loader.exec_module(module)
                except BaseException:
                    del sys.modules[full]
                    raise
                return module
    raise ImportError(f"{full} has no compiled module")


def _moc_cover(
    core: Any, ra_deg: float, dec_deg: float, radius_deg: float, order: int
) -> tuple[tuple[int, int], ...]:
    """Inclusive order-29 ranges of the cells at ``order`` that may overlap the cone (mocpy)."""
    index = core.from_cone(
        ra_deg, dec_deg, min(radius_deg + _MOC_PAD_DEG, 180.0), order, delta_depth=2
    )
    try:
        bounds = core.to_ranges(index)  # (n, 2) half-open, at order 29
    finally:
        core.drop(index)
    return tuple((int(lo), int(hi) - 1) for lo, hi in bounds.tolist())


#: Ranges closer than a pixel this many orders coarser than the coverage are merged.
COALESCE_LEVELS = 4


def coalesce(ranges: list[tuple[int, int]], order: int) -> list[tuple[int, int]]:
    """Merge ranges separated by less than one pixel at ``order`` (a superset still).

    A cone's coverage is a dozen short ranges a few pixels apart; each is a
    term DuckDB evaluates on every row of the row groups it reads, which costs
    more than the few extra rows their hull lets through (a 4096-row group
    spans far more than these gaps, so no more row groups are read).
    """
    if not ranges:
        return ranges
    gap = 1 << (_SHIFT_BITS * (ORDER - order))
    out = [ranges[0]]
    for lo, hi in ranges[1:]:
        if lo - out[-1][1] <= gap:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def cones_ranges(
    ra_deg: np.ndarray, dec_deg: np.ndarray, radius_deg: np.ndarray, *, max_ranges: int
) -> list[tuple[int, int]]:
    """Inclusive order-29 ranges covering the union of many cones, at most ``max_ranges``.

    The coverage is computed at the order suited to the largest radius and
    coarsened (a superset still) until it fits in ``max_ranges`` ranges.
    """
    import astropy.units as u
    from astropy_healpix import core

    if float(np.max(radius_deg)) >= 180:
        return [(0, 12 * 4**ORDER - 1)]
    order = _order_for_radius(float(np.max(radius_deg)))
    nside = 2**order
    pad = math.degrees(math.sqrt(math.pi / 3) / nside) * 0.5
    pixels = [
        np.asarray(
            core.healpix_cone_search(
                (float(a) % 360.0) * u.deg,
                float(d) * u.deg,
                min(float(r) + pad, 180.0) * u.deg,
                nside,
                order="nested",
            ),
            dtype=np.int64,
        )
        for a, d, r in zip(ra_deg, dec_deg, radius_deg, strict=True)
    ]
    merged = np.unique(np.concatenate(pixels))
    ranges = pixels_to_ranges(merged, order)
    while len(ranges) > max_ranges and order > 0:
        order -= 1
        merged = np.unique(merged >> _SHIFT_BITS)
        ranges = pixels_to_ranges(merged, order)
    return ranges


_SMALL_PIXELS = 64


def pixels_to_ranges(pixels: np.ndarray, order: int) -> list[tuple[int, int]]:
    """Merge nested pixels at ``order`` into inclusive order-29 ranges."""
    if pixels.size == 0:
        return []
    shift = _SHIFT_BITS * (ORDER - order)
    if pixels.size <= _SMALL_PIXELS:
        # A cone's dozen pixels: plain integers cost less than numpy's calls.
        out: list[tuple[int, int]] = []
        ordered = sorted(set(pixels.tolist()))
        start = prev = ordered[0]
        for p in ordered[1:]:
            if p != prev + 1:
                out.append((start << shift, ((prev + 1) << shift) - 1))
                start = p
            prev = p
        out.append((start << shift, ((prev + 1) << shift) - 1))
        return out
    pixels = np.unique(pixels)
    breaks = np.nonzero(np.diff(pixels) != 1)[0]
    starts = np.concatenate([pixels[:1], pixels[breaks + 1]])
    ends = np.concatenate([pixels[breaks], pixels[-1:]])
    return [
        (int(s) << shift, ((int(e) + 1) << shift) - 1) for s, e in zip(starts, ends, strict=True)
    ]


def ranges_partitions(ranges: Sequence[tuple[int, int]], order: int) -> list[int]:
    """The pixels at the (coarse) partition ``order`` that the ranges touch."""
    shift = _SHIFT_BITS * (ORDER - order)
    out: set[int] = set()
    for lo, hi in ranges:
        out.update(range(lo >> shift, (hi >> shift) + 1))
    return sorted(out)


def unit_vector(ra_deg: float, dec_deg: float) -> np.ndarray:
    """Unit vector of a position in degrees."""
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])


def vector_to_lonlat(v: np.ndarray) -> tuple[float, float]:
    """Position in degrees of a (not necessarily unit) vector."""
    x, y, z = (float(a) for a in v)
    return math.degrees(math.atan2(y, x)) % 360.0, math.degrees(math.atan2(z, math.hypot(x, y)))


def bounding_cone(vertices: list[tuple[float, float]]) -> tuple[float, float, float]:
    """A cone (ra, dec, radius in degrees) containing a spherical polygon.

    The centre is the normalised mean of the vertex vectors and the radius the
    largest vertex distance: a cap smaller than a hemisphere is convex, so the
    great-circle edges between vertices inside it stay inside it.
    """
    vecs = np.array([unit_vector(r, d) for r, d in vertices])
    centre = vecs.sum(axis=0)
    norm = float(np.linalg.norm(centre))
    if norm < 1e-9:
        return 0.0, 0.0, 180.0
    centre /= norm
    radius = max(math.degrees(math.acos(min(1.0, float(np.dot(centre, v))))) for v in vecs)
    ra, dec = vector_to_lonlat(centre)
    return ra, dec, min(radius * (1 + 1e-9) + 1e-9, 180.0)
