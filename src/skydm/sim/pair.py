"""A science/template pair on one pixel grid, for image differencing."""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from skydm.errors import BadValueError
from skydm.image.exposure import Exposure
from skydm.sim.catalog import make_catalog
from skydm.sim.config import SurveyConfig
from skydm.sim.render import make_psf
from skydm.sim.survey import STREAM_CATALOG, SimVisit, make_wcs, stream

#: Days between the template and the science exposure.
PAIR_BASELINE = 30.0


def simulate_pair(
    seed: int,
    shape: tuple[int, int] = (512, 512),
    n_stars: int = 300,
    seeing_science: float = 1.0,
    seeing_template: float = 0.8,
    n_transients: int = 0,
    *,
    n_galaxies: int = 0,
    pixel_scale: float = 0.2,
    psf_kind: str = "moffat",
    psf_beta: float = 3.5,
    sky: float = 1000.0,
    template_sky: float | None = None,
    gain: float = 1.5,
    read_noise: float = 5.0,
    saturation: float = 60000.0,
    zero_point: float = 28.0,
    exptime: float = 30.0,
    band: str = "r",
    transient_mags: tuple[float, float] | None = None,
    subtract_sky: bool = True,
    ra: float = 150.0,
    dec: float = 2.0,
) -> tuple[Exposure, Exposure, Table]:
    """Two exposures of one field on the same pixel grid, with different PSFs.

    The template is taken 30 days before the science exposure; both see the
    same stars and galaxies with independent noise; transients shine only in
    the science exposure.  There are no artefacts, no bad columns and no
    dither, so the two images differ only by PSF, sky, noise and transients.

    Parameters
    ----------
    seed : int
        Seed of every random draw.
    shape : (int, int)
        Image shape (rows, columns).
    n_stars, n_galaxies : int
        Mean numbers of stars and galaxies on the image.
    seeing_science, seeing_template : float
        PSF FWHM of each exposure, arcseconds.
    n_transients : int
        Point sources present only in the science exposure (70% on a galaxy
        when there are galaxies).
    pixel_scale, psf_kind, psf_beta, gain, read_noise, saturation, zero_point, exptime, band :
        As in :class:`~skydm.sim.SurveyConfig`.
    sky, template_sky : float
        Sky levels in ADU (``template_sky`` defaults to ``sky``).
    transient_mags : (float, float), optional
        Range of the transients' magnitudes (default: from the zero point,
        bright enough to detect, well below saturation).
    subtract_sky : bool
        Return sky-subtracted images (``info.sky`` then records the level
        removed); otherwise the sky stays in, like a raw.

    Returns
    -------
    science, template : Exposure
        Both with variance, mask (SAT), PSF, WCS, zero point and visit info.
    truth : astropy.table.Table
        The transients: id, ra, dec, x, y (0-based pixels), flux (ADU in the
        science image) and mag.  ``truth.meta["objects"]`` holds the science
        exposure's full truth (stars and galaxies too).
    """
    for name, value in (("seeing_science", seeing_science), ("seeing_template", seeing_template)):
        if not (value > 0 and math.isfinite(value)):
            raise BadValueError(name, value, "a positive seeing FWHM in arcseconds")
    t_sky = sky if template_sky is None else template_sky
    cfg = SurveyConfig(
        seed=seed,
        shape=(int(shape[0]), int(shape[1])),
        n_visits=2,
        n_fields=1,
        bands=(band,),
        pixel_scale=pixel_scale,
        n_stars=n_stars,
        n_galaxies=n_galaxies,
        seeing_range=(min(seeing_science, seeing_template), max(seeing_science, seeing_template)),
        psf_kind=psf_kind,
        psf_beta=psf_beta,
        dither=0.0,
        rotation=0.0,
        sky_adu=(min(sky, t_sky), max(sky, t_sky)),
        gain=gain,
        read_noise=read_noise,
        saturation=saturation,
        zero_point=zero_point,
        exptime=exptime,
        bad_columns=0,
        artefacts=(),
        n_transients=n_transients,
        n_variables=0,
        n_movers=0,
        raw_dtype="float32",
        ra=ra,
        dec=dec,
        transient_mags=transient_mags,
    )
    mjd_template = cfg.mjd_start
    mjd_science = cfg.mjd_start + PAIR_BASELINE
    centre = (ra, dec)
    cat = make_catalog(
        cfg, 0, centre, stream(cfg, STREAM_CATALOG, 0), np.array([]), (mjd_science, mjd_science)
    )
    tr = np.asarray(cat["kind"]) == "transient"
    # A step light curve: off at the template epoch, at full brightness (the
    # catalog magnitude) at the science epoch.
    cat["t_peak"][tr] = mjd_science
    cat["tau_rise"][tr] = 0.01
    cat["tau_fall"][tr] = 1e9
    wcs = make_wcs(cfg.shape, ra, dec, pixel_scale, 0.0)
    exposures = []
    for slot, (mjd, seeing, level) in enumerate(
        ((mjd_science, seeing_science, sky), (mjd_template, seeing_template, t_sky))
    ):
        v = SimVisit(
            config=cfg,
            catalog=cat,
            centre=centre,
            visit=cfg.first_visit + slot,
            detector=cfg.detector,
            field=0,
            band=band,
            slot=slot,
            mjd=mjd,
            exptime=exptime,
            airmass=1.0,
            seeing=seeing,
            sky=level,
            dither=(0.0, 0.0),
            rotation=0.0,
            wcs=wcs,
            psf=make_psf(psf_kind, seeing / pixel_scale, psf_beta),
            zero_point=cfg.zp_exposure,
        )
        exp = v.clean
        if subtract_sky:
            exp.image -= np.float32(level)
        exposures.append((exp, v.truth))
    (science, sci_truth), (template, _) = exposures
    sel = sci_truth[sci_truth["kind"] == "transient"]
    truth = Table()
    for name in ("id", "ra", "dec", "x", "y", "flux", "mag"):
        truth[name] = sel[name]
    truth.meta["objects"] = sci_truth
    return science, template, truth
