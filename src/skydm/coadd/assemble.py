"""Coadd assembly: weighted mean, median and sigma-clipped mean of a warp stack,
the coadd PSF, and the dispatcher over every method (CompareWarp included).

Every method works in bands of rows (:meth:`WarpStack.chunks`), so memory
is bounded by one band of the whole stack, whatever the cell's size.

Weights are one scalar per warp (its inverse median variance), as Rubin's
coadds use, so that the coadd of a star is the weighted mean of its
per-epoch images and its flux is unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skydm.coadd.combine import (
    _coadd_exposure,
    clip_outliers,
    coadd_psf,
    masked_median,
    weighted_mean,
)
from skydm.coadd.stack import WarpStack, check_rows
from skydm.errors import BadValueError
from skydm.image import Exposure, Mask
from skydm.progress import Progress

__all__ = [
    "METHODS",
    "assemble_coadd",
    "assemble_simple",
    "clip_outliers",
    "coadd_psf",
    "masked_median",
    "weighted_mean",
]

METHODS = ("compare", "mean", "median", "clipped")


def assemble_simple(
    stack: WarpStack,
    method: str,
    *,
    chunk_rows: int | None = None,
    nsigma: float = 3.0,
    bar: Progress | None = None,
) -> Exposure:
    """Coadd a stack by ``"mean"``, ``"median"`` or ``"clipped"`` (see module docs).

    The median's variance is taken as pi/2 times that of the mean (its
    asymptotic efficiency for Gaussian noise).
    """
    if method not in ("mean", "median", "clipped"):
        raise BadValueError("method", method, "'mean', 'median' or 'clipped'")
    rows = check_rows(chunk_rows or stack.default_chunk_rows())
    weights = stack.weights
    ny, nx = stack.shape
    image = np.zeros((ny, nx), dtype=np.float32)
    variance = np.full((ny, nx), np.inf, dtype=np.float32)
    mask = np.zeros((ny, nx), dtype=np.uint32)
    used = np.zeros(len(stack))
    for y0, y1 in stack.chunks(rows):
        img, var, good = stack.rows(y0, y1)
        if method == "median":
            med, n = masked_median(img, good)
            _, v, wsum = weighted_mean(img, var, good, weights)
            image[y0:y1] = med
            variance[y0:y1] = np.where(n > 0, v * (math.pi / 2), np.inf)
            keep = good
        else:
            keep = (
                clip_outliers(img, var, good, weights, nsigma=nsigma)
                if method == "clipped"
                else good
            )
            m, v, wsum = weighted_mean(img, var, keep, weights)
            image[y0:y1], variance[y0:y1] = m, v
        band = mask[y0:y1]
        band[wsum <= 0] |= np.uint32(Mask.NO_DATA)
        band[(good & ~keep).any(axis=0)] |= np.uint32(Mask.CLIPPED)
        used += keep.sum(axis=(1, 2)) * weights
        if bar is not None:
            bar.advance(y1 - y0)
    return _coadd_exposure(stack, image, variance, mask, used, method)


def assemble_coadd(
    warps: Sequence[Exposure | str | Path] | WarpStack,
    method: str = "compare",
    *,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    **options: float,
) -> Exposure:
    """Coadd warps of one sky cell.

    Parameters
    ----------
    warps : sequence of Exposure or path, or WarpStack
        Warps on one pixel grid (see :func:`skydm.coadd.warp_exposure`).
    method : {"compare", "mean", "median", "clipped"}
        CompareWarp artefact rejection (default, see
        :func:`skydm.coadd.compare_warp.compare_warp`), inverse-variance
        weighted mean, median, or sigma-clipped weighted mean.
    chunk_rows : int, optional
        Rows per band; by default about 12 million pixels of stack per band.
    progress : Progress, optional
        Reports rows done.
    **options
        Passed to the method (e.g. ``nsigma`` for "clipped"; see
        :meth:`~skydm.coadd.compare_warp.CompareWarpConfig.from_options` for
        "compare", e.g. ``detect__threshold=6``).

    Returns
    -------
    Exposure
        The coadd on the cell's grid, with ``NO_DATA`` where no warp has a
        usable pixel and ``CLIPPED`` where some input pixel was rejected.

    Raises
    ------
    UserError
        Without warps, with warps on different grids, or with differing zero points.
    """
    if method not in METHODS:
        raise BadValueError("method", method, f"one of {', '.join(METHODS)}")
    own = not isinstance(warps, WarpStack)
    stack = WarpStack(warps) if not isinstance(warps, WarpStack) else warps
    try:
        if method == "compare":
            from skydm.coadd.compare_warp import CompareWarpConfig, compare_warp

            config = CompareWarpConfig.from_options(**options)
            return compare_warp(stack, config=config, chunk_rows=chunk_rows, progress=progress)
        return assemble_simple(
            stack, method, chunk_rows=chunk_rows, bar=progress, nsigma=options.get("nsigma", 3.0)
        )
    finally:
        if own:
            stack.close()
