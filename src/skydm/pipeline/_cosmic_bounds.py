"""The exact upper bounds that keep L.A.Cosmic off pixels where no cosmic ray can be.

:func:`candidate_pixels` is the superset of L.A.Cosmic's first-iteration
pixels described in :mod:`skydm.pipeline.cosmics` (a noise bound from a
separable 7x7 median, never below the 7x7 minimum, then the fine structure
computed exactly at the pixels that pass it); :func:`dilate_box` grows
sparse seeds into boxes.  The numba kernels here are compiled once per
install (``cache=True``) and warmed by :mod:`skydm.prompt.kernels`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit
from scipy import ndimage

if TYPE_CHECKING:
    from skydm.pipeline.cosmics import CosmicRayConfig

#: Relative slack on both bounds: astroscrappy's Laplacian is computed on a
#: subsampled image in float32, ours directly, and they differ by rounding.
_SLACK = 0.98


def candidate_pixels(
    electrons: np.ndarray, good: np.ndarray, *, read_noise: float, config: CosmicRayConfig
) -> np.ndarray:
    """Pixels that can pass L.A.Cosmic's first-iteration tests (a superset).

    Parameters
    ----------
    electrons : numpy.ndarray
        The pixels in electrons, sky included (``float32``).
    good : numpy.ndarray
        Pixels that may be flagged.
    read_noise : float
        Read noise, electrons.
    config : CosmicRayConfig
        ``sigclip`` and ``objlim``.

    Returns
    -------
    numpy.ndarray
        Boolean mask: every pixel astroscrappy's first iteration flags
        before growing its hits is in it.
    """
    electrons = np.ascontiguousarray(electrons, dtype=np.float32)
    # The first bound in one compiled pass (L+ and the 7x7 minimum, as
    # laplacian_plus and minimum_filter compute them, in float32): a
    # full-frame Laplacian and minimum filter cost 1.3 CPU s at 4096x4096.
    rn2 = np.float32(read_noise**2)
    cand = np.zeros(electrons.shape, dtype=bool)
    _noise_bound(
        electrons,
        np.ascontiguousarray(good, dtype=np.bool_),
        rn2,
        np.float32(_SLACK * 2.0 * config.sigclip),
        cand,
    )
    ys, xs = np.nonzero(cand)
    if len(ys) == 0:
        return cand
    # L+ and the noise bound again at the few candidates, in the same float32 steps.
    near = _window(electrons, ys, xs, 1)
    centre = np.float32(2.0) * near[:, 1, 1]
    up, down, left, right = near[:, 0, 1], near[:, 2, 1], near[:, 1, 0], near[:, 1, 2]
    lap = np.maximum(centre - up - left, 0)  # laplacian_plus's steps
    lap += np.maximum(centre - up - right, 0)
    lap += np.maximum(centre - down - left, 0)
    lap += np.maximum(centre - down - right, 0)
    lap *= np.float32(0.25)
    low = _window(electrons, ys, xs, 3).min(axis=(1, 2))
    noise = np.sqrt(np.maximum(low + rn2, np.float32(1e-5)))
    fine = _fine_structure(electrons, ys, xs)
    # s' / f <= L+ / (2 max(F, 0.01 noise)) with F the unscaled fine structure.
    bound = lap / (2.0 * np.maximum(fine, 0.01 * noise))
    cand[ys, xs] = bound > _SLACK * config.objlim
    return cand


def _window(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, half: int) -> np.ndarray:
    """The ``(2 half + 1)``-square windows around the pixels, edges extended."""
    ny, nx = image.shape
    offsets = np.arange(-half, half + 1)
    rows = np.clip(ys[:, None, None] + offsets[None, :, None], 0, ny - 1)
    cols = np.clip(xs[:, None, None] + offsets[None, None, :], 0, nx - 1)
    return image[rows, cols]  # type: ignore[no-any-return]


@njit(cache=True, nogil=True)
def _noise_bound(electrons, good, rn2, factor, cand):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``cand`` = good pixels whose L+ exceeds ``factor`` times the noise's lower bound.

    The noise bound is ``sqrt(max(min7 + rn2, 1e-5))`` with ``min7`` the
    7x7 minimum (edges extended).  Row by row, on row buffers (loops the
    compiler vectorises).
    """
    ny, nx = electrons.shape
    # Minimum over 7 columns, edges extended.
    rows = np.empty_like(electrons)
    for i in range(ny):
        src = electrons[i]
        dest = rows[i]
        for j in range(nx):
            dest[j] = src[j]
        for off in range(1, 4):
            for j in range(nx):
                a = src[max(j - off, 0)]
                b = src[min(j + off, nx - 1)]
                v = dest[j]
                if a < v:
                    v = a
                if b < v:
                    v = b
                dest[j] = v
    floor = np.float32(1e-5)
    zero = np.float32(0.0)
    two = np.float32(2.0)
    quarter = np.float32(0.25)
    low = np.empty(nx, np.float32)
    for i in range(ny):
        # Minimum over 7 rows of the column minima.
        first = rows[max(i - 3, 0)]
        for j in range(nx):
            low[j] = first[j]
        for r in range(max(i - 2, 0), min(i + 4, ny)):
            line = rows[r]
            for j in range(nx):
                if line[j] < low[j]:
                    low[j] = line[j]
        up_row = electrons[max(i - 1, 0)]
        down_row = electrons[min(i + 1, ny - 1)]
        row = electrons[i]
        flags = good[i]
        out = cand[i]
        for j in range(nx):
            centre = two * row[j]
            up, down = up_row[j], down_row[j]
            left, right = row[max(j - 1, 0)], row[min(j + 1, nx - 1)]
            total = max(centre - up - left, zero)
            total += max(centre - up - right, zero)
            total += max(centre - down - left, zero)
            total += max(centre - down - right, zero)
            noise = np.sqrt(max(low[j] + rn2, floor))
            out[j] = flags[j] and total * quarter > factor * noise


