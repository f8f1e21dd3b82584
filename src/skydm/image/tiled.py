"""Reading rectangles of FITS images without reading (or decompressing) the rest.

A cutout of a 4096 x 4096 image needs a few kilobytes of it.  A
:class:`TiledFile` parses a FITS file's structure once (headers, where each
image's bytes start, and for tile-compressed images the tile index) and then
reads any rectangle of any image HDU with positioned reads (``os.pread``, so
one parsed file serves many threads at once):

* plain images: only the rows of the rectangle are read;
* tile-compressed images (FITS tiled image compression, as the archive and
  ``fpack`` write them): only the tiles that the rectangle touches are read
  and decoded, with astropy's codecs (Rice, GZIP_1, GZIP_2).

Pixel values come out exactly as astropy would give them (``BZERO`` 2^(n-1)
integers as unsigned, other scalings as floats with ``BLANK`` as NaN), so a
rectangle equals the same slice of ``fits.getdata(path)`` bit for bit.
Quantized (lossy) compressed images and other rare layouts are read through
astropy's own section access instead, which reads only the needed tiles too.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from skydm.errors import BadFileError

_BITPIX_DTYPE = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: Codecs decoded here; any other goes through astropy's section access.
_FAST_CODECS = ("RICE_1", "RICE_ONE", "GZIP_1", "GZIP_2", "NOCOMPRESS")


@dataclass(frozen=True)
class TileIndex:
    """Where a tile-compressed image's tiles are: one ``(nbytes, offset)`` row per tile."""

    codec: str
    tile_shape: tuple[int, int]  # (rows, columns)
    descriptors: np.ndarray  # (ntiles, 2) int64: compressed size, offset in the heap
    heap_start: int  # absolute file offset of the heap
    zbitpix: int
    blocksize: int
    bytepix: int


@dataclass(frozen=True)
class ImagePlane:
    """One 2-d image HDU of a file: its header and where its pixels are.

    Attributes
    ----------
    index : int
        HDU number in the file.
    name : str
        ``EXTNAME`` (``PRIMARY`` for the primary HDU).
    header : astropy.io.fits.Header
        The image header (for a compressed HDU, the header of the image it holds).
    shape : tuple of int
        (rows, columns).
    data_start : int
        File offset of the pixels (plain images) or of the tile table.
    tiles : TileIndex or None
        The tile index of a compressed image decoded here; None for plain images.
    slow : bool
        True when the image must be read through astropy (quantized or unusual
        compression).
    """

    index: int
    name: str
    header: fits.Header
    shape: tuple[int, int]
    data_start: int
    tiles: TileIndex | None
    slow: bool = False
    scaling: tuple[int, float, float, int | None] = (0, 0.0, 1.0, None)  # bitpix, bzero...


