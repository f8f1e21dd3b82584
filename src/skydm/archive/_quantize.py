"""Quantized float planes (``RICE_1`` + ``SUBTRACTIVE_DITHER_2``) written in one compiled pass.

This is the FITS standard's float quantization (Pence, White & Seaman 2010;
cfitsio's ``fits_quantize_float``): per tile, each pixel becomes
``NINT((x − ZZERO)/ZSCALE + r − 0.5)`` with ``r`` the standard's sequence of
10 000 uniform deviates (a Park–Miller generator from seed 1), entered at a
point set by the tile's row number and ``ZDITHER0``; with
``SUBTRACTIVE_DITHER_2`` an exact zero becomes the reserved ``ZERO_VALUE``
and a NaN the null value, so both come back exactly.  Readers (astropy,
``funpack``, ds9) undo it with the same sequence.

Why not astropy's ``CompImageHDU``: on a calexp most of its time goes to
header conversions and configuration look-ups rather than to coding; here
the quantizer is a numba loop, the integers are Rice-coded by the archive's
own coder (:mod:`._rice`, twice cfitsio's speed) and the binary-table HDU is
assembled directly (:func:`._gzip2.tile_table_hdu`).  ``benchmarks/archive.py``
measures it against ``fpack -q 16``.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from astropy.io import fits
from numba import njit

from skydm.archive._gzip2 import tile_table_hdu
from skydm.archive._rice import BLOCK, rice_tiles

N_RANDOM = 10000
NULL_VALUE = -2147483647  # ZBLANK: a NaN pixel
ZERO_VALUE = -2147483646  # SUBTRACTIVE_DITHER_2: an exact zero
_INT_LIMIT = 2.0e9  # quantized values must stay clear of the reserved integers


def _standard_randoms() -> np.ndarray:
    """The FITS standard's dither sequence (cfitsio's ``fits_init_randoms``)."""
    a, m, seed = 16807.0, 2147483647.0, 1.0
    out = np.empty(N_RANDOM, np.float32)
    for i in range(N_RANDOM):
        temp = a * seed
        seed = temp - m * int(temp / m)
        out[i] = seed / m
    if int(seed) != 1043618065:  # the standard's check on the 10000th seed
        raise RuntimeError("the dither sequence is wrong; this is a bug in skydm")
    return out.astype(np.float64)  # float32 values, promoted as cfitsio does


RANDOMS = _standard_randoms()


@njit(cache=True, nogil=True)
def _quantize(  # pragma: no cover - compiled; tested through the readers
    x: np.ndarray, tile: int, first_row: int, scale: float, randoms: np.ndarray, out: np.ndarray
) -> None:
    """Quantize the flat plane ``x`` into ``out``: big-endian int32 bytes (``4 * x.size``).

    ``x`` may be float32 or float64: ``v * inv`` is computed in float64 either
    way (a float32 is promoted exactly, as cfitsio promotes it), so the
    integers do not depend on the input's width; writing them big-endian
    here saves the Rice coder a byte-swapped copy.
    """
    n = x.size
    inv = 1.0 / scale
    for start in range(0, n, tile):
        row = start // tile + first_row
        iseed = (row - 1) % N_RANDOM
        nextrand = int(randoms[iseed] * 500.0)
        for i in range(start, min(start + tile, n)):
            v = np.float64(x[i])
            if v != v:
                q = NULL_VALUE
            elif v == 0.0:
                q = ZERO_VALUE
            else:
                f = v * inv + randoms[nextrand] - 0.5
                q = int(f + 0.5) if f >= 0.0 else int(f - 0.5)
            k = 4 * i
            out[k] = np.uint8((q >> 24) & 255)
            out[k + 1] = np.uint8((q >> 16) & 255)
            out[k + 2] = np.uint8((q >> 8) & 255)
            out[k + 3] = np.uint8(q & 255)
            nextrand += 1
            if nextrand == N_RANDOM:
                iseed += 1
                if iseed == N_RANDOM:
                    iseed = 0
                nextrand = int(randoms[iseed] * 500.0)


def dither_seed(data: np.ndarray) -> int:
    """A reproducible ``ZDITHER0`` in 1..10000 from the plane's own bytes (as DES does)."""
    # The array's buffer is hashed in place (``tobytes`` would copy the plane).
    digest = hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
    return int.from_bytes(digest.digest()[:4], "big") % N_RANDOM + 1


