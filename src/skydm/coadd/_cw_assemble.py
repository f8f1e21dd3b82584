"""CompareWarp's last pass: the coadd of the original warps with what the first
two passes chose to clip (:class:`Clips`) replaced.

Kept apart from the search for outliers so that the same clips can assemble
another stack on the same grid: the scoring harness assembles the
artefact-free twins with the clips found on the artefacts, which measures
how much of a leakage figure is only the noise of the replaced pixels
(``replacement_noise`` in the testing harness, ``tests/coadd_harness/scoring.py``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from skydm.coadd._cw_config import RestoreConfig
from skydm.coadd._cw_fits import one_blas_thread
from skydm.coadd._cw_footprints import OutlierPixels
from skydm.coadd._cw_pixels import combine_band, psf_widths2
from skydm.coadd._cw_restore import Kernels, Restore, Target, restore_targets, split_targets
from skydm.coadd._cw_streaks import Streak
from skydm.coadd.combine import _coadd_exposure
from skydm.coadd.stack import WarpStack, check_rows
from skydm.errors import BadValueError
from skydm.image import Exposure, Mask
from skydm.progress import Progress


@dataclass
class Clips:
    """What CompareWarp clips from each warp of a stack.

    Attributes
    ----------
    clip : numpy.ndarray
        ``(n, rows, columns)`` bool on the grid binned ``bin`` x ``bin``.
    cosmic_rays : list of numpy.ndarray
        Per warp, flat indices of its cosmic-ray pixels (full resolution).
    restore : list of Restore
        Variable sources whose clipped epoch keeps its own flux.
    streaks : list of Streak
        Clipped footprints where the epoch is kept with a fitted line model
        subtracted instead (:mod:`skydm.coadd._cw_streaks`).
    outliers : list of OutlierPixels
        Per epoch, its outlier pixels: their significance ranks the epochs
        given back where every epoch is clipped (:func:`keep_least_discrepant`).
    """

    clip: np.ndarray
    cosmic_rays: list[np.ndarray]
    restore: list[Restore]
    bin: int
    target_fwhm: float
    threshold: float
    streaks: list[Streak] = field(default_factory=list)
    restore_config: RestoreConfig = field(default_factory=RestoreConfig)
    outliers: list[OutlierPixels] = field(default_factory=list)


def assemble_clipped(
    stack: WarpStack,
    clips: Clips,
    *,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    threads: int = 2,
    subtract_streaks: bool = True,
) -> Exposure:
    """The coadd of ``stack`` with the pixels of ``clips`` replaced (PSF-preserving).

    Each clipped pixel of an epoch is replaced by the least-noise mixture
    of the kept epochs nearest in PSF width with its PSF second moment
    (:func:`skydm.coadd._cw_pixels.combine_band`); on a variable source the
    replacement is corrected to that epoch's own flux.  On the footprints
    of ``clips.streaks`` the epoch is kept with the streak's model
    subtracted (only kept, with ``subtract_streaks=False``: the scoring
    harness assembles artefact-free warps so), and the coadd's pixels get
    the STREAK bit.

    Raises
    ------
    BadValueError
        When ``clips`` were found on a stack of another size or grid.
    """
    b = clips.bin
    n = len(stack)
    ny, nx = stack.shape
    hb, wb = -(-ny // b), -(-nx // b)
    if clips.clip.shape != (n, hb, wb) or len(clips.cosmic_rays) != n:
        raise BadValueError(
            "clips",
            f"{clips.clip.shape} binned by {b}",
            f"clips of {n} warps of {ny}x{nx} (found on a stack like this one)",
        )
    chunks = band_chunks(stack, chunk_rows, b)
    weights = stack.weights
    psfs = [m.psf for m in stack.members]
    widths2 = psf_widths2(psfs)
    times = [float(m.info.mjd) for m in stack.members]
    kernels = Kernels(psfs)
    clip, cr_index, restore = clips.clip, clips.cosmic_rays, clips.restore
    bar = progress
    if bar is not None and not bar.total:
        bar.total = len(chunks)

    image = np.zeros((ny, nx), dtype=np.float32)
    variance = np.full((ny, nx), np.inf, dtype=np.float32)
    mask = np.zeros((ny, nx), dtype=np.uint32)
    used = np.zeros(n)
    # A restoration's stamp may reach past its band: each band is read with
    # the stamps' height below it, and restorations are measured in the band
    # holding their stamp's top row; a band also takes the restorations of
    # the bands above it whose stamps reach into it, once they are measured.
    reach = 2 * kernels.half + 2 if restore else 0
    measured: list[Future[list[Target]]] = [Future() for _ in chunks]
    index = {c: i for i, c in enumerate(chunks)}

    def final_band(y0: int, y1: int) -> _BandOut:
        # Everything of a band but writing it out, in the band threads.
        i = index[y0, y1]
        ye = min(y1 + reach, ny)
        try:
            img, var, good = stack.rows(y0, ye)
            c = band_clip(clips, y0, ye, nx)
            modelled = np.zeros((ye - y0, nx), dtype=bool)
            for s in clips.streaks:
                lo, hi = np.searchsorted(s.index, (y0 * nx, ye * nx))
                if hi > lo:
                    local = s.index[lo:hi] - y0 * nx
                    c[s.k].reshape(-1)[local] = False
                    modelled.reshape(-1)[local] = True
                    if subtract_streaks:
                        img[s.k].reshape(-1)[local] -= s.value[lo:hi]
            keep_least_discrepant(c, good, clips, y0, weights)
            clipped = good & c
            mine = [it for it in restore if y0 <= max(round(it.y) - kernels.half, 0) < y1]
            found = []
            if mine:
                args = (weights, psfs, clips.restore_config)
                found = restore_targets(
                    mine, y0, img, var, good & ~c, clipped, *args, times=times, kernels=kernels
                )
            measured[i].set_result([t.moved(y0) for t in found])
        except BaseException as exc:
            measured[i].set_exception(exc)
            raise
        # Bands are started in order, so those above are measured or measuring.
        above: list[Target] = []
        j = i - 1
        while j >= 0 and chunks[j][1] + reach > y0:
            above = measured[j].result() + above
            j -= 1
        targets, _ = split_targets(above + measured[i].result(), y0, y1)
        rows_ = y1 - y0
        clipped = clipped[:, :rows_]
        m, v, ws, share = combine_band(
            img[:, :rows_], var[:, :rows_], good[:, :rows_], clipped, weights, widths2, targets
        )
        return _BandOut(m, v, ws <= 0, clipped.any(axis=0), modelled[:rows_], share)

    # One BLAS thread: with BLAS's default (one per core) the final pass
    # gave other bits on a machine with another number of cores.
    with one_blas_thread():
        bands = zip(chunks, in_order(final_band, chunks, threads=threads), strict=True)
        for (y0, y1), out in bands:
            image[y0:y1], variance[y0:y1] = out.image, out.variance
            band = mask[y0:y1]
            band[out.no_data] |= np.uint32(Mask.NO_DATA)
            band[out.clipped] |= np.uint32(Mask.CLIPPED)
            band[out.modelled] |= np.uint32(Mask.STREAK)
            used += out.used
            if bar is not None:
                bar.advance(1, "assembly")
    exp = _coadd_exposure(stack, image, variance, mask, used, "compare")
    exp.meta["CWTHRESH"] = (clips.threshold, "CompareWarp outlier threshold, sigma")
    exp.meta["CWTFWHM"] = (clips.target_fwhm, "CompareWarp target PSF FWHM, pixels")
    exp.meta["CWNCLIP"] = (int(clip.sum()), "binned pixels clipped, all epochs")
    exp.meta["CWNREST"] = (len(restore), "variable sources restored under clips")
    exp.meta["CWNSTRK"] = (len(clips.streaks), "faint streaks subtracted as models")
    exp.meta["CWNCR"] = (int(sum(c.size for c in cr_index)), "cosmic-ray pixels, all epochs")
    return exp


def keep_least_discrepant(
    c: np.ndarray, good: np.ndarray, clips: Clips, y0: int, weights: np.ndarray
) -> None:
    """The clip decision's last word: no pixel with data loses all of it.

    Where the rules together clip every epoch with data at a pixel (rules
    that are each right can add up to that: a slow mover over a variable
    star, a ghost under a trail), the least discrepant of those epochs keeps
    it: the faintest against the other epochs (the smallest signed
    significance of the outlier pass, 0 without an outlier code), a cosmic
    ray there last; ties go to the larger weight.  Nearly every artefact
    adds light, so where all epochs have some (a slow mover overlapping
    itself) the faintest holds the least.  SWarp CLIPPED and Rubin's CompareWarp never leave
    such holes either.  ``c`` (``(n, rows, columns)`` full-resolution clip
    maps of rows ``y0:``) is edited in place.
    """
    n, _, nx = c.shape
    clipped = good & c
    hole = clipped.any(axis=0)
    hole &= ~(good & ~c).any(axis=0)
    ys, xs = np.nonzero(hole)
    if ys.size == 0:
        return
    b, wb = clips.bin, clips.clip.shape[2]
    binned = (ys + y0) // b * wb + xs // b
    flat = (ys + y0) * nx + xs
    order = np.argsort(-weights, kind="stable")  # argmin takes the first of ties
    key = np.full((n, ys.size), np.inf)
    for r, k in enumerate(order):
        px = clips.outliers[k] if clips.outliers else None
        score = np.zeros(ys.size)
        if px is not None and px.idx.size:
            j = np.minimum(np.searchsorted(px.idx, binned), px.idx.size - 1)
            hit = px.idx[j] == binned
            score[hit] = px.sig[j[hit]]
        cr = clips.cosmic_rays[k]
        if cr.size:
            score[cr[np.minimum(np.searchsorted(cr, flat), cr.size - 1)] == flat] += 1e30
        key[r] = np.where(clipped[k, ys, xs], score, np.inf)
    best = order[np.argmin(key, axis=0)]
    c[best, ys, xs] = False


def band_chunks(stack: WarpStack, chunk_rows: int | None, tile: int) -> list[tuple[int, int]]:
    """The bands of rows CompareWarp's passes work on: ``chunk_rows`` (default:
    :meth:`WarpStack.default_chunk_rows`) rounded down to whole noise tiles of
    ``tile`` full-resolution rows (at least one), so that every noise
    statistic is taken over the same rows whatever the band height."""
    rows = check_rows(chunk_rows or stack.default_chunk_rows())
    return list(stack.chunks(max(tile, rows - rows % tile)))


def band_clip(clips: Clips, y0: int, ye: int, nx: int) -> np.ndarray:
    """``(n, ye - y0, nx)`` full-resolution clip maps of rows ``y0:ye``, cosmic
    rays included."""
    b = clips.bin
    c = upsample(clips.clip[:, y0 // b : -(-ye // b)], b, y0 % b, ye - y0, nx)
    for k, idx in enumerate(clips.cosmic_rays):
        lo, hi = np.searchsorted(idx, (y0 * nx, ye * nx))
        c[k].reshape(-1)[idx[lo:hi] - y0 * nx] = True
    return c


def upsample(coarse: np.ndarray, b: int, off: int, rows: int, cols: int) -> np.ndarray:
    """``(n, rows, cols)`` full-resolution copy of binned boolean maps whose first
    row holds the band's first row at offset ``off`` within its ``b`` rows.

    Strided assignments, which numpy makes without the GIL (``np.repeat``
    holds it, and took a third of the final pass's GIL time).
    """
    out = np.empty((coarse.shape[0], rows, cols), dtype=bool)
    for dy in range(b):
        first = (dy - off) % b  # the band rows at offset dy within their block
        for dx in range(b):
            part = out[:, first::b, dx::b]
            r0 = (first + off) // b
            part[...] = coarse[:, r0 : r0 + part.shape[1], : part.shape[2]]
    return out


@dataclass
class _BandOut:
    """One band of the coadd: image, variance, where no data or some epoch was
    clipped or had a streak model subtracted, and each epoch's sum of
    coefficients."""

    image: np.ndarray
    variance: np.ndarray
    no_data: np.ndarray
    clipped: np.ndarray
    modelled: np.ndarray
    used: np.ndarray


_T = TypeVar("_T")


def in_order(
    func: Callable[[int, int], _T], chunks: Sequence[tuple[int, int]], *, threads: int
) -> Iterator[_T]:
    """``func(y0, y1)`` of every band, in order, computed ``threads`` at a time
    (no more than ``threads`` results wait, so memory stays bounded)."""
    if threads <= 1:
        for y0, y1 in chunks:
            yield func(y0, y1)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="compare-warp") as pool:
        waiting: deque[Future[_T]] = deque()
        todo = iter(chunks)
        for y0, y1 in itertools.islice(todo, threads):
            waiting.append(pool.submit(func, y0, y1))
        while waiting:
            done = waiting.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                waiting.append(pool.submit(func, *nxt))
            yield done
