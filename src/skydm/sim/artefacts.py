"""Artefacts injected into raw exposures only: cosmic rays, satellite trails
(also across variable stars), moving objects of every speed, and ghosts
(mirrored through the axis, or around bright stars).

Each class is rendered into its own layer; values below 0.1 sigma of the
clean image's noise are set to zero, so that every class is exactly zero
outside its footprint (the pixels where it adds more than 0.1 sigma) and
``raw - clean`` vanishes exactly outside the union of the footprints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skydm.sim.config import FOOTPRINT_CLASSES, MOVER_CLASSES
from skydm.sim.render import PointRenderer

#: Footprint threshold in units of the clean image's per-pixel noise.
FOOTPRINT_SIGMA = 0.1


@dataclass
class ArtefactLayer:
    """All artefacts of one exposure.

    Attributes
    ----------
    signal : numpy.ndarray
        Sum of every class's (truncated) signal, ADU, ``float32``.
    threshold : numpy.ndarray
        Per-pixel footprint threshold, ADU (0.1 sigma of the clean image).
    footprints : dict of str to numpy.ndarray
        Boolean footprint of each class in :data:`FOOTPRINT_CLASSES`.
    rows : list of dict
        One truth row per injected artefact.
    """

    signal: np.ndarray
    threshold: np.ndarray
    footprints: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, cls: str, layer: np.ndarray) -> None:
        """Truncate ``layer`` at the footprint threshold and add it as class ``cls``."""
        keep = layer > self.threshold
        self.footprints[cls] |= keep
        np.add(self.signal, layer, out=self.signal, where=keep, casting="same_kind")


def _border_points(
    shape: tuple[int, int], px: float, py: float, theta: float
) -> tuple[float, float, float, float]:
    """Where the line through (px, py) at angle ``theta`` leaves the image, both ways."""
    ny, nx = shape
    c, s = math.cos(theta), math.sin(theta)
    ts = []
    for lo, hi, p, d in ((-0.5, nx - 0.5, px, c), (-0.5, ny - 0.5, py, s)):
        if abs(d) > 1e-12:
            ts += [(lo - p) / d, (hi - p) / d]
    ts.sort()
    # The two middle crossings bound the segment inside the image rectangle.
    t0, t1 = ts[len(ts) // 2 - 1], ts[len(ts) // 2]
    return px + t0 * c, py + t0 * s, px + t1 * c, py + t1 * s


def add_line(
    image: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    flux_per_pixel: float,
    sigma: float,
) -> None:
    """Add an infinite straight line with a Gaussian cross-section, in row blocks."""
    ny, nx = image.shape
    length = math.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    reach = 6.0 * sigma + 1.0
    amp = flux_per_pixel / (math.sqrt(2 * math.pi) * sigma)
    xs = np.arange(nx, dtype=float)
    for r0 in range(0, ny, 256):
        ys = np.arange(r0, min(r0 + 256, ny), dtype=float)
        across = -(xs[None, :] - x0) * uy + (ys[:, None] - y0) * ux
        near = np.abs(across) < reach
        if near.any():
            block = image[r0 : r0 + ys.size]
            block[near] += amp * np.exp(-0.5 * (across[near] / sigma) ** 2)


def satellite_trails(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    *,
    rate: float,
    parity: int,
    sky_sigma: float,
    psf_sigma: float,
    id0: int,
) -> None:
    """Satellite trails crossing the whole image, alternately bright and faint."""
    shape = layer.signal.shape
    for j in range(rng.poisson(rate)):
        bright = (parity + j) % 2 == 0
        cls = "satellite_trails_bright" if bright else "satellite_trails_faint"
        peak = rng.uniform(20.0, 400.0) if bright else rng.uniform(0.7, 2.5)
        width = psf_sigma * rng.uniform(1.0, 1.6)  # satellites are a little out of focus
        px, py = rng.uniform(0, shape[1] - 1), rng.uniform(0, shape[0] - 1)
        theta = rng.uniform(0, math.pi)
        _trail(layer, cls, px, py, theta, peak * sky_sigma, width, id0)


#: Peak range of the trails over variables, in sky sigma (log-uniform): from
#: hardly visible to bright enough to hide the star.
TRAIL_ON_VARIABLE_PEAK = (1.0, 100.0)


def trails_on_variables(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    *,
    rate: float,
    variables_xy: np.ndarray,
    sky_sigma: float,
    psf_sigma: float,
    id0: int,
) -> None:
    """Satellite trails that cross a variable star on the image.

    A trail and a variable change the same pixels in the same epoch: a method
    must remove the trail and still keep the variable's flux changes.

    Parameters
    ----------
    variables_xy : numpy.ndarray
        (n, 2) pixel positions of the variables on the image; each trail
        passes within half a pixel or so of one of them, at any angle.
    """
    if rate <= 0 or len(variables_xy) == 0:
        return
    for _ in range(rng.poisson(rate)):
        vx, vy = variables_xy[int(rng.integers(len(variables_xy)))]
        lo, hi = TRAIL_ON_VARIABLE_PEAK
        peak = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        width = psf_sigma * rng.uniform(1.0, 1.6)
        px, py = vx + rng.normal(0, 0.5), vy + rng.normal(0, 0.5)
        theta = rng.uniform(0, math.pi)
        _trail(layer, "satellite_trails_on_variables", px, py, theta, peak * sky_sigma, width, id0)


def _trail(
    layer: ArtefactLayer,
    cls: str,
    px: float,
    py: float,
    theta: float,
    peak: float,
    width: float,
    id0: int,
) -> None:
    """One trail through (px, py) at angle ``theta`` across the image, of peak
    ``peak`` ADU and Gaussian width ``width`` pixels."""
    shape = layer.signal.shape
    x0, y0, x1, y1 = _border_points(shape, px, py, theta)
    fpp = peak * math.sqrt(2 * math.pi) * width
    tmp = np.zeros(shape, dtype=np.float32)
    add_line(tmp, x0, y0, x1, y1, fpp, width)
    flux = float(tmp.sum())
    layer.add(cls, tmp)
    layer.rows.append(
        _row(
            "trail",
            id0 + len(layer.rows),
            cls,
            (x0 + x1) / 2,
            (y0 + y1) / 2,
            flux,
            x0=x0,
            y0=y0,
            x1=x1,
            y1=y1,
            size=width,
        )
    )


def cosmic_rays(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    *,
    rate: float,
    gain: float,
    id0: int,
) -> None:
    """Cosmic-ray hits: sharp spots and straight tracks, not blurred by the PSF.

    Spots deposit a log-normal charge (median 3000 e-) in 1 to 4 adjacent
    pixels; tracks deposit about 800 e- per pixel of path along 2 to 30 pixels.
    """
    shape = layer.signal.shape
    ny, nx = shape
    n = rng.poisson(rate * nx * ny / 1e6)
    tmp = np.zeros(shape, dtype=np.float32)
    for _ in range(n):
        xc, yc = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        if rng.random() < 0.4:
            npix = int(rng.integers(1, 5))
            steps = rng.integers(-1, 2, size=(npix, 2))
            steps[0] = 0
            xs = np.clip(round(xc) + np.cumsum(steps[:, 0]), 0, nx - 1)
            ys = np.clip(round(yc) + np.cumsum(steps[:, 1]), 0, ny - 1)
            charge = math.exp(rng.normal(math.log(3000.0), 0.6)) * rng.dirichlet(np.ones(npix))
            x0 = x1 = xc
            y0 = y1 = yc
            size = float(npix)
        else:
            length = rng.uniform(2.0, 30.0)
            theta = rng.uniform(0, 2 * math.pi)
            x0, y0 = xc - 0.5 * length * math.cos(theta), yc - 0.5 * length * math.sin(theta)
            x1, y1 = xc + 0.5 * length * math.cos(theta), yc + 0.5 * length * math.sin(theta)
            t = np.linspace(0.0, 1.0, max(2, math.ceil(length / 0.5) + 1))
            xs = np.clip(np.rint(x0 + t * (x1 - x0)).astype(int), 0, nx - 1)
            ys = np.clip(np.rint(y0 + t * (y1 - y0)).astype(int), 0, ny - 1)
            per = math.exp(rng.normal(math.log(800.0), 0.5)) * length / t.size
            charge = per * rng.gamma(4.0, 0.25, t.size)  # Landau-like fluctuations
            size = length
        adu = charge / gain
        np.add.at(tmp, (ys, xs), adu.astype(np.float32))
        layer.rows.append(
            _row(
                "cosmic_ray",
                id0 + len(layer.rows),
                "cosmic_rays",
                xc,
                yc,
                float(adu.sum()),
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                size=size,
            )
        )
    if n:
        layer.add("cosmic_rays", tmp)


def ghosts(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    *,
    rate: float,
    sky_sigma: float,
    bright_xy: tuple[float, float] | None,
    id0: int,
) -> None:
    """Faint out-of-focus reflections: donuts (or blobs) mirrored from a bright star
    through the optical axis (the image centre)."""
    ny, nx = layer.signal.shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    for _ in range(rng.poisson(rate)):
        if bright_xy is not None:
            gx = 2 * cx - bright_xy[0] + rng.normal(0, 5)
            gy = 2 * cy - bright_xy[1] + rng.normal(0, 5)
        else:
            gx, gy = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        _ghost(layer, rng, "ghosts", gx, gy, (0.04, 0.1), sky_sigma, id0)


#: Radial shift of a filter ghost's centre from its star, as a fraction of the
#: star's distance from the optical axis (the reflection's slight defocus
#: magnifies it about the axis).
GHOST_SHIFT = (0.02, 0.08)


def ghosts_on_stars(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    *,
    rate: float,
    sky_sigma: float,
    stars_xy: np.ndarray,
    id0: int,
) -> None:
    """Filter ghosts: faint halos around bright stars, shifted away from the axis.

    A double reflection between the filter and the detector puts a defocused
    image of a bright star around the star itself, shifted radially by a few
    per cent of the star's distance from the optical axis; with the dithers
    the halo moves a little on the sky while the star stays, so the halo's
    pixels are outliers in most epochs and lie on a real source.

    Parameters
    ----------
    stars_xy : numpy.ndarray
        (n, 2) pixel positions of the brightest stars on the image, the star
        of each ghost drawn among them (nothing is drawn when empty).
    """
    if rate <= 0 or len(stars_xy) == 0:
        return
    ny, nx = layer.signal.shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    for _ in range(rng.poisson(rate)):
        sx, sy = stars_xy[int(rng.integers(len(stars_xy)))]
        f = rng.uniform(*GHOST_SHIFT)
        gx, gy = sx + f * (sx - cx), sy + f * (sy - cy)
        _ghost(layer, rng, "ghosts_on_stars", gx, gy, (0.03, 0.08), sky_sigma, id0)


def _ghost(
    layer: ArtefactLayer,
    rng: np.random.Generator,
    cls: str,
    gx: float,
    gy: float,
    radius: tuple[float, float],
    sky_sigma: float,
    id0: int,
) -> None:
    """One ghost centred on (gx, gy): a soft-edged donut (70%) or a Gaussian blob,
    its outer radius a fraction in ``radius`` of the image's smaller side."""
    shape = layer.signal.shape
    ny, nx = shape
    r_out = float(np.clip(rng.uniform(*radius) * min(nx, ny), 8.0, 200.0))
    r_in = rng.uniform(0.4, 0.6) * r_out
    amp = rng.uniform(0.5, 2.5) * sky_sigma
    reach = int(r_out + 12)
    ys = slice(max(int(gy) - reach, 0), min(int(gy) + reach + 1, ny))
    xs = slice(max(int(gx) - reach, 0), min(int(gx) + reach + 1, nx))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return
    yy, xx = np.mgrid[ys, xs].astype(float)
    r = np.hypot(xx - gx, yy - gy)
    if rng.random() < 0.7:
        w = 1.5  # soft edges of the pupil image
        val = amp / (1 + np.exp(-(r - r_in) / w)) / (1 + np.exp(-(r_out - r) / w))
    else:
        val = amp * np.exp(-0.5 * (r / (0.5 * r_out)) ** 2)
    tmp = np.zeros(shape, dtype=np.float32)
    tmp[ys, xs] = val
    layer.add(cls, tmp)
    kind = "ghost"
    layer.rows.append(_row(kind, id0 + len(layer.rows), cls, gx, gy, float(val.sum()), size=r_out))


