"""Rendering one visit: scene, artefacts, noise, detector effects, truth.

The noise model keeps the clean and raw images exactly comparable:

1. ``model`` = sky + stars + galaxies + transients + variables (ADU, noiseless).
2. ``clean`` = (Poisson(model * gain) + Normal(0, read_noise)) / gain.
3. ``raw`` = ``clean`` + Poisson(artefacts * gain) / gain, drawn only where
   the artefact signal is non-zero (it is zero outside its footprints).
4. Integer raw types digitise both (round to the nearest ADU); saturation
   clips both at the saturation level (SAT mask bit); bad columns are set to
   0 (dead) or the saturation level (hot) in both (BAD mask bit).

So ``raw - clean`` is exactly zero outside the artefact footprints and equals
the artefacts plus their own Poisson noise inside (up to rounding and
saturation), and ``clean`` is itself a valid exposure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table

from skydm.image.exposure import Exposure
from skydm.image.mask import Mask
from skydm.sim import artefacts as art
from skydm.sim.catalog import band_mag, mover_position
from skydm.sim.render import PointRenderer, add_stamp, galaxy_stamp

if TYPE_CHECKING:
    from skydm.sim.survey import SimVisit

#: Rows per block when drawing the noise.
_NOISE_ROWS = 256

#: Ghosts on stars sit around one of this many brightest stars on the image.
BRIGHT_STARS = 5

#: Columns of a visit's truth table, in order.
TRUTH_COLUMNS = (
    "visit",
    "kind",
    "id",
    "cls",
    "ra",
    "dec",
    "x",
    "y",
    "flux",
    "mag",
    "x0",
    "y0",
    "x1",
    "y1",
    "size",
)


@dataclass
class VisitPixels:
    """Everything rendered for one visit (see :class:`~skydm.sim.survey.SimVisit`)."""

    raw: Exposure
    clean: Exposure
    model: np.ndarray
    artefact_signal: np.ndarray
    footprints: dict[str, np.ndarray]
    truth: Table


def bad_columns(v: SimVisit) -> list[tuple[int, bool]]:
    """The detector's bad columns (the same in every visit): (column, hot)."""
    from skydm.sim.survey import STREAM_DETECTOR, stream

    cfg = v.config
    rng = stream(cfg, STREAM_DETECTOR, v.detector)
    nx = cfg.shape[1]
    n = min(cfg.bad_columns, nx)
    cols = rng.choice(nx, size=n, replace=False) if n else np.array([], dtype=int)
    hot = rng.random(n) < 0.5
    return [(int(c), bool(h)) for c, h in zip(cols, hot, strict=True)]


