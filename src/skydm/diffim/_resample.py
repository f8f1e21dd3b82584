"""Resampling a template onto a science pixel grid, with one coordinate mapping.

``reproject_interp`` transforms every output pixel through both WCSs once per
plane (image, variance, mask): three full-frame WCS round trips, which at
4096x4096 pixels cost more than the rest of the difference.  Here the
science -> template pixel mapping is computed once, exactly on a coarse grid
and bilinearly interpolated in between (one compiled pass over the pixels),
after checking the interpolation against the exact mapping at the coarse
cells' centres; the grid is refined until it is within
:data:`MAP_TOLERANCE_PX` (a smooth, near-identity pixel-to-pixel mapping
needs a step of a few tens of pixels).  The planes are then sampled with
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


def _exact(src_wcs: Any, dst_wcs: Any, gx: NDArray[Any], gy: NDArray[Any]) -> tuple[Any, Any]:
    world = src_wcs.pixel_to_world_values(gx, gy)
    tx, ty = dst_wcs.world_to_pixel_values(*world)
    return np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)


def pixel_map(
    science_wcs: Any, template_wcs: Any, shape: tuple[int, int], template_shape: tuple[int, int]
) -> PixelMap:
    """The template pixel of every science pixel (see the module notes)."""
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
    ty, tx = template_shape
    if not (err <= MAP_TOLERANCE_PX and np.isfinite(err)):
        # A mapping too curved (or singular) for the grid: every pixel exactly.
        x, y = _exact(science_wcs, template_wcs, *np.meshgrid(np.arange(nx), np.arange(ny)))
        bad = ~(np.isfinite(x) & np.isfinite(y))
        if bad.any():  # off the projection: nowhere on the template
            x[bad], y[bad] = -1.0, -1.0
        inside = ~bad & (x >= -0.5) & (x <= tx - 0.5) & (y >= -0.5) & (y <= ty - 0.5)
        return PixelMap(x, y, inside)
    # Bilinear between the knots (rows first, as ``wy @ c @ wx.T``), each
    # pixel from its four knots in one compiled pass: the dense matrix
    # products and the full-frame tests cost 0.4-0.7 CPU s at 4096x4096.
    ylo, yfrac = _knots(ny, my)
    xlo, xfrac = _knots(nx, mx)
    x = np.empty((ny, nx), dtype=np.float64)
    y = np.empty((ny, nx), dtype=np.float64)
    inside = np.empty((ny, nx), dtype=np.bool_)
    _interpolate_map(
        np.ascontiguousarray(cx, dtype=np.float64), np.ascontiguousarray(cy, dtype=np.float64),
        ylo, yfrac, xlo, xfrac, float(tx), float(ty), x, y, inside,
    )  # fmt: skip
    return PixelMap(x, y, inside)


def _knots(n: int, m: int) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """Lower knot and fraction of each of ``n`` pixels between ``m`` evenly spaced knots.

    The linear interpolation weights are ``1 - frac`` at knot ``lo`` and
    ``frac`` at ``lo + 1``.
    """
    pos = np.arange(n) * (m - 1) / max(n - 1, 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), m - 2) if m > 1 else np.zeros(n, np.intp)
    return np.ascontiguousarray(lo, dtype=np.intp), np.ascontiguousarray(pos - lo)


@njit(cache=True, nogil=True)
def _interpolate_map(  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    cx, cy, ylo, yfrac, xlo, xfrac, tx, ty, x, y, inside
):
    """``x, y`` bilinear from the knots ``cx, cy``; ``inside`` the template (see pixel_map)."""
    ny, nx = x.shape
    mx = cx.shape[1]
    rx = np.empty(mx)
    ry = np.empty(mx)
    for i in range(ny):
        a = ylo[i]
        f = yfrac[i]
        for b in range(mx):
            rx[b] = (1.0 - f) * cx[a, b] + f * cx[a + 1, b]
            ry[b] = (1.0 - f) * cy[a, b] + f * cy[a + 1, b]
        for j in range(nx):
            b = xlo[j]
            g = xfrac[j]
            px = (1.0 - g) * rx[b] + g * rx[b + 1]
            py = (1.0 - g) * ry[b] + g * ry[b + 1]
            if not (np.isfinite(px) and np.isfinite(py)):
                # Off the projection: nowhere on the template.
                x[i, j] = -1.0
                y[i, j] = -1.0
                inside[i, j] = False
                continue
            x[i, j] = px
            y[i, j] = py
            inside[i, j] = px >= -0.5 and px <= tx - 0.5 and py >= -0.5 and py <= ty - 0.5


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
    pm: PixelMap,
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.uint32],
    nodata: int,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.uint32]]:
    """The template's three planes at the mapped positions, in one compiled pass.

    The numbers of :func:`sample_bilinear` (image and variance) and
    :func:`sample_nearest` (mask), bit for bit, without their full-frame
    intermediates (three ``map_coordinates``-like passes cost 2.3 CPU s at
    4096x4096): the bilinear sum is ``map_coordinates``' own (order 1,
    ``mode="nearest"``: the four corners' values times their weights,
    accumulated in float64 in the same order, indices clamped to the plane).
    Pixels outside the template, or whose image is not finite, are NaN with
    infinite variance and ``nodata`` added to the mask.
    """
    out_img = np.empty(pm.x.shape, dtype=np.float32)
    out_var = np.empty(pm.x.shape, dtype=np.float32)
    out_mask = np.empty(pm.x.shape, dtype=np.uint32)
    _warp_pixels(
        np.ascontiguousarray(pm.x, dtype=np.float64).ravel(),
        np.ascontiguousarray(pm.y, dtype=np.float64).ravel(),
        np.ascontiguousarray(pm.inside, dtype=np.bool_).ravel(),
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(variance, dtype=np.float32),
        np.ascontiguousarray(mask, dtype=np.uint32),
        np.uint32(nodata),
        out_img.ravel(),
        out_var.ravel(),
        out_mask.ravel(),
    )
    return out_img, out_var, out_mask


@njit(cache=True, nogil=True)
def _warp_pixels(  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    xs, ys, inside, image, variance, mask, nodata, out_img, out_var, out_mask
):
    ty, tx = image.shape
    for p in range(len(xs)):
        if not inside[p]:
            out_img[p] = np.nan
            out_var[p] = np.inf
            out_mask[p] = nodata
            continue
        y, x = ys[p], xs[p]
        y0, x0 = np.floor(y), np.floor(x)
        fy, fx = y - y0, x - x0
        gy, gx = 1.0 - fy, 1.0 - fx
        a0 = min(max(int(y0), 0), ty - 1)
        a1 = min(max(int(y0) + 1, 0), ty - 1)
        b0 = min(max(int(x0), 0), tx - 1)
        b1 = min(max(int(x0) + 1, 0), tx - 1)
        img = 0.0
        img += np.float64(image[a0, b0]) * gy * gx
        img += np.float64(image[a0, b1]) * gy * fx
        img += np.float64(image[a1, b0]) * fy * gx
        img += np.float64(image[a1, b1]) * fy * fx
        iy = min(max(int(np.rint(y)), 0), ty - 1)
        ix = min(max(int(np.rint(x)), 0), tx - 1)
        value = np.float32(img)
        if not np.isfinite(value):
            out_img[p] = np.nan
            out_var[p] = np.inf
            out_mask[p] = mask[iy, ix] | nodata
            continue
        var = 0.0
        var += np.float64(variance[a0, b0]) * gy * gx
        var += np.float64(variance[a0, b1]) * gy * fx
        var += np.float64(variance[a1, b0]) * fy * gx
        var += np.float64(variance[a1, b1]) * fy * fx
        out_img[p] = value
        out_var[p] = var
        out_mask[p] = mask[iy, ix]