class TiledFile:
    """A FITS file's image planes, parsed once, read by rectangle.

    Use :func:`open_tiled` (which caches parsed files by path, size and
    modification time) rather than the constructor.

    Parameters
    ----------
    path : Path
        The FITS file.

    Raises
    ------
    BadFileError
        When the file cannot be read as FITS.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.planes: list[ImagePlane] = []
        try:
            self.primary_header, self.planes = _parse(self.path)
        except BadFileError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise BadFileError(self.path, f"is not a readable FITS image: {exc}") from exc
        self.size = self.path.stat().st_size

    def plane(self, name: str | int) -> ImagePlane | None:
        """The plane called ``name`` (``EXTNAME``, case-insensitive) or at HDU ``name``."""
        for p in self.planes:
            if (isinstance(name, int) and p.index == name) or (
                isinstance(name, str) and p.name.upper() == name.upper()
            ):
                return p
        return None

    def read(self, plane: ImagePlane, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``[rows, cols]`` of ``plane`` (bounds already inside the image)."""
        y0, y1, x0, x1 = int(rows.start), int(rows.stop), int(cols.start), int(cols.stop)
        ny, nx = plane.shape
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise ValueError(f"rectangle {y0}:{y1}, {x0}:{x1} is not inside {plane.shape}")
        if plane.slow:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(self.path, lazy_load_hdus=True) as hdul:
                    return np.array(hdul[plane.index].section[y0:y1, x0:x1])
        if plane.tiles is None:
            stored = self._read_plain(plane, y0, y1, x0, x1)
        else:
            stored = self._read_tiles(plane, plane.tiles, y0, y1, x0, x1)
        return _scale(stored, plane.scaling)

    def _read_plain(self, plane: ImagePlane, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        dtype = np.dtype(_BITPIX_DTYPE[int(plane.header["BITPIX"])])
        nx = plane.shape[1]
        start = plane.data_start + (y0 * nx) * dtype.itemsize
        nbytes = (y1 - y0) * nx * dtype.itemsize
        buf = _pread(self.path, start, nbytes)
        return np.frombuffer(buf, dtype=dtype).reshape(y1 - y0, nx)[:, x0:x1]

    def _read_tiles(
        self, plane: ImagePlane, t: TileIndex, y0: int, y1: int, x0: int, x1: int
    ) -> np.ndarray:
        from astropy.io.fits.hdu.compressed._codecs import Rice1

        ty, tx = t.tile_shape
        ny, nx = plane.shape
        per_row = math.ceil(nx / tx)
        dtype = np.dtype(_BITPIX_DTYPE[t.zbitpix])
        out = np.empty((y1 - y0, x1 - x0), dtype=dtype.newbyteorder("="))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for j in range(y0 // ty, (y1 - 1) // ty + 1):
                for i in range(x0 // tx, (x1 - 1) // tx + 1):
                    nbytes, offset = (int(v) for v in t.descriptors[j * per_row + i])
                    shape = (min(ty, ny - j * ty), min(tx, nx - i * tx))
                    npix = shape[0] * shape[1]
                    raw = os.pread(fd, nbytes, t.heap_start + offset)
                    if len(raw) != nbytes:
                        raise BadFileError(self.path, "is truncated inside a compressed tile")
                    if t.codec in ("RICE_1", "RICE_ONE"):
                        codec = Rice1(blocksize=t.blocksize, bytepix=t.bytepix, tilesize=npix)
                        values = np.asarray(codec.decode(np.frombuffer(raw, np.uint8)))[:npix]
                    elif t.codec == "GZIP_2":
                        values = _unshuffle(zlib.decompress(raw, 47), dtype, npix)
                    elif t.codec == "GZIP_1":
                        values = np.frombuffer(zlib.decompress(raw, 47), dtype=dtype)
                    else:
                        values = np.frombuffer(raw, dtype=dtype)
                    tile = values.reshape(shape)
                    ty0, tx0 = j * ty, i * tx
                    sy = slice(max(y0, ty0), min(y1, ty0 + shape[0]))
                    sx = slice(max(x0, tx0), min(x1, tx0 + shape[1]))
                    out[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = tile[
                        sy.start - ty0 : sy.stop - ty0, sx.start - tx0 : sx.stop - tx0
                    ]
        finally:
            os.close(fd)
        return out


def _unshuffle(data: bytes, dtype: np.dtype, npix: int) -> np.ndarray:
    """GZIP_2's byte planes (most significant first) put back together as ``dtype`` values.

    Shifting and or-ing whole planes is several times faster than the
    transposed copy astropy makes.
    """
    size = dtype.itemsize
    planes = np.frombuffer(data, dtype=np.uint8, count=size * npix).reshape(size, npix)
    if size == 1:
        return planes[0].view(dtype)
    acc = planes[0].astype(f"u{size}")
    for k in range(1, size):
        acc <<= np.uint8(8)
        acc |= planes[k]
    return acc.view(dtype.newbyteorder("="))


def _pread(path: Path, start: int, nbytes: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = os.pread(fd, nbytes, start)
    finally:
        os.close(fd)
    if len(buf) != nbytes:
        raise BadFileError(path, f"is truncated: {nbytes} bytes wanted at offset {start}")
    return buf


def _scaling(header: fits.Header, bitpix: int) -> tuple[int, float, float, int | None]:
    blank = header.get("BLANK")
    return (
        bitpix,
        float(header.get("BZERO", 0.0)),
        float(header.get("BSCALE", 1.0)),
        int(blank) if blank is not None else None,
    )


def _scale(stored: np.ndarray, scaling: tuple[int, float, float, int | None]) -> np.ndarray:
    """Apply ``BZERO``/``BSCALE``/``BLANK`` as astropy does (native byte order out)."""
    stored = stored.astype(stored.dtype.newbyteorder("="), copy=False)
    bitpix, bzero, bscale, blank = scaling
    if bitpix < 0 or (bzero == 0.0 and bscale == 1.0):
        return np.array(stored)
    if bscale == 1.0 and bitpix in (16, 32, 64) and bzero == 2.0 ** (bitpix - 1):
        unsigned = np.dtype(f"u{bitpix // 8}")
        return (stored.view(unsigned) ^ unsigned.type(1 << (bitpix - 1))).astype(unsigned)
    if bscale == 1.0 and bitpix == 8 and bzero == -128.0:
        return (stored.astype(np.int16) - 128).astype(np.int8)
    out: np.ndarray = stored.astype(np.float32 if bitpix in (8, 16) else np.float64)
    out = out * np.float64(bscale) + np.float64(bzero)
    if blank is not None:
        out[stored == blank] = np.nan
    return out


def _tile_index(table_header: fits.Header, data_start: int) -> TileIndex | None:
    """The tile index of a compressed HDU's table, or None when it must be read by astropy."""
    if int(table_header.get("ZNAXIS", 0)) != 2 or int(table_header.get("TFIELDS", 0)) != 1:
        return None  # ZSCALE/ZZERO/ZBLANK columns: quantized or with per-tile blanks
    codec = str(table_header.get("ZCMPTYPE", "")).strip()
    form = str(table_header.get("TFORM1", "")).strip().removeprefix("1")
    if codec not in _FAST_CODECS or form[:2] not in ("PB", "QB"):
        return None
    if "ZQUANTIZ" in table_header and codec != "GZIP_2" and int(table_header["ZBITPIX"]) < 0:
        return None
    params = {
        str(table_header.get(f"ZNAME{k}", "")).strip().upper(): table_header.get(f"ZVAL{k}")
        for k in range(1, 10)
        if f"ZNAME{k}" in table_header
    }
    if int(table_header["ZBITPIX"]) < 0 and codec not in ("GZIP_1", "GZIP_2", "NOCOMPRESS"):
        return None  # floats with Rice are quantized
    rows, width = int(table_header["NAXIS2"]), int(table_header["NAXIS1"])
    desc = np.dtype(">i4" if form[0] == "P" else ">i8")
    nbytes = rows * width
    return TileIndex(
        codec=codec,
        tile_shape=(int(table_header.get("ZTILE2", 1)), int(table_header["ZTILE1"])),
        descriptors=np.frombuffer(b"", dtype=desc),  # filled by _parse
        heap_start=data_start + int(table_header.get("THEAP", nbytes)),
        zbitpix=int(table_header["ZBITPIX"]),
        blocksize=int(params.get("BLOCKSIZE", 32) or 32),
        bytepix=int(params.get("BYTEPIX", 4) or 4),
    )


def _parse(path: Path) -> tuple[fits.Header, list[ImagePlane]]:
    planes: list[ImagePlane] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            fits.open(path, lazy_load_hdus=False, memmap=False) as images,
            fits.open(
                path, lazy_load_hdus=False, memmap=False, disable_image_compression=True
            ) as tables,
        ):
            primary = images[0].header.copy()
            for k, (hdu, table) in enumerate(zip(images, tables, strict=True)):
                info = tables.fileinfo(k)
                if info is None:
                    continue
                header = hdu.header
                is_comp = isinstance(hdu, fits.CompImageHDU)
                if not (is_comp or isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU)):
                    continue
                if int(header.get("NAXIS", 0)) != 2 or int(header.get("BITPIX", 8)) not in (
                    _BITPIX_DTYPE
                ):
                    continue
                shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
                data_start = int(info["datLoc"])
                tiles = None
                slow = False
                if is_comp:
                    tiles = _tile_index(table.header, data_start)
                    slow = tiles is None
                    if tiles is not None:
                        width, rows = int(table.header["NAXIS1"]), int(table.header["NAXIS2"])
                        raw = _pread(path, data_start, width * rows)
                        desc = tiles.descriptors.dtype
                        table_rows = np.frombuffer(raw, dtype=desc).reshape(rows, 2)
                        tiles = TileIndex(
                            **{**tiles.__dict__, "descriptors": table_rows.astype(np.int64)}
                        )
                name = str(header.get("EXTNAME", "PRIMARY" if k == 0 else f"HDU{k}")).strip()
                bitpix = tiles.zbitpix if tiles is not None else int(header["BITPIX"])
                planes.append(
                    ImagePlane(
                        k,
                        name,
                        header.copy(),
                        shape,
                        data_start,
                        tiles,
                        slow=slow,
                        scaling=_scaling(header, bitpix),
                    )
                )
    if not planes:
        raise BadFileError(path, "holds no 2-d image in any HDU")
    return primary, planes


_CACHE: OrderedDict[tuple[str, int, int], TiledFile] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: Parsed files kept (each holds its headers and tile index: a few tens of kB).
CACHE_SIZE = 4096


def open_tiled(path: str | Path) -> TiledFile:
    """The parsed :class:`TiledFile` of ``path``, from a cache keyed by path, size and mtime.

    Raises
    ------
    BadFileError
        When the file is missing or not FITS.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise BadFileError(p, "no such file; check the path") from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
    parsed = TiledFile(p)
    with _CACHE_LOCK:
        _CACHE[key] = parsed
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return parsed


def tiled_hdulist(exposure: object, *, tile: int = 64) -> fits.HDUList:
    """An Exposure as FITS with every plane tile-compressed losslessly in ``tile`` squares.

    Floats use byte-shuffled gzip (``GZIP_2``) without quantization and the
    mask Rice, so every bit is kept; square tiles let a cutout decode only
    the few tiles it touches.

    Parameters
    ----------
    exposure : skydm.image.Exposure
        The exposure to write.
    tile : int
        Tile side in pixels.
    """
    from skydm.image.exposure import Exposure

    assert isinstance(exposure, Exposure)
    hdul = exposure.to_hdulist()
    out: list[fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU] = [hdul[0]]
    for hdu in hdul[1:]:
        if hdu.name not in ("IMAGE", "VARIANCE", "MASK"):
            out.append(hdu)
            continue
        is_mask = hdu.name == "MASK"
        header = hdu.header.copy()
        for key in ("BZERO", "BSCALE"):  # astropy sets them again for unsigned data
            header.remove(key, ignore_missing=True)
        out.append(
            fits.CompImageHDU(
                hdu.data,
                header=header,
                name=hdu.name,
                compression_type="RICE_1" if is_mask else "GZIP_2",
                tile_shape=(tile, tile),
                quantize_level=0.0,
            )
        )
    return fits.HDUList(out)
