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


@dataclass
class Cutout:
    """One cutout: its FITS planes and where it came from.

    Attributes
    ----------
    source : str
        What was cut (a dataset ID, or the file name).
    box : PixelBox
        The rectangle of the original image.
    primary : astropy.io.fits.Header
        The original's primary header, plus the cutout's provenance cards.
    planes : list of astropy.io.fits.ImageHDU
        ``IMAGE``, ``VARIANCE`` and ``MASK`` (only ``IMAGE`` for a raw).
    """

    source: str
    box: PixelBox
    primary: fits.Header
    planes: list[fits.ImageHDU]

    def to_hdulist(self) -> fits.HDUList:
        """The cutout as a FITS file: primary header, then the planes."""
        return fits.HDUList([fits.PrimaryHDU(header=self.primary), *self.planes])

    def to_bytes(self) -> bytes:
        """The FITS file's content."""
        return _fits_bytes(self.to_hdulist())


def _fits_bytes(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-standard cards of the input are kept as they are
        hdul.writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def cut_planes(tiled: TiledFile) -> list[ImagePlane]:
    """The planes a cutout takes: an Exposure's IMAGE/VARIANCE/MASK, else the first image."""
    named = [p for p in (tiled.plane(n) for n in EXPOSURE_PLANES) if p is not None]
    if named and named[0].name.upper() == "IMAGE":
        return [p for p in named if p.shape == named[0].shape]
    return [tiled.planes[0]]


def _pad_value(plane: ImagePlane, dtype: np.dtype) -> object:
    if plane.name.upper() == "MASK":
        return int(Mask.NO_DATA)
    if np.issubdtype(dtype, np.floating):
        return np.inf if plane.name.upper() == "VARIANCE" else np.nan
    return 0


def _plane_header(plane: ImagePlane, box: PixelBox) -> fits.Header:
    """The plane's header without structural cards, with its WCS shifted to the box."""
    header = fits.Header()
    for card in plane.header.cards:
        if _DROP.match(card.keyword):
            continue
        match = _CRPIX.match(card.keyword)
        if match is not None:
            shift = box.x0 if match.group(1) == "1" else box.y0
            header.append((card.keyword, float(card.value) - shift, card.comment), end=True)
            continue
        header.append(card, end=True)
    if "CRPIX1" in header:
        header["LTV1"] = (-box.x0, "original pixel = cutout pixel - LTV1")
        header["LTV2"] = (-box.y0, "original pixel = cutout pixel - LTV2")
    return header


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
    planes = cut_planes(tiled)
    first = planes[0]
    wcs = wcs_from_header(first.header)
    if wcs is None:
        raise BadFileError(name, "has no celestial WCS, so no region of the sky can be cut out")
    box = pixel_box(region, wcs, first.shape, name=name)
    rows, cols = box.inside
    hdus = []
    for plane in planes:
        pixels = tiled.read(plane, rows, cols)
        if box.clipped:
            full = np.full((box.y1 - box.y0, box.x1 - box.x0), 0, dtype=pixels.dtype)
            full[...] = _pad_value(plane, pixels.dtype)
            full[
                rows.start - box.y0 : rows.stop - box.y0, cols.start - box.x0 : cols.stop - box.x0
            ] = pixels
            pixels = full
        hdu = fits.ImageHDU(pixels, header=_plane_header(plane, box))
        if plane.name.upper() in EXPOSURE_PLANES:
            hdu.header["EXTNAME"] = plane.name.upper()
        else:  # a raw's image: named as an Exposure's so that readers find it
            hdu.header["EXTNAME"] = "IMAGE"
            hdu.header["ORIGEXT"] = (plane.name[:68], "EXTNAME in the original file")
        hdus.append(hdu)
    primary = fits.Header()
    for card in tiled.primary_header.cards:
        if (
            not _DROP.match(card.keyword)
            and card.keyword not in ("MAPCOLS", "NMAP")
            and not (card.keyword.startswith("MAP") and card.keyword[3:].isdigit())
        ):
            primary.append(card, end=True)
    primary["CUTSRC"] = (name[-68:], "what this cutout was cut from")
    primary["CUTX0"] = (box.x0, "first column of the original (0-based)")
    primary["CUTY0"] = (box.y0, "first row of the original (0-based)")
    primary["CUTNX"] = (first.shape[1], "columns of the original")
    primary["CUTNY"] = (first.shape[0], "rows of the original")
    return Cutout(name, box, primary, hdus)


def combine(cutouts: list[Cutout]) -> fits.HDUList:
    """Several cutouts as one multi-extension FITS file.

    The primary header says how many (``NCUTOUT``); cutout k's planes follow
    as ``IMAGE``/``VARIANCE``/``MASK`` with ``EXTVER = k``, each carrying its
    own original's primary cards (visit, band, time...) so that an extension
    read alone still says what it is.
    """
    primary = fits.PrimaryHDU()
    primary.header["NCUTOUT"] = (len(cutouts), "number of cutouts in this file")
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary]
    for k, c in enumerate(cutouts, start=1):
        for plane in c.planes:
            header = plane.header.copy()
            header["EXTVER"] = (k, "which cutout")
            for card in c.primary.cards:
                if card.keyword not in header and card.keyword not in ("", "COMMENT", "HISTORY"):
                    header.append(card, end=True)
            hdus.append(fits.ImageHDU(plane.data, header=header))
    return fits.HDUList(hdus)


def to_zip(cutouts: list[Cutout], names: list[str]) -> bytes:
    """Several cutouts as a zip of single-cutout FITS files named ``names``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for c, name in zip(cutouts, names, strict=True):
            zf.writestr(name, c.to_bytes())
    return buf.getvalue()


def combined_bytes(cutouts: list[Cutout]) -> bytes:
    """:func:`combine` as FITS bytes."""
    return _fits_bytes(combine(cutouts))
