"""CompareWarp: coadds that reject transient artefacts and keep real flux (DMTN-080).

The algorithm, in three passes over bands of rows:

1. **Outlier detection.**  Each warp is binned (``config.bin`` x ``bin``) and
   convolved with a Gaussian that brings its PSF to a common, wider target
   PSF (the broadest input PSF convolved with a little more), so that
   seeing differences do not make stars outliers.  A robust static-sky model
   is the sigma-clipped weighted mean of these PSF-matched warps.  Each
   matched warp minus the model, divided by its noise (the matched
   variance plus a small fraction ``systematic`` of the model, for PSF
   mismatch on bright stars, rescaled so that its robust rms is 1), is
   thresholded with hysteresis: regions above ``grow_threshold`` that hold
   a pixel above ``threshold`` are outlier footprints, positive and negative.
2. **The temporal rule.**  The number of epochs in which each pixel is in
   an outlier footprint is counted.  A footprint of one epoch is clipped
   when more than ``spatial_threshold`` of its pixels are outliers in at
   most ``E`` epochs, with ``E = floor(min(max_fraction_low * n,
   max_epochs + max_fraction_high * n))`` growing with the number ``n`` of
   epochs covering it (DMTN-080's rule; Rubin's defaults 0.4, 2, 0.03).
   Variable stars differ from the model in many epochs and are kept;
   artefacts are in few and are clipped.  Footprints are also clipped when
   few epochs have an outlier peak at the same place (transients of
   different visits that overlap but are shifted), and the few-epoch pieces
   of footprints merged with many-epoch regions are clipped; compact
   PSF-shaped outliers peaking on a static source are variability and kept
   (:mod:`skydm.coadd._cw_rules`).  Faint trails below the footprint
   thresholds are found by a line search (``line_threshold`` sigma; 0 turns
   it off; :mod:`skydm.coadd._cw_lines`).  Clipped footprints are grown by
   ``grow_fwhm`` target-PSF FWHMs to take the wings of bright artefacts.
3. **Assembly.**  The original (not PSF-matched) warps are averaged with
   their scalar inverse-variance weights; a clipped pixel of an epoch is
   replaced by the least-noise mixture of the kept epochs nearest in PSF
   width that has its PSF second moment
   (:func:`skydm.coadd._cw_pixels.replacement_shares`), and where it lies on
   a variable source the replacement is corrected to that epoch's own flux
   of the source (``restore_variables``; :mod:`skydm.coadd._cw_restore`).
   The coadd mask gets ``CLIPPED`` where a pixel was clipped from some
   epoch and ``NO_DATA`` where no epoch is left.

Memory holds one band of rows of the stack plus one byte per binned pixel
per epoch.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from skydm.coadd._cw_assemble import Clips, assemble_clipped, band_chunks, band_clip, in_order
from skydm.coadd._cw_differences import BandDiff, band_differences, match_planes
from skydm.coadd._cw_footprints import Sparse
from skydm.coadd._cw_lines import LineAccumulator, find_lines, line_strip, release_line_plans
from skydm.coadd._cw_pixels import (
    bin_planes,
    cosmic_ray_pixels,
    grow_pixels,
    laplacian,
    laplacian_scale,
    matching_sigmas,
    psf_widths2,
    sharpness_bound,
)
from skydm.coadd._cw_restore import find_restorations
from skydm.coadd._cw_rules import clip_maps
from skydm.coadd._cw_streaks import (
    Candidate,
    ProfileCache,
    Streak,
    candidates,
    fit_streak,
    gather,
)
from skydm.coadd.stack import WarpStack
from skydm.errors import BadValueError, MissingMetadataError
from skydm.image import Exposure
from skydm.progress import Progress


@dataclass(frozen=True)
class CompareWarpConfig:
    """Parameters of :func:`compare_warp` (see the module docs for their roles)."""

    bin: int = 2
    threshold: float = 5.0
    grow_threshold: float = 2.5
    systematic: float = 0.05
    model_nsigma: float = 3.0
    spatial_threshold: float = 0.5
    max_epochs: float = 2.0
    max_fraction_low: float = 0.4
    max_fraction_high: float = 0.03
    grow_fwhm: float = 1.0
    target_extra: float = 1.0
    variable_chi2: float = 2.0
    variable_chi2_compact: float = 8.0
    variable_size: float = 1.0
    variable_centred: float = 0.5
    streak_length: float = 40.0
    cr_threshold: float = 5.0
    cr_margin: float = 1.3
    cr_sharpness: float = 1.5
    line_threshold: float = 5.5
    line_block: int = 4
    line_static: float = 30.0
    line_source: float = 10.0
    restore_variables: bool = True
    restore_sn: float = 20.0
    halo_size: float = 4.0
    halo_sigma: float = 3.0
    halo_box: float = 0.25
    halo_fill: float = 0.4
    halo_aspect: float = 2.5
    halo_reach: float = 1.0
    streak_models: bool = True
    streak_min_pixels: int = 6
    streak_max_pixels: int = 20_000
    #: Largest fraction of a warp's usable pixels whose variance may be zero,
    #: negative or NaN: those pixels are dropped, so more means a broken
    #: variance plane that would silently remove the warp from the cell.
    max_bad_variance: float = 0.01

    def __post_init__(self) -> None:
        if self.bin not in (1, 2, 3, 4):
            raise BadValueError("bin", self.bin, "1, 2, 3 or 4 pixels")
        if not self.threshold > self.grow_threshold > 0:
            raise BadValueError(
                "grow_threshold", self.grow_threshold, f"in (0, threshold={self.threshold})"
            )
        if not 0 <= self.spatial_threshold < 1:
            raise BadValueError("spatial_threshold", self.spatial_threshold, "a fraction in [0, 1)")
        if not (isinstance(self.line_block, int) and self.line_block >= 1):
            raise BadValueError("line_block", self.line_block, "an integer >= 1 (binned pixels)")
        if not 1 <= self.streak_min_pixels <= self.streak_max_pixels:
            raise BadValueError(
                "streak_min_pixels",
                (self.streak_min_pixels, self.streak_max_pixels),
                "1 <= streak_min_pixels <= streak_max_pixels (binned pixels)",
            )
        if not 0 <= self.max_bad_variance < 1:
            raise BadValueError("max_bad_variance", self.max_bad_variance, "a fraction in [0, 1)")
        for name in (
            "systematic",
            "grow_fwhm",
            "target_extra",
            "max_epochs",
            "line_threshold",
            "halo_size",
            "halo_sigma",
            "halo_box",
            "halo_fill",
            "halo_aspect",
            "halo_reach",
        ):
            if not getattr(self, name) >= 0:
                raise BadValueError(name, getattr(self, name), "a number >= 0")

    def epoch_threshold(self, n: np.ndarray) -> np.ndarray:
        """Largest number of outlier epochs for which a footprint is still clipped."""
        low = self.max_fraction_low * n
        high = self.max_epochs + self.max_fraction_high * n
        return np.floor(np.minimum(low, high))


def compare_warp(
    stack: WarpStack,
    *,
    config: CompareWarpConfig | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    threads: int = 2,
) -> Exposure:
    """Coadd ``stack`` with CompareWarp artefact rejection (see the module docs).

    Parameters
    ----------
    stack : WarpStack
        Warps of one cell, with their weights.
    config : CompareWarpConfig, optional
        Thresholds and rules; the defaults follow DMTN-080.
    chunk_rows : int, optional
        Rows per band (default: about 12 million stack pixels per band).
    progress : Progress, optional
        Reports the two passes over the bands.
    threads : int
        Bands read and filtered at once in the outlier and the final pass
        (the result does not depend on it).

    Returns
    -------
    Exposure
        The coadd, with ``CLIPPED`` where some epoch was clipped and
        ``NO_DATA`` where no epoch is left.  With fewer than three epochs
        no footprint can be clipped (the epoch threshold is 0) and only
        cosmic rays are removed.
    """
    clips = find_clips(
        stack, config=config, chunk_rows=chunk_rows, progress=progress, threads=threads
    )
    return assemble_clipped(stack, clips, chunk_rows=chunk_rows, progress=progress, threads=threads)


def check_inputs(stack: WarpStack, config: CompareWarpConfig) -> None:
    """Refuse warps CompareWarp cannot judge: without a PSF (the outlier maps
    are PSF-matched, and a guessed PSF lets artefacts through), or with
    non-positive variance on more than ``config.max_bad_variance`` of their
    usable pixels (see :meth:`WarpStack.check_variance`).

    Raises
    ------
    MissingMetadataError
        Naming the first warp without a PSF.
    BadFileError
        Naming the first warp with too much bad variance.
    """
    for m in stack.members:
        if m.psf is None:
            raise MissingMetadataError(
                "a PSF",
                "CompareWarp",
                m.name,
                "write the warp with its calexp's PSF, or coadd with another method "
                "(--method mean, median or clipped)",
            )
    stack.check_variance(config.max_bad_variance)


def find_clips(
    stack: WarpStack,
    *,
    config: CompareWarpConfig | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    threads: int = 2,
) -> Clips:
    """CompareWarp's first two passes: what to clip from each warp of ``stack``
    (see :func:`compare_warp`, which assembles the coadd from them with
    :func:`~skydm.coadd._cw_assemble.assemble_clipped`)."""
    cfg = config or CompareWarpConfig()
    b = cfg.bin
    n = len(stack)
    ny, nx = stack.shape
    check_inputs(stack, cfg)
    weights = stack.weights
    psfs = [m.psf for m in stack.members]
    sigmas, target_fwhm = matching_sigmas(psfs, cfg.target_extra)
    bounds = np.array([sharpness_bound(p) for p in psfs])
    widths2 = psf_widths2(psfs)
    bsig = sigmas / b
    halo = max(math.ceil(4 * float(bsig.max(initial=0.0)) + 2) * b, 2)
    hb, wb = -(-ny // b), -(-nx // b)
    fw = max(3, round(target_fwhm / b) | 1)
    codes = np.zeros((n, hb, wb), dtype=np.int8)
    sparse: Sparse = []
    crs: list[list[np.ndarray]] = [[] for _ in range(n)]
    cover = np.zeros((hb, wb), dtype=np.uint8)
    static = np.zeros((hb, wb), dtype=bool)
    peaks = np.zeros((hb, wb), dtype=bool)
    lines = (
        [LineAccumulator((hb, wb), cfg.line_block, cfg.grow_threshold) for _ in range(n)]
        if cfg.line_threshold > 0
        else None
    )
    chunks = band_chunks(stack, chunk_rows, b)
    bar = progress
    if bar is not None:
        bar.total = 2 * len(chunks)

    # Pass 1: cosmic rays at full resolution, PSF-matched binned outlier maps.
    # The bands are read and filtered by two threads (numpy and scipy release
    # the GIL); their maps are merged here, in band order.
    def band_maps(y0: int, y1: int) -> _BandMaps:
        ya, yb = max(y0 - halo, 0), min(y1 + halo, ny)
        img, var, good = stack.rows(ya, yb)
        own_hits: list[tuple[int, np.ndarray]] = []
        if cfg.cr_threshold > 0:
            lap = laplacian(img)
            scales = laplacian_scale(img, var, good, lap)
            hits = cosmic_ray_pixels(
                img,
                var,
                good,
                bounds,
                threshold=cfg.cr_threshold,
                margin=cfg.cr_margin,
                sharp=cfg.cr_sharpness,
                scales=scales,
                lap=lap,
                widths2=widths2,
            )
            del lap
            for k in range(n):
                if hits[k].size:
                    ys, xs = np.divmod(hits[k], nx)
                    flat = grow_pixels(ys, xs, yb - ya, nx)
                    yy = flat // nx
                    own_hits.append((k, flat[(yy >= y0 - ya) & (yy < y1 - ya)] + ya * nx))
                    # Hits (in the halo too) stay out of the model and the differences.
                    g = good[k].reshape(-1)
                    g[flat] = False
                    img[k].reshape(-1)[flat] = 0.0
                    var[k].reshape(-1)[flat] = 0.0
            del hits
        bi, bv, bc = bin_planes(img, var, good, b)
        del img, var, good
        matched, mvar, ok = match_planes(bi, bv, bc, bsig)
        core = slice((y0 - ya) // b, (y0 - ya) // b + (-(-(y1 - y0) // b)))
        diff = band_differences(
            matched,
            mvar,
            ok,
            weights,
            cfg,
            core,
            y0 // b,
            fw,
            wb,
            lines=lines is not None,
        )
        return _BandMaps(own_hits, diff)

    for maps in in_order(band_maps, chunks, threads=threads):
        for k, own in maps.hits:
            crs[k].append(own)
        maps.diff.merge_into(codes, cover, sparse, lines, static, peaks)
        if bar is not None:
            bar.advance(1, "outlier detection")

    # Pass 2: footprints and the temporal rule.
    clip = clip_maps(
        codes, cover, sparse, cfg, grow=cfg.grow_fwhm * target_fwhm / b, fwhm=target_fwhm / b
    )
    del codes
    n_lines = 0
    if lines is not None:
        # Faint trails below the footprint thresholds, found along their length.
        half = cfg.line_block / 2 + target_fwhm / b
        min_length = max(cfg.streak_length, 0.25 * max(hb, wb))
        # Where a faint trail crosses a bright static source its light is a
        # trifle next to the source's, and replacing the pixels there would
        # move more flux (PSF-matched replacement is not exact) than it saves.
        keep = ndimage.binary_dilation(static, structure=np.ones((fw, fw), dtype=bool))
        accs = lines

        def search(k: int) -> list[tuple[float, float, float]]:
            return find_lines(accs[k], cfg.line_threshold, min_length, exclude=clip[k])

        # The first epoch alone builds the projection plans that all share;
        # the others are searched on the band threads (the projections
        # release the GIL).
        found = [search(0)]
        if threads > 1 and n > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lines") as pool:
                found += list(pool.map(search, range(1, n)))
        else:
            found += [search(k) for k in range(1, n)]
        release_line_plans()
        for k in range(n):
            for theta, rho, _ in found[k]:
                clip[k] |= line_strip((hb, wb), theta, rho, half) & (cover > 0) & ~keep
                n_lines += 1
    cr_index = [np.sort(np.concatenate(c)) if c else np.zeros(0, dtype=np.int64) for c in crs]
    # Variable sources under clipped pixels keep their clipped epoch's flux.
    restore = find_restorations(clip, sparse, cfg, b, target_fwhm / b, peaks)
    del sparse
    clips = Clips(
        clip,
        cr_index,
        restore,
        bin=b,
        target_fwhm=target_fwhm,
        threshold=cfg.threshold,
        n_lines=n_lines,
    )
    if cfg.streak_models:
        clips.streaks = model_streaks(stack, clips, cfg, chunks, threads=threads)
    return clips


def model_streaks(
    stack: WarpStack,
    clips: Clips,
    cfg: CompareWarpConfig,
    chunks: list[tuple[int, int]],
    *,
    threads: int = 2,
) -> list[Streak]:
    """Fit a line model to every clipped footprint (:mod:`skydm.coadd._cw_streaks`);
    those that pass its tests are subtracted at assembly instead of replaced."""
    ny, nx = stack.shape
    cands = candidates(
        clips.clip,
        clips.bin,
        (ny, nx),
        min_pixels=cfg.streak_min_pixels,
        max_pixels=cfg.streak_max_pixels,
    )
    if not cands:
        return []
    # Static sources under each epoch's clips (the restorations' positions).
    spots = np.array([(r.k, r.y, r.x) for r in clips.restore], dtype=np.float64).reshape(-1, 3)
    for c in cands:
        lo, hi = c.index[0] // nx, c.index[-1] // nx
        c.sources = spots[(spots[:, 0] == c.k) & (spots[:, 1] >= lo) & (spots[:, 1] <= hi), 1:]
    psfs = [m.psf for m in stack.members]
    weights, widths2 = stack.weights, psf_widths2(psfs)
    starts = np.array([c.index[0] for c in cands])
    ends = np.array([c.index[-1] for c in cands])

    def band(y0: int, y1: int) -> None:
        mine = [
            c for c, a, e in zip(cands, starts, ends, strict=True) if a < y1 * nx and e >= y0 * nx
        ]
        if mine:
            img, var, good = stack.rows(y0, y1)
            clipped = good & band_clip(clips, y0, y1, nx)
            gather(mine, y0, img, var, good, clipped, clips.cosmic_rays, weights, widths2)

    for _ in in_order(band, chunks, threads=threads):
        pass
    caches: list[ProfileCache] = [{} for _ in psfs]

    def fit(c: Candidate) -> Streak | None:
        psf = psfs[c.k]
        return None if psf is None else fit_streak(c, nx, psf, cache=caches[c.k])

    # One thread: the fits are short Python-bound steps, which threads only slow.
    fitted = [fit(c) for c in cands]
    return [s for s in fitted if s is not None]


@dataclass
class _BandMaps:
    """What the outlier pass computes for one band before merging it."""

    hits: list[tuple[int, np.ndarray]]
    diff: BandDiff
