"""Faint satellite trails: a line search on each epoch's outlier significance.

A faint trail is never significant in one pixel, so the hysteresis
footprints of :mod:`skydm.coadd._cw_rules` miss it, yet its light lifts
faint sources of the coadd over the detection threshold.  Summed along its
length it is highly significant.  Each epoch's significance image (epoch
minus the model of the other epochs, in noise units) is capped (so that
compact outliers and residuals of bright stars cannot make a line), summed
into coarse blocks and projected along every direction (a discrete Radon
transform); a line whose projection exceeds ``threshold`` robust sigma is
a trail, and a strip along it is clipped from that epoch.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy import sparse


class LineAccumulator:
    """Coarse sums of one epoch's capped significance, filled band by band.

    Parameters
    ----------
    shape : tuple of int
        The binned grid (rows, columns).
    block : int
        Binned pixels per coarse block side.
    cap : float
        Significance is clipped to ``[-cap, cap]`` before summing.
    """

    def __init__(self, shape: tuple[int, int], block: int, cap: float) -> None:
        self.block = block
        self.shape = shape
        self.cap = np.float32(cap)
        self.total = np.zeros((-(-shape[0] // block), -(-shape[1] // block)), dtype=np.float32)
        self.count = np.zeros_like(self.total)

    def add(self, row0: int, sig: np.ndarray, ok: np.ndarray) -> None:
        """Add a band of rows starting at binned row ``row0``."""
        self.add_sums(row0, *column_sums(sig, ok, self.block, float(self.cap)))

    def add_sums(self, row0: int, zc: np.ndarray, nc: np.ndarray) -> None:
        """Add a band's :func:`column_sums` (rows from binned row ``row0``)."""
        c = self.block
        h = zc.shape[0]
        rows = (row0 + np.arange(h)) // c
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        self.total[rows[starts]] += np.add.reduceat(zc, starts, axis=0)
        self.count[rows[starts]] += np.add.reduceat(nc, starts, axis=0)


