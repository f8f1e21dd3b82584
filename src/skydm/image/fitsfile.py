"""Opening FITS files: one reader, one message per fault.

Every part of skydm that opens a FITS file the user gave (``read_exposure``,
the coadd's warps, ingest's raws) goes through here, so that a missing file,
a file that is not FITS, a damaged header and a truncated file each get the
same one-line message whichever command met it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from skydm.errors import BadFileError

NOT_FITS = "is not a FITS file (it does not start with SIMPLE =); give a FITS image"

#: astropy's advice that does not apply to a skydm user (it names its own API).
_ASTROPY_ADVICE = re.compile(r"\s*(If this is really a FITS file|try with|Try with)\b.*$", re.S)


def truncated(hdu: int, need: int, size: int) -> str:
    """The message for a file cut short."""
    return (
        f"is truncated: HDU {hdu} needs {need} bytes but the file has {size}; "
        "copy it again from its source"
    )


def unreadable(exc: BaseException) -> str:
    """The message for a file whose headers cannot be parsed, in one line."""
    reason = _ASTROPY_ADVICE.sub("", str(exc)).strip().rstrip(".")
    reason = " ".join(reason.split()) or type(exc).__name__
    return f"is not a readable FITS file ({reason}); check that it is complete and really FITS"


def fits_layout(hdul: fits.HDUList, size: int, name: object) -> list[tuple[int, int, int]]:
    """``(header_start, data_start, data_end)`` of every HDU, checked to tile ``size`` bytes.

    Raises
    ------
    BadFileError
        When an HDU's data run past the end of the file (truncation) or the
        HDUs do not follow each other.
    """
    spans = []
    end = 0
    for i, hdu in enumerate(hdul):
        # The offsets astropy found while parsing (the data size with its
        # fill); ``HDUList.fileinfo`` would re-format every header first and
        # fail on a damaged card.
        try:
            h0, d0 = int(hdu._header_offset), int(hdu._data_offset)
            span = int(hdu._data_size)
        except (AttributeError, TypeError, ValueError):
            raise BadFileError(
                name, f"HDU {i} has no place in the file; it is not valid FITS"
            ) from None
        if span < 0:
            raise BadFileError(name, f"HDU {i} declares a negative data size; it is not valid FITS")
        if h0 != end:
            raise BadFileError(name, f"HDU {i} starts at byte {h0}, not {end}; not valid FITS")
        end = d0 + span
        if end > size:
            raise BadFileError(name, truncated(i, end, size))
        spans.append((h0, d0, end))
    return spans


def open_fits(path: str | Path, *, memmap: bool = False, **kwargs: object) -> fits.HDUList:
    """Open a FITS file whose every HDU is known to be complete.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    memmap : bool
        Map the data instead of reading them (large warps).
    **kwargs
        Passed to :func:`astropy.io.fits.open` (``do_not_scale_image_data``...).

    Raises
    ------
    BadFileError
        For a missing or unreadable file, one that is not FITS, a damaged
        header, or a truncated file; each with its own one-line message.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            start = fh.read(30)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise BadFileError(path, "no such file; check the path") from None
    except IsADirectoryError:
        raise BadFileError(path, "is a directory; give a FITS file") from None
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror})") from exc
    if not start.startswith(b"SIMPLE  ="):
        raise BadFileError(path, NOT_FITS)
    try:
        with warnings.catch_warnings():
            # Non-standard cards are common in raws; truncation is checked below.
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False, **kwargs)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise BadFileError(path, unreadable(exc)) from exc
    try:
        fits_layout(hdul, size, path)
    except BadFileError:
        hdul.close()
        raise
    return hdul


@contextlib.contextmanager
def reading(name: object) -> Iterator[None]:
    """Turn astropy's failures on a damaged header (found late) into a :class:`BadFileError`.

    astropy parses header cards lazily: a card damaged in transit may only
    fail when its value is first read, deep inside a reader.  That is still
    the file's fault, and gets the same message as a header that fails at once.
    """
    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, EOFError, VerifyError) as exc:
        raise BadFileError(name, unreadable(exc)) from exc


def parse_fits_bytes(data: bytes, name: object, **kwargs: object) -> fits.HDUList:
    """Open FITS bytes held in memory, with the messages of :func:`open_fits`."""
    if not data.startswith(b"SIMPLE  ="):
        raise BadFileError(name, NOT_FITS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False, **kwargs)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        raise BadFileError(name, unreadable(exc)) from exc
    fits_layout(hdul, len(data), name)
    return hdul
