"""Postage-stamp cutouts for alert packets, as FITS bytes.

A 10,000-source visit needs 30,000 cutouts; astropy's FITS writer costs about
a millisecond each, which alone would take half the visit's time budget.  A
cutout is one simple image HDU, so it is written directly here: the header
cards of the exposure's WCS are formatted once per exposure by astropy and
only the reference pixel changes from stamp to stamp.  The result is standard
FITS (read back by astropy in the tests) with a celestial WCS for the stamp.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits

from skydm.image import Exposure

_BLOCK = 2880

#: Time keywords a WCS header may carry (FITS WCS Paper VII); a cutout states
#: its time once, in the cards of :func:`_time_cards`.
_TIME_KEYS = frozenset(
    {
        "MJD-OBS",
        "DATE-OBS",
        "MJD-AVG",
        "DATE-AVG",
        "MJD-BEG",
        "DATE-BEG",
        "MJD-END",
        "DATE-END",
        "MJDREF",
        "MJDREFI",
        "MJDREFF",
        "DATEREF",
        "TIMESYS",
        "TSTART",
        "TSTOP",
        "XPOSURE",
        "TELAPSE",
    }
)


def _time_cards(exposure: Exposure) -> list[str]:
    """The observation time, once: start (``MJD-OBS`` = ``DATE-OBS``) and
    mid-exposure (``MJD-AVG`` = ``DATE-AVG``, the alert's ``midpointMjdTai``).

    FITS (WCS Paper VII) makes ``DATE-OBS`` the start of the observation and
    ``MJD-OBS`` the same instant; skydm's visit MJD is mid-exposure, so the
    start is half the exposure time earlier (the same instant when the
    exposure time is unknown).  Without a visit MJD, the WCS's own
    ``MJD-OBS`` is used, if any.
    """
    from astropy.time import Time

    info = exposure.info
    mid = float(info.mjd)
    if math.isfinite(mid):
        half = 0.5 * info.exptime / 86400.0 if math.isfinite(info.exptime) else 0.0
        start = mid - half
    else:
        wcs_mjd = getattr(getattr(exposure.wcs, "wcs", None), "mjdobs", math.nan)
        if not math.isfinite(wcs_mjd):
            return []
        start = mid = float(wcs_mjd)

    def iso(mjd: float) -> str:
        return str(Time(mjd, format="mjd", scale="tai").isot)

    cards = [
        _card("TIMESYS", "TAI", "time scale of the MJD and DATE cards"),
        _card("MJD-OBS", start, "[d] start of exposure"),
        _card("DATE-OBS", iso(start), "start of exposure"),
        _card("MJD-AVG", mid, "[d] mid-exposure (midpointMjdTai)"),
        _card("DATE-AVG", iso(mid), "mid-exposure"),
    ]
    if math.isfinite(info.exptime):
        cards.append(_card("EXPTIME", info.exptime, "[s] exposure time"))
    return cards


def _card(key: str, value: object, comment: str = "") -> str:
    return str(fits.Card(key, value, comment))


def _number_card(key: str, value: float) -> str:
    """A FITS card for a number, formatted here (astropy's Card costs ~50 us)."""
    if float(value).is_integer() and abs(value) < 1e15:
        text = str(int(value))
    else:
        text = f"{value:.16G}"
        if "." not in text and "E" not in text:
            text += ".0"
    return f"{key:<8}= {text:>20}".ljust(80)


class CutoutMaker:
    """Cut FITS stamps out of one exposure.

    Parameters
    ----------
    exposure : Exposure
        The science, template or difference image.
    size : int
        Stamp side in pixels (odd sizes centre the source on a pixel).
    """

    def __init__(self, exposure: Exposure, size: int = 30) -> None:
        if size < 3:
            raise ValueError(f"cutout size={size} is too small; use at least 3 pixels")
        self.exposure = exposure
        self.size = int(size)
        # Stamps are sliced from the image as it is (no padded copy: that
        # would cost a 4k x 4k image's worth of memory and time per maker);
        # only stamps crossing the edge are assembled, NaN outside.
        self._image = np.asarray(exposure.image)
        self._pad = self.size
        # Stamps in nJy, like the alert's fluxes (and Rubin's cutouts), when
        # the image has a zero point; otherwise in its own units, no BUNIT.
        zp = exposure.zero_point
        self._scale = exposure.nanojansky_per_count("nJy cutouts") if math.isfinite(zp) else None
        head = [
            _card("SIMPLE", True, "conforms to FITS standard"),
            _card("BITPIX", -32, "32-bit IEEE float"),
            _card("NAXIS", 2),
            _card("NAXIS1", self.size),
            _card("NAXIS2", self.size),
        ]
        info = exposure.info
        for key, value in (("VISIT", info.visit), ("DETNUM", info.detector), ("BAND", info.band)):
            head.append(_card(key, value))
        head.extend(_time_cards(exposure))
        if self._scale is not None:
            head.append(_card("BUNIT", "nJy", "pixel values in nanojansky"))
        self._head = "".join(head)
        self._wcs_cards = ""
        self._crpix = (0.0, 0.0)
        if exposure.wcs is not None:
            header = exposure.wcs.to_header()
            self._crpix = (float(header["CRPIX1"]), float(header["CRPIX2"]))
            # The WCS's own time cards (astropy writes MJD-OBS, DATE-OBS,
            # MJDREF... when the WCS has them) are left out: the stamp's
            # time is stated once, by _time_cards.
            self._wcs_cards = "".join(
                str(c)
                for c in header.cards
                if c.keyword not in ("CRPIX1", "CRPIX2") and c.keyword not in _TIME_KEYS
            )
        data_len = self.size * self.size * 4
        self._data_pad = b"\0" * ((-data_len) % _BLOCK)

    def corner(self, x: float, y: float) -> tuple[int, int]:
        """0-based (x0, y0) of the stamp's first pixel for a source at (x, y)."""
        half = self.size // 2
        return round(x) - half, round(y) - half

    def cutout(self, x: float, y: float) -> bytes:
        """The FITS bytes of the stamp centred on 0-based pixel (``x``, ``y``)."""
        x0, y0 = self.corner(x, y)
        ny, nx = self.exposure.shape
        # Stamps wholly off the image are clipped to the padding (all NaN).
        x0c = min(max(x0, -self._pad), nx)
        y0c = min(max(y0, -self._pad), ny)
        n = self.size
        if x0c >= 0 and x0c + n <= nx and y0c >= 0 and y0c + n <= ny:
            stamp = np.asarray(self._image[y0c : y0c + n, x0c : x0c + n], dtype=np.float32)
        else:
            stamp = np.full((n, n), np.nan, dtype=np.float32)
            xa, xb = max(x0c, 0), min(x0c + n, nx)
            ya, yb = max(y0c, 0), min(y0c + n, ny)
            if xa < xb and ya < yb:
                stamp[ya - y0c : yb - y0c, xa - x0c : xb - x0c] = self._image[ya:yb, xa:xb]
        if self._scale is not None:
            stamp = stamp * np.float32(self._scale)
        # FITS data are big-endian.
        stamp = stamp.astype(">f4")
        cards = [self._head]
        if self._wcs_cards:
            cards.append(_number_card("CRPIX1", self._crpix[0] - x0c))
            cards.append(_number_card("CRPIX2", self._crpix[1] - y0c))
            cards.append(self._wcs_cards)
        cards.append(_number_card("LTV1", -x0c))
        cards.append(_number_card("LTV2", -y0c))
        cards.append("END".ljust(80))
        header = "".join(cards).encode("ascii")
        header += b" " * ((-len(header)) % _BLOCK)
        return header + stamp.tobytes() + self._data_pad
