"""Resampling a template onto a science pixel grid, with one coordinate mapping.

``reproject_interp`` transforms every output pixel through both WCSs once per
plane (image, variance, mask): three full-frame WCS round trips, which at
4096x4096 pixels cost more than the rest of the difference.  Here the
science -> template pixel mapping is computed once, exactly on a coarse grid
and bilinearly interpolated in between (two small matrix products), after
checking the interpolation against the exact mapping at the coarse cells'
centres; the grid is refined until it is within :data:`MAP_TOLERANCE_PX`
(a smooth, near-identity pixel-to-pixel mapping needs a step of a few tens
of pixels).  The planes are then sampled with
:func:`scipy.ndimage.map_coordinates`: bilinear for image and variance,
nearest pixel for the mask, as ``reproject_interp`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray
from scipy import ndimage

#: Largest error (pixels) allowed of the interpolated coordinate mapping.
MAP_TOLERANCE_PX = 0.002
#: The coarse grid's first step (pixels); halved until within tolerance.
FIRST_STEP_PX = 64


@dataclass(frozen=True)
class PixelMap:
    """Template pixel coordinates of every science pixel.

    Attributes
    ----------
    x, y : ndarray
        Template column and row of each science pixel (science shape).
    inside : ndarray of bool
        Science pixels whose template position lies on the template
        (within half a pixel of its edge, as ``reproject``'s footprint).
    """

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    inside: NDArray[np.bool_]


def _weights(n: int, m: int) -> NDArray[np.float64]:
    """(n, m) matrix interpolating linearly from ``m`` evenly spaced knots to ``n`` pixels."""
    pos = np.arange(n) * (m - 1) / max(n - 1, 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), m - 2) if m > 1 else np.zeros(n, np.intp)
    frac = pos - lo
    w = np.zeros((n, m))
    rows = np.arange(n)
    w[rows, lo] = 1.0 - frac
    if m > 1:
        w[rows, lo + 1] += frac
    return w


def _exact(src_wcs: Any, dst_wcs: Any, gx: NDArray[Any], gy: NDArray[Any]) -> tuple[Any, Any]:
    world = src_wcs.pixel_to_world_values(gx, gy)
    tx, ty = dst_wcs.world_to_pixel_values(*world)
    return np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)


@dataclass(frozen=True)
class CoarseMap:
    """The science -> template pixel mapping at evenly spaced knots.

    Attributes
    ----------
    x, y : ndarray
        Template column and row at the knots (``(my, mx)``), which lie at
        ``linspace(0, n - 1, m)`` along each science axis.
    """

    x: NDArray[np.float64]
    y: NDArray[np.float64]


def coarse_map(science_wcs: Any, template_wcs: Any, shape: tuple[int, int]) -> CoarseMap | None:
    """Knots within :data:`MAP_TOLERANCE_PX` of the exact mapping; None when too curved."""
    ny, nx = shape
    step = FIRST_STEP_PX
    while True:
        my, mx = max(2, -(-(ny - 1) // step) + 1), max(2, -(-(nx - 1) // step) + 1)
        ky, kx = np.linspace(0, ny - 1, my), np.linspace(0, nx - 1, mx)
        cx, cy = _exact(science_wcs, template_wcs, *np.meshgrid(kx, ky))
        # Check against the exact mapping at the cells' centres (worst case of bilinear).
        mid_x, mid_y = (kx[:-1] + kx[1:]) / 2, (ky[:-1] + ky[1:]) / 2
        ex, ey = _exact(science_wcs, template_wcs, *np.meshgrid(mid_x, mid_y))
        ix = (cx[:-1, :-1] + cx[1:, :-1] + cx[:-1, 1:] + cx[1:, 1:]) / 4
        iy = (cy[:-1, :-1] + cy[1:, :-1] + cy[:-1, 1:] + cy[1:, 1:]) / 4
        err = float(np.max(np.hypot(ix - ex, iy - ey), initial=0.0))
        if (err <= MAP_TOLERANCE_PX and np.isfinite(err)) or step <= 4:
            break
        step //= 2
    if not (err <= MAP_TOLERANCE_PX and np.isfinite(err)):
        return None
    return CoarseMap(cx, cy)


def pixel_map(
    science_wcs: Any, template_wcs: Any, shape: tuple[int, int], template_shape: tuple[int, int]
) -> PixelMap:
    """The template pixel of every science pixel (see the module notes)."""
    ny, nx = shape
    coarse = coarse_map(science_wcs, template_wcs, shape)
    if coarse is None:
        # A mapping too curved (or singular) for the grid: every pixel exactly.
        x, y = _exact(science_wcs, template_wcs, *np.meshgrid(np.arange(nx), np.arange(ny)))
    else:
        my, mx = coarse.x.shape
        wy, wx = _weights(ny, my), _weights(nx, mx)
        x, y = wy @ coarse.x @ wx.T, wy @ coarse.y @ wx.T
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():  # off the projection: nowhere on the template
        x[bad], y[bad] = -1.0, -1.0
    ty, tx = template_shape
    inside = ~bad & (x >= -0.5) & (x <= tx - 0.5) & (y >= -0.5) & (y <= ty - 0.5)
    return PixelMap(x, y, inside)


def sample_bilinear(plane: NDArray[Any], pm: PixelMap) -> NDArray[np.float32]:
    """``plane`` at the mapped positions, bilinearly (NaN outside the template).

    ``float32``: ``map_coordinates`` interpolates in float64 whatever the
    input and rounds once into the output, so a float32 plane sampled into
    a float32 output has the numbers of a float64 round trip cast at the
    end, without the two full-frame float64 copies.
    """
    out = ndimage.map_coordinates(
        np.asarray(plane, dtype=np.float32),
        [pm.y, pm.x],
        order=1,
        mode="nearest",
        output=np.float32,
    )
    out[~pm.inside] = np.nan
    return out


def sample_nearest(plane: NDArray[Any], pm: PixelMap) -> NDArray[Any]:
    """``plane`` at the nearest template pixel of each mapped position (0 outside)."""
    ty, tx = plane.shape
    iy = np.clip(np.rint(pm.y), 0, ty - 1).astype(np.intp)
    ix = np.clip(np.rint(pm.x), 0, tx - 1).astype(np.intp)
    out = plane[iy, ix]
    out[~pm.inside] = 0
    return out


def warp(
    coarse: CoarseMap,
    shape: tuple[int, int],
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.uint32],
    nodata: int,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.uint32]]:
    """The template's three planes on the science grid, in one compiled pass.

    What :func:`pixel_map`, :func:`sample_bilinear` (image and variance) and
    :func:`sample_nearest` (mask) give, without the full-frame coordinate
    and intermediate arrays (2.8 -> 0.4 CPU s at 4096x4096): each row's
    template positions are interpolated from the knots as the pixel map's
    matrix products do (to 1e-12 pixels), and each position is sampled
    bilinearly (positions off the template's pixel centres take its edge
    pixels, as ``mode="nearest"``), a corner of zero weight contributing
    nothing, even an infinite variance.  Pixels that no template pixel
    covers, or whose image is not finite, are NaN, with infinite variance
    and ``nodata`` set in the mask.
    """
    ny, nx = shape
    out_img = np.empty(shape, dtype=np.float32)
    out_var = np.empty(shape, dtype=np.float32)
    out_mask = np.empty(shape, dtype=np.uint32)
    _warp_rows(
        np.ascontiguousarray(coarse.x, dtype=np.float64),
        np.ascontiguousarray(coarse.y, dtype=np.float64),
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(variance, dtype=np.float32),
        np.ascontiguousarray(mask, dtype=np.uint32),
        np.uint32(nodata),
        out_img,
        out_var,
        out_mask,
    )
    return out_img, out_var, out_mask


@njit(cache=True, nogil=True)
def _knot(i: int, n: int, m: int) -> tuple[int, float]:  # pragma: no cover - compiled
    """(lower knot, fraction) of pixel ``i`` among ``m`` knots over ``n`` pixels (as :func:`_weights`)."""
    pos = i * (m - 1) / max(n - 1, 1)
    lo = min(int(np.floor(pos)), m - 2)
    return lo, pos - lo


@njit(cache=True, nogil=True)
def _corner(n: int, c: float) -> tuple[int, int, float]:  # pragma: no cover - compiled
    """Bilinear neighbours (clamped to the plane) and upper weight of coordinate ``c``."""
    lo = int(np.floor(c))
    t = c - lo
    a = min(max(lo, 0), n - 1)
    b = min(max(lo + 1, 0), n - 1)
    return a, b, t


@njit(cache=True, nogil=True)
def _warp_rows(  # pragma: no cover - compiled; tested through warp
    cx, cy, image, variance, mask, nodata, out_img, out_var, out_mask
):  # type: ignore[no-untyped-def]
    ny, nx = out_img.shape
    my, mx = cx.shape
    ty, tx = image.shape
    row_x = np.empty(mx)
    row_y = np.empty(mx)
    for i in range(ny):
        ky, fy = _knot(i, ny, my)
        for k in range(mx):
            row_x[k] = cx[ky, k] * (1.0 - fy) + cx[ky + 1, k] * fy
            row_y[k] = cy[ky, k] * (1.0 - fy) + cy[ky + 1, k] * fy
        for j in range(nx):
            kx, fx = _knot(j, nx, mx)
            x = row_x[kx] * (1.0 - fx) + row_x[kx + 1] * fx
            y = row_y[kx] * (1.0 - fx) + row_y[kx + 1] * fx
            inside = (
                np.isfinite(x)
                and np.isfinite(y)
                and x >= -0.5
                and x <= tx - 0.5
                and y >= -0.5
                and y <= ty - 0.5
            )
            if not inside:
                out_img[i, j] = np.nan
                out_var[i, j] = np.inf
                out_mask[i, j] = nodata
                continue
            y0, y1, wy = _corner(ty, y)
            x0, x1, wx = _corner(tx, x)
            img = 0.0
            var = 0.0
            for ya, wya in ((y0, 1.0 - wy), (y1, wy)):
                if wya == 0.0:
                    continue
                for xa, wxa in ((x0, 1.0 - wx), (x1, wx)):
                    w = wya * wxa
                    if w == 0.0:
                        continue
                    img += w * image[ya, xa]
                    var += w * variance[ya, xa]
            iy = min(max(int(np.rint(y)), 0), ty - 1)
            ix = min(max(int(np.rint(x)), 0), tx - 1)
            bits = mask[iy, ix]
            if np.isfinite(img):
                out_img[i, j] = img
                out_var[i, j] = var
                out_mask[i, j] = bits
            else:
                out_img[i, j] = np.nan
                out_var[i, j] = np.inf
                out_mask[i, j] = bits | nodata
