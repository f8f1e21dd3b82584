"""A simulated survey: fields, visits and their observing conditions.

:func:`simulate_survey` plans the survey (catalogs, visit times, seeing, sky,
pointings) at once and cheaply; the pixels of a visit are rendered the first
time one of its images or truth tables is used, and kept until
:meth:`SimVisit.release`.  Every random draw comes from a stream seeded by
``(seed, purpose, field, slot)``, so a visit's pixels do not depend on which
other visits were rendered, or in which order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING

import numpy as np
from astropy.table import Table, vstack
from astropy.wcs import WCS

from skydm.image.psf import Psf
from skydm.image.visit import VisitInfo
from skydm.sim.catalog import deproject, field_centres, make_catalog
from skydm.sim.config import EXTINCTION, SurveyConfig
from skydm.sim.render import make_psf

if TYPE_CHECKING:
    from skydm.image.exposure import Exposure
    from skydm.sim.scene import VisitPixels

# Purposes of the random streams (the second element of every seed key).
STREAM_CATALOG, STREAM_CONDITIONS, STREAM_NOISE, STREAM_ARTEFACTS, STREAM_DETECTOR = range(5)

#: Default time between consecutive visits of a night, days (30 minutes;
#: ``SurveyConfig.pair_gap``).
PAIR_GAP = 30.0 / 1440.0


def stream(cfg: SurveyConfig, *key: int) -> np.random.Generator:
    """The random generator for one purpose (``key``) of the survey."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


def make_wcs(
    shape: tuple[int, int],
    ra: float,
    dec: float,
    scale: float,
    rotation: float,
    offset: tuple[float, float] = (0.0, 0.0),
) -> WCS:
    """A TAN WCS with its tangent point at (ra, dec), north up and east left,
    rotated by ``rotation`` degrees, ``scale`` arcsec per pixel.

    The tangent point is the image centre, or for a detector of a focal plane
    the pointing: ``offset`` is the detector centre's place relative to it
    (pixels x, y, in the detector's own pixel axes), so that every detector
    of a visit shares one projection."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0 - offset[0], (ny + 1) / 2.0 - offset[1]]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    d = scale / 3600.0
    w.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    w.wcs.set()
    return w


@dataclass
class SimVisit:
    """One simulated exposure: its conditions, and (rendered on first use) its pixels.

    Attributes
    ----------
    visit, detector, field, band : int, int, int, str
        Data ID and the field observed.
    slot : int
        Position of this visit in its field's sequence.
    mjd, exptime, airmass : float
        Mid-exposure MJD, seconds, airmass.
    seeing : float
        PSF FWHM, arcseconds.
    sky : float
        Sky level, ADU per pixel.
    dither : (float, float)
        Pointing offset from the field centre, pixels (x, y).
    rotation : float
        Rotation of the pixel grid, degrees.
    wcs : astropy.wcs.WCS
        The visit's TAN WCS (0-based pixel coordinates as in numpy).
    psf : Psf
        The true PSF.
    zero_point : float
        AB magnitude of 1 ADU in this exposure.
    """

    config: SurveyConfig
    catalog: Table = dc_field(repr=False)
    centre: tuple[float, float]
    visit: int
    detector: int
    field: int
    band: str
    slot: int
    mjd: float
    exptime: float
    airmass: float
    seeing: float
    sky: float
    dither: tuple[float, float]
    rotation: float
    wcs: WCS = dc_field(repr=False)
    psf: Psf = dc_field(repr=False)
    zero_point: float
    _pixels: VisitPixels | None = dc_field(default=None, repr=False)

    @property
    def info(self) -> VisitInfo:
        """Visit metadata as carried by the Exposures."""
        cfg = self.config
        ra, dec = (float(v) for v in self.wcs.wcs.crval)
        return VisitInfo(
            instrument=cfg.instrument,
            detector=self.detector,
            visit=self.visit,
            band=self.band,
            mjd=self.mjd,
            exptime=self.exptime,
            airmass=self.airmass,
            seeing=self.seeing,
            gain=cfg.gain,
            read_noise=cfg.read_noise,
            saturation=cfg.saturation,
            sky=self.sky,
            ra=ra,
            dec=dec,
        )

    def pixels(self) -> VisitPixels:
        """Render (once) and return everything about this visit's pixels."""
        if self._pixels is None:
            from skydm.sim.scene import render_visit

            self._pixels = render_visit(self)
        return self._pixels

    @property
    def rendered(self) -> bool:
        """Whether the pixels are rendered and held in memory."""
        return self._pixels is not None

    def release(self) -> None:
        """Forget the rendered pixels (they are rendered again, identically, on use)."""
        self._pixels = None

    @property
    def raw(self) -> Exposure:
        """The raw exposure: sky, sources, artefacts, noise, saturation, bad columns."""
        return self.pixels().raw

    @property
    def clean(self) -> Exposure:
        """The same exposure without artefacts and with the same noise realisation."""
        return self.pixels().clean

    @property
    def model(self) -> np.ndarray:
        """Noiseless expectation of :attr:`clean` (sources plus sky, ADU)."""
        return self.pixels().model

    @property
    def artefact_signal(self) -> np.ndarray:
        """Noiseless signal of every artefact (ADU), zero outside the footprints."""
        return self.pixels().artefact_signal

    @property
    def artefacts(self) -> dict[str, np.ndarray]:
        """Footprint (bool image) of each artefact class."""
        return self.pixels().footprints

    @property
    def truth(self) -> Table:
        """Everything on this image: objects and artefacts, with x, y and flux (ADU)."""
        return self.pixels().truth