def dilate_box(seeds: np.ndarray, half: int) -> np.ndarray:
    """``seeds`` dilated by a ``(2 half + 1)``-square box (the image's edges cut it).

    What ``ndimage.maximum_filter(seeds, size=2 * half + 1)`` gives (its
    reflected border adds no pixel a box cut at the edge lacks).  Sparse
    seeds (candidates cover a few thousandths of a frame) are painted box by
    box in compiled code: two full-frame filters cost 0.4 CPU s at 4096x4096;
    dense ones go to the filter.
    """
    ys, xs = np.nonzero(seeds)
    if len(ys) * (2 * half + 1) ** 2 > 4 * seeds.size:
        return np.asarray(ndimage.maximum_filter(seeds, size=2 * half + 1), dtype=bool)
    # Contiguous whatever nonzero returns (its index arrays are strided views
    # of one array, contiguous only when they hold a single seed): one
    # compiled signature, made ahead by the prompt worker's warm-up.
    return _paint_boxes(  # type: ignore[no-any-return]
        np.ascontiguousarray(ys, dtype=np.intp),
        np.ascontiguousarray(xs, dtype=np.intp),
        int(half),
        int(seeds.shape[0]),
        int(seeds.shape[1]),
    )


@njit(cache=True, nogil=True)
def _paint_boxes(ys, xs, half, ny, nx):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    out = np.zeros((ny, nx), np.bool_)
    for k in range(len(ys)):
        for y in range(max(ys[k] - half, 0), min(ys[k] + half + 1, ny)):
            for x in range(max(xs[k] - half, 0), min(xs[k] + half + 1, nx)):
                out[y, x] = True
    return out


def laplacian_plus(image: np.ndarray) -> np.ndarray:
    """L.A.Cosmic's clipped Laplacian (L+), computed without subsampling.

    On the 2x subsampled image every sub-pixel has two neighbours in its own
    pixel, so each of its four Laplacians is ``2 v - v_vertical - v_horizontal``
    of the pixel's neighbours; L+ is the mean of the four, clipped at zero.
    """
    p = np.pad(image, 1, mode="edge")
    centre = 2.0 * p[1:-1, 1:-1]
    up, down = p[:-2, 1:-1], p[2:, 1:-1]
    left, right = p[1:-1, :-2], p[1:-1, 2:]
    total = np.maximum(centre - up - left, 0)
    total += np.maximum(centre - up - right, 0)
    total += np.maximum(centre - down - left, 0)
    total += np.maximum(centre - down - right, 0)
    return total * np.float32(0.25)


def _fine_structure(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """L.A.Cosmic's fine structure (sepmed5 - sepmed9 of sepmed5) at given pixels.

    The separable medians take rows first, then columns, as astroscrappy's;
    the image is extended at its edges.  Compiled: every median is of an odd
    count, so a selection gives numpy's numbers exactly.
    """
    return _fine_at(  # type: ignore[no-any-return]
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(ys, dtype=np.intp),
        np.ascontiguousarray(xs, dtype=np.intp),
    )


@njit(cache=True, nogil=True)
def _median_of(values, n):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The median of the first ``n`` (odd) ``values``, which it sorts."""
    for a in range(1, n):
        v = values[a]
        b = a - 1
        while b >= 0 and values[b] > v:
            values[b + 1] = values[b]
            b -= 1
        values[b + 1] = v
    return values[n // 2]


@njit(cache=True, nogil=True)
def _fine_at(image, ys, xs):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    ny, nx = image.shape
    out = np.empty(len(ys), np.float32)
    win = np.empty((13, 13), np.float32)
    rows = np.empty((13, 9), np.float32)
    med5 = np.empty((9, 9), np.float32)
    buf = np.empty(9, np.float32)
    line = np.empty(9, np.float32)
    for c in range(len(ys)):
        for a in range(13):
            yy = min(max(ys[c] + a - 6, 0), ny - 1)
            for b in range(13):
                win[a, b] = image[yy, min(max(xs[c] + b - 6, 0), nx - 1)]
        for a in range(13):
            for b in range(9):
                for k in range(5):
                    buf[k] = win[a, b + k]
                rows[a, b] = _median_of(buf, 5)
        for a in range(9):
            for b in range(9):
                for k in range(5):
                    buf[k] = rows[a + k, b]
                med5[a, b] = _median_of(buf, 5)
        for a in range(9):
            for b in range(9):
                buf[b] = med5[a, b]
            line[a] = _median_of(buf, 9)
        centre = med5[4, 4]
        out[c] = centre - _median_of(line, 9)
    return out
