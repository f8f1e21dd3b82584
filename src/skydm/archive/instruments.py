"""Instrument definitions: how a raw header becomes a data ID and metadata.

Each instrument is a small class with a name, a test of whether a header is
its own, and a :meth:`~InstrumentDefinition.translate` method.  A header a
definition cannot translate is a per-file error (:class:`BadFileError`) that
names the missing or bad card and what to do.

``skysim``
    Raws written by :mod:`skydm.sim` (``INSTRUME = 'SKYSIM'``): the visit is
    the ``VISIT`` card, the detector ``DETECTOR`` (0 if absent), the band
    ``FILTER``.  ``VISIT`` and ``FILTER`` are required.
``generic``
    Any other FITS image.  The observation time is required (``MJD-OBS``,
    ``MJD``, ``JD`` or ``DATE-OBS``).  The visit is the first positive
    integer of ``VISIT``, ``EXPNUM`` or ``EXPID``; a header without one gets
    a visit derived deterministically from the night and the pixels:
    ``YYYYMMDD * 10**10 + (SHA-256 of the pixel bytes mod 10**10)``, where
    ``YYYYMMDD`` is the UTC date of the observation.  So the same pixels
    always get the same visit (re-ingesting is idempotent, a header fix is a
    replacement), different exposures get different visits, and the visit
    still sorts by date.  The detector is ``CCDNUM``, ``DETNUM`` or an
    integer ``DETECTOR`` (else 0); the band is the first word of ``FILTER``,
    ``BAND``, ``FILTER1`` or ``FILTNAM`` (else ``unknown``).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from astropy.io import fits
from astropy.time import Time

from skydm.errors import BadFileError, BadValueError
from skydm.repo import DataId

_BAND_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class Translation:
    """What an instrument definition makes of a raw header."""

    data_id: DataId
    metadata: dict[str, Any] = field(default_factory=dict)


def _number(header: fits.Header, key: str) -> float:
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _positive_int(header: fits.Header, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = int(str(value).strip())
        except ValueError:
            continue
        if number > 0:
            return number
    return None


def _band(header: fits.Header, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = header.get(key)
        if value is None or not str(value).strip():
            continue
        band = _BAND_CHARS.sub("_", str(value).strip().split()[0])[:64]
        return band if band[0].isalnum() else f"b{band}"[:64]
    return None


def observation_mjd(header: fits.Header) -> float:
    """Observation time as MJD from ``MJD-OBS``, ``MJD``, ``JD`` or ``DATE-OBS``; NaN if none."""
    for key in ("MJD-OBS", "MJD"):
        value = _number(header, key)
        if not math.isnan(value):
            return value
    jd = _number(header, "JD")
    if not math.isnan(jd):
        return jd - 2400000.5
    raw = header.get("DATE-OBS")
    if not isinstance(raw, str) or not raw.strip():
        return math.nan
    text = raw.strip()
    time_obs = header.get("TIME-OBS") or header.get("UT")
    if "T" not in text and isinstance(time_obs, str) and time_obs.strip():
        text = f"{text}T{time_obs.strip()}"
    try:
        return float(Time(text, scale="utc").mjd)
    except ValueError:
        pass
    # The pre-1997 FITS form 'DD/MM/YY' means years 1900-1999.
    try:
        day, month, year = (int(p) for p in text[:8].split("/"))
        return float(Time(datetime(1900 + year, month, day), scale="utc").mjd)
    except ValueError:
        return math.nan


class InstrumentDefinition(abc.ABC):
    """Translates the raw headers of one instrument."""

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def matches(cls, header: fits.Header) -> bool:
        """Whether ``header`` is from this instrument."""

    @abc.abstractmethod
    def translate(
        self, header: fits.Header, *, pixel_sha256: Callable[[], str], path: object
    ) -> Translation:
        """The data ID and metadata of a raw.

        Parameters
        ----------
        header : astropy.io.fits.Header
            Primary header merged with the first image HDU's header.
        pixel_sha256 : callable
            Returns the hex SHA-256 of the raw's pixel bytes (computed only
            if a definition asks for it).
        path : object
            The file, for error messages.

        Raises
        ------
        BadFileError
            When the header lacks what the definition needs.
        """

    @staticmethod
    def _metadata(header: fits.Header, mjd: float) -> dict[str, Any]:
        meta: dict[str, Any] = {"mjd": mjd if math.isfinite(mjd) else None}
        for key, card in (("exptime", "EXPTIME"), ("airmass", "AIRMASS")):
            value = _number(header, card)
            meta[key] = value if math.isfinite(value) else None
        for key, card in (("instrume", "INSTRUME"), ("object", "OBJECT")):
            value = header.get(card)
            meta[key] = str(value).strip() if value is not None else None
        return meta


class SkySim(InstrumentDefinition):
    """The simulator's camera (``INSTRUME = 'SKYSIM'``)."""

    name = "skysim"

    @classmethod
    def matches(cls, header: fits.Header) -> bool:
        return str(header.get("INSTRUME", "")).strip().upper() == "SKYSIM"

    def translate(
        self, header: fits.Header, *, pixel_sha256: Callable[[], str], path: object
    ) -> Translation:
        if "VISIT" not in header:
            raise BadFileError(
                path,
                "the skysim instrument definition needs a VISIT card and the header has none; "
                "is it a skysim raw? ingest other cameras with --instrument generic",
            )
        visit = _positive_int(header, ("VISIT",))
        if visit is None and str(header["VISIT"]).strip() != "0":
            raise BadFileError(path, f"VISIT = {header['VISIT']!r} is not a non-negative integer")
        band = _band(header, ("FILTER", "BAND"))
        if band is None:
            raise BadFileError(path, "the skysim instrument definition needs a FILTER card")
        detector = _positive_int(header, ("DETECTOR",)) or 0
        mjd = observation_mjd(header)
        data_id = DataId(self.name, detector=detector, visit=visit or 0, band=band)
        return Translation(data_id, self._metadata(header, mjd))


