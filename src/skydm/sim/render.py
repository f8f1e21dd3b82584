"""Rendering sources into images: PSF stars in stamps, Sérsic galaxies, lines.

Every source is drawn into a small stamp that is added to the image, so the
cost grows with the number of sources and their sizes, not with the image
area.  Point sources are rendered in vectorised batches: all stamps of one
size are evaluated together from the PSF's analytic profile, integrated over
each pixel on a sub-grid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import fftconvolve

from skydm.image.psf import DoubleGaussianPsf, GaussianPsf, MoffatPsf, Psf

#: Wing to core width ratio and wing flux fraction of the double Gaussian PSF.
DG_RATIO, DG_FRAC = 2.0, 0.1
#: Stamp elements evaluated per batch (bounds memory at ~100 MB).
_BATCH_ELEMENTS = 3_000_000


def make_psf(kind: str, fwhm_pix: float, beta: float = 3.5) -> Psf:
    """A PSF of the given kind whose FWHM is ``fwhm_pix`` pixels."""
    if kind == "moffat":
        return MoffatPsf(fwhm_pix, beta)
    if kind == "gaussian":
        return GaussianPsf.from_fwhm(fwhm_pix)
    unit = DoubleGaussianPsf(1.0, DG_RATIO, DG_FRAC).fwhm
    s1 = fwhm_pix / unit
    return DoubleGaussianPsf(s1, DG_RATIO * s1, DG_FRAC)


class PointRenderer:
    """Draws point sources (and trailed ones) with one PSF into images.

    Parameters
    ----------
    psf : Psf
        An analytic PSF (Gaussian, double Gaussian or Moffat).
    floor : float
        Stamps extend until the source's pixel values fall below ``floor``
        (ADU); what lies beyond is a negligible part of the flux.
    """

    def __init__(self, psf: Psf, floor: float) -> None:
        self.psf = psf
        self.floor = max(float(floor), 1e-6)
        fwhm = psf.fwhm
        # Narrow PSFs need a finer sub-grid to integrate over the pixel.
        self.sub = 5 if fwhm < 3.0 else 3
        self.r_min = max(3, math.ceil(2.0 * fwhm))
        self.r_max = max(self.r_min, min(512, math.ceil(40.0 * fwhm)))
        # Normalisation: the profile's integral over a plane large enough to
        # hold all but ~1e-8 of the flux of any of the analytic PSFs.
        big = np.arange(-self.r_max, self.r_max + 1, dtype=float)
        half = 1.0 / self.sub
        offs = (np.arange(self.sub) + 0.5) * half - 0.5
        total = 0.0
        for oy in offs:
            for ox in offs:
                total += float(psf._render(big[None, :] + ox, big[:, None] + oy).sum())
        self.norm = total / self.sub**2
        # Radial profile (unit-flux pixel values) used to size stamps.
        r = np.arange(self.r_max + 2, dtype=float)
        self._radial = psf._render(r, np.zeros_like(r)) / self.norm
        self._offsets = offs
        # Every stamp holds at least 99.8% of the flux (Moffat wings are wide):
        # the radius where the encircled energy of the profile reaches that.
        rr = np.hypot(big[None, :], big[:, None]).ravel()
        vals = psf._render(big[None, :], big[:, None]).ravel()
        order = np.argsort(rr)
        ee = np.cumsum(vals[order]) / vals.sum()
        r_ee = float(rr[order][np.searchsorted(ee, 0.998)])
        self.r_min = int(min(self.r_max, max(self.r_min, math.ceil(r_ee))))

    def _profile(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The PSF's unnormalised profile; a fast path for the usual Moffat index."""
        psf = self.psf
        if isinstance(psf, MoffatPsf) and psf.beta == 3.5:
            # u**-3.5 by multiplications and one square root: several times
            # faster than a general power, and the same numbers.
            u = 1.0 + (x * x + y * y) / psf.alpha**2
            return np.asarray(1.0 / (u * u * u * np.sqrt(u)))
        return np.asarray(psf._render(x, y))

    def radius(self, flux: np.ndarray) -> np.ndarray:
        """Stamp half-width for each flux: where the profile drops below the floor."""
        flux = np.abs(np.asarray(flux, dtype=float))
        # First radius at which flux * profile < floor (profile is decreasing).
        idx = np.searchsorted(-self._radial, -(self.floor / np.maximum(flux, 1e-30)))
        r = np.clip(idx, self.r_min, self.r_max)
        # Round up to a few sizes so that stamps batch together.
        step = np.maximum(2, (r // 8))
        return np.asarray(np.minimum(-(-r // step) * step, self.r_max), dtype=int)

    def stamps(self, dx: np.ndarray, dy: np.ndarray, half: int) -> np.ndarray:
        """Unit-sum PSF stamps (n, 2 half + 1, 2 half + 1) centred at sub-pixel offsets."""
        g = np.arange(-half, half + 1, dtype=float)
        acc = np.zeros((len(dx), g.size, g.size))
        for oy in self._offsets:
            yy = g[None, :, None] - dy[:, None, None] + oy
            for ox in self._offsets:
                xx = g[None, None, :] - dx[:, None, None] + ox
                acc += self._profile(xx, yy)
        # Unit sum per stamp: the image then holds exactly the catalog flux
        # (the < 0.2% beyond the stamp is put back into its core).
        acc /= acc.sum(axis=(1, 2))[:, None, None]
        return acc

    def add(self, image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
        """Add point sources of total ``flux`` at pixel positions (x, y), in place."""
        x, y, flux = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (x, y, flux))
        if x.size == 0:
            return
        ny, nx = image.shape
        radius = self.radius(flux)
        ix, iy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        # Sources whose stamp cannot touch the image are skipped.
        on = (ix + radius >= 0) & (ix - radius < nx) & (iy + radius >= 0) & (iy - radius < ny)
        on &= flux != 0
        for half in np.unique(radius[on]):
            sel = np.flatnonzero(on & (radius == half))
            size = 2 * int(half) + 1
            chunk = max(1, _BATCH_ELEMENTS // (size * size * 2))
            for start in range(0, sel.size, chunk):
                part = sel[start : start + chunk]
                st = self.stamps(x[part] - ix[part], y[part] - iy[part], int(half))
                st *= flux[part, None, None]
                for k, i in enumerate(part):
                    add_stamp(image, st[k], int(ix[i]), int(iy[i]))

    def add_trailed(
        self, image: np.ndarray, x0: float, y0: float, x1: float, y1: float, flux: float
    ) -> None:
        """Add a source moving uniformly from (x0, y0) to (x1, y1) during the exposure."""
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(2, math.ceil(length / 0.25) + 1)
        t = (np.arange(n) + 0.5) / n
        self.add(image, x0 + t * (x1 - x0), y0 + t * (y1 - y0), np.full(n, flux / n))


def add_stamp(image: np.ndarray, stamp: np.ndarray, ix: int, iy: int) -> None:
    """Add ``stamp`` centred on pixel (ix, iy) to ``image``, clipped at its edges."""
    h = stamp.shape[0] // 2
    ny, nx = image.shape
    y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
    x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
    if y1 <= y0 or x1 <= x0:
        return
    image[y0:y1, x0:x1] += stamp[y0 - (iy - h) : y1 - (iy - h), x0 - (ix - h) : x1 - (ix - h)]


def sersic_b(n: float) -> float:
    """The Sérsic ``b_n`` making ``r_eff`` the half-light radius (Ciotti & Bertin 1999)."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def galaxy_stamp(
    psf_kernel: np.ndarray,
    dx: float,
    dy: float,
    r_eff: float,
    n: float,
    q: float,
    theta: float,
) -> np.ndarray:
    """A unit-flux Sérsic galaxy convolved with the PSF.

    Parameters
    ----------
    psf_kernel : numpy.ndarray
        The PSF image (odd size, unit sum).
    dx, dy : float
        Sub-pixel offset of the centre from the stamp's central pixel.
    r_eff : float
        Half-light radius along the major axis, pixels.
    n : float
        Sérsic index (1 exponential disk, 4 de Vaucouleurs).
    q : float
        Axis ratio b/a.
    theta : float
        Major-axis angle from the +x axis, radians.

    Notes
    -----
    The profile is truncated at 5 ``r_eff`` (stamps would otherwise grow
    without bound for n = 4) and normalised to unit flux after truncation, so
    the rendered flux is exactly the catalog flux.
    """
    r_eff = max(r_eff, 0.3)
    half = int(min(100, math.ceil(5 * r_eff))) + psf_kernel.shape[0] // 2 + 1
    # Small or cuspy (high-index) profiles need a finer sub-grid over each
    # pixel; large disks are smooth on the pixel scale.
    sub = 4 if (r_eff < 4.0 or n > 2.5) else 2
    g = np.arange(-half, half + 1, dtype=float)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    b = sersic_b(n)
    c, s = math.cos(theta), math.sin(theta)
    img = np.zeros((g.size, g.size))
    for oy in offs:
        yy = g[:, None] + oy - dy
        for ox in offs:
            xx = g[None, :] + ox - dx
            u = xx * c + yy * s
            v = (-xx * s + yy * c) / q
            r = np.sqrt(u * u + v * v) / r_eff
            img += np.where(r <= 5.0, np.exp(-b * (r ** (1.0 / n) - 1.0)), 0.0)
    img /= img.sum()
    out = fftconvolve(img, psf_kernel, mode="same")
    out = np.clip(out, 0.0, None)  # FFT round-off leaves tiny negatives
    return np.asarray(out / out.sum())
