"""Visit metadata carried by every Exposure."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from astropy.io import fits

# FITS keywords of the Exposure primary header (8 characters at most).
_KEYS = {
    "instrument": "INSTRUME",
    "detector": "DETNUM",
    "visit": "VISIT",
    "band": "BAND",
    "mjd": "MJD-OBS",
    "exptime": "EXPTIME",
    "airmass": "AIRMASS",
    "seeing": "SEEING",
    "gain": "GAIN",
    "read_noise": "RDNOISE",
    "saturation": "SATURATE",
    "sky": "SKYSUB",
    "ra": "RA",
    "dec": "DEC",
}


@dataclass
class VisitInfo:
    """What is known about the exposure that made an image.

    Attributes
    ----------
    instrument, detector, visit, band :
        The data ID parts.
    mjd : float
        Mid-exposure time, MJD (TAI).
    exptime : float
        Exposure time in seconds.
    airmass, seeing :
        Airmass and seeing FWHM in arcseconds.
    gain, read_noise, saturation :
        Electrons per ADU, read noise in electrons, saturation level in ADU.
    sky : float
        Sky level in ADU that was subtracted from the image upstream (0 if
        none), kept so that the variance still counts its Poisson noise.
        Written as ``SKYSUB``; read from ``SKYSUB`` or ``SKYDIP`` (DECam).
        A raw's ``SKYLEVEL`` card (sky still in the pixels) is not this.
    ra, dec : float
        Pointing centre in degrees.
    """

    instrument: str = "unknown"
    detector: int = 0
    visit: int = 0
    band: str = "unknown"
    mjd: float = math.nan
    exptime: float = math.nan
    airmass: float = math.nan
    seeing: float = math.nan
    gain: float = math.nan
    read_noise: float = math.nan
    saturation: float = math.nan
    sky: float = 0.0
    ra: float = math.nan
    dec: float = math.nan

    def to_header(self, header: fits.Header) -> None:
        """Write every field into ``header``; NaN values are left out."""
        for name, value in asdict(self).items():
            if isinstance(value, float) and math.isnan(value):
                continue
            header[_KEYS[name]] = value

    @classmethod
    def from_header(cls, header: fits.Header) -> VisitInfo:
        """Read the fields written by :meth:`to_header`; others keep defaults."""
        values: dict[str, object] = {}
        for f in fields(cls):
            key = _KEYS[f.name]
            if key not in header:
                continue
            raw = header[key]
            try:
                values[f.name] = (
                    str(raw).strip()
                    if f.type in ("str", str)
                    else int(raw)
                    if f.type in ("int", int)
                    else float(raw)
                )
            except (TypeError, ValueError):
                continue  # a malformed card keeps the default rather than failing the read
        return cls(**values)  # type: ignore[arg-type]
