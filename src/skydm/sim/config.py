"""Configuration of a simulated survey, validated when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from skydm.errors import BadValueError

#: Artefact classes that can be switched on (``SurveyConfig.artefacts``).
ARTEFACT_KINDS = ("cosmic_rays", "satellite_trails", "asteroids", "ghosts")

#: Footprint classes reported per visit in ``SimVisit.artefacts``.
FOOTPRINT_CLASSES = (
    "cosmic_rays",
    "satellite_trails_bright",
    "satellite_trails_faint",
    "asteroids_fast",
    "asteroids_slow",
    "ghosts",
    "asteroids_overlapping",
    "asteroids_stepping",
    "satellite_trails_on_variables",
    "ghosts_on_stars",
)

#: Footprint class of each kind of mover (catalog column ``mover_cls``).
MOVER_CLASSES = ("asteroids_fast", "asteroids_slow", "asteroids_overlapping", "asteroids_stepping")

#: Largest step between consecutive visits of the two classes of slow movers,
#: in units of the sharpest FWHM (``seeing_range[0]``): overlapping movers'
#: images overlap from one visit to the next; stepping ones move by 1 to 3
#: FWHM, so that neighbouring images touch but no longer coincide.
SLOW_MOVER_STEPS = {"asteroids_overlapping": (0.2, 0.9), "asteroids_stepping": (1.0, 3.0)}

#: How an object's magnitude in a band follows from its colour ``c``:
#: ``mag_band = mag_r + COLOR_TERMS[band] * c`` (roughly the slopes of main
#: sequence stars between the LSST bands, relative to r).
COLOR_TERMS = {"u": 2.2, "g": 1.0, "r": 0.0, "i": -0.4, "z": -0.6, "y": -0.75}

#: Atmospheric extinction in magnitudes per airmass, per band.
EXTINCTION = {"u": 0.45, "g": 0.2, "r": 0.12, "i": 0.08, "z": 0.06, "y": 0.05}

PSF_KINDS = ("moffat", "double_gaussian", "gaussian")
RAW_DTYPES = ("uint16", "int32", "float32")


def _names(value: object) -> tuple[str, ...]:
    """A tuple of names from a sequence or a comma-separated string."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SurveyConfig:
    """Everything that defines a simulated survey; the same config and seed give
    the same pixels.

    Parameters
    ----------
    seed : int
        Seed of every random draw.
    shape : (int, int)
        Image size (rows, columns), 16 to 8192 pixels a side.
    n_visits : int
        Visits per field and per band.
    n_fields : int
        Separate fields on the sky, side by side in RA (they do not overlap).
    bands : tuple of str
        Bands among u, g, r, i, z, y; the first is the reference band of the
        catalog magnitudes.
    pixel_scale : float
        Arcseconds per pixel.
    n_stars, n_galaxies : int
        Mean numbers of stars and galaxies on one image.
    seeing_range : (float, float)
        Range of the seeing FWHM in arcseconds; each visit draws its own.
    psf_kind : str
        ``"moffat"``, ``"double_gaussian"`` or ``"gaussian"``.
    psf_beta : float
        Moffat index.
    dither : float
        Largest pointing offset of a visit from the field centre, pixels.
    rotation : float
        Largest rotation of a visit's pixel grid from north-up, degrees.
    sky_adu : (float, float)
        Range of the sky level in ADU per pixel; each visit draws its own.
    gain, read_noise, saturation : float
        Electrons per ADU, read noise in electrons, saturation level in ADU.
    zero_point : float
        Magnitude of a source giving 1 ADU per second at airmass 1 (AB); an
        exposure's zero point adds ``2.5 log10(exptime)`` and subtracts the
        extinction.
    exptime : float
        Exposure time in seconds.
    bad_columns : int
        Number of bad columns of the detector (the same in every visit).
    artefacts : tuple of str
        Artefact classes to inject, any of :data:`ARTEFACT_KINDS` (a
        comma-separated string, ``"all"`` or ``"none"`` also do).
    n_transients, n_variables, n_movers : int
        Supernova-like transients, periodic variables and moving objects per
        field (movers need ``"asteroids"`` in ``artefacts``); movers alternate
        fast (trailed) and slow (point-like, tens of pixels between visits).
    n_slow_movers : int
        Movers per field slower than a few FWHM per visit (need
        ``"asteroids"``), alternately overlapping (moving 0.2 to 0.9 of the
        sharpest FWHM between consecutive visits, so that their images
        overlap) and stepping (1 to 3 FWHM per visit); see
        :data:`SLOW_MOVER_STEPS`.
    cosmic_ray_rate : float
        Mean number of cosmic rays per megapixel per exposure.
    trail_rate : float
        Mean number of satellite trails per exposure.
    ghost_rate : float
        Mean number of ghosts per exposure (mirrored from the brightest star
        through the optical axis).
    trails_on_variables : float
        Mean number per exposure of extra satellite trails that cross a
        variable star on the image (class ``satellite_trails_on_variables``;
        need ``"satellite_trails"``).
    ghosts_on_stars : float
        Mean number per exposure of filter ghosts: halos around one of the
        five brightest stars on the image, shifted away from the optical
        axis (class ``ghosts_on_stars``; need ``"ghosts"``).
    visits_per_night : int
        Visits of a field per night (all bands together), ``pair_gap``
        apart; 1 gives one visit a night.
    night_gaps : (float, float)
        Range of the time between consecutive observing nights, days.
    pair_gap : float
        Time between consecutive visits of one night, days.
    raw_dtype : str
        Pixel type of the written raws: ``"uint16"``, ``"int32"`` or ``"float32"``;
        integer types also digitise the in-memory images.
    ra, dec : float
        Centre of the first field, degrees.
    mjd_start : float
        MJD of the first night.
    instrument, detector : str, int
        Data ID parts written into every exposure (``detector`` is the first
        detector's number; the others follow it).
    n_detectors : int
        Detectors of the focal plane, 1 to 64, each of ``shape``, sharing
        every visit's pointing; laid out in a grid of ``ceil(sqrt(n))``
        columns, filled row by row from the bottom left (see
        :meth:`detector_offsets`).
    detector_gap : float
        Gap between neighbouring detectors on the focal plane, pixels.
    first_visit : int
        Number of the first visit; visits are numbered in time order.
    star_mags, galaxy_mags, transient_mags, variable_mags, mover_mags : (float, float) or None
        Magnitude ranges; ``None`` picks ranges from the zero point so that the
        brightest stars saturate and the faintest are near the 5-sigma limit.
    """

    seed: int = 1
    shape: tuple[int, int] = (512, 512)
    n_visits: int = 8
    n_fields: int = 1
    bands: tuple[str, ...] = ("r",)
    pixel_scale: float = 0.2
    n_stars: int = 300
    n_galaxies: int = 100
    seeing_range: tuple[float, float] = (0.6, 1.5)
    psf_kind: str = "moffat"
    psf_beta: float = 3.5
    dither: float = 20.0
    rotation: float = 0.0
    sky_adu: tuple[float, float] = (800.0, 1500.0)
    gain: float = 1.5
    read_noise: float = 5.0
    saturation: float = 60000.0
    zero_point: float = 28.0
    exptime: float = 30.0
    bad_columns: int = 2
    artefacts: tuple[str, ...] = ARTEFACT_KINDS
    n_transients: int = 3
    n_variables: int = 2
    n_movers: int = 2
    n_slow_movers: int = 0
    cosmic_ray_rate: float = 50.0
    trail_rate: float = 0.5
    ghost_rate: float = 0.3
    trails_on_variables: float = 0.0
    ghosts_on_stars: float = 0.0
    visits_per_night: int = 2
    night_gaps: tuple[float, float] = (1.0, 3.0)
    pair_gap: float = 30.0 / 1440.0
    raw_dtype: str = "uint16"
    ra: float = 150.0
    dec: float = 2.0
    mjd_start: float = 60310.0
    instrument: str = "skysim"
    detector: int = 0
    n_detectors: int = 1
    detector_gap: float = 30.0
    first_visit: int = 1
    star_mags: tuple[float, float] | None = None
    galaxy_mags: tuple[float, float] | None = None
    transient_mags: tuple[float, float] | None = None
    variable_mags: tuple[float, float] | None = None
    mover_mags: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # Normalise sequences so that lists given by callers compare and hash alike.
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "bands", _names(self.bands))
        object.__setattr__(self, "night_gaps", tuple(float(g) for g in self.night_gaps))
        artefacts = self.artefacts
        if isinstance(artefacts, str) and artefacts in ("all", "none"):
            artefacts = ARTEFACT_KINDS if artefacts == "all" else ()
        object.__setattr__(self, "artefacts", _names(artefacts))
        self._validate()

    def _validate(self) -> None:
        if len(self.shape) != 2 or not all(16 <= s <= 8192 for s in self.shape):
            raise BadValueError("shape", self.shape, "(rows, columns), each 16 to 8192 pixels")
        for name in ("n_visits", "n_fields"):
            if int(getattr(self, name)) < 1:
                raise BadValueError(name, getattr(self, name), "an integer >= 1")
        counts = (
            "n_stars",
            "n_galaxies",
            "n_transients",
            "n_variables",
            "n_movers",
            "n_slow_movers",
        )
        for name in (*counts, "bad_columns"):
            if int(getattr(self, name)) < 0:
                raise BadValueError(name, getattr(self, name), "an integer >= 0")
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise BadValueError("bands", self.bands, "one or more distinct bands")
        for band in self.bands:
            if band not in COLOR_TERMS:
                raise BadValueError("bands", band, f"bands among {', '.join(COLOR_TERMS)}")
        lo, hi = self.seeing_range
        if not (0 < lo <= hi < 20):
            raise BadValueError("seeing_range", self.seeing_range, "0 < low <= high < 20 arcsec")
        if hi / self.pixel_scale > 40:
            raise BadValueError(
                "seeing_range", self.seeing_range, "at most 40 pixels FWHM; raise pixel_scale"
            )
        lo_s, hi_s = self.sky_adu
        if not (0 <= lo_s <= hi_s):
            raise BadValueError("sky_adu", self.sky_adu, "0 <= low <= high ADU")
        if self.psf_kind not in PSF_KINDS:
            raise BadValueError("psf_kind", self.psf_kind, f"one of {', '.join(PSF_KINDS)}")
        if self.raw_dtype not in RAW_DTYPES:
            raise BadValueError("raw_dtype", self.raw_dtype, f"one of {', '.join(RAW_DTYPES)}")
        for art in self.artefacts:
            if art not in ARTEFACT_KINDS:
                raise BadValueError("artefacts", art, f"any of {', '.join(ARTEFACT_KINDS)}")
        positive = ("pixel_scale", "gain", "saturation", "exptime", "psf_beta")
        for name in positive:
            value = float(getattr(self, name))
            if not (value > 0 and math.isfinite(value)):
                raise BadValueError(name, value, "a positive finite number")
        if self.psf_beta <= 1:
            raise BadValueError("psf_beta", self.psf_beta, "a Moffat index > 1")
        nonneg = ("read_noise", "dither", "rotation", "cosmic_ray_rate", "trail_rate")
        for name in (*nonneg, "ghost_rate", "trails_on_variables", "ghosts_on_stars"):
            value = float(getattr(self, name))
            if not (value >= 0 and math.isfinite(value)):
                raise BadValueError(name, value, "a finite number >= 0")
        if not (1 <= int(self.visits_per_night) <= 48) or isinstance(self.visits_per_night, bool):
            raise BadValueError(
                "visits_per_night", self.visits_per_night, "an integer from 1 to 48"
            )
        lo_g, hi_g = self.night_gaps
        if not (0.5 <= lo_g <= hi_g <= 365.0):
            raise BadValueError(
                "night_gaps",
                self.night_gaps,
                "(shortest, longest) days with 0.5 <= shortest <= longest <= 365",
            )
        if not (0.0 < self.pair_gap * self.visits_per_night <= 0.5):
            raise BadValueError(
                "pair_gap",
                self.pair_gap,
                "a positive gap in days such that one night's visits last at most 0.5 day",
            )
        if not (1 <= int(self.n_detectors) <= 64) or isinstance(self.n_detectors, bool):
            raise BadValueError("n_detectors", self.n_detectors, "an integer from 1 to 64")
        if not (0 <= float(self.detector_gap) <= 10_000):
            raise BadValueError("detector_gap", self.detector_gap, "0 to 10000 pixels")
        if int(self.detector) < 0:
            raise BadValueError("detector", self.detector, "an integer >= 0")
        if self.raw_dtype == "uint16" and self.saturation > 65535:
            raise BadValueError(
                "saturation", self.saturation, "<= 65535 ADU for uint16 raws; use raw_dtype='int32'"
            )
        if not (-89.0 < self.dec < 89.0):
            raise BadValueError("dec", self.dec, "a declination within 89 degrees of the equator")
        for name in ("star_mags", "galaxy_mags", "transient_mags", "variable_mags", "mover_mags"):
            rng = getattr(self, name)
            if rng is not None and not (len(rng) == 2 and rng[0] <= rng[1]):
                raise BadValueError(name, rng, "(bright, faint) magnitudes with bright <= faint")

    # -- derived quantities ------------------------------------------------
    @property
    def detector_grid(self) -> tuple[int, int]:
        """Rows and columns of the detector grid."""
        cols = math.ceil(math.sqrt(self.n_detectors))
        return math.ceil(self.n_detectors / cols), cols

    def detector_offsets(self) -> list[tuple[float, float]]:
        """Each detector's centre relative to the pointing, pixels (x, y), in detector order."""
        rows, cols = self.detector_grid
        ny, nx = self.shape
        step_x, step_y = nx + self.detector_gap, ny + self.detector_gap
        return [
            ((k % cols - (cols - 1) / 2) * step_x, (k // cols - (rows - 1) / 2) * step_y)
            for k in range(self.n_detectors)
        ]

    @property
    def focal_plane_shape(self) -> tuple[float, float]:
        """Extent (rows, columns) of the whole focal plane in pixels, gaps included."""
        rows, cols = self.detector_grid
        ny, nx = self.shape
        return rows * ny + (rows - 1) * self.detector_gap, cols * nx + (
            cols - 1
        ) * self.detector_gap

    @property
    def zp_exposure(self) -> float:
        """Zero point of an exposure at airmass 1 (magnitude of 1 ADU in ``exptime``)."""
        return self.zero_point + 2.5 * math.log10(self.exptime)

    def mag_range(self, kind: str) -> tuple[float, float]:
        """The magnitude range of one kind of object (given, or from the zero point)."""
        given = getattr(self, f"{kind}_mags")
        if given is not None:
            return (float(given[0]), float(given[1]))
        zp = self.zp_exposure
        # Offsets from the exposure zero point: with the default camera the
        # brightest stars saturate and the faintest sit near 5 sigma.
        offsets = {
            "star": (16.0, 7.0),
            "galaxy": (13.5, 7.5),
            "transient": (12.5, 9.5),
            "variable": (14.0, 10.5),
            "mover": (13.0, 10.0),
        }
        bright, faint = offsets[kind]
        return (zp - bright, zp - faint)
