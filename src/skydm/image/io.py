"""Reading Exposures from skydm files and from any FITS image."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from skydm.errors import BadFileError
from skydm.image.exposure import Exposure, wcs_from_header
from skydm.image.fitsfile import open_fits as _open_checked
from skydm.image.fitsfile import reading
from skydm.image.mask import mask_from_header
from skydm.image.psf import psf_from_hdu
from skydm.image.visit import VisitInfo

# Header cards tried in order for each piece of visit metadata, covering the
# common conventions (NOAO/DECam per-amplifier cards, ESO, SBIG/Apogee).
_CARDS: dict[str, tuple[str, ...]] = {
    "gain": ("GAIN", "EGAIN", "GAINA", "HIERARCH ESO DET OUT1 GAIN"),
    "read_noise": ("RDNOISE", "READNOIS", "RON", "RDNOISEA", "HIERARCH ESO DET OUT1 RON"),
    "saturation": ("SATURATE", "SATLEVEL", "SATURATA"),
    "exptime": ("EXPTIME", "EXPOSURE", "ITIME"),
    "airmass": ("AIRMASS", "SECZ"),
    "seeing": ("SEEING", "FWHM"),
    "sky": ("SKYSUB", "SKYDIP"),
}


def open_fits(path: str | Path) -> fits.HDUList:
    """Open a FITS file, turning every way it can fail into a :class:`BadFileError`.

    See :func:`skydm.image.fitsfile.open_fits`: one message per fault
    (missing, not FITS, damaged header, truncated), whichever command reads.
    """
    return _open_checked(path, memmap=False)


def first_image_hdu(hdul: fits.HDUList, path: object) -> int:
    """Index of the first HDU holding a 2-d image, or a :class:`BadFileError`."""
    for i, h in enumerate(hdul):
        is_image = isinstance(h, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)
        if is_image and h.data is not None and np.ndim(h.data) == 2:
            return i
    raise BadFileError(path, "holds no 2-d image in any HDU; give a FITS image")


def _card(header: fits.Header, names: tuple[str, ...]) -> float:
    for name in names:
        try:
            value = header.get(name)
        except (KeyError, ValueError):
            continue
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return math.nan


def visit_info_from_header(header: fits.Header) -> VisitInfo:
    """Best-effort :class:`VisitInfo` from a raw header of any common convention."""
    info = VisitInfo.from_header(header)
    for name, cards in _CARDS.items():
        if name == "sky" and "SKYSUB" not in header and "SKYDIP" not in header:
            continue
        value = _card(header, cards)
        if math.isfinite(value) and (name != "gain" or value > 0):
            setattr(info, name, value)
    if math.isnan(info.mjd):
        info.mjd = _mjd(header)
    if info.band == "unknown":
        for key in ("BAND", "FILTER", "FILTER1"):
            if key in header and str(header[key]).strip():
                info.band = str(header[key]).strip().split()[0]
                break
    return info


def _mjd(header: fits.Header) -> float:
    for key in ("MJD-OBS", "MJD"):
        value = _card(header, (key,))
        if math.isfinite(value):
            return value
    if "JD" in header:
        jd = _card(header, ("JD",))
        if math.isfinite(jd):
            return jd - 2400000.5
    for key in ("DATE-OBS", "DATE"):
        raw = header.get(key)
        if isinstance(raw, str):
            try:
                return float(Time(raw.strip()).mjd)
            except ValueError:
                continue
    return math.nan


def read_exposure(path: str | Path, *, hdu: int | str | None = None) -> Exposure:
    """Read an Exposure from a skydm file or from any FITS image.

    A skydm file (written by :meth:`Exposure.write`) gives back every plane
    exactly.  Any other FITS file gives the first 2-d image HDU (or ``hdu``),
    with visit metadata taken from its header, the WCS where there is a usable
    one, and a variance plane from the gain and read noise when the header
    has them (else from the image's own noise).

    Raises
    ------
    BadFileError
        When the file is missing, not FITS, truncated, or holds no image.
    """
    path = Path(path)
    with open_fits(path) as hdul, reading(path):
        return exposure_from_hdulist(hdul, source=path, hdu=hdu)


def exposure_from_hdulist(
    hdul: fits.HDUList,
    *,
    source: str | Path | None = None,
    hdu: int | str | None = None,
    estimate_variance: bool = True,
) -> Exposure:
    """An Exposure from an open ``HDUList`` (see :func:`read_exposure`).

    ``source`` names where the data came from, for error messages.  With
    ``estimate_variance=False`` a FITS image that is not a skydm file gets a
    variance plane of NaN (unknown) instead of one estimated from its pixels:
    for a raw, whose pixels still hold the bias, the estimate means nothing
    and calibration makes the variance anew (the estimate costs 0.5 to 1 CPU
    s at 4096x4096).
    """
    where = source if source is not None else "<in-memory FITS>"
    # Non-standard cards (ESO-LOG, ...) are expected in raw data: keep quiet about them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hdul[0].header.get("SKYDMEXP"):
            return _read_skydm(hdul, Path(str(where)))
        index: int | str = first_image_hdu(hdul, where) if hdu is None else hdu
        try:
            h = hdul[index]
        except (KeyError, IndexError) as exc:
            raise BadFileError(where, f"has no HDU {index!r}") from exc
        if h.data is None or np.ndim(h.data) != 2:
            raise BadFileError(where, f"HDU {index!r} holds no 2-d image")
        header = hdul[0].header.copy() if index != 0 else fits.Header()
        header.extend(h.header, update=True)
        info = visit_info_from_header(header)
        # Native byte order: FITS is big-endian, and numerical code downstream
        # (FFTs, sep) would otherwise copy every plane.
        image = np.array(h.data, dtype=np.float64 if h.data.dtype.itemsize > 4 else np.float32)
        return Exposure(
            image=image,
            variance=None if estimate_variance else np.full(image.shape, np.nan, np.float32),
            wcs=wcs_from_header(h.header),
            zero_point=_card(header, ("ZP", "MAGZERO", "MAGZPT")),
            info=info,
            meta=_clean_meta(header),
            source=str(where),
        )


def _clean_meta(header: fits.Header) -> fits.Header:
    """Header cards worth carrying along: valid ones, minus structural keywords."""
    out = fits.Header()
    skip = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "PCOUNT", "GCOUNT"}
    skip |= {"BZERO", "BSCALE", "XTENSION", "EXTNAME", "CHECKSUM", "DATASUM"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for card in header.cards:
            if card.keyword in skip or not card.keyword:
                continue
            try:
                card.verify("exception")
                out.append(card)
            except Exception:
                continue  # non-standard cards (e.g. ESO-LOG) are dropped from the copy
    return out


def _native(data: np.ndarray) -> np.ndarray:
    """A native-byte-order copy of a FITS array (FITS stores big-endian)."""
    array = np.asarray(data)
    return array.astype(array.dtype.newbyteorder("="), copy=True)


def _restore_exact(hdul: fits.HDUList, extname: str, data: np.ndarray, mask: np.ndarray) -> None:
    """Put back the pixels a lossy write recipe stored exactly (``<EXTNAME>_EXACT``).

    They are the pixels whose mask (in the file's bit assignment) has one of
    the ``EXACTBIT`` bits, in C order; see :mod:`skydm.archive.lossy`.
    """
    name = extname + "_EXACT"
    if name in hdul:
        ext = hdul[name]
        exact = (mask & np.uint32(int(ext.header["EXACTBIT"]))) != 0
        data[exact] = np.asarray(ext.data)


def _read_skydm(hdul: fits.HDUList, path: Path) -> Exposure:
    try:
        image = _native(hdul["IMAGE"].data)
        variance = _native(hdul["VARIANCE"].data)
        file_mask = _native(hdul["MASK"].data).astype(np.uint32, copy=False)
        _restore_exact(hdul, "IMAGE", image, file_mask)
        _restore_exact(hdul, "VARIANCE", variance, file_mask)
        mask = mask_from_header(hdul["MASK"].header, file_mask)
        psf = psf_from_hdu(hdul["PSF"]) if "PSF" in hdul else None
    except KeyError as exc:
        raise BadFileError(path, f"is a skydm Exposure missing an extension: {exc}") from exc
    header = hdul[0].header
    meta = fits.Header()
    for card in header.cards:
        if card.keyword in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "SKYDMEXP"):
            continue
        meta.append(card)
    return Exposure(
        image=image,
        variance=variance,
        mask=mask,
        wcs=wcs_from_header(hdul["IMAGE"].header),
        psf=psf,
        zero_point=float(header.get("ZP", math.nan)),
        info=VisitInfo.from_header(header),
        meta=meta,
        source=str(path),
    )
