"""Cutouts of stored images: a region of every plane, WCS shifted, metadata kept.

:func:`cutout_file` cuts any FITS image file (a skydm Exposure with IMAGE,
VARIANCE and MASK planes, or an archived raw container) reading only the
bytes, or the compressed tiles, that the region needs (:mod:`skydm.image.tiled`).
Pixels are copied exactly, so a cutout of a losslessly archived image equals
the same slice of the original bit for bit; the WCS is the original's with
``CRPIX`` shifted by the cutout's offset, so it maps every sky position to
the same pixel as before, less the offset (``LTV1``/``LTV2`` record it too).

Several cutouts go into one multi-extension FITS file (:func:`combine`:
planes ``IMAGE``/``VARIANCE``/``MASK`` with ``EXTVER`` 1, 2, ...) or a zip of
single-cutout files (:func:`to_zip`).
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

from skydm.errors import BadFileError
from skydm.image.exposure import wcs_from_header
from skydm.image.mask import Mask
from skydm.image.regions import PixelBox, Region, pixel_box
from skydm.image.tiled import ImagePlane, TiledFile, open_tiled

#: Planes of a skydm Exposure, in the order they are written.
EXPOSURE_PLANES = ("IMAGE", "VARIANCE", "MASK")
_CRPIX = re.compile(r"^CRPIX([12])([A-Z]?)$")
_DROP = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|CHECKSUM|DATASUM|"
    r"BZERO|BSCALE|BLANK|Z[A-Z0-9]+|T(FORM|TYPE|DIM)\d+|TFIELDS|THEAP|EXTVER)$"
)


_BLOCK = 2880
_STRUCTURAL_EXT = ("EXTNAME", "EXTVER", "LTV1", "LTV2")


def _fixed(keyword: str, value: object, comment: str = "") -> str:
    """One 80-character card with a fixed-format value (ints, logicals, short strings)."""
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int):
        text = f"{value:>20}"
    elif isinstance(value, str):
        quoted = value.replace("'", "''")[:66]
        text = f"{chr(39) + quoted.ljust(8) + chr(39):<20}"
    elif isinstance(value, float) and np.isfinite(value):
        text = repr(value)
        text = f"{text if len(text) <= 20 else f'{value:.13E}':>20}"
    else:
        return _card(keyword, value, comment)
    card = f"{keyword:<8}= {text}"
    if comment and len(card) + 3 < 80:
        card += f" / {comment}"
    return card[:80].ljust(80)


def _card(keyword: str, value: object, comment: str = "") -> str:
    """A card by astropy's rules; a comment that does not fit is cut, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        return fits.Card(keyword, value, comment).image


@dataclass
class CutPlane:
    """One plane of a cutout: its name, pixels and header cards (80-character images).

    The cards are the original plane's non-structural cards with the WCS
    already shifted; :attr:`header` parses them for inspection.
    """

    name: str
    data: np.ndarray
    cards: list[str]

    @property
    def header(self) -> fits.Header:
        """The plane's cards as an astropy Header."""
        return fits.Header.fromstring("".join(self.cards))


@dataclass
class Cutout:
    """One cutout: its planes and where it came from.

    Attributes
    ----------
    source : str
        What was cut (a dataset ID, or the file name).
    box : PixelBox
        The rectangle of the original image.
    primary : list of str
        Card images of the original's primary header plus the cutout's
        provenance cards (``CUTSRC``, ``CUTX0``...).
    planes : list of CutPlane
        ``IMAGE``, ``VARIANCE`` and ``MASK`` (only ``IMAGE`` for a raw).
    """

    source: str
    box: PixelBox
    primary: list[str]
    planes: list[CutPlane]

    @property
    def primary_header(self) -> fits.Header:
        """The primary cards as an astropy Header."""
        return fits.Header.fromstring("".join(self.primary))

    def to_bytes(self) -> bytes:
        """The cutout as a FITS file: primary header, then the planes."""
        chunks = [_hdu_bytes(None, self.primary)]
        chunks += [_hdu_bytes(p.data, p.cards) for p in self.planes]
        return b"".join(chunks)

    def to_hdulist(self) -> fits.HDUList:
        """The cutout as an astropy HDUList (read back from :meth:`to_bytes`)."""
        return fits.open(io.BytesIO(self.to_bytes()), memmap=False, lazy_load_hdus=False)


