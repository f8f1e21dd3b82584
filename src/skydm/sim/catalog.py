"""The seeded sky: stars, galaxies, transients, variables and movers of a field.

A field's catalog is one astropy Table (also the survey's truth catalog) with
one row per object: positions on the sky, reference-band magnitude and colour,
galaxy shapes, light-curve parameters and mover tracks.  Positions are drawn in
the gnomonic (tangent) plane of the field centre and deprojected, so that a
uniform density on the detector is uniform on the sky.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from astropy.table import Table

from skydm.sim.config import COLOR_TERMS, SLOW_MOVER_STEPS, SurveyConfig

KINDS = ("star", "galaxy", "transient", "variable", "mover")

#: Fraction of transients placed on a host galaxy (when there are galaxies).
HOSTED_FRACTION = 0.7


# -- gnomonic projection ---------------------------------------------------
def project(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0); all angles in degrees."""
    a, d = np.radians(ra) - math.radians(ra0), np.radians(dec)
    d0 = math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return np.degrees(xi), np.degrees(eta)


def deproject(
    xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`project`: tangent-plane (xi, eta) in degrees to (ra, dec)."""
    x, y = np.radians(xi), np.radians(eta)
    d0 = math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(
            np.cos(c) * math.sin(d0) + np.where(rho > 0, y * np.sin(c) * math.cos(d0) / rho, 0.0)
        )
    ra = math.radians(ra0) + np.arctan2(
        x * np.sin(c), rho * math.cos(d0) * np.cos(c) - y * math.sin(d0) * np.sin(c)
    )
    return np.degrees(ra) % 360.0, np.degrees(dec)


def field_centres(cfg: SurveyConfig) -> list[tuple[float, float]]:
    """Centres of the fields: side by side in RA, one and a half focal planes apart."""
    ny, nx = cfg.focal_plane_shape
    step = (1.5 * max(nx, ny) + 2 * cfg.dither) * cfg.pixel_scale / 3600.0
    cosd = math.cos(math.radians(cfg.dec))
    return [((cfg.ra + i * step / cosd) % 360.0, cfg.dec) for i in range(cfg.n_fields)]


# -- magnitudes ------------------------------------------------------------
def power_law_mags(
    rng: np.random.Generator, n: int, lo: float, hi: float, slope: float
) -> np.ndarray:
    """Magnitudes in [lo, hi] with counts ``dN/dm ∝ 10**(slope * m)``."""
    u = rng.random(n)
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def transient_shape(
    t: np.ndarray, t_peak: np.ndarray, tau_rise: np.ndarray, tau_fall: np.ndarray
) -> np.ndarray:
    """Supernova-like light curve relative to peak flux (1 at ``t_peak``).

    A Gaussian rise of width ``tau_rise`` days before the peak and an
    exponential decline with e-folding ``tau_fall`` days after it (a linear
    decline in magnitudes, like the radioactive tail of a supernova).
    """
    dt = np.asarray(t, dtype=float) - t_peak
    rise = np.exp(-0.5 * (np.minimum(dt, 0.0) / tau_rise) ** 2)
    fall = np.exp(-np.maximum(dt, 0.0) / tau_fall)
    return np.asarray(rise * fall)


def variable_offset(
    t: np.ndarray, period: np.ndarray, amplitude: np.ndarray, phase: np.ndarray
) -> np.ndarray:
    """Magnitude offset of a sinusoidal variable (semi-amplitude ``amplitude`` mag)."""
    return np.asarray(amplitude * np.sin(2 * np.pi * (np.asarray(t) / period + phase)))


# -- catalog ---------------------------------------------------------------
def _box(cfg: SurveyConfig, pad: float) -> tuple[float, float]:
    """Half-sizes (xi, eta) in degrees of the region that any visit may see."""
    ny, nx = cfg.focal_plane_shape
    if cfg.rotation > 0:
        half = math.hypot(nx, ny) / 2
        hx = hy = half
    else:
        hx, hy = nx / 2, ny / 2
    scale = cfg.pixel_scale / 3600.0
    return (hx + cfg.dither + pad) * scale, (hy + cfg.dither + pad) * scale


def _inner(cfg: SurveyConfig) -> tuple[float, float]:
    """Half-sizes in degrees of the region every visit sees (well inside the edges)."""
    ny, nx = cfg.focal_plane_shape
    margin = cfg.dither + min(40.0, 0.1 * min(cfg.shape))
    scale = cfg.pixel_scale / 3600.0
    return max(nx / 2 - margin, 4.0) * scale, max(ny / 2 - margin, 4.0) * scale


def make_catalog(
    cfg: SurveyConfig,
    field: int,
    centre: tuple[float, float],
    rng: np.random.Generator,
    anchors: np.ndarray,
    mjd_range: tuple[float, float],
    *,
    epoch_gap: float = 1.0,
) -> Table:
    """The objects of one field.

    Parameters
    ----------
    cfg : SurveyConfig
        Survey configuration (counts, magnitude ranges).
    field : int
        Field index (ids are ``(field + 1) * 10_000_000 + n``).
    centre : (float, float)
        Field centre (ra, dec) in degrees.
    rng : numpy.random.Generator
        The field's random stream.
    anchors : numpy.ndarray
        MJDs at which the movers are placed inside the field, one per mover.
    mjd_range : (float, float)
        First and last MJD of the survey (transient peaks fall in it).
    epoch_gap : float
        Longest time between consecutive visits of the field in the
        reference band, days: slow movers' rates are set from it so that
        every step between visits is within their class's range
        (:data:`~skydm.sim.config.SLOW_MOVER_STEPS`).

    Returns
    -------
    astropy.table.Table
        One row per object; columns described in ``docs/sim.md``.
    """
    ny, nx = cfg.shape
    pix_area = nx * ny * (cfg.pixel_scale / 3600.0) ** 2
    hx, hy = _box(cfg, pad=16.0)
    ratio = 4 * hx * hy / pix_area
    n_star = round(cfg.n_stars * ratio)
    n_gal = round(cfg.n_galaxies * ratio)
    ix, iy = _inner(cfg)
    rows: dict[str, list[np.ndarray]] = {}

    def add(
        kind: str,
        n: int,
        xi: np.ndarray,
        eta: np.ndarray,
        mag: np.ndarray,
        color: np.ndarray,
        **extra: np.ndarray,
    ) -> None:
        cols = {"kind": np.full(n, kind), "xi": xi, "eta": eta, "mag": mag, "color": color}
        for name in PARAM_COLUMNS:
            cols[name] = extra.get(name, np.full(n, np.nan))
        cols["fast"] = extra.get("fast", np.zeros(n, bool))
        cols["mover_cls"] = extra.get("mover_cls", np.full(n, ""))
        for name, values in cols.items():
            rows.setdefault(name, []).append(np.asarray(values))

    lo, hi = cfg.mag_range("star")
    add(
        "star",
        n_star,
        rng.uniform(-hx, hx, n_star),
        rng.uniform(-hy, hy, n_star),
        power_law_mags(rng, n_star, lo, hi, 0.3),
        rng.normal(0.6, 0.3, n_star),
    )

    lo, hi = cfg.mag_range("galaxy")
    disk = rng.random(n_gal) < 0.7
    sersic = np.where(disk, rng.uniform(0.8, 2.5, n_gal), rng.uniform(3.0, 4.0, n_gal))
    r_eff = np.where(disk, rng.uniform(0.4, 1.6, n_gal), rng.uniform(0.3, 1.0, n_gal))
    gal_xi, gal_eta = rng.uniform(-hx, hx, n_gal), rng.uniform(-hy, hy, n_gal)
    add(
        "galaxy",
        n_gal,
        gal_xi,
        gal_eta,
        power_law_mags(rng, n_gal, lo, hi, 0.35),
        rng.normal(0.8, 0.3, n_gal),
        r_eff=r_eff,
        sersic_n=sersic,
        q=rng.uniform(0.3, 1.0, n_gal),
        pa=rng.uniform(0.0, 180.0, n_gal),
    )

    n = cfg.n_transients
    xi, eta = rng.uniform(-ix, ix, n), rng.uniform(-iy, iy, n)
    inside = np.flatnonzero((np.abs(gal_xi) < ix) & (np.abs(gal_eta) < iy))
    hosted = rng.random(n) < HOSTED_FRACTION
    for k in np.flatnonzero(hosted) if inside.size else []:
        # A supernova sits in its host, within about one effective radius.
        g = rng.choice(inside)
        off = rng.uniform(0.2, 1.0) * r_eff[g] / 3600.0
        ang = rng.uniform(0, 2 * math.pi)
        xi[k], eta[k] = gal_xi[g] + off * math.cos(ang), gal_eta[g] + off * math.sin(ang)
    lo, hi = cfg.mag_range("transient")
    t0, t1 = mjd_range
    add(
        "transient",
        n,
        xi,
        eta,
        rng.uniform(lo, hi, n),
        rng.normal(0.2, 0.3, n),
        t_peak=rng.uniform(t0 - 0.1 * (t1 - t0) - 3, t1, n),
        tau_rise=rng.uniform(4.0, 12.0, n),
        tau_fall=rng.uniform(15.0, 40.0, n),
    )

    n = cfg.n_variables
    lo, hi = cfg.mag_range("variable")
    add(
        "variable",
        n,
        rng.uniform(-ix, ix, n),
        rng.uniform(-iy, iy, n),
        rng.uniform(lo, hi, n),
        rng.normal(0.6, 0.3, n),
        period=np.exp(rng.uniform(math.log(0.2), math.log(10.0), n)),
        amplitude=rng.uniform(0.2, 1.0, n),
        phase=rng.random(n),
    )

    n = cfg.n_movers if "asteroids" in cfg.artefacts else 0
    lo, hi = cfg.mag_range("mover")
    fast = (np.arange(n) % 2) == 0
    # Motion during one exposure, pixels: fast movers streak over tens of
    # pixels; slow ones stay point-like but move tens of pixels between the
    # visits of a night.
    length = np.where(fast, rng.uniform(25.0, 80.0, n), rng.uniform(0.1, 0.5, n))
    theta = rng.uniform(0, 2 * math.pi, n)
    rate = length * cfg.pixel_scale / cfg.exptime * 3600.0  # arcsec per hour
    add(
        "mover",
        n,
        rng.uniform(-ix, ix, n),
        rng.uniform(-iy, iy, n),
        rng.uniform(lo, hi, n),
        rng.normal(0.9, 0.2, n),
        mjd_ref=np.asarray(anchors[:n], dtype=float),
        rate_xi=rate * np.cos(theta),
        rate_eta=rate * np.sin(theta),
        fast=fast,
        mover_cls=np.where(fast, "asteroids_fast", "asteroids_slow"),
    )
    _slow_movers(cfg, rng, add, (ix, iy), mjd_range, epoch_gap)

    cols = {name: np.concatenate(parts) for name, parts in rows.items()}
    ra, dec = deproject(cols.pop("xi"), cols.pop("eta"), *centre)
    total = len(ra)
    table = Table()
    table["id"] = (field + 1) * 10_000_000 + np.arange(total, dtype=np.int64)
    table["field"] = np.full(total, field, dtype=np.int32)
    table["kind"] = cols.pop("kind").astype("U9")
    table["ra"], table["dec"] = ra, dec
    table["mag"] = cols.pop("mag")
    table["color"] = cols.pop("color")
    for band in cfg.bands:
        table[f"mag_{band}"] = (
            table["mag"] + (COLOR_TERMS[band] - COLOR_TERMS[cfg.bands[0]]) * table["color"]
        )
    mover_cls = cols.pop("mover_cls").astype("U32")
    for name, values in cols.items():
        table[name] = values
    table["mover_cls"] = mover_cls
    return table


def _slow_movers(
    cfg: SurveyConfig,
    rng: np.random.Generator,
    add: Callable[..., None],
    inner: tuple[float, float],
    mjd_range: tuple[float, float],
    epoch_gap: float,
) -> None:
    """Movers slower than a few FWHM per visit, alternately overlapping and stepping.

    Each is placed inside the field at the middle of the survey, so that its
    whole track, centred there, stays on the image as long as possible.  Its
    rate makes the step over the longest gap between consecutive visits
    ``u`` times the sharpest FWHM, ``u`` drawn in its class's range of
    :data:`SLOW_MOVER_STEPS`; every other step is shorter.
    """
    n = cfg.n_slow_movers if "asteroids" in cfg.artefacts else 0
    if n == 0:
        return  # no draws: surveys without slow movers keep their pixels
    classes = np.where(np.arange(n) % 2 == 0, "asteroids_overlapping", "asteroids_stepping")
    lo_u = np.array([SLOW_MOVER_STEPS[c][0] for c in classes])
    hi_u = np.array([SLOW_MOVER_STEPS[c][1] for c in classes])
    step_pix = rng.uniform(lo_u, hi_u) * cfg.seeing_range[0] / cfg.pixel_scale
    rate = step_pix * cfg.pixel_scale / (max(epoch_gap, 1e-3) * 24.0)  # arcsec per hour
    theta = rng.uniform(0, 2 * math.pi, n)
    lo, hi = cfg.mag_range("mover")
    ix, iy = inner
    add(
        "mover",
        n,
        rng.uniform(-ix, ix, n),
        rng.uniform(-iy, iy, n),
        rng.uniform(lo, hi, n),
        rng.normal(0.9, 0.2, n),
        mjd_ref=np.full(n, 0.5 * (mjd_range[0] + mjd_range[1])),
        rate_xi=rate * np.cos(theta),
        rate_eta=rate * np.sin(theta),
        fast=np.zeros(n, bool),
        mover_cls=classes,
    )


#: Per-kind parameter columns of the catalog (NaN where they do not apply).
PARAM_COLUMNS = (
    "r_eff",  # galaxy effective radius, arcsec
    "sersic_n",
    "q",  # galaxy axis ratio
    "pa",  # galaxy position angle, degrees east of north
    "t_peak",  # transient peak MJD
    "tau_rise",  # transient Gaussian rise width, days
    "tau_fall",  # transient exponential decline time, days
    "period",  # variable period, days
    "amplitude",  # variable semi-amplitude, magnitudes
    "phase",  # variable phase at MJD 0, cycles
    "mjd_ref",  # mover: MJD at which it is at (ra, dec)
    "rate_xi",  # mover: rate east, arcsec per hour
    "rate_eta",  # mover: rate north, arcsec per hour
)
# (``fast`` and ``mover_cls``, the mover's footprint class, follow them.)


def band_mag(cat: Table, band: str, mjd: float) -> np.ndarray:
    """Every object's magnitude in ``band`` at ``mjd`` (inf when not shining)."""
    mag = np.asarray(cat[f"mag_{band}"], dtype=float).copy()
    kind = np.asarray(cat["kind"])
    tr = kind == "transient"
    if tr.any():
        shape = transient_shape(
            np.full(tr.sum(), mjd),
            np.asarray(cat["t_peak"])[tr],
            np.asarray(cat["tau_rise"])[tr],
            np.asarray(cat["tau_fall"])[tr],
        )
        with np.errstate(divide="ignore"):
            mag[tr] = mag[tr] - 2.5 * np.log10(shape)
    var = kind == "variable"
    if var.any():
        mag[var] += variable_offset(
            np.full(var.sum(), mjd),
            np.asarray(cat["period"])[var],
            np.asarray(cat["amplitude"])[var],
            np.asarray(cat["phase"])[var],
        )
    return mag


def mover_position(
    cat: Table, mjd: float | np.ndarray, centre: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of every mover of ``cat`` at ``mjd`` (linear motion in the tangent plane)."""
    xi0, eta0 = project(np.asarray(cat["ra"]), np.asarray(cat["dec"]), *centre)
    dt_h = (np.asarray(mjd) - np.asarray(cat["mjd_ref"])) * 24.0
    xi = xi0 + np.asarray(cat["rate_xi"]) * dt_h / 3600.0
    eta = eta0 + np.asarray(cat["rate_eta"]) * dt_h / 3600.0
    return deproject(xi, eta, *centre)
