"""CompareWarp: coadds that reject transient artefacts and keep real flux (DMTN-080).

One algorithm in five stages, each a function passing a typed product to
the next (the configuration of each stage is its part of
:class:`~skydm.coadd._cw_config.CompareWarpConfig`):

1. **Plan** (:func:`plan`): the PSF-matching kernels, the bands of rows
   (whole noise tiles) and each epoch's Laplacian noise over the whole cell
   -> :class:`Plan`.
2. **Outliers** (:func:`detect_outliers`, band by band, :mod:`._cw_differences`):
   cosmic rays at full resolution (pixels sharper than the epoch's PSF
   allows, :mod:`._cw_pixels`); each warp binned and PSF-matched to a
   common target PSF, compared with the sigma-clipped weighted mean of the
   *other* epochs, in noise units rescaled to unit robust rms per fixed
   sky tile; hysteresis codes and, at each flagged pixel, the local fit of
   the difference by a multiple of the model -> :class:`Outliers`.
3. **Rules** (:func:`skydm.coadd._cw_rules.clip_maps`): the footprints of
   each epoch, and the rules that clip them, as objects combined in three
   order-independent stages (whole footprints: adds or'ed, vetoes
   subtracted; parts of footprints; extensions) -> the clip maps.
4. **Restorations and streak models** (:mod:`._cw_restore`,
   :mod:`._cw_streaks`): variable sources under clips keep their clipped
   epoch's flux; faint clipped streaks are subtracted as fitted line
   models -> :class:`~skydm.coadd._cw_assemble.Clips`.
5. **Assembly** (:func:`skydm.coadd._cw_assemble.assemble_clipped`): the
   original warps averaged with their weights, each clipped pixel replaced
   by the least-noise mixture of kept epochs with its PSF second moment.

Every statistic is taken over fixed rows of the cell (noise tiles), so the
coadd does not depend on the band height, the memory budget or the number
of threads.  Memory holds one band of rows of the stack plus one byte per
binned pixel per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from skydm.coadd._cw_assemble import Clips, assemble_clipped, band_chunks, band_clip, in_order
from skydm.coadd._cw_centroids import centroid_tracks
from skydm.coadd._cw_config import CompareWarpConfig, StreakConfig
from skydm.coadd._cw_cosmics import (
    cell_laplacian_scales,
    cosmic_ray_pixels,
    laplacian,
    sharpness_bound,
)
from skydm.coadd._cw_differences import (
    BandOutliers,
    OutlierMaps,
    band_differences,
    match_planes,
)
from skydm.coadd._cw_fits import fit_candidates, one_blas_thread
from skydm.coadd._cw_movermodel import model_movers
from skydm.coadd._cw_movers import (
    Mover,
    MoverTracks,
    epoch_times,
    reference_epochs,
)
from skydm.coadd._cw_pixels import (
    bin_planes,
    grow_pixels,
    matching_sigmas,
    psf_widths2,
)
from skydm.coadd._cw_restore import find_restorations
from skydm.coadd._cw_rules import clip_maps
from skydm.coadd._cw_streaks import (
    Streak,
    candidates,
    gather,
    in_sorted,
)
from skydm.coadd.stack import WarpStack
from skydm.errors import MissingMetadataError
from skydm.image import Exposure
from skydm.progress import Progress

__all__ = ["CompareWarpConfig", "compare_warp", "find_clips"]

#: The outlier pass reads this many binned rows of halo per kernel sigma of
#: the sharpest epoch's matching Gaussian (its truncation is 3.5 sigma),
#: plus :data:`HALO_ROWS` rows.
HALO_SIGMAS = 4
HALO_ROWS = 2


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
        Rows per band (default: about 12 million stack pixels per band),
        rounded down to whole noise tiles; the coadd does not depend on it.
    progress : Progress, optional
        Reports the passes over the bands.
    threads : int
        Bands read and filtered at once (the result does not depend on it).

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
    non-positive variance on more than ``config.inputs.max_bad_variance`` of
    their usable pixels (see :meth:`WarpStack.check_variance`).

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
    stack.check_variance(config.inputs.max_bad_variance)


@dataclass(frozen=True)
class Plan:
    """What every band of the outlier pass shares (stage 1).

    Attributes
    ----------
    sigmas : numpy.ndarray
        Per epoch, the Gaussian sigma (pixels) matching its PSF to the target.
    target_fwhm : float
        The target PSF's FWHM (pixels).
    bounds, widths2, lap_scales : numpy.ndarray
        Per epoch: its PSF's sharpness bound, squared FWHM, and the
        Laplacian's noise over the cell (cosmic rays).
    halo : int
        Rows read above and below each band.
    binned : tuple of int
        The binned grid's shape.
    fw : int
        The target FWHM in binned pixels, odd (windows and filters).
    chunks : list of tuple of int
        The bands of rows, whole noise tiles.
    """

    sigmas: np.ndarray
    target_fwhm: float
    bounds: np.ndarray
    widths2: np.ndarray
    lap_scales: np.ndarray
    halo: int
    binned: tuple[int, int]
    fw: int
    chunks: list[tuple[int, int]]


def plan(stack: WarpStack, cfg: CompareWarpConfig, chunk_rows: int | None) -> Plan:
    """Stage 1: the kernels, bands and cell-wide noise of the outlier pass."""
    b = cfg.detect.bin
    ny, nx = stack.shape
    psfs = [m.psf for m in stack.members]
    sigmas, target_fwhm = matching_sigmas(psfs, cfg.detect.target_extra)
    fw = max(3, round(target_fwhm / b) | 1)
    bsig = float((sigmas / b).max(initial=0.0))
    # Enough rows that the matched planes, the model's local peak and the
    # fit windows (``fw // 2`` past the core, twice) are those of the cell.
    halo = (math.ceil(HALO_SIGMAS * bsig + HALO_ROWS) + 2 * (fw // 2)) * b
    tile_rows = cfg.detect.noise_tile * b
    scales = (
        cell_laplacian_scales(stack, tile_rows) if cfg.cosmic_rays.enabled else np.ones(len(stack))
    )
    return Plan(
        sigmas=sigmas,
        target_fwhm=target_fwhm,
        bounds=np.array([sharpness_bound(p) for p in psfs]),
        widths2=psf_widths2(psfs),
        lap_scales=scales,
        halo=halo,
        binned=(-(-ny // b), -(-nx // b)),
        fw=fw,
        chunks=band_chunks(stack, chunk_rows, tile_rows),
    )


@dataclass
class Outliers:
    """Stage 2's product: the cell-wide outlier maps and, per epoch, the flat
    indices (full resolution, ascending) of its cosmic-ray pixels."""

    maps: OutlierMaps
    cosmic_rays: list[np.ndarray]


@dataclass
class _Band:
    """What the outlier pass computes for one band before merging it."""

    hits: list[tuple[int, np.ndarray]]
    diff: BandOutliers


def detect_outliers(
    stack: WarpStack,
    p: Plan,
    cfg: CompareWarpConfig,
    times: np.ndarray,
    *,
    threads: int = 2,
    progress: Progress | None = None,
) -> Outliers:
    """Stage 2: cosmic rays and PSF-matched outlier maps, band by band
    (``times``: the epochs' :func:`epoch_times`).

    The bands are read and filtered ``threads`` at a time (numpy and scipy
    release the GIL); their maps are merged in band order.
    """
    b, n = cfg.detect.bin, len(stack)
    ny, nx = stack.shape
    weights = stack.weights
    cr = cfg.cosmic_rays
    maps = OutlierMaps.empty(n, p.binned, movers=cfg.rules.mover.enabled)
    previous = reference_epochs(times)
    crs: list[list[np.ndarray]] = [[] for _ in range(n)]

    def band(y0: int, y1: int) -> _Band:
        ya, yb = max(y0 - p.halo, 0), min(y1 + p.halo, ny)
        img, var, good = stack.rows(ya, yb)
        own_hits: list[tuple[int, np.ndarray]] = []
        if cr.enabled:
            lap = laplacian(img)
            hits = cosmic_ray_pixels(
                img, var, good, p.bounds,
                threshold=cr.threshold, margin=cr.margin, sharp=cr.sharpness,
                scales=p.lap_scales, lap=lap, widths2=p.widths2, systematic=cr.systematic,
            )  # fmt: skip
            del lap
            for k in range(n):
                if hits[k].size:
                    ys, xs = np.divmod(hits[k], nx)
                    flat = grow_pixels(ys, xs, yb - ya, nx)
                    yy = flat // nx
                    own_hits.append((k, flat[(yy >= y0 - ya) & (yy < y1 - ya)] + ya * nx))
                    # Hits (in the halo too) stay out of the model and the differences.
                    good[k].reshape(-1)[flat] = False
                    img[k].reshape(-1)[flat] = 0.0
                    var[k].reshape(-1)[flat] = 0.0
            del hits
        bi, bv, bc = bin_planes(img, var, good, b)
        del img, var, good
        matched, mvar, ok = match_planes(bi, bv, bc, p.sigmas / b)
        core = slice((y0 - ya) // b, (y0 - ya) // b + (-(-(y1 - y0) // b)))
        diff = band_differences(
            matched, mvar, ok, weights, cfg, core, y0 // b, p.fw,
            previous=previous if cfg.rules.mover.enabled else None,
        )  # fmt: skip
        return _Band(own_hits, diff)

    for out in in_order(band, p.chunks, threads=threads):
        for k, own in out.hits:
            crs[k].append(own)
        out.diff.merge_into(maps)
        if progress is not None:
            progress.advance(1, "outlier detection")
    cr_index = [np.sort(np.concatenate(c)) if c else np.zeros(0, dtype=np.int64) for c in crs]
    return Outliers(maps, cr_index)


def find_clips(
    stack: WarpStack,
    *,
    config: CompareWarpConfig | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    threads: int = 2,
) -> Clips:
    """Stages 1-4: what to clip from each warp of ``stack`` (see
    :func:`compare_warp`, which assembles the coadd from them with
    :func:`~skydm.coadd._cw_assemble.assemble_clipped`)."""
    # One BLAS thread throughout (as the fits and the final pass have):
    # every matrix here is small (a band's epochs, a fit's few columns), so
    # BLAS's own threads only spin and wait, on a loaded machine for their
    # turn on a core; and the bits cannot depend on the machine's cores.
    with one_blas_thread():
        return _find_clips(stack, config, chunk_rows, progress, threads)


def _find_clips(
    stack: WarpStack,
    config: CompareWarpConfig | None,
    chunk_rows: int | None,
    progress: Progress | None,
    threads: int,
) -> Clips:
    """:func:`find_clips`' stages, run with one BLAS thread."""
    cfg = config or CompareWarpConfig()
    check_inputs(stack, cfg)
    b = cfg.detect.bin
    p = plan(stack, cfg, chunk_rows)
    if progress is not None:
        progress.total = 2 * len(p.chunks)
    t = epoch_times(stack)
    outliers = detect_outliers(stack, p, cfg, t, threads=threads, progress=progress)
    pixels = outliers.maps.pixels()
    tracks = MoverTracks()
    clip = clip_maps(
        outliers.maps.codes,
        outliers.maps.cover,
        pixels,
        cfg,
        grow=cfg.detect.grow_fwhm * p.target_fwhm / b,
        fwhm=p.target_fwhm / b,
        times=t,
        tcodes=outliers.maps.tcodes,
        tracks=tracks,
    )
    mover = cfg.rules.mover
    if mover.enabled and mover.centroid_sn > 0 and outliers.maps.peaks is not None:
        found = centroid_tracks(
            stack, outliers.maps.peaks, outliers.cosmic_rays, t, b, p.target_fwhm, mover
        )
        tracks.spans += found
    movers: list[Streak] = []
    if mover.enabled and mover.model:
        # A peak on a confirmed track is already that track's.
        link = mover.link_fwhm * p.target_fwhm / b
        models = model_movers(
            stack, tracks, outliers.cosmic_rays, b, t, cfg.detect.systematic, link
        )
        movers = models.streaks
        # A chained track that the fit over all its epochs does not confirm
        # (no point source moving along it with significant flux and
        # motion) is no mover: its chained lobes were PSF residuals of a
        # bright static source, and clipping them in every epoch took the
        # source out of the coadd (issue 19: a 28,000-count star lost half
        # its flux).
        kept = [tracks.spans[i] for i in models.movers if i < tracks.chained]
        if len(kept) < tracks.chained and tracks.others is not None:
            clip = tracks.others.copy()
            Mover(mover).clip_spans(clip, kept, outliers.maps.cover, t, p.target_fwhm / b)
    # Variable sources under clipped pixels keep their clipped epoch's flux.
    restore = find_restorations(clip, pixels, cfg, b, p.target_fwhm / b, outliers.maps.peaks)
    clips = Clips(
        clip,
        outliers.cosmic_rays,
        restore,
        bin=b,
        target_fwhm=p.target_fwhm,
        threshold=cfg.detect.threshold,
        restore_config=cfg.restore,
        outliers=pixels,
    )
    clips.streaks = movers
    if cfg.streaks.enabled:
        # A line fitted on a footprint that a mover model covers would be
        # subtracted twice: the mover's model stands, and such a footprint
        # (one holding a sample of a model's pixels) is not fitted at all.
        taken: dict[int, list[np.ndarray]] = {}
        for s in movers:
            taken.setdefault(s.k, []).append(s.index[:: max(1, s.index.size // 8)])
        owned = {k: np.concatenate(v) for k, v in taken.items()}
        clips.streaks = movers + model_streaks(
            stack, clips, cfg.streaks, p.chunks, threads=threads, owned=owned
        )
    return clips


def model_streaks(
    stack: WarpStack,
    clips: Clips,
    cfg: StreakConfig,
    chunks: list[tuple[int, int]],
    *,
    threads: int = 2,
    owned: dict[int, np.ndarray] | None = None,
) -> list[Streak]:
    """Fit a line model to every clipped footprint (:mod:`skydm.coadd._cw_streaks`)
    but those holding one of ``owned[k]`` (flat pixels of epoch ``k`` that
    another model already covers); those that pass its tests are subtracted
    at assembly instead of replaced."""
    ny, nx = stack.shape
    cands = [
        c
        for c in candidates(
            clips.clip,
            clips.bin,
            (ny, nx),
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
        )
        if owned is None or c.k not in owned or not in_sorted(owned[c.k], c.index).any()
    ]
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
    # Forked worker processes: the fits hold the GIL (:mod:`._cw_fits`).
    fitted = fit_candidates(cands, psfs, nx, workers=threads)
    return [s for s in fitted if s is not None]