class Generic(InstrumentDefinition):
    """Any FITS image; the visit comes from an exposure number or the night and pixels."""

    name = "generic"
    VISIT_CARDS = ("VISIT", "EXPNUM", "EXPID")
    DETECTOR_CARDS = ("CCDNUM", "DETNUM", "DETECTOR")
    BAND_CARDS = ("FILTER", "BAND", "FILTER1", "FILTNAM")

    @classmethod
    def matches(cls, header: fits.Header) -> bool:
        return True

    def translate(
        self, header: fits.Header, *, pixel_sha256: Callable[[], str], path: object
    ) -> Translation:
        mjd = observation_mjd(header)
        if math.isnan(mjd):
            raise BadFileError(
                path,
                "the header has no observation time (MJD-OBS, MJD, JD or DATE-OBS), which "
                "the generic instrument definition needs to identify the visit; add one",
            )
        visit = _positive_int(header, self.VISIT_CARDS)
        if visit is None:
            day = Time(mjd, format="mjd", scale="utc").datetime
            day_obs = day.year * 10000 + day.month * 100 + day.day
            visit = day_obs * 10**10 + int(pixel_sha256(), 16) % 10**10
        detector = _positive_int(header, self.DETECTOR_CARDS) or 0
        band = _band(header, self.BAND_CARDS) or "unknown"
        data_id = DataId(self.name, detector=detector, visit=visit, band=band)
        return Translation(data_id, self._metadata(header, mjd))


INSTRUMENTS: dict[str, type[InstrumentDefinition]] = {
    SkySim.name: SkySim,
    Generic.name: Generic,
}


def get_instrument(name: str) -> InstrumentDefinition:
    """The instrument definition called ``name``.

    Raises
    ------
    BadValueError
        When there is none of that name.
    """
    try:
        return INSTRUMENTS[name.lower()]()
    except KeyError:
        raise BadValueError("instrument", name, f"one of {', '.join(INSTRUMENTS)}") from None


def instrument_for(header: fits.Header, name: str | None = None) -> InstrumentDefinition:
    """The definition named ``name``, or the first whose :meth:`matches` accepts ``header``.

    Raises
    ------
    BadValueError
        When ``name`` is not a known instrument.
    """
    if name is not None:
        return get_instrument(name)
    for cls in INSTRUMENTS.values():
        if cls.matches(header):
            return cls()
    return Generic()
