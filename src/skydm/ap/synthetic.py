"""A small synthetic field of variable sources, for alert tests, benchmarks and demos.

It makes what a differencing run hands to alert production: science,
template and difference Exposures on one pixel grid (the difference is the
science minus the template image, no PSF matching needed because both share
the PSF) and the DIA source table in the format of ``skydm.diffim`` (``x``,
``y``, ``ra``, ``dec``, ``snr``, ``flux``, ``flux_err``, ``psf_flux``,
``psf_flux_err``, ``flagged`` and the ``flag_*`` columns).  DIA sources are
measured, not copied from the truth: PSF photometry on the difference image
at the true positions, kept when ``|S/N| >= 5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from skydm.image import Exposure, GaussianPsf, Mask, VisitInfo, psf_photometry


@dataclass
class SyntheticField:
    """A fixed field with ``n_variables`` sources whose flux changes each visit.

    Attributes
    ----------
    seed : int
        Random seed; the field and every visit are deterministic given it.
    shape : tuple of int
        Image shape (rows, columns).
    ra0, dec0 : float
        Field centre in degrees.
    pixel_scale : float
        Arcseconds per pixel.
    n_variables : int
        Number of variable sources.
    band : str
        Filter of every visit.
    """

    seed: int = 1
    shape: tuple[int, int] = (256, 256)
    ra0: float = 150.0
    dec0: float = 2.0
    pixel_scale: float = 0.2
    n_variables: int = 20
    band: str = "r"
    sky_sigma: float = 10.0
    fwhm_pixels: float = 4.0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        ny, nx = self.shape
        edge = 12
        self.x = rng.uniform(edge, nx - 1 - edge, self.n_variables)
        self.y = rng.uniform(edge, ny - 1 - edge, self.n_variables)
        self.base_flux = rng.uniform(2e3, 2e4, self.n_variables)
        self.amplitude = rng.uniform(2e3, 1e4, self.n_variables)
        self.phase = rng.uniform(0, 2 * np.pi, self.n_variables)
        self.wcs = WCS(naxis=2)
        self.wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        self.wcs.wcs.crval = [self.ra0, self.dec0]
        self.wcs.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
        s = self.pixel_scale / 3600.0
        self.wcs.wcs.cd = [[-s, 0.0], [0.0, s]]
        ra, dec = self.wcs.pixel_to_world_values(self.x, self.y)
        self.ra, self.dec = np.asarray(ra) % 360.0, np.asarray(dec)
        self.psf = GaussianPsf.from_fwhm(self.fwhm_pixels)

    def fluxes(self, visit: int) -> np.ndarray:
        """True flux of every variable at ``visit`` (template flux is ``base_flux``)."""
        return self.base_flux + self.amplitude * np.sin(self.phase + 0.9 * visit)

    def _render(self, flux: np.ndarray, noise: np.random.Generator, info: VisitInfo) -> Exposure:
        ny, nx = self.shape
        img = noise.normal(0.0, self.sky_sigma, self.shape)
        size = self.psf.default_size()
        half = size // 2
        for xc, yc, f in zip(self.x, self.y, flux, strict=True):
            ix, iy = round(xc), round(yc)
            k = self.psf.kernel(size, xc - ix, yc - iy)
            y0, x0 = iy - half, ix - half
            ys, xs = slice(max(y0, 0), min(y0 + size, ny)), slice(max(x0, 0), min(x0 + size, nx))
            img[ys, xs] += f * k[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        var = np.full(self.shape, self.sky_sigma**2, dtype=np.float32)
        mask = np.zeros(self.shape, dtype=np.uint32)
        mask[:, :2] |= np.uint32(Mask.EDGE)
        mask[:, -2:] |= np.uint32(Mask.EDGE)
        return Exposure(
            img.astype(np.float32), var, mask, self.wcs.deepcopy(), self.psf, 28.0, info
        )

    def visit(
        self, visit: int, *, detector: int = 0, mjd0: float = 60000.0, cadence_days: float = 3.0
    ) -> tuple[Exposure, Exposure, Exposure, Table]:
        """Science, template, difference and the DIA source table of one visit."""
        info = VisitInfo(
            instrument="skysim",
            detector=detector,
            visit=visit,
            band=self.band,
            mjd=mjd0 + cadence_days * visit,
            exptime=30.0,
            ra=self.ra0,
            dec=self.dec0,
        )
        template = self._render(self.base_flux, np.random.default_rng([self.seed, 0]), info)
        noise = np.random.default_rng([self.seed, 1 + visit])
        science = self._render(self.fluxes(visit), noise, info)
        diff = Exposure(
            science.image - template.image,
            science.var + template.var,
            science.msk | template.msk,
            self.wcs.deepcopy(),
            self.psf,
            28.0,
            info,
        )
        flux, err = psf_photometry(diff, self.x, self.y)
        snr = flux / err
        keep = np.flatnonzero(np.abs(snr) >= 5.0)
        table = Table()
        table["x"] = self.x[keep]
        table["y"] = self.y[keep]
        table["ra"] = self.ra[keep]
        table["dec"] = self.dec[keep]
        table["snr"] = snr[keep]
        # Aperture-like flux: the PSF flux times the enclosed fraction of a
        # 2-FWHM aperture (all of it for a Gaussian, to 1e-4).
        table["flux"] = flux[keep]
        table["flux_err"] = err[keep] * math.sqrt(1.2)
        table["psf_flux"] = flux[keep]
        table["psf_flux_err"] = err[keep]
        for name in ("flagged", "flag_dipole", "flag_edge", "flag_sat", "flag_cr", "flag_bad"):
            table[name] = np.zeros(len(keep), dtype=bool)
        table["truth_index"] = keep
        return science, template, diff, table
