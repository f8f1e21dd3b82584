"""FFT helpers shared by the differencing algorithms.

Convolutions are circular at the native image size: the border they spoil is
no wider than the kernel's half-width and is masked as EDGE by the callers, so
padding (which would turn a fast 4096 into a slow 4096 + 2k) buys nothing.
Real FFTs run in single precision when the input is ``float32``.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import scipy.fft as sfft


def workers() -> int:
    """Threads for scipy.fft: ``SKYDM_FFT_WORKERS`` or 1 (one core by default)."""
    try:
        return max(1, int(os.environ.get("SKYDM_FFT_WORKERS", "1")))
    except ValueError:
        return 1


def rfft2(image: np.ndarray) -> np.ndarray:
    """Forward real 2-d FFT (single precision for ``float32`` input)."""
    return sfft.rfft2(image, workers=workers())


def irfft2(spectrum: np.ndarray, shape: tuple[int, int], *, overwrite: bool = False) -> np.ndarray:
    """Inverse of :func:`rfft2` for an image of ``shape``.

    With ``overwrite`` the spectrum is used as scratch space: the complex
    pass along the rows then runs in place and the real pass along the
    columns makes the only new array, a third faster than ``irfft2``, which
    copies the spectrum first.
    """
    if not overwrite:
        return sfft.irfft2(spectrum, s=shape, workers=workers())
    half = sfft.ifft(spectrum, axis=0, overwrite_x=True, workers=workers())
    return sfft.irfft(half, n=shape[1], axis=1, workers=workers())


@functools.lru_cache(maxsize=32)
def _phases(n: int, offsets: tuple[int, int], half_spectrum: bool) -> np.ndarray:
    """``exp(-2 pi i k d / n)`` for frequencies ``k`` (rows) and offsets ``d`` (columns)."""
    k = np.arange(n // 2 + 1 if half_spectrum else n, dtype=np.float64)
    d = np.arange(offsets[0], offsets[1], dtype=np.float64)
    return np.exp(np.outer(k, d) * (-2j * np.pi / n)).astype(np.complex64)


def kernel_rfft2(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The rfft of ``kernel`` (odd-sized, centred) wrapped around pixel (0, 0) of ``shape``.

    Multiplying an image's spectrum by this convolves the image with the
    kernel without shifting it.  Computed as a separable DFT of the small
    kernel (two matrix products, ``complex64``) rather than an FFT of a
    zero-padded full frame, which costs several times more.
    """
    ky, kx = kernel.shape
    ny, nx = shape
    if ky > ny or kx > nx:
        # Small images (cutouts): the kernel's outer wings wrap onto its
        # core on a circular grid anyway; cut them to the largest odd size.
        cy, cx = (min(ky, ny) - 1) // 2 * 2 + 1, (min(kx, nx) - 1) // 2 * 2 + 1
        y0, x0 = (ky - cy) // 2, (kx - cx) // 2
        kernel = kernel[y0 : y0 + cy, x0 : x0 + cx]
        ky, kx = kernel.shape
    hy, hx = ky // 2, kx // 2
    ex = _phases(nx, (-hx, kx - hx), True)  # (nx//2+1, kx)
    ey = _phases(ny, (-hy, ky - hy), False)  # (ny, ky)
    inner = np.asarray(kernel, dtype=np.complex64) @ ex.T  # (ky, nx//2+1)
    return ey @ inner


@functools.lru_cache(maxsize=16)
def _cos_sin(n: int, half: int, half_spectrum: bool) -> tuple[np.ndarray, np.ndarray]:
    """``cos``, ``sin`` of ``2 pi k d / n``: frequencies ``k`` (rows), lags ``d`` (columns)."""
    k = np.arange(n // 2 + 1 if half_spectrum else n, dtype=np.float64)
    d = np.arange(-half, half + 1, dtype=np.float64)
    arg = np.outer(k, d) * (2 * np.pi / n)
    return np.cos(arg).astype(np.float32), np.sin(arg).astype(np.float32)


def symmetric_kernel_rfft2(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The (real) rfft of a point-symmetric centred ``kernel`` on ``shape``, ``float32``.

    ``sum_u k(u) cos(ky uy + kx ux)`` as ``Cy K Cx^T - Sy K Sx^T``: real
    matrix products making one ``float32`` frame, where :func:`kernel_rfft2`
    makes a ``complex64`` one whose real part is then copied (a covariance
    is point-symmetric, so its spectrum is real).
    """
    k = np.asarray(kernel, dtype=np.float32)
    hy, hx = k.shape[0] // 2, k.shape[1] // 2
    cy, sy = _cos_sin(shape[0], hy, False)
    cx, sx = _cos_sin(shape[1], hx, True)
    # One product with an inner dimension of twice the kernel's height: no
    # full-frame temporary besides the result.
    left = np.concatenate([cy, -sy], axis=1)
    right = np.concatenate([k @ cx.T, k @ sx.T], axis=0)
    return np.asarray(left @ right)


def trimmed(kernel: np.ndarray, rel: float = 1e-7) -> np.ndarray:
    """``kernel`` cropped equally on all sides while its border is below ``rel`` x its peak.

    Full-frame kernel spectra cost in proportion to the kernel's height;
    wings below single-precision resolution change nothing but that cost.
    """
    k = np.asarray(kernel)
    floor = rel * float(np.max(np.abs(k)))
    while k.shape[0] > 3 and k.shape[1] > 3:
        ring = np.concatenate([k[0], k[-1], k[1:-1, 0], k[1:-1, -1]])
        if float(np.max(np.abs(ring))) >= floor:
            break
        k = k[1:-1, 1:-1]
    return k


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Circular convolution of ``image`` with a small centred ``kernel`` (same dtype)."""
    spec = rfft2(image)
    spec *= kernel_rfft2(kernel, image.shape)
    return irfft2(spec, image.shape, overwrite=True).astype(image.dtype, copy=False)


def small_spectrum(kernel: np.ndarray, size: int) -> np.ndarray:
    """Full complex FFT of ``kernel`` wrapped around (0, 0) on a ``size`` x ``size`` grid."""
    ky, kx = kernel.shape
    pad = np.zeros((size, size))
    pad[:ky, :kx] = kernel
    pad = np.roll(pad, (-(ky // 2), -(kx // 2)), axis=(0, 1))
    return np.fft.fft2(pad)


def centred_from_spectrum(spectrum: np.ndarray, out_size: int) -> np.ndarray:
    """Real-space image of ``spectrum`` (a full FFT), cut to ``out_size`` around (0, 0)."""
    img = np.real(np.fft.ifft2(spectrum))
    img = np.fft.fftshift(img)
    c = img.shape[0] // 2
    h = out_size // 2
    return img[c - h : c + h + 1, c - h : c + h + 1]
