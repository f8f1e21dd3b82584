"""Rendering of analytic PSF kernels (:meth:`skydm.image.psf.Psf.kernel`)."""

from __future__ import annotations

import numpy as np
import pytest

from skydm.image.psf import DoubleGaussianPsf, GaussianPsf, MoffatPsf, Psf


def _direct(psf: Psf, size: int, dx: float, dy: float) -> np.ndarray:
    """The kernel rendered on a (row, column, sub-row, sub-column) grid directly."""
    offsets = (np.arange(5) + 0.5) / 5 - 0.5
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    xs = (x - dx)[:, :, None, None] + offsets[None, None, None, :]
    ys = (y - dy)[:, :, None, None] + offsets[None, None, :, None]
    img = psf._render(xs, ys).sum(axis=(2, 3))
    return img / img.sum()


@pytest.mark.parametrize(
    "psf",
    [MoffatPsf(5.65, 3.5), MoffatPsf(2.1, 2.5), GaussianPsf(1.3), DoubleGaussianPsf(1.2, 3.0, 0.1)],
)
def test_kernel_has_the_bits_of_the_direct_rendering(psf: Psf) -> None:
    """The fine-image rendering sums each pixel's 25 sub-samples in the order
    of the direct 4-d rendering, so kernels (and every coadd built on them)
    keep their bits; and the kernel's centroid is the requested offset."""
    for size, dx, dy in ((None, 0.0, 0.0), (7, 0.25, -0.5), (23, -0.4, 0.4), (33, -0.6, -0.8)):
        side = size or psf.default_size()
        got = psf.kernel(size, dx, dy)
        assert got.tobytes() == _direct(psf, side, dx, dy).tobytes(), (side, dx, dy)
        if side >= 23:
            h = side // 2
            yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
            assert abs(float((got * xx).sum()) - dx) < 0.02
            assert abs(float((got * yy).sum()) - dy) < 0.02
