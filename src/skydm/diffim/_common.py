"""Small helpers shared by both differencing methods: masks, fills, PSF widths."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import sep
from numba import njit
from scipy import ndimage

from skydm.image.mask import UNUSABLE, Mask
from skydm.image.psf import Psf

#: Input mask bits that describe the difference too (detections do not carry over).
CARRIED = np.uint32(
    int(UNUSABLE) | Mask.EDGE | Mask.INTRP | Mask.CLIPPED | Mask.STREAK | Mask.INJECTED
)


Dilation = Callable[[np.ndarray], np.ndarray]


def _dilated_tiles(
    plane: np.ndarray, reach: int, dilate: Dilation, tile: int
) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """(window, dilated window) for every tile of ``plane`` with a set pixel.

    Dilation distributes over union: each occupied tile, dilated alone inside
    a window ``reach`` wider, contributes its part of the whole.
    """
    ny, nx = plane.shape
    for r0 in range(0, ny, tile):
        band = plane[r0 : r0 + tile]
        if not band.any():
            continue
        cols = np.add.reduceat(band.any(axis=0), np.arange(0, nx, tile)) > 0
        for c0 in (int(c) * tile for c in np.flatnonzero(cols)):
            y0, x0 = max(r0 - reach, 0), max(c0 - reach, 0)
            y1, x1 = min(r0 + tile + reach, ny), min(c0 + tile + reach, nx)
            window = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            ty0, tx0 = r0 - y0, c0 - x0
            window[ty0 : ty0 + tile, tx0 : tx0 + tile] = plane[r0 : r0 + tile, c0 : c0 + tile]
            yield (slice(y0, y1), slice(x0, x1)), np.asarray(dilate(window), dtype=bool)


def dilate_sparse(plane: np.ndarray, reach: int, dilate: Dilation, tile: int = 128) -> np.ndarray:
    """``dilate(plane)`` for a sparse boolean ``plane``, computed tile by tile.

    ``dilate`` must not reach further than ``reach`` pixels.  Only tiles with
    a set pixel are filtered (with a margin of ``reach``), so a few masked
    stars cost a few tiles instead of full-frame passes.
    """
    if reach >= tile or plane.size <= 4 * tile * tile:
        return np.asarray(dilate(plane), dtype=bool)
    out = np.zeros_like(plane, dtype=bool)
    for window, grown in _dilated_tiles(plane, reach, dilate, tile):
        out[window] |= grown
    return out


def grow_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Carried bits of ``mask``, each grown by a ``size`` x ``size`` box."""
    return grow_masks([(mask, size)])


