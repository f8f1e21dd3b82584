"""FITS tiled-image compression with Rice (``RICE_1``), coded in one compiled pass.

The coder writes exactly the bit stream of the FITS standard's Rice
algorithm (Pence, White & Seaman 2010; the ``fits_rcomp*`` family of
cfitsio, which ``fpack``, astropy and ``funpack`` use): per tile, the first
pixel as is, then blocks of 32 pixel differences, each block with a 3/4/5-bit
split code (8/16/32-bit pixels) followed by the Rice codes, or the raw
differences for high-entropy blocks, or nothing for all-zero blocks.  The
tests check it byte for byte against astropy's copy of cfitsio's coder.

Why not call an existing coder: astropy compresses tile by tile from Python
and fitsio's bundled cfitsio was slower still (measured in
``docs/archive.md``).  This one reads the file's big-endian pixels directly
(no byte-swapped copy), codes every tile of an image in one call and keeps a
64-bit bit accumulator, which is about twice as fast as cfitsio's coder, so
the archive compresses faster than ``fpack`` even with the SHA-256 of the
source that fpack does not compute.

:func:`rice_image_hdu` wraps the tiles in the standard binary-table HDU
(``ZIMAGE = T``, one ``1PB`` descriptor per tile, tiles in the heap).
"""

from __future__ import annotations

import re

import numpy as np
from astropy.io import fits
from numba import njit

BLOCK = 32  # pixels per Rice block, as fpack and astropy use
# bytes per pixel -> (bits per raw value, bits of the split code, largest split)
_PARAMS = {1: (8, 3, 6), 2: (16, 4, 14), 4: (32, 5, 25)}
_BLOCK_SIZE = 2880
# Keywords of the compressed HDU's own structure; an image card with one of
# these names would corrupt it, so it stays only in the exact header copy.
_RESERVED = re.compile(
    r"^(ZIMAGE|ZCMPTYPE|ZBITPIX|ZNAXIS\d*|ZTILE\d+|ZNAME\d+|ZVAL\d+|ZMASKCMP|ZSIMPLE|ZTENSION"
    r"|ZEXTEND|ZBLOCKED|ZPCOUNT|ZGCOUNT|ZHECKSUM|ZDATASUM|ZQUANTIZ|ZDITHER0|ZBLANK|ZSCALE|ZZERO"
    r"|TFIELDS|THEAP|T(TYPE|FORM|UNIT|NULL|SCAL|ZERO|DISP|DIM)\d+|EXTEND)$"
)


@njit(cache=True, nogil=True, boundscheck=False)
def _code_tiles(  # pragma: no cover - compiled; tested through rice_tiles
    raw: np.ndarray, bytepix: int, tile: int, out: np.ndarray, ends: np.ndarray
) -> int:
    """Rice-code big-endian pixels ``raw`` (uint8) tile by tile into ``out``.

    ``ends[t]`` receives the end offset of tile ``t`` in ``out``; returns the
    number of bytes written.
    """
    if bytepix == 1:
        bbits, fsbits, fsmax = 8, 3, 6
    elif bytepix == 2:
        bbits, fsbits, fsmax = 16, 4, 14
    else:
        bbits, fsbits, fsmax = 32, 5, 25
    n = raw.size // bytepix
    mask_b = (np.int64(1) << bbits) - 1
    half = np.int64(1) << (bbits - 1)
    full = np.int64(1) << bbits
    diff = np.empty(BLOCK, np.int64)
    pos = 0
    for t, start in enumerate(range(0, n, tile)):
        stop = min(start + tile, n)
        # The differences are taken modulo 2**bbits, as the C coder's short /
        # signed-char / int arithmetic wraps; so signedness never matters.
        k = start * bytepix
        first = np.int64(0)
        for b in range(bytepix):
            first = (first << 8) | np.int64(raw[k + b])
        acc = np.uint64(first)
        nacc = bbits
        while nacc >= 8:
            nacc -= 8
            out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
            pos += 1
        lastpix = first
        i = start
        while i < stop:
            nb = min(BLOCK, stop - i)
            pixelsum = np.int64(0)
            k = i * bytepix
            for j in range(nb):
                nextpix = np.int64(raw[k])
                for b in range(1, bytepix):
                    nextpix = (nextpix << 8) | np.int64(raw[k + b])
                k += bytepix
                pdiff = (nextpix - lastpix) & mask_b
                if pdiff >= half:
                    pdiff -= full
                d = (-(pdiff << 1) - 1) if pdiff < 0 else (pdiff << 1)
                diff[j] = d
                pixelsum += d
                lastpix = nextpix
            dpsum = max((pixelsum - (nb // 2) - 1) / nb, 0.0)
            psum = (np.int64(dpsum) & mask_b) >> 1
            fs = 0
            while psum > 0:
                fs += 1
                psum >>= 1
            if fs >= fsmax:  # high entropy: the differences as they are
                acc = (acc << np.uint64(fsbits)) | np.uint64(fsmax + 1)
                nacc += fsbits
                for j in range(nb):
                    acc = (acc << np.uint64(bbits)) | np.uint64(diff[j])
                    nacc += bbits
                    while nacc >= 8:
                        nacc -= 8
                        out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
                        pos += 1
            elif fs == 0 and pixelsum == 0:  # all differences zero: the code alone
                acc = acc << np.uint64(fsbits)
                nacc += fsbits
                while nacc >= 8:
                    nacc -= 8
                    out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
                    pos += 1
            else:
                acc = (acc << np.uint64(fsbits)) | np.uint64(fs + 1)
                nacc += fsbits
                fsmask = (np.int64(1) << fs) - 1
                for j in range(nb):
                    v = diff[j]
                    top = v >> fs
                    if top + 1 + fs + nacc >= 64:  # (a shift by 64 is undefined)
                        # A long run of zeros would overflow the accumulator:
                        # write the pending bits and whole zero bytes first.
                        while nacc >= 8:  # (only after the split code)
                            nacc -= 8
                            out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
                            pos += 1
                        z = top
                        if nacc > 0:
                            out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(255))
                            pos += 1
                            z -= 8 - nacc
                        while z >= 8:
                            out[pos] = 0
                            pos += 1
                            z -= 8
                        acc = np.uint64(0)
                        nacc = z
                        top = 0
                    code = (np.int64(1) << fs) | (v & fsmask)
                    acc = (acc << np.uint64(top + 1 + fs)) | np.uint64(code)
                    nacc += top + 1 + fs
                    while nacc >= 8:
                        nacc -= 8
                        out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(255))
                        pos += 1
            i += nb
        if nacc > 0:
            out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(255))
            pos += 1
        ends[t] = pos
    return pos


