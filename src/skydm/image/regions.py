"""Sky regions of cutouts (SODA's CIRCLE, POLYGON, POS=RANGE, and fixed-size stamps).

Each region is a small frozen dataclass validated in its constructor, so a
bad value is refused at the boundary with the parameter named, and
:func:`pixel_box` turns any region into the rectangle of pixels of an image
that covers it.  Parsers read the SODA/DALI text forms (``CIRCLE`` is
``ra dec radius`` in degrees; ``POS`` is ``CIRCLE ...``, ``RANGE ra1 ra2 dec1
dec2`` or ``POLYGON ra1 dec1 ...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from skydm.errors import BadValueError, UserError

#: Largest cutout radius (degrees) and polygon/range extent accepted; a bigger
#: request is almost surely a mistake and would read whole files.
MAX_RADIUS_DEG = 1.0
_EDGE_SAMPLES = 24


class NoOverlapError(UserError):
    """The requested region does not touch the image."""


def _position(name: str, ra: float, dec: float) -> tuple[float, float]:
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise BadValueError(name, f"{ra} {dec}", "finite ra and dec in degrees")
    if not -90.0 <= dec <= 90.0:
        raise BadValueError(name, f"{ra} {dec}", "a declination between -90 and 90 degrees")
    return ra % 360.0, dec


@dataclass(frozen=True)
class Circle:
    """A cone: centre (ICRS degrees) and radius (degrees, > 0 and <= :data:`MAX_RADIUS_DEG`)."""

    ra: float
    dec: float
    radius: float

    def __post_init__(self) -> None:
        ra, _ = _position("CIRCLE", self.ra, self.dec)
        object.__setattr__(self, "ra", ra)
        if not (math.isfinite(self.radius) and 0 < self.radius <= MAX_RADIUS_DEG):
            raise BadValueError(
                "CIRCLE radius",
                self.radius,
                f"a radius in degrees > 0 and <= {MAX_RADIUS_DEG}; ask for a smaller area",
            )

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """The centre and points around the edge (ra, dec in degrees)."""
        theta = np.linspace(0, 2 * np.pi, 4 * _EDGE_SAMPLES, endpoint=False)
        ra, dec = offset_by(self.ra, self.dec, theta, self.radius)
        return np.append(ra, self.ra), np.append(dec, self.dec)


@dataclass(frozen=True)
class Polygon:
    """A spherical polygon of three or more ICRS vertices (degrees), great-circle edges."""

    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.vertices) < 3:
            raise BadValueError("POLYGON", self.vertices, "at least 3 vertices (ra dec pairs)")
        verts = tuple(_position("POLYGON", float(a), float(d)) for a, d in self.vertices)
        object.__setattr__(self, "vertices", verts)
        ra, dec = np.radians(np.array(verts).T)
        vec = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)
        centre = vec.mean(axis=0)
        if np.linalg.norm(centre) < 1e-9:
            raise BadValueError("POLYGON", self.vertices, "a polygon smaller than a hemisphere")
        centre /= np.linalg.norm(centre)
        extent = np.degrees(np.arccos(np.clip(vec @ centre, -1, 1))).max()
        if extent > MAX_RADIUS_DEG:
            raise BadValueError(
                "POLYGON",
                " ".join(f"{a:g} {d:g}" for a, d in verts),
                f"vertices within {MAX_RADIUS_DEG} degrees of their centre; ask for less",
            )
        # Twice the signed area in the tangent plane: zero for collinear vertices.
        x = (ra - ra[0] + np.pi) % (2 * np.pi) - np.pi
        x = x * np.cos(dec.mean())
        area = float(np.dot(x, np.roll(dec, -1)) - np.dot(np.roll(x, -1), dec))
        if abs(area) < 1e-16:
            raise BadValueError("POLYGON", self.vertices, "vertices that enclose an area")

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """The vertices (edges are great circles: straight lines in a TAN projection)."""
        ra, dec = np.array(self.vertices).T
        return ra, dec


@dataclass(frozen=True)
class Range:
    """An ICRS box ``ra_min..ra_max`` x ``dec_min..dec_max`` (degrees; SODA ``POS=RANGE``)."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    def __post_init__(self) -> None:
        values = (self.ra_min, self.ra_max, self.dec_min, self.dec_max)
        text = " ".join(f"{v:g}" for v in values)
        if not all(math.isfinite(v) for v in values):
            raise BadValueError("POS=RANGE", text, "four finite numbers: ra1 ra2 dec1 dec2")
        if not (-90 <= self.dec_min < self.dec_max <= 90) or not self.ra_min < self.ra_max:
            raise BadValueError(
                "POS=RANGE", text, "ra1 < ra2 and -90 <= dec1 < dec2 <= 90 (degrees)"
            )
        if self.ra_max - self.ra_min > 2 * MAX_RADIUS_DEG or (
            self.dec_max - self.dec_min > 2 * MAX_RADIUS_DEG
        ):
            raise BadValueError("POS=RANGE", text, f"at most {2 * MAX_RADIUS_DEG} degrees a side")

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Points along the four edges (constant-dec edges are not great circles)."""
        t = np.linspace(0, 1, _EDGE_SAMPLES)
        ras = self.ra_min + t * (self.ra_max - self.ra_min)
        decs = self.dec_min + t * (self.dec_max - self.dec_min)
        ra = np.concatenate([ras, ras, np.full_like(t, self.ra_min), np.full_like(t, self.ra_max)])
        dec = np.concatenate(
            [np.full_like(t, self.dec_min), np.full_like(t, self.dec_max), decs, decs]
        )
        return ra % 360.0, dec


@dataclass(frozen=True)
class Stamp:
    """A fixed ``size`` x ``size`` pixel box centred on the pixel nearest (ra, dec).

    Unlike the SODA shapes, a stamp keeps its size at an image's edge (the
    missing pixels are filled as NO_DATA), which is what light curves and
    machine learning want.
    """

    ra: float
    dec: float
    size: int = 51

    def __post_init__(self) -> None:
        ra, _ = _position("POS", self.ra, self.dec)
        object.__setattr__(self, "ra", ra)
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not (1 <= self.size <= 4096)
        ):
            raise BadValueError("SIZE", self.size, "a whole number of pixels from 1 to 4096")


Region = Circle | Polygon | Range | Stamp


@dataclass(frozen=True)
class PixelBox:
    """A rectangle of pixels ``[y0:y1, x0:x1]`` (0-based) on an image of ``shape``.

    For a :class:`Stamp` the box may reach outside the image; :attr:`inside`
    is the part that does not.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    shape: tuple[int, int]

    @property
    def inside(self) -> tuple[slice, slice]:
        """The (rows, columns) slices of the box clipped to the image."""
        ny, nx = self.shape
        return (
            slice(max(self.y0, 0), min(self.y1, ny)),
            slice(max(self.x0, 0), min(self.x1, nx)),
        )

    @property
    def clipped(self) -> bool:
        """True when part of the box lies outside the image."""
        ys, xs = self.inside
        return (ys.start, ys.stop, xs.start, xs.stop) != (self.y0, self.y1, self.x0, self.x1)