def grow_masks(masks: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """OR of the carried bits of each ``(mask, size)``, grown by ``size`` x ``size`` boxes.

    Every bit grows as ``ndimage.maximum_filter(plane, size, mode="constant")``
    would grow its plane; all bits at once, as one OR over the box (an OR
    filter is separable: rows, then columns), in compiled code (tile by tile
    with scipy, a frame full of cosmic rays cost 0.4 CPU s per mask at
    4096x4096).
    """
    shape = masks[0][0].shape
    out = np.zeros(shape, dtype=np.uint32)
    for mask, size in masks:
        carried = np.bitwise_and(mask, CARRIED, dtype=np.uint32)
        if size <= 1:
            out |= carried
        else:
            _or_box(carried, int(size), out)
    return out


@njit(cache=True, nogil=True)
def _or_box(src, size, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``out |=`` the OR of ``src`` over a ``size`` x ``size`` box (zero outside).

    The box spans offsets ``-(size // 2)`` to ``size - 1 - size // 2``, as a
    scipy filter of that size centred at the origin: source pixel ``j``
    reaches outputs ``j - first - size + 1`` to ``j - first`` (``first =
    -(size // 2)``), along rows and along columns alike.  Row by row, each
    source row is ORed along the row (painting each set pixel's span when
    the row holds few of them, by doubling otherwise: ORs over 2, 4, 8...
    pixels, then two overlapping ones) and scattered onto the output rows
    it reaches (only its set pixels when they are few).  Masks are sparse
    (0.2% of a 4096x4096 calexp's pixels, in every row): painting their
    pixels halves the cost of filtering every pixel.
    """
    ny, nx = src.shape
    first = -(size // 2)
    width = 1
    while 2 * width <= size:
        width *= 2
    # padded[t] = row[t + first], zero outside; the window of t starts there.
    span = nx + size - 1
    padded = np.zeros(span + width, dtype=src.dtype)
    line = np.zeros(nx, dtype=src.dtype)
    where = np.empty(nx, dtype=np.int64)
    for i in range(ny):
        row = src[i]
        k = 0
        for j in range(nx):
            if row[j] != 0:
                where[k] = j
                k += 1
        if k == 0:
            continue
        if k * size < 4 * nx:
            line[:] = 0
            for a in range(k):
                j = where[a]
                v = row[j]
                for x in range(max(j - first - size + 1, 0), min(j - first, nx - 1) + 1):
                    line[x] |= v
        else:
            padded[:] = 0
            for t in range(max(0, -first), min(span, nx - first)):
                padded[t] = row[t + first]
            w = 1
            while w < width:
                for t in range(span):
                    padded[t] |= padded[t + w]
                w *= 2
            for j in range(nx):
                line[j] = padded[j] | padded[j + size - width]
        k = 0
        for j in range(nx):
            if line[j] != 0:
                where[k] = j
                k += 1
        for y in range(max(i - first - size + 1, 0), min(i - first, ny - 1) + 1):
            dest = out[y]
            if 8 * k < nx:
                for a in range(k):
                    dest[where[a]] |= line[where[a]]
            else:
                for j in range(nx):
                    dest[j] |= line[j]


def mark_edge(mask: np.ndarray, width: int) -> None:
    """Set EDGE on a border of ``width`` pixels (where circular convolution wraps)."""
    if width <= 0:
        return
    e = np.uint32(Mask.EDGE)
    mask[:width] |= e
    mask[-width:] |= e
    mask[:, :width] |= e
    mask[:, -width:] |= e


def filled(image: np.ndarray, value: float | None = None) -> np.ndarray:
    """``float32`` ``image`` with non-finite pixels replaced (by the median).

    The input itself is returned when there is nothing to replace: callers
    treat the result as read-only.
    """
    out = np.asarray(image, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        out = out.copy()
        fill = float(np.median(out[~bad])) if value is None else value
        out[bad] = fill
    return out


def typical_variance(variance: np.ndarray, mask: np.ndarray) -> float:
    """Median variance over usable pixels: the sky-noise level the filters assume.

    Taken on every third pixel in each direction: a median of a million
    samples is as good as one of sixteen million, at a tenth of the cost.
    """
    v, m = variance[::3, ::3], mask[::3, ::3]
    good = np.isfinite(v) & ((m & np.uint32(UNUSABLE)) == 0) & (v > 0)
    if np.count_nonzero(good) < 1000:
        good = np.isfinite(variance) & ((mask & np.uint32(UNUSABLE)) == 0) & (variance > 0)
        v = variance
    return float(np.median(v[good]))


def psf_fwhm(psf: Psf) -> float:
    """FWHM in pixels from the azimuthally averaged profile, interpolated at half maximum.

    Finer than counting pixels above half maximum, which moves in steps of a
    whole pixel area.
    """
    k = psf.kernel()
    half = k.shape[0] // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    r = np.hypot(x, y).ravel()
    v = k.ravel()
    edges = np.arange(0.0, half + 0.5, 0.5)
    idx = np.digitize(r, edges) - 1
    prof = np.array([v[idx == i].mean() if np.any(idx == i) else np.nan for i in range(len(edges))])
    rad = np.array([r[idx == i].mean() if np.any(idx == i) else np.nan for i in range(len(edges))])
    ok = np.isfinite(prof)
    prof, rad = prof[ok], rad[ok]
    hm = prof[0] / 2
    below = np.flatnonzero(prof < hm)
    if below.size == 0 or below[0] == 0:
        return float(psf.fwhm)
    i = int(below[0])
    r0, r1, p0, p1 = rad[i - 1], rad[i], prof[i - 1], prof[i]
    rhalf = r0 + (p0 - hm) * (r1 - r0) / (p0 - p1)
    return float(2 * rhalf) if math.isfinite(rhalf) else float(psf.fwhm)


@dataclass
class SmoothMap:
    """A smooth image known on a coarse grid of block centres (bilinear in between).

    Attributes
    ----------
    grid : numpy.ndarray
        Values at the centres of ``factor`` x ``factor`` blocks.
    factor : int
        Block size in pixels (1: ``grid`` is the full-resolution map).
    shape : tuple of int
        Shape of the full-resolution image.
    """

    grid: np.ndarray
    factor: int
    shape: tuple[int, int]

    def _weights(self, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = self.factor
        r = np.clip((np.arange(n) - (f - 1) / 2) / f, 0, m - 1)
        i0 = np.floor(r).astype(np.intp)
        return i0, np.minimum(i0 + 1, m - 1), (r - i0).astype(np.float32)

    def _rows(self) -> np.ndarray:
        """The grid interpolated along x: ``(grid rows, full width)``."""
        if self.factor == 1:
            return self.grid
        ix0, ix1, wx = self._weights(self.shape[1], self.grid.shape[1])
        # np.take keeps C order (fancy indexing of axis 1 gives a transposed
        # layout, and row gathers from it are twenty times slower).
        rows = np.take(self.grid, ix0, axis=1)
        rows *= 1 - wx
        other = np.take(self.grid, ix1, axis=1)
        other *= wx
        rows += other
        return rows

    def _bands(self, chunk: int) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, the map on those rows) for bands of ``chunk`` rows."""
        rows = self._rows()
        if self.factor == 1:
            yield slice(0, self.shape[0]), rows
            return
        iy0, iy1, wy = self._weights(self.shape[0], self.grid.shape[0])
        for r0 in range(0, self.shape[0], chunk):
            sl = slice(r0, min(r0 + chunk, self.shape[0]))
            w = wy[sl, None]
            band = rows[iy0[sl]] * (1 - w)
            band += rows[iy1[sl]] * w
            yield sl, band

    def subtract_from(self, image: np.ndarray, scale: float = 1.0, chunk: int = 256) -> None:
        """``image -= scale * map`` in place, a band of rows at a time (no full-frame map)."""
        for sl, band in self._bands(chunk):
            if scale != 1.0:
                band = band * np.float32(scale)
            image[sl] -= band

    def subtracted(self, image: np.ndarray, chunk: int = 256) -> np.ndarray:
        """``image - map`` as a new ``float32`` array, non-finite pixels set to 0."""
        out = np.empty(self.shape, dtype=np.float32)
        for sl, band in self._bands(chunk):
            np.subtract(image[sl], band, out=out[sl])
            bad = ~np.isfinite(out[sl])
            if bad.any():
                out[sl][bad] = 0.0
        return out

    def full(self) -> np.ndarray:
        """The map at full resolution (``float32``)."""
        out = np.zeros(self.shape, dtype=np.float32)
        self.subtract_from(out, -1.0)
        return out


def _block_sums(a: np.ndarray, f: int, dtype: type) -> np.ndarray:
    """Sums over ``f`` x ``f`` blocks by strided additions (much faster than a 4-d reduce)."""
    s: np.ndarray = a[:, 0::f].astype(dtype)
    for i in range(1, f):
        s += a[:, i::f]
    out = s[0::f].copy()
    for i in range(1, f):
        out += s[i::f]
    return out


def smooth_background(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    clip_sources: bool,
    bin_factor: int = 4,
    box: int | None = None,
) -> SmoothMap:
    """Smooth background of ``image`` (sep meshes), estimated on a binned copy.

    A background is smooth by construction, so it is measured on ``bin_factor``
    x ``bin_factor`` block means (16 times fewer pixels) and interpolated back
    bilinearly from the block centres.  Pixels unusable in any of ``masks`` or
    non-finite are left out.  With ``clip_sources``, pixels more than 2.5 sigma
    from a first estimate, grown by two binned pixels, are left out of a second.
    ``box`` is the mesh size in full-resolution pixels (default: half the
    image, 64 to 256 pixels).
    """
    ny, nx = image.shape
    f = bin_factor if min(ny, nx) >= 64 * bin_factor else 1
    cy, cx = (ny // f) * f, (nx // f) * f
    binned = np.zeros((cy // f, cx // f), dtype=np.float32)
    bbad = np.zeros(binned.shape, dtype=bool)
    unusable = np.uint32(UNUSABLE)
    # Bands of rows: no full-frame temporaries (each costs 64 MB at 4096^2).
    step = f * max(1, 256 // f)
    for r0 in range(0, cy, step):
        rows = slice(r0, min(r0 + step, cy))
        img = image[rows, :cx]
        bad = ~np.isfinite(img)
        for m in masks:
            bad |= (m[rows, :cx] & unusable) != 0
        data = np.where(bad, np.float32(0.0), img).astype(np.float32, copy=False)
        good = _block_sums((~bad).view(np.uint8), f, np.uint8 if f < 16 else np.int32)
        sums = _block_sums(data, f, np.float32)
        brows = slice(r0 // f, rows.stop // f)
        np.divide(sums, np.maximum(good, 1), out=binned[brows])
        bbad[brows] = good < (f * f) // 2
    if box is None:
        mesh = int(np.clip(min(binned.shape) // 2, 16, 256 // f))
    else:
        mesh = int(np.clip(box // f, 4, max(min(binned.shape), 4)))
    box = mesh
    bkg = sep.Background(binned, mask=bbad, bw=box, bh=box, fw=3, fh=3)
    if clip_sources:
        out = np.abs(binned - bkg.back()) > 2.5 * bkg.globalrms
        out = ndimage.maximum_filter(out.view(np.uint8), size=5).view(bool)
        bkg = sep.Background(binned, mask=bbad | out, bw=box, bh=box, fw=3, fh=3)
    return SmoothMap(np.asarray(bkg.back(), dtype=np.float32), f, (ny, nx))


def residual_background(
    diff: np.ndarray, masks: Sequence[np.ndarray], *, box: int | None = None
) -> SmoothMap:
    """Smooth background left in a difference image, measured on all its sky pixels.

    A kernel fit's background polynomial is constrained only on the stamps,
    around stars, where it trades off against the kernel's wings, and sky
    estimates of crowded images are biased differently at different seeing;
    the sky between the stars is what photometry of new sources sits on.
    Sources and residuals are clipped (see :func:`smooth_background`); pixels
    unusable in any of ``masks`` are left out.  ``box``: the mesh in pixels;
    a finer mesh follows large-scale residuals (of resampled or mosaicked
    inputs) that would otherwise cluster same-sign detections.
    """
    return smooth_background(diff, masks, clip_sources=True, box=box)