def _stored(data: np.ndarray) -> tuple[int, list[str], np.ndarray]:
    """BITPIX, scaling cards and the big-endian array FITS stores for ``data``."""
    kind, size = data.dtype.kind, data.dtype.itemsize
    if kind == "f":
        return -8 * size, [], data.astype(f">f{size}", copy=False)
    if kind == "i" and size > 1:
        return 8 * size, [], data.astype(f">i{size}", copy=False)
    if kind == "u" and size == 1:
        return 8, [], data
    if kind == "u":
        offset = 1 << (8 * size - 1)
        signed = (data ^ np.array(offset, dtype=data.dtype)).view(f"i{size}")
        cards = [_fixed("BZERO", offset), _fixed("BSCALE", 1)]
        return 8 * size, cards, signed.astype(f">i{size}", copy=False)
    if kind == "i":  # int8
        cards = [_fixed("BZERO", -128), _fixed("BSCALE", 1)]
        return 8, cards, (data.astype(np.int16) + 128).astype(np.uint8)
    raise TypeError(f"no FITS type for {data.dtype}")


def _hdu_bytes(data: np.ndarray | None, cards: list[str]) -> bytes:
    """One HDU: the primary (``data`` None, no pixels) or an IMAGE extension."""
    if data is None:
        head = [_fixed("SIMPLE", True), _fixed("BITPIX", 8), _fixed("NAXIS", 0)]
        head.append(_fixed("EXTEND", True))
        body = b""
    else:
        bitpix, scaling, stored = _stored(np.ascontiguousarray(data))
        head = [_fixed("XTENSION", "IMAGE"), _fixed("BITPIX", bitpix), _fixed("NAXIS", 2)]
        head += [_fixed("NAXIS1", int(data.shape[1])), _fixed("NAXIS2", int(data.shape[0]))]
        head += [_fixed("PCOUNT", 0), _fixed("GCOUNT", 1), *scaling]
        body = stored.tobytes()
    text = "".join([*head, *cards, "END".ljust(80)])
    header = text.encode("ascii", "replace")
    return header + b" " * (-len(header) % _BLOCK) + body + b"\0" * (-len(body) % _BLOCK)


@dataclass(frozen=True)
class _Template:
    """What every cutout of one file shares: card images and the WCS, made once."""

    primary: list[str]
    planes: list[tuple[ImagePlane, list[str]]]  # cards without CRPIX / EXTNAME
    crpix: list[list[tuple[str, float, str]]]  # per plane: (keyword, value, comment)
    wcs: object