def column_sums(
    sig: np.ndarray, ok: np.ndarray, block: int, cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the sums of capped significance and of usable pixels over each
    ``block`` columns (the part of :meth:`LineAccumulator.add` that a band's
    own thread can do)."""
    c = block
    _, w = sig.shape
    cap32 = np.float32(cap)
    z = np.where(ok, np.clip(sig, -cap32, cap32), np.float32(0)).astype(np.float32)
    okf = ok.view(np.uint8)
    pad = (-w) % c
    if pad:
        z = np.pad(z, ((0, 0), (0, pad)))
        okf = np.pad(okf, ((0, 0), (0, pad)))
    # Strided sums: far faster than summing a reshaped array over a small axis.
    zc = z[:, 0::c].copy()
    nc = okf[:, 0::c].astype(np.float32)
    for j in range(1, c):
        zc += z[:, j::c]
        nc += okf[:, j::c]
    return zc, nc


#: Largest search tile, in coarse blocks per side.  The Radon transform's
#: cost grows as the cube of the side (directions x blocks), so a large
#: cell is searched tile by tile (cost as the square of its side); a
#: 1024-pixel cell (binned 2 x 2, blocks of 4) is one tile.
TILE_BLOCKS = 128


def find_lines(
    acc: LineAccumulator,
    threshold: float,
    min_length: float,
    exclude: np.ndarray | None = None,
    *,
    tile: int = TILE_BLOCKS,
) -> list[tuple[float, float, float]]:
    """Lines ``(theta, rho, snr)`` (rho in binned pixels from the grid centre) above
    ``threshold``.

    Each coarse block's sum is normalised by its pixel count to unit
    variance under noise; projections along each direction are normalised
    by the number of blocks they cross and then rescaled to unit robust rms
    over all directions and offsets (the blocks' noise is correlated by the
    PSF matching).  Only projections at least ``min_length`` binned pixels
    long count.  Returns at most the strongest line per direction cluster.

    ``exclude`` (binned grid, optional) marks pixels already clipped from
    the epoch (bright trails, asteroids, ghosts): blocks mostly covered by
    it are left out, so that a bright trail's many near-copies (every
    offset and direction that crosses it) neither take the place of a faint
    trail among the strongest lines nor inflate the projections' rms.

    Grids larger than ``tile`` blocks a side are searched in near-equal
    tiles of at most that size, each on its own (``min_length`` capped at a
    quarter of the tile); a line found in a tile is then judged along its
    whole length through the grid (a satellite trail is straight across the
    field) with the tile's normalisation, kept if still above
    ``threshold``, and a trail found in several tiles is returned once.
    """
    c = acc.block
    good = acc.count > 0.25 * c * c
    if exclude is not None:
        good &= block_fraction(exclude, c) < 0.25
    z = np.where(good, acc.total / np.sqrt(np.maximum(acc.count, 1.0)), 0.0)
    ny, nx = z.shape
    ty, tx = -(-ny // tile), -(-nx // tile)
    grid = (acc.shape, math.ceil(math.hypot(nx, ny)) + 2)
    if ty * tx == 1:
        return _search(z, good, c, (0, 0), grid, threshold, min_length)[0]
    # Candidates from each tile, then each judged along its whole length on
    # the whole grid (a tile's strongest lines include near-copies of a
    # trail that cross it at a small angle; along the whole grid they fade).
    yy, xx = np.indices(z.shape, dtype=np.float64)
    xb = np.asarray((xx + 0.5) * c - 0.5 - (acc.shape[1] - 1) / 2.0)[good]
    yb = np.asarray((yy + 0.5) * c - 0.5 - (acc.shape[0] - 1) / 2.0)[good]
    zs = z[good]
    ys = np.linspace(0, ny, ty + 1).round().astype(int)
    xs = np.linspace(0, nx, tx + 1).round().astype(int)
    judged: list[tuple[float, float, float]] = []
    for i in range(ty):
        for j in range(tx):
            sl = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
            th, tw = ys[i + 1] - ys[i], xs[j + 1] - xs[j]
            tile_min = min(min_length, 0.25 * max(th, tw) * c)
            origin = (int(xs[j]), int(ys[i]))
            found, (med, mad) = _search(z[sl], good[sl], c, origin, grid, threshold, tile_min)
            for theta, rho, _ in found:
                d = xb * math.cos(theta) + yb * math.sin(theta) - rho
                best = -math.inf
                for width in (0.5 * c, 1.0 * c):  # one offset bin, or a pair
                    on = np.abs(d) < width
                    if on.sum() * c >= tile_min:
                        best = max(best, (zs[on].sum() / math.sqrt(on.sum()) - med) / mad)
                if best >= threshold:
                    judged.append((theta, rho, float(best)))
    lines: list[tuple[float, float, float]] = []
    for theta, rho, snr in sorted(judged, key=lambda line: -line[2]):
        if not any(_same_line((theta, rho), (t, r), c) for t, r, _ in lines):
            lines.append((theta, rho, snr))
    return lines


def _same_line(a: tuple[float, float], b: tuple[float, float], block: int) -> bool:
    """Whether two ``(theta, rho)`` lines are one (within 4 degrees and 3 blocks)."""
    dt = abs(a[0] - b[0])
    rb = b[1]
    if dt > math.pi / 2:  # the same line seen from the other end of the angle range
        dt, rb = math.pi - dt, -rb
    return dt < math.radians(4.0) and abs(a[1] - rb) < 3 * block


class _TilePlan(NamedTuple):
    """The projection of one tile geometry along every direction, as a sparse
    matrix: row ``i * width + k`` sums the blocks (raster order, as a
    ``bincount`` would) whose offset bin is ``first[i] + k`` in direction
    ``thetas[i]``."""

    thetas: np.ndarray
    matrix: sparse.csr_matrix
    first: np.ndarray
    width: int
    #: Blocks per bin when every block is good.
    full: np.ndarray
    #: Block centres (binned pixels from the grid's centre) by column and by
    #: row, and each direction's cosine and sine: bins of a few blocks.
    xb: np.ndarray
    yb: np.ndarray
    cos: np.ndarray
    sin: np.ndarray


#: The all-ones values of every plan's matrix (one shared array, grown as needed).
_ONES = np.ones(0)
_ROUND = 1.5 * 2.0**52
_ROUND_BITS = int(np.array(_ROUND).view(np.int64))


@functools.lru_cache(maxsize=64)
def _tile_plan(
    shape: tuple[int, int], origin: tuple[int, int], c: int, grid: tuple[tuple[int, int], int]
) -> _TilePlan:
    """The projection matrix of one tile geometry (see :func:`_search`).

    It depends on the geometry alone, so the tiles of every epoch of a coadd
    share it (built once: at 4096 x 4096, 16 tiles, about 250 MB in all).
    Offsets are computed exactly as a per-direction ``rint`` of the block
    centres would, so the bins, and the order in which each bin's blocks are
    summed, are those of a plain ``bincount`` per direction.
    """
    global _ONES
    ny, nx = shape
    (gh, gw), nbins = grid
    half = nbins // 2
    # Block centres in binned pixels, relative to the binned grid's centre.
    xb = (np.arange(nx, dtype=np.float64) + origin[0]) * c + (c - 1) / 2.0 - (gw - 1) / 2.0
    yb = (np.arange(ny, dtype=np.float64) + origin[1]) * c + (c - 1) / 2.0 - (gh - 1) / 2.0
    # Directions finely enough sampled for the tile's own size.
    n_theta = max(16, int(math.pi * math.hypot(nx, ny) / 2))
    thetas = np.linspace(0.0, math.pi, n_theta, endpoint=False)
    cos = np.array([math.cos(t) for t in thetas])
    sin = np.array([math.sin(t) for t in thetas])
    u = xb[None, None, :] * cos[:, None, None] + yb[None, :, None] * sin[:, None, None]
    u /= c
    bins = np.rint(u, out=u).reshape(n_theta, -1).astype(np.int64)
    del u
    bins += half
    # Each direction's bins, from one empty bin below its first to at least
    # one empty bin above its last (so that pairs of bins need no edge case).
    first = bins.min(axis=1) - 1
    width = int((bins.max(axis=1) - first).max()) + 2
    bins -= (first - np.arange(n_theta) * width)[:, None]
    nnz, n_rows = bins.size, n_theta * width
    if _ONES.size < nnz:
        _ONES = np.ones(nnz)
    # COO to CSR is a counting sort by bin, keeping raster order within a bin.
    blocks = np.broadcast_to(np.arange(ny * nx, dtype=np.int32), (n_theta, ny * nx))
    coo = sparse.coo_matrix((_ONES[:nnz], (bins.ravel(), blocks.ravel())), shape=(n_rows, ny * nx))
    del bins
    matrix = coo.tocsr()
    matrix.data = _ONES[:nnz]  # share the ones rather than hold a copy per plan
    full = np.diff(matrix.indptr).astype(np.float64)
    if not c & (c - 1):
        xb, yb = xb / c, yb / c
    return _TilePlan(thetas, matrix, first, width, full, xb, yb, cos, sin)


def release_line_plans() -> None:
    """Free the cached projection plans (about 250 MB at 4096 x 4096) once a
    coadd's epochs have all been searched."""
    global _ONES
    _tile_plan.cache_clear()
    _ONES = np.ones(0)


