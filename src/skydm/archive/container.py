"""The lossless raw container: FITS tiled compression plus an exact byte map.

A raw FITS file is stored as one FITS file that any FITS reader (astropy,
``funpack``, ds9) opens:

* a primary HDU with ``SKYDMRAW = T``, the source's name, size and SHA-256
  (``ORIGSHA``),
  and (when the source's primary HDU has no image) the source's primary
  header cards;
* one tile-compressed image HDU per source image HDU, holding the pixel
  values exactly as stored in the source (the integers with their
  BZERO/BSCALE/BLANK cards, or the IEEE floats): integers with Rice
  (``RICE_1``, the default, as ``fpack`` does), floats and 64-bit integers
  with byte-shuffled gzip (``GZIP_2``) and no quantization, which keeps every
  bit, NaN payloads and -0.0 included;
* as the primary HDU's data, a byte blob holding each source header block
  exactly as it was and every byte that is not image pixels (table data,
  block padding), all zlib-compressed; the primary's ``MAP1..MAPn`` cards
  index it, one row per source HDU in order (``MAPCOLS`` names the columns).

So :func:`restore_bytes` rebuilds the source file byte for byte, and
:func:`encode` proves it on every file before it is archived.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from astropy.io import fits

from skydm.archive._rice import rice_image_hdu
from skydm.errors import BadFileError, DataCorruptionError
from skydm.image.fitsfile import NOT_FITS, fits_layout, unreadable

FORMAT_VERSION = 1
MAP_COLUMNS = ("KIND", "EXT", "NBYTES", "HDR_OFF", "HDR_LEN", "INL_OFF", "INL_LEN")
KIND_INLINE, KIND_IMAGE, KIND_TAIL = 0, 1, 2
_BLOCK = 2880
# Rice codes 32-pixel blocks, each with its own parameter, so larger tiles cost
# nothing in ratio; ~256k pixels per tile keeps astropy's per-tile Python loop
# cheap against the C codec.
_TILE_PIXELS = 1 << 18
_STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS",
    "CHECKSUM", "DATASUM", "ZHECKSUM", "ZDATASUM", "",
}  # fmt: skip
_CODECS = ("RICE_1", "GZIP_1", "GZIP_2", "PLIO_1", "HCOMPRESS_1")


@dataclass
class SourceInfo:
    """What :func:`encode` learnt about the source file."""

    name: str
    size: int
    sha256: str
    header: fits.Header  # primary header merged with the first image HDU's
    n_hdus: int
    n_images: int
    bitpix: tuple[int, ...]  # of the image HDUs
    shapes: tuple[tuple[int, ...], ...] = ()  # of the image HDUs (rows, columns)
    pixel_views: list[memoryview] = field(repr=False, default_factory=list)

    @cached_property
    def pixel_sha256(self) -> str:
        """SHA-256 of every image HDU's stored pixel bytes, in order (computed on demand)."""
        digest = hashlib.sha256()
        for chunk in self.pixel_views:
            digest.update(chunk)
        return digest.hexdigest()


def _is_structural(keyword: str) -> bool:
    return keyword in _STRUCTURAL or (keyword.startswith("NAXIS") and keyword[5:].isdigit())


def _clean_cards(header: fits.Header, *, keep_scaling: bool) -> fits.Header:
    """The cards of ``header`` that are valid and not structural (for readable copies)."""
    out = fits.Header()
    for card in header.cards:
        if _is_structural(card.keyword):
            continue
        if not keep_scaling and card.keyword in ("BZERO", "BSCALE", "BLANK"):
            continue
        try:
            card.verify("exception")
        except Exception:
            continue  # e.g. ESO-LOG cards; the exact header is in SKYDMMAP
        out.append(card, end=True)
    return out


def _merge_headers(primary: fits.Header, image: fits.Header) -> fits.Header:
    """Primary cards overridden by an (already cleaned) image extension's, for translators."""
    merged = _clean_cards(primary, keep_scaling=False)
    for card in image.cards:
        if card.keyword in ("COMMENT", "HISTORY") or card.keyword not in merged:
            merged.append(card, end=True)
            continue
        try:
            merged[card.keyword] = (card.value, card.comment)
        except ValueError:
            continue  # an unparsable primary card keeps its place
    return merged


def translation_header(primary: fits.Header, image: fits.Header) -> fits.Header:
    """What instrument definitions read: the primary's cards overridden by an image HDU's."""
    return _merge_headers(primary, _clean_cards(image, keep_scaling=False))