def quantizable(data: np.ndarray, quantum: float) -> bool:
    """Whether every finite value fits the quantized integers at step ``quantum``."""
    if data.size == 0:
        return True
    # fmax/fmin skip NaNs without a copy of the finite values; an infinity
    # (never quantized: the plane is stored losslessly) takes the slow path.
    hi, lo = float(np.fmax.reduce(data, axis=None)), float(np.fmin.reduce(data, axis=None))
    if math.isnan(hi):
        return True  # every value NaN
    if math.isinf(hi) or math.isinf(lo):
        finite = data[np.isfinite(data)]
        return finite.size == 0 or float(np.abs(finite).max()) / quantum < _INT_LIMIT
    return max(abs(hi), abs(lo)) / quantum < _INT_LIMIT


def quantized_image_hdu(
    data: np.ndarray, header: fits.Header, name: str, *, quantum: float, tile_rows: int
) -> fits.BinTableHDU:
    """A ``RICE_1`` + ``SUBTRACTIVE_DITHER_2`` tile-compressed HDU of a 2-d float plane.

    Parameters
    ----------
    data : numpy.ndarray
        The plane (2-d, float32 or float64; NaNs allowed, no infinities).
    header : astropy.io.fits.Header
        Cards copied into the compressed HDU (WCS, recipe cards...).
    name : str
        The extension name.
    quantum : float
        The quantization step (``ZSCALE``), the same for every tile.
    tile_rows : int
        Rows per tile.
    """
    seed = dither_seed(data)  # of the plane as given (its byte order and width)
    zbitpix = -8 * data.dtype.itemsize
    native = data.dtype.newbyteorder("=")
    if native not in (np.float32, np.float64):
        native = np.dtype(np.float64)
    # No copy of a C-ordered native plane (the compiled loop promotes each value).
    flat = np.ascontiguousarray(data, dtype=native).reshape(-1)
    tile = tile_rows * data.shape[1]
    be = np.empty(4 * flat.size, np.uint8)  # the quantized plane as big-endian int32
    _quantize(flat, tile, seed, float(quantum), RANDOMS, be)
    coded, ends = rice_tiles(be, 4, tile)
    n_tiles = len(ends)
    cards = fits.Header()
    cards["ZQUANTIZ"] = ("SUBTRACTIVE_DITHER_2", "dithered quantization, zeros kept exactly")
    cards["ZDITHER0"] = (seed, "dithering offset (from the data's SHA-256)")
    cards["ZBLANK"] = (NULL_VALUE, "null (NaN) pixels")
    cards.extend(header.cards)
    scale = np.full(n_tiles, quantum, dtype=">f8")
    zero = np.zeros(n_tiles, dtype=">f8")
    return tile_table_hdu(
        coded.data, ends, cards, name,
        zbitpix=zbitpix, shape=data.shape, tile_rows=tile_rows,
        cmptype="RICE_1", zparams=(("BLOCKSIZE", BLOCK), ("BYTEPIX", 4)),
        columns=(("ZSCALE", scale), ("ZZERO", zero)),
    )  # fmt: skip


def rice_int_hdu(
    data: np.ndarray, header: fits.Header, name: str, *, tile_rows: int
) -> fits.BinTableHDU:
    """A lossless ``RICE_1`` HDU of a 2-d int32 plane (the mask)."""
    ints = np.ascontiguousarray(data, dtype=">i4")  # one copy, swapped as it is made
    coded, ends = rice_tiles(ints.view(np.uint8), 4, tile_rows * data.shape[1])
    return tile_table_hdu(
        coded.data, ends, header, name,
        zbitpix=32, shape=data.shape, tile_rows=tile_rows, cmptype="RICE_1",
        zparams=(("BLOCKSIZE", BLOCK), ("BYTEPIX", 4)),
    )  # fmt: skip