def _search(
    z: np.ndarray,
    good: np.ndarray,
    c: int,
    origin: tuple[int, int],
    grid: tuple[tuple[int, int], int],
    threshold: float,
    min_length: float,
) -> tuple[list[tuple[float, float, float]], tuple[float, float]]:
    """:func:`find_lines` on one tile whose first block is ``origin`` (x, y) of
    the grid; ``grid`` is the binned grid's shape and the number of offset bins
    that span it.  Offsets are measured from the grid's centre, so that one
    tile covering the grid is the plain search.  Also returns the tile's
    normalisation of projections, ``(median, rms)``.

    The projections are kept per direction over the tile's own span of offset
    bins (``first[i]`` onwards) rather than over the whole grid's: bins
    outside it are empty, never long enough to count, and never the strongest
    unless ``threshold`` or ``min_length`` is not positive, when the whole
    span is used as is."""
    if good.sum() < 16:
        return [], (0.0, 0.0)
    (_, nbins) = grid
    half = nbins // 2
    plan = _tile_plan(z.shape, origin, c, grid)
    thetas, n_theta = plan.thetas, plan.thetas.size
    # Sums of the data per bin in one sparse product (blocks outside ``good``
    # have z = 0 and add nothing), in the order a bincount would add them.
    n_rows = n_theta * plan.width
    proj = (plan.matrix @ z.ravel().astype(np.float64)).reshape(n_theta, plan.width)
    # Counts of good blocks: all blocks less the bad ones, when they are few.
    bad_y, bad_x = np.nonzero(~good)
    if bad_y.size * 4 < z.size:
        u = plan.xb[bad_x] * plan.cos[:, None]
        u += plan.yb[bad_y] * plan.sin[:, None]
        if c & (c - 1):  # scaling by a power of two is exact and was done in the plan
            u /= c
        # Adding 1.5 * 2**52 rounds to the nearest integer (half to even, as
        # rint) and leaves it in the low bits of the float's representation.
        u += _ROUND
        bins = u.view(np.int64)
        bins -= (_ROUND_BITS + plan.first - half - np.arange(n_theta) * plan.width)[:, None]
        cnt = plan.full - np.bincount(bins.ravel(), minlength=n_rows)
    else:
        cnt = plan.matrix @ good.ravel().astype(np.float64)
    cnt = cnt.reshape(n_theta, plan.width)
    first = plan.first
    inside = first.min() >= 0 and int(first.max()) + plan.width <= nbins
    if not (inside and threshold > 0 and min_length > 0):
        proj, cnt, first = _whole_span(proj, cnt, first, nbins)
    # A trail runs between the offsets of block centres as often as on one,
    # and its blocks then split between two neighbouring bins: pairs of
    # bins are scored too, and each line takes the better of the two.
    proj2 = proj[:, :-1] + proj[:, 1:]
    cnt2 = cnt[:, :-1] + cnt[:, 1:]
    one = _normalised(proj, cnt, c, min_length)
    two = _normalised(proj2, cnt2, c, min_length)
    if one is None or two is None:
        return [], (0.0, 0.0)
    (snr, scale), (snr2, _) = one, two
    shift = np.zeros(snr.shape)
    pair = snr2 > snr[:, :-1]
    shift[:, :-1][pair] = 0.5
    snr[:, :-1] = np.maximum(snr[:, :-1], snr2)
    lines: list[tuple[float, float, float]] = []
    # Strongest first; a trail also lifts neighbouring directions and
    # offsets, which are suppressed around each accepted line.
    work = snr
    for _ in range(4):
        ii, kk = np.unravel_index(int(np.argmax(work)), work.shape)
        i, k = int(ii), int(kk)
        if work[i, k] < threshold:
            break
        j = int(first[i]) + k  # the offset bin over the whole grid
        rho_ij = (j + shift[i, k] - half) * c
        lines.append((float(thetas[i]), float(rho_ij), float(work[i, k])))
        di = max(2, n_theta // 45)
        for row in np.arange(i - di, i + di + 1) % n_theta:
            lo, hi = max(j - 3, 0) - int(first[row]), j + 4 - int(first[row])
            work[row, max(lo, 0) : max(hi, 0)] = 0.0
    return lines, scale


def _whole_span(
    proj: np.ndarray, cnt: np.ndarray, first: np.ndarray, nbins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-direction spans of bins spread over all ``nbins`` offset bins of the
    grid (bins outside it dropped, as a ``bincount`` cut to ``nbins`` would)."""
    n_theta, width = proj.shape
    cols = first[:, None] + np.arange(width)
    inside = (cols >= 0) & (cols < nbins)
    rows = np.broadcast_to(np.arange(n_theta)[:, None], cols.shape)
    out = []
    for a in (proj, cnt):
        full = np.zeros((n_theta, nbins))
        full[rows[inside], cols[inside]] = a[inside]
        out.append(full)
    return out[0], out[1], np.zeros(n_theta, dtype=np.int64)


def _normalised(
    proj: np.ndarray, cnt: np.ndarray, block: int, min_length: float
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Projections in units of their robust rms over all long enough lines (0
    elsewhere), and that normalisation ``(median, rms)``."""
    long = cnt * block >= min_length
    if long.sum() < 50:
        return None
    snr = np.where(long, proj / np.sqrt(np.maximum(cnt, 1.0)), 0.0)
    vals = snr[long]
    med = _median(vals)
    mad = 1.4826 * _median(np.abs(vals - med))
    if not mad > 0:
        return None
    return np.where(long, (snr - med) / mad, 0.0), (med, mad)


def _median(vals: np.ndarray) -> float:
    """``np.median`` of a 1-d float64 array, bit for bit, at a fraction of its cost.

    The middle order statistics are bracketed by quantiles of a regular
    subsample, and only the values inside the bracket are partitioned; if
    the bracket misses them (or a NaN is about), the whole array is."""
    n = vals.size
    k0, k1 = (n - 1) // 2, n // 2  # the middle pair (one value when n is odd)
    if n >= 4096 and not math.isnan(float(vals.sum())):
        sample = np.sort(vals[:: n // 1024])
        m = sample.size
        lo = sample[max(int(0.43 * m), 0)]
        hi = sample[min(int(0.57 * m), m - 1)]
        below = int(np.count_nonzero(vals < lo))
        inside = vals[(vals >= lo) & (vals <= hi)]
        if below <= k0 and below + inside.size > k1:
            part = np.partition(inside, [k0 - below, k1 - below])
            return float((part[k0 - below] + part[k1 - below]) / 2)
    return float(np.median(vals))


def line_strip(shape: tuple[int, int], theta: float, rho: float, half_width: float) -> np.ndarray:
    """Binned pixels within ``half_width`` of the line ``(theta, rho)``."""
    ny, nx = shape
    yy, xx = np.indices(shape, dtype=np.float32)
    d = (xx - (nx - 1) / 2.0) * math.cos(theta) + (yy - (ny - 1) / 2.0) * math.sin(theta) - rho
    return np.abs(d) <= half_width


def block_fraction(mask: np.ndarray, block: int) -> np.ndarray:
    """Fraction of each ``block`` x ``block`` block of a boolean binned map that is True."""
    h, w = mask.shape
    m = np.pad(mask, ((0, (-h) % block), (0, (-w) % block)))
    hb, wb = m.shape[0] // block, m.shape[1] // block
    return m.reshape(hb, block, wb, block).mean(axis=(1, 3))