def _tile_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 1:
        return (min(shape[0], _TILE_PIXELS),)
    width = shape[-1]
    rows = max(1, min(shape[-2], _TILE_PIXELS // max(width, 1)))
    return (1,) * (len(shape) - 2) + (rows, width)


def codec_for(bitpix: int, requested: str = "RICE_1") -> str:
    """The lossless codec used for an image of ``bitpix``.

    Rice and PLIO are lossless only for integers up to 32 bits; floats would
    be quantized, so they and 64-bit integers use ``GZIP_2`` (or ``GZIP_1``
    if that was requested) without quantization.
    """
    if requested not in _CODECS:
        from skydm.errors import BadValueError

        raise BadValueError("codec", requested, f"one of {', '.join(_CODECS)}")
    if bitpix < 0 or bitpix == 64:
        return requested if requested in ("GZIP_1", "GZIP_2") else "GZIP_2"
    if requested == "HCOMPRESS_1":
        return "RICE_1"  # HCOMPRESS needs 2-d tiles of at least 4 rows; Rice is as good
    return requested


def _parse(data: bytes, name: str) -> fits.HDUList:
    """Open FITS bytes with every way of failing turned into a :class:`BadFileError`."""
    if not data.startswith(b"SIMPLE  ="):
        raise BadFileError(name, NOT_FITS)
    try:
        with warnings.catch_warnings():
            # Non-standard cards are common in raws; truncation is found by _layout.
            warnings.simplefilter("ignore")
            hdul = fits.open(
                io.BytesIO(data),
                memmap=False,
                lazy_load_hdus=False,
                do_not_scale_image_data=True,
                disable_image_compression=True,  # a .fz source is kept as its tables
                ignore_missing_simple=False,
            )
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise BadFileError(name, unreadable(exc)) from exc
    return hdul


# One message per fault, shared with every other FITS reader.
_layout = fits_layout


_BITPIX_DTYPE = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _image_array(hdu: fits.hdu.base._BaseHDU, data: memoryview, offset: int) -> np.ndarray | None:
    """The HDU's stored pixel values as a zero-copy view of the file's bytes, or ``None``."""
    if isinstance(hdu, fits.GroupsHDU) or not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU):
        return None
    h = hdu.header
    naxis = int(h.get("NAXIS", 0))
    shape = tuple(int(h.get(f"NAXIS{k}", 0)) for k in range(naxis, 0, -1))
    if naxis == 0 or min(shape) <= 0:
        return None
    dtype = np.dtype(_BITPIX_DTYPE[int(h["BITPIX"])])
    count = int(np.prod(shape))
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


#: PLIO_1 codes run lengths of values from 0 to 2**24 - 1 (it was made for masks).
PLIO_MAX = 2**24 - 1


def _check_plio(array: np.ndarray, cards: fits.Header) -> None:
    """Refuse PLIO_1 for stored values it cannot hold, before compressing anything."""
    from skydm.errors import BadValueError

    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi <= PLIO_MAX:
        return
    scaled = (
        f" (pixels stored with BZERO = {cards['BZERO']:g}, as unsigned integers are)"
        if "BZERO" in cards
        else ""
    )
    raise BadValueError(
        "codec",
        "PLIO_1",
        f"PLIO_1 holds stored values from 0 to {PLIO_MAX} only, and this image stores "
        f"values from {lo} to {hi}{scaled}; use RICE_1 (the default), as compact and lossless",
    )


def _image_hdu(
    raw: memoryview, array: np.ndarray, bitpix: int, cards: fits.Header, codec: str
) -> list[bytes | memoryview]:
    """One tile-compressed image HDU (header and data) as FITS bytes, in chunks."""
    chosen = codec_for(bitpix, codec)
    if chosen == "PLIO_1":
        _check_plio(array, cards)
    tiles = _tile_shape(array.shape)
    if chosen == "RICE_1" and bitpix in (8, 16, 32):
        return rice_image_hdu(raw, bitpix=bitpix, shape=array.shape, tile_shape=tiles, cards=cards)
    plain = cards.copy()
    for key in ("BSCALE", "BZERO", "BLANK"):
        plain.remove(key, ignore_missing=True)  # else astropy would scale the raw values
    comp = fits.CompImageHDU(
        data=array,
        header=plain,
        compression_type=chosen,
        tile_shape=tiles,
        quantize_level=0.0,  # no quantization: lossless for floats
        uint=False,
    )
    for key in ("BSCALE", "BZERO", "BLANK"):
        if key in cards:
            comp.header[key] = cards[key]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits.HDUList([fits.PrimaryHDU(), comp]).writeto(buf, output_verify="silentfix")
    # An empty primary header is one block; what follows is the image HDU alone.
    return [buf.getvalue()[_BLOCK:]]


def encode(
    path: str | Path, *, codec: str = "RICE_1", data: bytes | None = None
) -> tuple[bytes, SourceInfo]:
    """Build the compressed container of a raw FITS file.

    Parameters
    ----------
    path : str or pathlib.Path
        The raw file (any BITPIX, single- or multi-extension).
    codec : str
        Codec for integer images (``RICE_1`` by default); floats always use
        a lossless gzip codec.
    data : bytes, optional
        The file's content if already read.

    Returns
    -------
    (bytes, SourceInfo)
        The container file's content, and facts about the source.

    Raises
    ------
    BadFileError
        When the file is not FITS, is truncated, or holds no image.
    """
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadFileError(path, "no such file; check the path") from None
        except OSError as exc:
            raise BadFileError(path, f"cannot be read ({exc.strerror})") from exc
    name = str(path)
    hdul = _parse(data, name)
    view = memoryview(data)  # slices of a memoryview do not copy
    spans = _layout(hdul, len(data), name)
    tail = data[spans[-1][2] :] if spans else data
    if tail.strip(b"\0"):
        raise BadFileError(
            name,
            f"has {len(tail)} bytes after its last complete HDU: it is truncated or damaged; "
            "copy it again from its source",
        )

    kinds, ext_index, headers, inline, nbytes = [], [], [], [], []
    images: list[list[bytes | memoryview]] = []  # each image HDU's FITS bytes, in chunks
    merged = fits.Header()
    bitpix: list[int] = []
    shapes: list[tuple[int, ...]] = []
    pixel_views: list[memoryview] = []
    primary_has_image = False
    for i, (hdu, (h0, d0, d1)) in enumerate(zip(hdul, spans, strict=True)):
        headers.append(zlib.compress(view[h0:d0], 6))
        array = _image_array(hdu, view, d0)
        if array is None:
            kinds.append(KIND_INLINE)
            ext_index.append(-1)
            inline.append(zlib.compress(view[d0:d1], 6))
            nbytes.append(d1 - d0)
            continue
        pixel_views.append(view[d0 : d0 + array.nbytes])
        bp = int(hdu.header["BITPIX"])
        bitpix.append(bp)
        shapes.append(tuple(array.shape))
        clean = _clean_cards(hdu.header, keep_scaling=False)
        if not images:
            merged = clean.copy() if i == 0 else _merge_headers(hdul[0].header, clean)
        primary_has_image |= i == 0
        for key in ("BSCALE", "BZERO", "BLANK"):
            # The raw integers are compressed as they are; these cards tell any
            # reader how to scale them, exactly as in the source.
            if key in hdu.header:
                clean[key] = hdu.header[key]
        images.append(_image_hdu(view[d0 : d0 + array.nbytes], array, bp, clean, codec))
        kinds.append(KIND_IMAGE)
        ext_index.append(len(images))
        inline.append(zlib.compress(view[d0 + array.nbytes : d1], 6))  # block padding
        nbytes.append(array.nbytes)
    if not images:
        raise BadFileError(name, "holds no image in any HDU; only FITS images can be ingested")
    kinds.append(KIND_TAIL)
    ext_index.append(-1)
    headers.append(zlib.compress(b""))
    inline.append(zlib.compress(tail))
    nbytes.append(len(tail))

    sha = hashlib.sha256(data).hexdigest()
    rows, blob = _byte_map(kinds, ext_index, nbytes, headers, inline)
    # The blob is the primary's data (1-d bytes, which image readers skip) and
    # its index is in primary cards: no extra HDUs, so no extra 2880-byte blocks.
    primary = fits.PrimaryHDU(np.frombuffer(blob, dtype=np.uint8))
    if not primary_has_image:
        primary.header.extend(_clean_cards(hdul[0].header, keep_scaling=False))
    ph = primary.header
    ph["SKYDMRAW"] = (True, "a raw archived losslessly by skydm")
    ph["SKYDMVER"] = (FORMAT_VERSION, "skydm raw container format version")
    ph["ORIGNAME"] = (path.name[:68], "name of the source file")
    ph["ORIGSIZE"] = (len(data), "size of the source file in bytes")
    ph["ORIGSHA"] = (sha, "SHA-256 of the source file")
    ph["ORIGNHDU"] = (len(hdul), "number of HDUs in the source file")

    ph["MAPCOLS"] = (" ".join(MAP_COLUMNS), "columns of the MAPn cards")
    ph["NMAP"] = (len(rows), "source HDUs + 1 (tail): MAP1..MAPn")
    for i, row in enumerate(rows, start=1):
        ph[f"MAP{i}"] = " ".join(str(v) for v in row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # source cards are copied as they are
        head = io.BytesIO()
        fits.HDUList([primary]).writeto(head, output_verify="silentfix")
    container = b"".join([head.getbuffer(), *(chunk for hdu in images for chunk in hdu)])
    info = SourceInfo(
        name=path.name,
        size=len(data),
        sha256=sha,
        header=merged,
        n_hdus=len(hdul),
        n_images=len(images),
        bitpix=tuple(bitpix),
        shapes=tuple(shapes),
        pixel_views=pixel_views,
    )
    return container, info


def _rebuild(container: bytes, name: object) -> tuple[fits.HDUList, bytes]:
    """Concatenate headers, decompressed pixels and inline bytes in source order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul = fits.open(io.BytesIO(container), memmap=False, do_not_scale_image_data=True)
        ph = hdul[0].header
        if not ph.get("SKYDMRAW") or "NMAP" not in ph:
            raise BadFileError(name, "is not a skydm raw container (no SKYDMRAW/NMAP cards)")
        rows = np.array(
            [[int(v) for v in str(ph[f"MAP{i}"]).split()] for i in range(1, int(ph["NMAP"]) + 1)],
            dtype=np.int64,
        )
        blob = np.asarray(hdul[0].data, dtype=np.uint8).tobytes()
        out = io.BytesIO()
        for kind, ext, nbytes, h0, hn, i0, i_n in rows.reshape(-1, len(MAP_COLUMNS)):
            out.write(zlib.decompress(blob[h0 : h0 + hn]))
            if kind == KIND_IMAGE:
                pixels = np.asarray(hdul[int(ext)].data)
                big = pixels.astype(pixels.dtype.newbyteorder(">"), copy=False)
                if big.nbytes != nbytes:
                    raise DataCorruptionError(name, f"{nbytes} pixel bytes", str(big.nbytes))
                out.write(big.tobytes())
            out.write(zlib.decompress(blob[i0 : i0 + i_n]))
    return hdul, out.getvalue()


def _byte_map(
    kinds: list[int],
    ext_index: list[int],
    nbytes: list[int],
    headers: list[bytes],
    inline: list[bytes],
) -> tuple[list[list[int]], bytes]:
    """One index row per source HDU (see :data:`MAP_COLUMNS`) and the byte blob."""
    rows, chunks, offset = [], [], 0
    for kind, ext, n, header, extra in zip(kinds, ext_index, nbytes, headers, inline, strict=True):
        rows.append([kind, ext, n, offset, len(header), offset + len(header), len(extra)])
        chunks += [header, extra]
        offset += len(header) + len(extra)
    return rows, b"".join(chunks)


def restore_bytes(container: bytes | Path, *, name: object = None) -> bytes:
    """Rebuild the source file, byte for byte, from a container.

    Parameters
    ----------
    container : bytes or pathlib.Path
        The stored container file, or its content.
    name : object, optional
        Name used in error messages.

    Raises
    ------
    BadFileError
        When ``container`` is not a skydm raw container.
    DataCorruptionError
        When the rebuilt bytes do not match the source's recorded SHA-256.
    """
    if isinstance(container, Path):
        name = name or container
        container = container.read_bytes()
    name = name or "<container>"
    try:
        hdul, result = _rebuild(container, name)
    except (BadFileError, DataCorruptionError):
        raise
    except Exception as exc:  # zlib, cfitsio or FITS-structure errors: damage
        raise DataCorruptionError(
            name, "a decodable container", f"{type(exc).__name__}: {exc}"
        ) from exc
    expected = str(hdul[0].header["ORIGSHA"])
    actual = hashlib.sha256(result).hexdigest()
    if actual != expected:
        raise DataCorruptionError(name, expected, actual)
    return result


def check_lossless(container_path: Path, source_sha256: str) -> None:
    """Prove that ``container_path`` restores to the source with ``source_sha256``.

    Raises
    ------
    DataCorruptionError
        When it does not (a codec fault: the raw is then not archived).
    """
    restored = restore_bytes(container_path)
    actual = hashlib.sha256(restored).hexdigest()
    if actual != source_sha256:
        raise DataCorruptionError(container_path, source_sha256, actual)