def _card_images(header: fits.Header, *, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for card in header.cards:
        if _DROP.match(card.keyword) or card.keyword in skip:
            continue
        try:
            image = card.image
        except Exception:  # an unprintable card of the input: dropped, not fatal
            continue
        out.append(image)
    return out


def cut_planes(tiled: TiledFile) -> list[ImagePlane]:
    """The planes a cutout takes: an Exposure's IMAGE/VARIANCE/MASK, else the first image."""
    named = [p for p in (tiled.plane(n) for n in EXPOSURE_PLANES) if p is not None]
    if named and named[0].name.upper() == "IMAGE":
        return [p for p in named if p.shape == named[0].shape]
    return [tiled.planes[0]]


def _pad_value(plane: ImagePlane, dtype: np.dtype) -> object:
    """What fills a stamp's pixels beyond the image: NO_DATA, NaN, infinite variance, 0."""
    if plane.name.upper() == "MASK":
        return int(Mask.NO_DATA)
    if np.issubdtype(dtype, np.floating):
        return np.inf if plane.name.upper() == "VARIANCE" else np.nan
    return 0


@lru_cache(maxsize=4096)
def prepare(tiled: TiledFile) -> _Template:
    """What every cutout of ``tiled`` shares (cached): card images and the WCS."""
    planes = cut_planes(tiled)
    parts, crpix = [], []
    for plane in planes:
        shifted = [
            (c.keyword, float(c.value), c.comment)
            for c in plane.header.cards
            if _CRPIX.match(c.keyword)
        ]
        skip = (*_STRUCTURAL_EXT, *(k for k, _, _ in shifted))
        parts.append((plane, _card_images(plane.header, skip=skip)))
        crpix.append(shifted)
    primary = [
        image
        for image in _card_images(tiled.primary_header, skip=("MAPCOLS", "NMAP"))
        if not (image[:3] == "MAP" and image[3:8].strip().isdigit())
    ]
    return _Template(primary, parts, crpix, wcs_from_header(planes[0].header))


def cutout_file(path: str | Path, region: Region, *, source: str | None = None) -> Cutout:
    """Cut ``region`` out of the FITS image file ``path``.

    Parameters
    ----------
    path : str or pathlib.Path
        A skydm Exposure file, an archived raw container or any FITS image
        with a celestial WCS.
    region : Region
        A :class:`~skydm.image.regions.Circle`, ``Polygon``, ``Range`` or ``Stamp``.
    source : str, optional
        What to call the input in the result and in errors (default: the path).

    Returns
    -------
    Cutout

    Raises
    ------
    BadFileError
        When the file is not a FITS image with a celestial WCS.
    NoOverlapError
        When the region does not touch the image.
    """
    tiled = open_tiled(path)
    name = source or str(path)
    template = prepare(tiled)
    first = template.planes[0][0]
    if template.wcs is None:
        raise BadFileError(name, "has no celestial WCS, so no region of the sky can be cut out")
    box = pixel_box(region, template.wcs, first.shape, name=name)  # type: ignore[arg-type]
    rows, cols = box.inside
    planes = []
    for (plane, cards), crpix in zip(template.planes, template.crpix, strict=True):
        pixels = tiled.read(plane, rows, cols)
        if box.clipped:
            full = np.empty((box.y1 - box.y0, box.x1 - box.x0), dtype=pixels.dtype)
            full[...] = _pad_value(plane, pixels.dtype)
            dst = (
                slice(rows.start - box.y0, rows.stop - box.y0),
                slice(cols.start - box.x0, cols.stop - box.x0),
            )
            full[dst] = pixels
            pixels = full
        extname = plane.name.upper() if plane.name.upper() in EXPOSURE_PLANES else "IMAGE"
        extra = [_fixed("EXTNAME", extname, "cutout plane")]
        if extname != plane.name.upper():  # a raw's image: named as an Exposure's
            extra.append(_fixed("ORIGEXT", plane.name[:60], "EXTNAME in the original file"))
        for keyword, value, comment in crpix:
            shift = box.x0 if keyword[5] == "1" else box.y0
            extra.append(_fixed(keyword, value - shift, comment))
        if crpix:
            extra.append(_fixed("LTV1", -box.x0, "original pixel = cutout pixel - LTV1"))
            extra.append(_fixed("LTV2", -box.y0, "original pixel = cutout pixel - LTV2"))
        planes.append(CutPlane(extname, pixels, [*extra, *cards]))
    primary = [
        *template.primary,
        _fixed("CUTSRC", name[-66:], "what this cutout was cut from"),
        _fixed("CUTX0", box.x0, "first column of the original (0-based)"),
        _fixed("CUTY0", box.y0, "first row of the original (0-based)"),
        _fixed("CUTNX", first.shape[1], "columns of the original"),
        _fixed("CUTNY", first.shape[0], "rows of the original"),
    ]
    return Cutout(name, box, primary, planes)


def combined_bytes(cutouts: list[Cutout]) -> bytes:
    """Several cutouts as one multi-extension FITS file.

    The primary header says how many (``NCUTOUT``); cutout k's planes follow
    as ``IMAGE``/``VARIANCE``/``MASK`` with ``EXTVER = k``, each carrying its
    own original's primary cards (visit, band, time...) so that an extension
    read alone still says what it is.
    """
    chunks = [_hdu_bytes(None, [_fixed("NCUTOUT", len(cutouts), "number of cutouts")])]
    for k, c in enumerate(cutouts, start=1):
        for plane in c.planes:
            seen = {card[:8] for card in plane.cards}
            inherited = [
                card
                for card in c.primary
                if card[:8] not in seen and card[:8].strip() not in ("", "COMMENT", "HISTORY")
            ]
            cards = [*plane.cards, _fixed("EXTVER", k, "which cutout"), *inherited]
            chunks.append(_hdu_bytes(plane.data, cards))
    return b"".join(chunks)


def combine(cutouts: list[Cutout]) -> fits.HDUList:
    """:func:`combined_bytes` as an astropy HDUList."""
    return fits.open(io.BytesIO(combined_bytes(cutouts)), memmap=False, lazy_load_hdus=False)


def to_zip(cutouts: list[Cutout], names: list[str]) -> bytes:
    """Several cutouts as a zip of single-cutout FITS files named ``names``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for c, name in zip(cutouts, names, strict=True):
            zf.writestr(name, c.to_bytes())
    return buf.getvalue()
