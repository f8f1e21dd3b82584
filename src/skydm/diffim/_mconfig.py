"""The tunables of DIA source measurement (:class:`MeasureConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from skydm.errors import BadValueError


@dataclass(frozen=True)
class MeasureConfig:
    """Tunables of DIA source measurement (validated on construction).

    Attributes
    ----------
    aperture_radius : float
        Aperture radius in pixels (the LSST schema's ``apFlux`` is 12).
    psf_fit_radius : float
        Radius (in FWHM) of the region over which ``psfChi2``, ``psfLnL``
        and ``psfNdata`` are counted.
    footprint_threshold : float or None
        Significance (sigma) of the local footprint; the detection
        threshold in the table's metadata when ``None``.
    footprint_half_fwhm : float
        Half side of the measurement stamp in FWHM (3 to 25 pixels).
    dipole_min_sigma : float
        A dipole fit is attempted when pixels of the opposite sign reach
        this significance near the peak.
    dipole_max_separation : float
        Furthest (in FWHM) the opposite lobe may be from the peak.
    dipole_lobe_snr : float
        ``isDipole`` needs both fitted lobes at this S/N or more.
    trail_min_snr : float
        Smallest |S/N| at which the trail fit is attempted.
    trail_min_elongation : float
        The trail fit runs when the major-axis variance exceeds the PSF's by
        this fraction and the minor one by as much ...
    trail_elongation_sigma : float
        ... and by this many times the moments' noise (``extendedness_size_noise / |S/N|``).
    trail_max_length : float
        Longest trail fitted, pixels (bounds the stamp).
    extendedness_margin : float
        Fractional excess of the source's moment trace over the PSF's that
        counts as extended.
    extendedness_size_noise : float
        Fractional noise of the trace at S/N 1 (it scales as 1/S/N).
    """

    aperture_radius: float = 12.0
    psf_fit_radius: float = 2.0
    footprint_threshold: float | None = None
    footprint_half_fwhm: float = 3.0
    dipole_min_sigma: float = 5.0
    dipole_max_separation: float = 3.0
    dipole_lobe_snr: float = 3.0
    trail_min_snr: float = 5.0
    trail_min_elongation: float = 0.3
    trail_elongation_sigma: float = 3.0
    trail_max_length: float = 60.0
    extendedness_margin: float = 0.1
    extendedness_size_noise: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "footprint_threshold":
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise BadValueError(f"MeasureConfig.{f.name}", value, "a positive number")