def offset_by(
    ra: float, dec: float, bearing: np.ndarray, distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points at ``distance`` degrees from (ra, dec) along ``bearing`` (radians, east of north)."""
    d, r0, d0 = math.radians(distance), math.radians(ra), math.radians(dec)
    sin_dec = np.sin(d0) * np.cos(d) + np.cos(d0) * np.sin(d) * np.cos(bearing)
    dec1 = np.arcsin(np.clip(sin_dec, -1, 1))
    ra1 = r0 + np.arctan2(
        np.sin(bearing) * np.sin(d) * np.cos(d0), np.cos(d) - np.sin(d0) * sin_dec
    )
    return np.degrees(ra1) % 360.0, np.degrees(dec1)


def pixel_box(region: Region, wcs: WCS, shape: tuple[int, int], *, name: str = "image") -> PixelBox:
    """The pixels of an image (``wcs``, ``shape``) that cover ``region``.

    Parameters
    ----------
    region : Region
        What to cut out.
    wcs : astropy.wcs.WCS
        The image's celestial WCS.
    shape : tuple of int
        The image's (rows, columns).
    name : str
        The image's name, for the error message.

    Returns
    -------
    PixelBox
        For SODA shapes, the bounding box of the region's pixels clipped to
        the image; for a :class:`Stamp`, the fixed box (possibly reaching out).

    Raises
    ------
    NoOverlapError
        When the region does not touch the image.
    """
    ny, nx = shape
    if isinstance(region, Stamp):
        x, y = (float(v) for v in wcs.all_world2pix([[region.ra, region.dec]], 0)[0])
        if not (math.isfinite(x) and math.isfinite(y)) or not (
            -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
        ):
            raise NoOverlapError(f"{name}: position {region.ra:g} {region.dec:g} is off the image")
        half = region.size // 2
        x0, y0 = round(x) - half, round(y) - half
        return PixelBox(y0, y0 + region.size, x0, x0 + region.size, shape)
    ra, dec = region.samples()
    with np.errstate(invalid="ignore"):
        px, py = wcs.all_world2pix(ra, dec, 0)
    ok = np.isfinite(px) & np.isfinite(py)
    if not ok.any():
        raise NoOverlapError(f"{name}: the region does not project onto the image")
    px, py = px[ok], py[ok]
    x0 = max(math.floor(px.min() + 0.5), 0)
    x1 = min(math.floor(px.max() + 0.5) + 1, nx)
    y0 = max(math.floor(py.min() + 0.5), 0)
    y1 = min(math.floor(py.max() + 0.5) + 1, ny)
    if x0 >= x1 or y0 >= y1:
        raise NoOverlapError(f"{name}: the requested region does not overlap the image")
    return PixelBox(y0, y1, x0, x1, shape)


def _numbers(name: str, text: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise BadValueError(name, text, "numbers separated by spaces (degrees)") from None
    if count is not None and len(values) != count:
        raise BadValueError(name, text, f"exactly {count} numbers")
    return values


def parse_circle(text: str) -> Circle:
    """``"ra dec radius"`` (degrees) as a :class:`Circle`."""
    ra, dec, radius = _numbers("CIRCLE", text, 3)
    return Circle(ra, dec, radius)


def parse_polygon(text: str) -> Polygon:
    """``"ra1 dec1 ra2 dec2 ra3 dec3 ..."`` (degrees) as a :class:`Polygon`."""
    values = _numbers("POLYGON", text)
    if len(values) < 6 or len(values) % 2:
        raise BadValueError("POLYGON", text, "an even number (>= 6) of numbers: ra dec pairs")
    return Polygon(tuple(zip(values[::2], values[1::2], strict=True)))


def parse_pos(text: str) -> Region:
    """A SODA ``POS`` value: ``CIRCLE ra dec r``, ``RANGE ra1 ra2 dec1 dec2`` or ``POLYGON ...``."""
    shape, _, rest = text.strip().partition(" ")
    kind = shape.upper()
    if kind == "CIRCLE":
        return parse_circle(rest)
    if kind == "POLYGON":
        return parse_polygon(rest)
    if kind == "RANGE":
        return Range(*_numbers("POS=RANGE", rest, 4))
    raise BadValueError("POS", text, "CIRCLE ra dec r, RANGE ra1 ra2 dec1 dec2 or POLYGON ...")