def _pixel_positions(v: SimVisit, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = v.wcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
    return np.asarray(x, float), np.asarray(y, float)


def _sky_angle_to_pixel(v: SimVisit, pa_deg: np.ndarray) -> np.ndarray:
    """Angle from +x in pixels of a direction at position angle ``pa_deg`` (E of N)."""
    pa = np.radians(pa_deg)
    cd_inv = np.linalg.inv(v.wcs.wcs.cd)
    east, north = np.sin(pa), np.cos(pa)
    # CD maps pixel offsets to (xi, eta), with xi increasing east.
    px = cd_inv[0, 0] * east + cd_inv[0, 1] * north
    py = cd_inv[1, 0] * east + cd_inv[1, 1] * north
    return np.asarray(np.arctan2(py, px))


def _exposure_key(v: SimVisit) -> tuple[int, ...]:
    """Seed key of one detector's noise and artefacts in one visit.

    A single-detector survey keeps the key it always had, so that its pixels
    do not change; the detectors of a focal plane each get their own draws.
    """
    if v.config.n_detectors == 1:
        return (v.field, v.slot)
    return (v.field, v.slot, v.detector)


def render_visit(v: SimVisit) -> VisitPixels:
    """Render the raw and clean exposures, footprints and truth of one visit."""
    from skydm.sim.survey import STREAM_ARTEFACTS, STREAM_NOISE, stream

    cfg = v.config
    cat = v.catalog
    shape = cfg.shape
    ny, nx = shape
    gain, rn = cfg.gain, cfg.read_noise
    sky_sigma = math.sqrt(v.sky / gain + (rn / gain) ** 2)
    renderer = PointRenderer(v.psf, floor=0.02 * max(sky_sigma, 1.0))
    kind = np.asarray(cat["kind"])
    mags = band_mag(cat, v.band, v.mjd)
    with np.errstate(over="ignore"):
        flux = np.where(np.isfinite(mags), 10 ** (-0.4 * (mags - v.zero_point)), 0.0)
    x, y = _pixel_positions(v, np.asarray(cat["ra"]), np.asarray(cat["dec"]))
    rows: list[dict[str, Any]] = []

    # -- the clean scene ---------------------------------------------------
    model = np.zeros(shape, dtype=np.float64)
    point = np.isin(kind, ("star", "transient", "variable"))
    renderer.add(model, x[point], y[point], flux[point])
    kernel = v.psf.kernel()
    gal = np.flatnonzero(kind == "galaxy")
    r_eff = np.asarray(cat["r_eff"])[gal] / cfg.pixel_scale
    theta = _sky_angle_to_pixel(v, np.asarray(cat["pa"])[gal])
    for k, g in enumerate(gal):
        reach = 5 * r_eff[k] + kernel.shape[0]
        if not (-reach < x[g] < nx + reach and -reach < y[g] < ny + reach):
            continue
        ix, iy = round(float(x[g])), round(float(y[g]))
        stamp = galaxy_stamp(
            kernel,
            x[g] - ix,
            y[g] - iy,
            float(r_eff[k]),
            float(cat["sersic_n"][g]),
            float(cat["q"][g]),
            float(theta[k]),
        )
        add_stamp(model, stamp * flux[g], ix, iy)
    inside = (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5) & (kind != "mover")
    size = np.where(kind == "galaxy", np.asarray(cat["r_eff"]) / cfg.pixel_scale, np.nan)
    for i in np.flatnonzero(inside):
        rows.append(
            {
                "kind": str(kind[i]),
                "id": int(cat["id"][i]),
                "cls": "",
                "ra": float(cat["ra"][i]),
                "dec": float(cat["dec"][i]),
                "x": float(x[i]),
                "y": float(y[i]),
                "flux": float(flux[i]),
                "mag": float(mags[i]),
                "size": float(size[i]),
            }
        )
    model += v.sky
    np.clip(model, 0.0, None, out=model)
    var_clean = (model / gain + (rn / gain) ** 2).astype(np.float32)

    # -- artefacts -----------------------------------------------------------
    arng = stream(cfg, STREAM_ARTEFACTS, *_exposure_key(v))
    layer = art.new_layer(np.sqrt(var_clean))
    id0 = v.visit * 10_000
    psf_sigma = v.psf.fwhm / 2.3548
    if "cosmic_rays" in cfg.artefacts:
        art.cosmic_rays(layer, arng, rate=cfg.cosmic_ray_rate, gain=gain, id0=id0)
    if "satellite_trails" in cfg.artefacts:
        art.satellite_trails(
            layer,
            arng,
            rate=cfg.trail_rate,
            parity=v.slot,
            sky_sigma=sky_sigma,
            psf_sigma=psf_sigma,
            id0=id0 + len(layer.rows),
        )
    if "ghosts" in cfg.artefacts:
        stars = np.flatnonzero(inside & (kind == "star"))
        bright = None
        if stars.size:
            b = stars[np.argmax(flux[stars])]
            bright = (float(x[b]), float(y[b]))
        art.ghosts(
            layer,
            arng,
            rate=cfg.ghost_rate,
            sky_sigma=sky_sigma,
            bright_xy=bright,
            id0=id0 + len(layer.rows),
        )
    # The classes added later draw last (and nothing at rate 0), so that
    # surveys without them keep their pixels.
    if "satellite_trails" in cfg.artefacts and cfg.trails_on_variables > 0:
        variables = np.flatnonzero(inside & (kind == "variable"))
        art.trails_on_variables(
            layer,
            arng,
            rate=cfg.trails_on_variables,
            variables_xy=np.column_stack([x[variables], y[variables]]),
            sky_sigma=sky_sigma,
            psf_sigma=psf_sigma,
            id0=id0 + len(layer.rows),
        )
    if "ghosts" in cfg.artefacts and cfg.ghosts_on_stars > 0:
        stars = np.flatnonzero(inside & (kind == "star"))
        brightest = stars[np.argsort(-flux[stars], kind="stable")[:BRIGHT_STARS]]
        art.ghosts_on_stars(
            layer,
            arng,
            rate=cfg.ghosts_on_stars,
            sky_sigma=sky_sigma,
            stars_xy=np.column_stack([x[brightest], y[brightest]]),
            id0=id0 + len(layer.rows),
        )
    if "asteroids" in cfg.artefacts:
        art.movers(layer, renderer, _mover_tracks(v, mags, flux))

    # -- noise, digitisation, saturation, bad columns -----------------------
    nrng = stream(cfg, STREAM_NOISE, *_exposure_key(v))
    clean = np.empty(shape, dtype=np.float32)
    # In blocks of rows, so that the integer and float64 temporaries stay small.
    for r0 in range(0, ny, _NOISE_ROWS):
        block = model[r0 : r0 + _NOISE_ROWS]
        electrons = nrng.poisson(block * gain).astype(np.float32)
        if rn > 0:
            electrons += np.float32(rn) * nrng.standard_normal(block.shape, dtype=np.float32)
        clean[r0 : r0 + _NOISE_ROWS] = electrons / np.float32(gain)
    raw = clean.copy()
    hit = layer.signal > 0
    raw[hit] += (nrng.poisson(layer.signal[hit].astype(np.float64) * gain) / gain).astype(
        np.float32
    )
    var_raw = var_clean + layer.signal / np.float32(gain)
    planes = []
    for img, var in ((raw, var_raw), (clean, var_clean)):
        if cfg.raw_dtype != "float32":
            np.rint(img, out=img)
            hi = 65535.0 if cfg.raw_dtype == "uint16" else 2.0**31 - 1
            np.clip(img, 0.0 if cfg.raw_dtype == "uint16" else -(2.0**31), hi, out=img)
        mask = np.zeros(shape, dtype=np.uint32)
        sat = img >= cfg.saturation
        img[sat] = cfg.saturation
        mask[sat] |= np.uint32(Mask.SAT)
        for col, hot in bad_columns(v):
            img[:, col] = cfg.saturation if hot else 0.0
            mask[:, col] |= np.uint32(Mask.BAD)
        planes.append((img, var, mask))

    exposures = [
        Exposure(
            image=img,
            variance=var,
            mask=mask,
            wcs=v.wcs.deepcopy(),
            psf=v.psf,
            zero_point=v.zero_point,
            info=v.info,
            source=f"skysim visit {v.visit}",
        )
        for img, var, mask in planes
    ]
    truth = _truth_table(v, rows + layer.rows)
    return VisitPixels(
        raw=exposures[0],
        clean=exposures[1],
        model=model.astype(np.float32),
        artefact_signal=layer.signal,
        footprints=layer.footprints,
        truth=truth,
    )


def _mover_tracks(v: SimVisit, mags: np.ndarray, flux: np.ndarray) -> list[dict[str, Any]]:
    """Start, middle and end of each mover's track during this exposure, when on the image."""
    cat = v.catalog
    sel = np.flatnonzero(np.asarray(cat["kind"]) == "mover")
    if sel.size == 0:
        return []
    movers = cat[sel]
    half = v.exptime / 2 / 86400.0
    ny, nx = v.config.shape
    pos = {}
    for name, t in (("0", v.mjd - half), ("", v.mjd), ("1", v.mjd + half)):
        ra, dec = mover_position(movers, t, v.centre)
        pos[name] = (ra, dec, *_pixel_positions(v, ra, dec))
    tracks = []
    for k, i in enumerate(sel):
        xs = (pos["0"][2][k], pos["1"][2][k])
        ys = (pos["0"][3][k], pos["1"][3][k])
        if max(xs) < -10 or min(xs) > nx + 10 or max(ys) < -10 or min(ys) > ny + 10:
            continue
        tracks.append(
            {
                "id": int(cat["id"][i]),
                "cls": str(cat["mover_cls"][i]),
                "x0": float(xs[0]),
                "y0": float(ys[0]),
                "x1": float(xs[1]),
                "y1": float(ys[1]),
                "x": float(pos[""][2][k]),
                "y": float(pos[""][3][k]),
                "ra": float(pos[""][0][k]),
                "dec": float(pos[""][1][k]),
                "flux": float(flux[i]),
                "mag": float(mags[i]),
            }
        )
    return tracks


def _truth_table(v: SimVisit, rows: list[dict[str, Any]]) -> Table:
    """The visit's truth rows as a Table, sky positions filled in from the WCS."""
    cols: dict[str, list[Any]] = {name: [] for name in TRUTH_COLUMNS}
    for row in rows:
        for name in TRUTH_COLUMNS:
            if name == "visit":
                cols[name].append(v.visit)
            else:
                cols[name].append(row.get(name, math.nan))
    t = Table()
    t["visit"] = np.asarray(cols["visit"], dtype=np.int64)
    t["kind"] = np.asarray(cols["kind"], dtype="U10")
    t["id"] = np.asarray(cols["id"], dtype=np.int64)
    t["cls"] = np.asarray(cols["cls"], dtype="U32")
    for name in TRUTH_COLUMNS[4:]:
        t[name] = np.asarray(cols[name], dtype=float)
    missing = ~np.isfinite(t["ra"]) & np.isfinite(t["x"])
    if missing.any():
        ra, dec = v.wcs.wcs_pix2world(t["x"][missing], t["y"][missing], 0)
        t["ra"][missing], t["dec"][missing] = ra, dec
    t.meta.update(
        {
            "visit": v.visit,
            "band": v.band,
            "mjd": v.mjd,
            "zero_point": v.zero_point,
            "sky": v.sky,
            "seeing": v.seeing,
        }
    )
    return t
