"""Small PNG previews of stored images (an asinh stretch, block-averaged to fit)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from skydm.image.cutout import cut_planes
from skydm.image.tiled import open_tiled

#: Longest side of a preview, in pixels.
PREVIEW_SIZE = 512


def png_gray(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``image`` (uint8, rows top to bottom)."""
    rows, cols = image.shape
    raw = b"".join(b"\0" + image[r].tobytes() for r in range(rows))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def stretch(image: np.ndarray) -> np.ndarray:
    """An asinh stretch from the sky level to the 99.5th percentile, as uint8."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    sky = float(np.median(finite))
    sigma = 1.4826 * float(np.median(np.abs(finite - sky))) or 1.0
    top = max(float(np.percentile(finite, 99.5)) - sky, 5 * sigma)
    scaled = np.arcsinh((np.nan_to_num(image, nan=sky) - sky) / sigma) / np.arcsinh(top / sigma)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def preview_png(path: str | Path, *, size: int = PREVIEW_SIZE) -> bytes:
    """A PNG preview of the image plane of ``path``, north roughly up (FITS rows flipped)."""
    tiled = open_tiled(path)
    plane = cut_planes(tiled)[0]
    ny, nx = plane.shape
    data = tiled.read(plane, slice(0, ny), slice(0, nx)).astype(np.float32)
    step = max(1, -(-max(ny, nx) // size))
    if step > 1:
        cy, cx = ny // step * step, nx // step * step
        data = np.nanmean(data[:cy, :cx].reshape(cy // step, step, cx // step, step), axis=(1, 3))
    return png_gray(stretch(data)[::-1])
