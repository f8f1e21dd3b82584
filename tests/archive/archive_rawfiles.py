"""Small realistic raw FITS files for the archive tests (sky, Poisson noise, stars).

Test modules import these helpers from here (a plain module, not a
conftest, so that its name cannot clash with another directory's conftest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

RawMaker = Callable[..., Path]


def raw_pixels(
    seed: int, shape: tuple[int, int] = (96, 128), sky: float = 900.0, n_stars: int = 12
) -> np.ndarray:
    """A raw-like image in ADU: sky + stars, Poisson noise, read noise, a bias offset."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    model = np.full(shape, sky)
    for _ in range(n_stars):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        flux, sigma = rng.uniform(2e3, 8e4), rng.uniform(1.2, 2.5)
        model += (
            flux
            / (2 * np.pi * sigma**2)
            * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
        )
    return rng.poisson(model).astype(np.float64) + rng.normal(0.0, 5.0, shape) + 300.0


def sim_header(visit: int | None = 7, detector: int = 3, band: str = "r") -> fits.Header:
    """Header cards of a skysim raw."""
    h = fits.Header()
    h["INSTRUME"] = "SKYSIM"
    if visit is not None:
        h["VISIT"] = visit
    h["DETECTOR"] = detector
    h["FILTER"] = band
    h["MJD-OBS"] = 60000.25 + (visit or 0) * 0.01
    h["EXPTIME"] = 30.0
    h["GAIN"] = 1.5
    return h


def raw_factory(tmp_path: Path) -> RawMaker:
    """``make(name, dtype, seed=, header=, shape=)`` writes a raw FITS file in ``tmp_path``.

    ``dtype`` is ``uint16`` (BITPIX 16 with BZERO 32768, as cameras write),
    ``int16``, ``int32``, ``uint8``, ``float32`` or ``float64``.
    """

    def make(
        name: str,
        dtype: str = "uint16",
        *,
        seed: int = 1,
        header: fits.Header | None = None,
        shape: tuple[int, int] = (96, 128),
    ) -> Path:
        pixels = raw_pixels(seed, shape)
        if dtype in ("uint16", "int16", "int32", "uint8"):
            info = np.iinfo(dtype)
            data = np.clip(np.round(pixels), info.min, info.max).astype(dtype)
        else:
            data = pixels.astype(dtype)
        hdr = header.copy() if header is not None else sim_header(visit=seed)
        tmp_path.mkdir(parents=True, exist_ok=True)
        path = tmp_path / name
        fits.PrimaryHDU(data, header=hdr).writeto(path)
        return path

    return make
