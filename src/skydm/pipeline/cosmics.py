"""Single-frame cosmic rays: L.A.Cosmic run only where a cosmic ray can be.

L.A.Cosmic (van Dokkum 2001, through ``astroscrappy``) costs about a
microsecond per pixel and iteration: 50 CPU seconds on a 4096x4096
detector, most of a prompt-processing budget spent on sky where nothing
can be found.  Its first test is a lower limit on the Laplacian over the
noise, its second a lower limit on the Laplacian over the fine structure;
both have cheap, exact upper bounds (:func:`candidate_pixels`):

* the noise is the square root of a separable 7x7 median of the pixels
  (electrons, plus the read noise squared), never below the square root of
  their 7x7 *minimum*; and its ``s - median(s)`` is never above ``s``, since
  the clipped Laplacian is never negative;
* the fine structure is computed exactly, but only at the pixels that pass
  the first bound (a separable 5x5 median and a 9x9 median of it, from a
  13x13 window around each).

A pixel that fails either bound cannot be a first-iteration cosmic ray.  The
candidates are grown by ``tile_margin`` pixels into tiles; L.A.Cosmic runs
on each tile with the configured settings, and its mask is kept within
``tile_margin - keep_margin`` pixels of a candidate, where every median the
algorithm takes lies inside the tile.  Later iterations only find pixels
next to earlier ones (the cleaning changes nothing else), so the tiled mask
equals the whole-frame one; the tests check it on simulated and real frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from skydm.errors import BadValueError, require_extra
from skydm.image import Exposure, Mask
from skydm.pipeline._cosmic_bounds import candidate_pixels, dilate_box

#: Pixels by which the image is mirrored outwards for L.A.Cosmic (more than
#: the half-width of its 9x9 median filters).
_PAD = 8


@dataclass(frozen=True)
class CosmicRayConfig:
    """How single-frame cosmic rays are found and repaired (L.A.Cosmic).

    Parameters
    ----------
    enabled : bool
        Find and repair cosmic rays at all.
    sigclip : float
        Laplacian-to-noise limit of a cosmic-ray pixel (``astroscrappy``'s
        ``sigclip``); lower finds fainter hits and more false ones.
    sigfrac : float
        Fraction of ``sigclip`` for the neighbours of a cosmic-ray pixel.
    objlim : float
        Least contrast between the Laplacian and the fine-structure image;
        it keeps the cores of stars (blurred by the PSF) out of the mask.
    niter : int
        L.A.Cosmic iterations (each finds hits next to ones already found).
    grow : int
        Pixels by which the mask is grown around each hit, to take its faint
        wings (charge diffusion) too.
    saturation_margin : int
        Pixels around saturated ones where no cosmic ray is flagged (the
        steep wings of a saturated star pass the Laplacian test).
    tiled : bool
        Run L.A.Cosmic only on tiles around the pixels that can pass its
        tests (:func:`candidate_pixels`); the same mask, 5 to 6 times
        faster on a crowded 4096x4096 detector (48.8 -> 8 to 9.5 CPU s
        with the simulator's 50 cosmic rays per megapixel).  ``False`` runs it on the
        whole frame.
    tile_margin : int
        Pixels by which the candidates are grown into tiles.
    keep_margin : int
        Pixels at a tile's cut edges whose result is not kept (L.A.Cosmic's
        medians reach 9 pixels; the rest covers the iterations).
    tile_rows : int
        Rows of the bands a tall, mostly empty tile is cut into
        (:func:`tile_boxes`): a bad column makes every row of the detector
        a candidate.
    """

    enabled: bool = True
    sigclip: float = 5.0
    sigfrac: float = 0.3
    objlim: float = 5.0
    niter: int = 4
    grow: int = 1
    saturation_margin: int = 4
    tiled: bool = True
    tile_margin: int = 16
    keep_margin: int = 10
    tile_rows: int = 256

    def __post_init__(self) -> None:
        for name in ("sigclip", "objlim"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise BadValueError(f"CosmicRayConfig.{name}", value, "a positive finite number")
        if not 0 < self.sigfrac <= 1:
            raise BadValueError("CosmicRayConfig.sigfrac", self.sigfrac, "a fraction in (0, 1]")
        if not 1 <= int(self.niter) <= 10:
            raise BadValueError("CosmicRayConfig.niter", self.niter, "an integer from 1 to 10")
        if not 0 <= int(self.grow) <= 3:
            raise BadValueError("CosmicRayConfig.grow", self.grow, "an integer from 0 to 3")
        if not 0 <= int(self.saturation_margin) <= 50:
            raise BadValueError(
                "CosmicRayConfig.saturation_margin", self.saturation_margin, "0 to 50 pixels"
            )
        if not 10 <= int(self.keep_margin) < int(self.tile_margin) <= 128:
            raise BadValueError(
                "CosmicRayConfig.tile_margin/keep_margin",
                f"{self.tile_margin}/{self.keep_margin}",
                "10 <= keep_margin < tile_margin <= 128 pixels",
            )
        if not 16 <= int(self.tile_rows) <= 1 << 16:
            raise BadValueError("CosmicRayConfig.tile_rows", self.tile_rows, "16 to 65536 rows")


def repair_cosmic_rays(
    exp: Exposure,
    image: np.ndarray,
    *,
    gain: float,
    read_noise: float,
    config: CosmicRayConfig,
) -> np.ndarray:
    """Find cosmic rays in ``image`` with L.A.Cosmic, mask and interpolate them.

    Parameters
    ----------
    exp : Exposure
        Its mask plane gets CR and INTRP on every repaired pixel; its visit
        info gives the saturation and the sky removed upstream.
    image : numpy.ndarray
        The pixels in ADU (``float32``).
    gain, read_noise : float
        Electrons per ADU and read noise in electrons (the noise model).
    config : CosmicRayConfig
        Detection limits.

    Returns
    -------
    numpy.ndarray
        The image with cosmic-ray pixels replaced by a masked 5x5 mean of
        their good neighbours (``float32``).

    Raises
    ------
    MissingExtraError
        When ``astroscrappy`` is not installed.
    """
    mask = exp.msk
    finite = np.isfinite(image)
    ignored = ((mask & np.uint32(Mask.BAD | Mask.NO_DATA)) != 0) | ~finite
    saturated = (mask & np.uint32(Mask.SAT)) != 0
    level = _typical_level(image, ignored)
    # The noise model needs the sky in the pixels; a sky removed upstream
    # (recorded in the visit info, far above what the pixels still hold) is
    # added back for the detection only.
    sky = exp.info.sky if exp.info.sky > 2.0 * abs(level) else 0.0
    # Unusable pixels take the typical level rather than zero, so that their
    # edges do not look like sharp features; saturated pixels keep their
    # values, which is how L.A.Cosmic recognises (and spares) saturated stars.
    data = (np.where(ignored, level, image) + sky).astype(np.float32)
    sat = exp.info.saturation if math.isfinite(exp.info.saturation) else float(np.inf)
    # L.A.Cosmic's median filters are blind at the border (a star cut by the
    # edge looks sharp): the image is mirrored outwards for the detection.
    padded = np.pad(data, _PAD, mode="symmetric")
    padded_ignored = np.pad(ignored, _PAD, mode="symmetric")
    found = lacosmic_mask(
        padded, padded_ignored, gain=gain, read_noise=read_noise, saturation=sat + sky,
        config=config,
    )[_PAD:-_PAD, _PAD:-_PAD]  # fmt: skip
    found &= ~ignored & ~saturated
    if saturated.any() and config.saturation_margin > 0:
        # The steep wings of a saturated core pass the Laplacian test; the
        # cores are masked SAT anyway, and their surroundings are no place to
        # interpolate.
        found[found] = ~near_marked(saturated, found, config.saturation_margin)
    if config.grow and found.any():
        found = dilate_sparse(found, config.grow) & ~ignored & ~saturated
    if not found.any():
        return image
    mask[found] |= np.uint32(Mask.CR | Mask.INTRP)
    return _interpolate(image, found | ignored, found)


def _typical_level(image: np.ndarray, ignored: np.ndarray) -> float:
    """The median of the usable pixels; of every other row and column on large images.

    It fills the unusable pixels for L.A.Cosmic (never flagged) and tells a
    sky removed upstream; a quarter of the pixels gives it to a fraction of
    the noise, for a quarter of the 0.25 CPU s at 4096x4096.
    """
    if image.size > 1 << 22:
        usable = image[::2, ::2][~ignored[::2, ::2]]
        if usable.size:
            return float(np.median(usable, overwrite_input=True))
    usable = image[~ignored]  # a copy, which the median may reorder
    return float(np.median(usable, overwrite_input=True)) if usable.size else 0.0


def near_marked(marked: np.ndarray, at: np.ndarray, reach: int) -> np.ndarray:
    """Whether each ``at`` pixel (in ``nonzero`` order) has a ``marked`` one within ``reach``.

    Within ``reach`` steps between edge neighbours (``|dy| + |dx| <=
    reach``): what ``ndimage.binary_dilation(marked, iterations=reach)``
    reaches, looked up at the few pixels asked about instead of dilating
    the whole frame (0.25 CPU s at 4096x4096).
    """
    ny, nx = marked.shape
    ys, xs = np.nonzero(at)
    hit = np.zeros(len(ys), dtype=bool)
    for dy in range(-reach, reach + 1):
        y = ys + dy
        for dx in range(-(reach - abs(dy)), reach - abs(dy) + 1):
            x = xs + dx
            ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
            hit[ok] |= marked[y[ok], x[ok]]
    return hit


def dilate_sparse(marked: np.ndarray, reach: int) -> np.ndarray:
    """``ndimage.binary_dilation(marked, iterations=reach)`` for a sparse ``marked``.

    The pixels within ``reach`` edge-neighbour steps (``|dy| + |dx| <=
    reach``) of a marked one, painted from the few marked pixels rather
    than filtering the whole frame (0.3 CPU s at 4096x4096).
    """
    ny, nx = marked.shape
    ys, xs = np.nonzero(marked)
    out = marked.copy()
    for dy in range(-reach, reach + 1):
        y = ys + dy
        for dx in range(-(reach - abs(dy)), reach - abs(dy) + 1):
            x = xs + dx
            ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
            out[y[ok], x[ok]] = True
    return out


def lacosmic_mask(
    data: np.ndarray,
    ignored: np.ndarray,
    *,
    gain: float,
    read_noise: float,
    saturation: float,
    config: CosmicRayConfig,
) -> np.ndarray:
    """L.A.Cosmic's mask of ``data`` (ADU, sky included), tiled or whole-frame.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels in ADU with the sky in them (``float32``).
    ignored : numpy.ndarray
        Pixels L.A.Cosmic must not flag (bad, no data).
    gain, read_noise : float
        Electrons per ADU and read noise in electrons.
    saturation : float
        Saturation level in ADU (``inf`` when unknown).
    config : CosmicRayConfig
        Detection limits and tiling.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the cosmic-ray pixels, before growth.
    """
    astroscrappy = require_extra("astroscrappy", "calibrate")
    data = np.ascontiguousarray(data, dtype=np.float32)

    def detect(pixels: np.ndarray, bad: np.ndarray) -> np.ndarray:
        found, _ = astroscrappy.detect_cosmics(
            pixels,
            inmask=bad,
            sigclip=config.sigclip,
            sigfrac=config.sigfrac,
            objlim=config.objlim,
            gain=gain,
            readnoise=read_noise,
            # astroscrappy compares the saturation with pixels in electrons.
            satlevel=min(saturation * gain, 1e30),
            niter=config.niter,
            sepmed=True,
            cleantype="meanmask",
        )
        return np.asarray(found, dtype=bool)

    if not config.tiled:
        return detect(data, ignored)
    seeds = candidate_pixels(
        data * np.float32(gain), ~ignored, read_noise=read_noise, config=config
    )
    out = np.zeros(data.shape, dtype=bool)
    if not seeds.any():
        return out
    grown = dilate_box(seeds, config.tile_margin)
    keep = dilate_box(seeds, config.tile_margin - config.keep_margin)
    labels, _ = ndimage.label(grown)
    threadpoolctl = require_extra("threadpoolctl", "calibrate")
    # astroscrappy starts its OpenMP threads on every call: on small tiles
    # that start-up costs ten times the work (and spins on a busy machine).
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        for tile_box in tile_boxes(labels, config):
            box = tile_box.box
            tile = detect(np.ascontiguousarray(data[box]), np.ascontiguousarray(ignored[box]))
            # Kept: near the tile's own candidates, in its own rows; another
            # tile's pixels inside this box may lie near its cut edges.
            kept = keep[box] & (labels[box] == tile_box.label)
            kept[: tile_box.rows.start - box[0].start] = False
            kept[tile_box.rows.stop - box[0].start :] = False
            out[box] |= tile & kept
    return out


@dataclass(frozen=True)
class TileBox:
    """One L.A.Cosmic tile: where it runs and which of its results are kept.

    Attributes
    ----------
    box : tuple of slice
        The pixels L.A.Cosmic runs on.
    label : int
        The connected region of grown candidates it serves.
    rows : slice
        The rows whose results it gives (the box runs past them by
        ``2 tile_margin`` where a tall region is cut into bands).
    """

    box: tuple[slice, slice]
    label: int
    rows: slice


def tile_boxes(labels: np.ndarray, config: CosmicRayConfig) -> list[TileBox]:
    """The tiles of the labelled regions of grown candidates.

    A region's tile is its bounding box, unless the box is taller than
    ``tile_rows`` and mostly empty (a bad column whose every row is a
    candidate, with the cosmic rays beside it merged in: a 4096-row box
    150 pixels wide, most of the tiles' area, for a region of 35): it is
    then cut into bands of ``tile_rows`` rows, each run on the region's
    columns within ``2 tile_margin`` rows of the band, so that every kept
    pixel still has the whole region around it to ``2 tile_margin`` rows
    and the full ``tile_margin`` box of its candidate.
    """
    out: list[TileBox] = []
    context = 2 * config.tile_margin
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        height = rows.stop - rows.start
        if height <= config.tile_rows + 2 * context:
            out.append(TileBox(box, label, rows))
            continue
        mine = labels[box] == label
        if 2 * np.count_nonzero(mine) >= mine.size:
            out.append(TileBox(box, label, rows))
            continue
        for a in range(0, height, config.tile_rows):
            b = min(a + config.tile_rows, height)
            lo, hi = max(a - context, 0), min(b + context, height)
            used = np.flatnonzero(mine[lo:hi].any(axis=0))
            if not len(used):
                continue
            out.append(
                TileBox(
                    (
                        slice(rows.start + lo, rows.start + hi),
                        slice(cols.start + int(used[0]), cols.start + int(used[-1]) + 1),
                    ),
                    label,
                    slice(rows.start + a, rows.start + b),
                )
            )
    return out


def _interpolate(image: np.ndarray, unusable: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Replace ``targets`` by the mean of the usable pixels of a growing box.

    A 5x5 box first, wider where a long track leaves no usable neighbour.
    Only the target pixels' boxes are summed (cosmic rays cover a few
    hundredths of a per cent of a frame; full-frame box filters of the image
    and of the weights cost 2 CPU s at 4096x4096).
    """
    out = image.copy()
    ny, nx = image.shape
    ys, xs = np.nonzero(targets)
    for size in (5, 9, 17, 33):
        if not len(ys):
            break
        half = size // 2
        total = np.zeros(len(ys))
        count = np.zeros(len(ys))
        for dy in range(-half, half + 1):
            yy = ys + dy
            row_ok = (yy >= 0) & (yy < ny)
            yy = np.clip(yy, 0, ny - 1)
            for dx in range(-half, half + 1):
                xx = xs + dx
                ok = row_ok & (xx >= 0) & (xx < nx)
                xx = np.clip(xx, 0, nx - 1)
                ok &= ~unusable[yy, xx]
                total += np.where(ok, image[yy, xx], 0.0)
                count += ok
        fill = count > 0
        out[ys[fill], xs[fill]] = (total[fill] / count[fill]).astype(out.dtype)
        ys, xs = ys[~fill], xs[~fill]
    return out