def movers(
    layer: ArtefactLayer,
    renderer: PointRenderer,
    tracks: list[dict[str, Any]],
) -> None:
    """Moving objects, each in its class's layer (:data:`MOVER_CLASSES`): fast
    ones trailed over the exposure, the others point-like.

    ``tracks`` holds per mover: id, cls, x0, y0, x1, y1 (start and end of the
    exposure), x, y, ra, dec (mid-exposure), flux, mag.
    """
    shape = layer.signal.shape
    for cls in MOVER_CLASSES:
        tmp = np.zeros(shape, dtype=np.float64)
        mine = [t for t in tracks if t["cls"] == cls]
        for t in mine:
            renderer.add_trailed(tmp, t["x0"], t["y0"], t["x1"], t["y1"], t["flux"])
            layer.rows.append(
                _row(
                    "mover",
                    t["id"],
                    cls,
                    t["x"],
                    t["y"],
                    t["flux"],
                    mag=t["mag"],
                    ra=t["ra"],
                    dec=t["dec"],
                    x0=t["x0"],
                    y0=t["y0"],
                    x1=t["x1"],
                    y1=t["y1"],
                    size=math.hypot(t["x1"] - t["x0"], t["y1"] - t["y0"]),
                )
            )
        if mine:
            layer.add(cls, tmp)


def new_layer(sigma: np.ndarray) -> ArtefactLayer:
    """An empty artefact layer for an image of per-pixel noise ``sigma`` (ADU)."""
    shape = sigma.shape
    return ArtefactLayer(
        signal=np.zeros(shape, dtype=np.float32),
        threshold=(FOOTPRINT_SIGMA * sigma).astype(np.float32),
        footprints={cls: np.zeros(shape, dtype=bool) for cls in FOOTPRINT_CLASSES},
    )


def _row(
    kind: str, ident: int, cls: str, x: float, y: float, flux: float, **extra: float
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "kind": kind,
        "id": int(ident),
        "cls": cls,
        "x": float(x),
        "y": float(y),
        "flux": float(flux),
    }
    for key in ("ra", "dec", "mag", "x0", "y0", "x1", "y1", "size"):
        row[key] = float(extra.get(key, math.nan))
    return row