@dataclass
class Survey:
    """A simulated survey.

    Attributes
    ----------
    config : SurveyConfig
        What it was made from.
    fields : list of (float, float)
        Field centres (ra, dec), degrees.
    catalogs : list of astropy.table.Table
        Objects of each field.
    visits : list of SimVisit
        All visits in time order.
    """

    config: SurveyConfig
    fields: list[tuple[float, float]]
    catalogs: list[Table]
    visits: list[SimVisit]

    @functools.cached_property
    def truth(self) -> Table:
        """The catalog of every object of every field (reference magnitudes,
        shapes, light curves and tracks)."""
        return vstack(self.catalogs, metadata_conflicts="silent")

    def visit_table(self) -> Table:
        """One row per visit: data ID, field, time and conditions."""
        rows = [
            (
                v.visit,
                v.detector,
                v.field,
                v.band,
                v.mjd,
                v.exptime,
                v.airmass,
                v.seeing,
                v.psf.fwhm,
                v.sky,
                v.zero_point,
                float(v.wcs.wcs.crval[0]),
                float(v.wcs.wcs.crval[1]),
                v.dither[0],
                v.dither[1],
                v.rotation,
            )
            for v in self.visits
        ]
        names = (
            "visit",
            "detector",
            "field",
            "band",
            "mjd",
            "exptime",
            "airmass",
            "seeing",
            "fwhm_pix",
            "sky",
            "zero_point",
            "ra",
            "dec",
            "dither_x",
            "dither_y",
            "rotation",
        )
        return Table(rows=rows, names=names)


def simulate_survey(config: SurveyConfig) -> Survey:
    """Plan a survey: catalogs, visits and conditions (pixels are rendered on use).

    Each field is observed ``n_visits`` times in each band,
    ``visits_per_night`` visits a night (``pair_gap`` apart; by default two,
    30 minutes apart) on nights ``night_gaps`` (by default 1 to 3) days apart.  Seeing, sky,
    airmass, dither and rotation are drawn per visit.  With
    ``n_detectors > 1`` every visit has one :class:`SimVisit` per detector,
    sharing its pointing and conditions (``Survey.visits`` lists them visit
    by visit, detectors in order).

    Parameters
    ----------
    config : SurveyConfig
        The survey to simulate.

    Returns
    -------
    Survey
        Deterministic given ``config``.
    """
    cfg = config
    centres = field_centres(cfg)
    nb = len(cfg.bands)
    n_slots = cfg.n_visits * nb
    per_night = cfg.visits_per_night
    nights = math.ceil(n_slots / per_night)
    gaps = stream(cfg, STREAM_CONDITIONS).uniform(*cfg.night_gaps, nights)
    night_mjd = cfg.mjd_start + 0.1 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    plans = []
    catalogs = []
    for f, centre in enumerate(centres):
        mjds = [
            float(night_mjd[j // per_night] + (j % per_night) * cfg.pair_gap + f * 0.004)
            for j in range(n_slots)
        ]
        # Movers are placed in the field at visits spread over the survey.
        anchors = np.array([mjds[(k * n_slots) // cfg.n_movers] for k in range(cfg.n_movers)])
        # Slow movers' rates follow from the longest gap between consecutive
        # visits in one band (those a coadd compares).
        ref_band = np.asarray(mjds[::nb])
        epoch_gap = float(np.max(np.diff(ref_band))) if ref_band.size > 1 else 1.0
        cat_rng = stream(cfg, STREAM_CATALOG, f)
        catalogs.append(
            make_catalog(cfg, f, centre, cat_rng, anchors, (mjds[0], mjds[-1]), epoch_gap=epoch_gap)
        )
        for j in range(n_slots):
            plans.append((mjds[j], f, j, cfg.bands[j % nb]))
    plans.sort()
    visits = []
    for rank, (mjd, f, j, band) in enumerate(plans):
        rng = stream(cfg, STREAM_CONDITIONS, f, j)
        seeing = rng.uniform(*cfg.seeing_range)
        sky = rng.uniform(*cfg.sky_adu)
        airmass = rng.uniform(1.0, 1.6)
        dx, dy = rng.uniform(-cfg.dither, cfg.dither, 2) if cfg.dither > 0 else (0.0, 0.0)
        rot = rng.uniform(-cfg.rotation, cfg.rotation) if cfg.rotation > 0 else 0.0
        scale = cfg.pixel_scale / 3600.0
        ra, dec = deproject(np.array([dx * scale]), np.array([dy * scale]), *centres[f])
        for k, offset in enumerate(cfg.detector_offsets()):
            wcs = make_wcs(cfg.shape, float(ra[0]), float(dec[0]), cfg.pixel_scale, rot, offset)
            visits.append(
                SimVisit(
                    config=cfg,
                    catalog=catalogs[f],
                    centre=centres[f],
                    visit=cfg.first_visit + rank,
                    detector=cfg.detector + k,
                    field=f,
                    band=band,
                    slot=j,
                    mjd=mjd,
                    exptime=cfg.exptime,
                    airmass=float(airmass),
                    seeing=float(seeing),
                    sky=float(sky),
                    dither=(float(dx), float(dy)),
                    rotation=float(rot),
                    wcs=wcs,
                    psf=make_psf(cfg.psf_kind, seeing / cfg.pixel_scale, cfg.psf_beta),
                    zero_point=cfg.zp_exposure - EXTINCTION[band] * (airmass - 1.0),
                )
            )
    return Survey(config=cfg, fields=centres, catalogs=catalogs, visits=visits)
