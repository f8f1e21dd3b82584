"""No pixel with data is left without it: where the rules clip every epoch,
the least discrepant epoch is given back (issue 19: 2-56 empty pixels on 8
of 22 held-out fields, where a slow mover's clips met other rules')."""

from __future__ import annotations

import numpy as np

from coadd_harness.outliers import outlier_pixels
from skydm.coadd import SkyCell, WarpStack
from skydm.coadd._cw_assemble import Clips, assemble_clipped
from skydm.image import Exposure, GaussianPsf, Mask

N, SIDE, BIN = 6, 24, 2
CELL = SkyCell.centred(150.0, 2.0, (SIDE, SIDE), 0.2)
#: Artefact light per epoch over the clipped block: a slow mover over it in
#: every epoch, least in epoch 4.
LIGHT = np.array([400.0, 900.0, 300.0, 700.0, 20.0, 500.0])


def _stack() -> tuple[WarpStack, np.ndarray]:
    rng = np.random.default_rng(5)
    sky = rng.normal(0.0, 1.0, (N, SIDE, SIDE)).astype(np.float32)
    sky[:, 8:14, 8:14] += LIGHT[:, None, None].astype(np.float32)
    warps = [
        Exposure(sky[k], np.ones_like(sky[k]), psf=GaussianPsf(1.2 + 0.1 * k), wcs=CELL.wcs)
        for k in range(N)
    ]
    return WarpStack(warps, weights=np.linspace(1.0, 1.5, N)), sky


def test_every_epoch_clipped_gives_back_the_faintest_and_leaves_no_hole() -> None:
    stack, sky = _stack()
    clip = np.zeros((N, SIDE // BIN, SIDE // BIN), dtype=bool)
    clip[:, 4:7, 4:7] = True  # every epoch clipped over rows/columns 8-13
    block = np.flatnonzero(clip[0].ravel())
    # The outlier pass's significance there: the faint epoch is fainter than the rest.
    sig = (LIGHT - np.median(LIGHT)) / 50.0
    outliers = [outlier_pixels(block, np.full(block.size, s), N) for s in sig]
    # A cosmic ray in the faintest epoch: the next faintest keeps that pixel.
    crs = [np.zeros(0, dtype=np.int64) for _ in range(N)]
    crs[4] = np.array([10 * SIDE + 10])
    clips = Clips(clip, crs, [], bin=BIN, target_fwhm=3.0, threshold=5.0, outliers=outliers)
    coadd = assemble_clipped(stack, clips, threads=1)
    assert not np.any(coadd.msk & np.uint32(Mask.NO_DATA)), "pixels left without data"
    expect = sky[4, 8:14, 8:14].copy()
    expect[2, 2] = sky[2, 10, 10]
    np.testing.assert_allclose(coadd.image[8:14, 8:14], expect, rtol=1e-5, atol=1e-4)
    # Outside the clips the coadd is the weighted mean.
    w = stack.weights
    np.testing.assert_allclose(
        coadd.image[0], (w[:, None] * sky[:, 0]).sum(0) / w.sum(), rtol=1e-5, atol=1e-5
    )