def rice_tiles(
    raw: np.ndarray | memoryview, bytepix: int, tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rice-code pixels in tiles of ``tile`` pixels.

    Parameters
    ----------
    raw : array or memoryview
        The pixels as stored in FITS (big-endian), as bytes.
    bytepix : int
        1, 2 or 4.
    tile : int
        Pixels per tile (the last tile may be shorter).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The coded tiles, back to back (uint8), and each tile's end offset.
    """
    if bytepix not in _PARAMS:
        raise ValueError(f"Rice codes 1, 2 or 4 bytes per pixel, not {bytepix}")
    buf = np.frombuffer(raw, dtype=np.uint8)
    n = buf.size // bytepix
    ntiles = max(1, -(-n // tile))
    # Worst case: every block high-entropy (raw values + a split code) + tile heads.
    out = np.empty(buf.size + n // BLOCK + ntiles * (2 * bytepix + 2) + 8, np.uint8)
    ends = np.zeros(ntiles, np.int64)
    used = _code_tiles(buf, bytepix, tile, out, ends)
    return out[:used], ends


def rice_image_hdu(
    raw: memoryview,
    *,
    bitpix: int,
    shape: tuple[int, ...],
    tile_shape: tuple[int, ...],
    cards: fits.Header,
) -> list[bytes | memoryview]:
    """One tile-compressed (``RICE_1``) image HDU, header and data, as FITS bytes in chunks.

    Parameters
    ----------
    raw : memoryview
        The image's pixels as stored in the source (big-endian integers).
    bitpix : int
        8, 16 or 32.
    shape : tuple of int
        The image's shape, numpy order (slowest axis first).
    tile_shape : tuple of int
        Tile shape, numpy order; tiles must be whole rows (only the slowest
        axes may be cut), so tiles are contiguous runs of pixels.
    cards : fits.Header
        The image's non-structural cards (``BZERO``/``BSCALE``/``BLANK``
        included), copied into the compressed HDU's header.
    """
    bytepix = bitpix // 8
    if tile_shape[-1] != shape[-1] or any(t != 1 for t in tile_shape[:-2]):
        raise ValueError(f"tiles {tile_shape} of an image {shape} are not runs of whole rows")
    tile = int(np.prod(tile_shape))
    coded, ends = rice_tiles(raw, bytepix, tile)
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    table = np.empty((len(ends), 2), dtype=">i4")
    table[:, 0], table[:, 1] = lengths, starts
    h = fits.Header()
    h["XTENSION"] = ("BINTABLE", "binary table extension")
    h["BITPIX"] = (8, "array data type")
    h["NAXIS"] = (2, "number of array dimensions")
    h["NAXIS1"] = (8, "width of table in bytes")
    h["NAXIS2"] = (len(ends), "number of rows in table")
    h["PCOUNT"] = (int(coded.size), "number of group parameters")
    h["GCOUNT"] = (1, "number of groups")
    h["TFIELDS"] = (1, "number of fields in each row")
    h["TTYPE1"] = "COMPRESSED_DATA"
    h["TFORM1"] = f"1PB({int(lengths.max())})"
    h["ZIMAGE"] = (True, "extension contains compressed image")
    h["ZTENSION"] = ("IMAGE", "Image extension")
    h["ZBITPIX"] = (bitpix, "array data type")
    h["ZNAXIS"] = (len(shape), "number of array dimensions")
    for k, n in enumerate(reversed(shape), start=1):
        h[f"ZNAXIS{k}"] = n
    h["ZPCOUNT"] = (0, "number of parameters")
    h["ZGCOUNT"] = (1, "number of groups")
    for k, n in enumerate(reversed(tile_shape), start=1):
        h[f"ZTILE{k}"] = (n, "size of tiles to be compressed")
    h["ZCMPTYPE"] = ("RICE_1", "compression algorithm")
    h["ZNAME1"], h["ZVAL1"] = ("BLOCKSIZE", "compression block size"), (BLOCK, "pixels per block")
    h["ZNAME2"], h["ZVAL2"] = ("BYTEPIX", "bytes per pixel"), (bytepix, "bytes per pixel")
    if "EXTNAME" not in cards:
        h["EXTNAME"] = ("COMPRESSED_IMAGE", "name of this binary table extension")
    for card in cards.cards:
        if not _RESERVED.match(card.keyword):
            h.append(card, end=True)
    pad = -(table.nbytes + coded.nbytes) % _BLOCK_SIZE
    return [h.tostring().encode("ascii"), table.tobytes(), coded.data, b"\0" * pad]
