"""The star PSF's configuration and result (:mod:`skydm.image.starpsf`).

A leaf module: every tunable of the star PSF measurement, validated where it
is built, and the named product it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skydm.errors import BadValueError
from skydm.image.psf import PixelPsf


@dataclass(frozen=True)
class StarPsfConfig:
    """Tunables of :func:`measure_star_psf`.

    Parameters
    ----------
    min_snr : float
        S/N (aperture flux) of the stars; relaxed to ``min_snr / 2.5`` (not
        below 20) when fewer than ``min_stars`` pass it.
    min_stars : int
        Fewest stars a PSF is fitted to.
    max_stars : int
        Most stars fitted (the highest S/N).
    stamp_fwhm : float
        Half-width of the fitted stamps and of the PSF image, in FWHM.
    fit_fwhm : float
        Half-width, in FWHM, of the stamps the width is fitted on.
    locus_tolerance : float
        First cut: candidates within this fraction above the smallest
        half-light radius.
    beta_prior, beta_sigma : float
        The Moffat index (atmospheric PSFs: 2.5-4.8, Trujillo et al. 2001)
        and the width of a Gaussian prior on it (0 keeps it fixed; fixed at
        3.5, PSF fluxes on the real DECam stamps came out 5% below their
        aperture fluxes, 2.4% with the prior).
    reject_nsigma : float
        A star whose own FWHM exceeds the common one by this many of its
        errors (and by ``reject_fraction``) is not a star.
    reject_fraction : float
        Least relative excess of FWHM for a rejection.
    median_reference : bool
        Compare each candidate's own FWHM with the smaller of the common
        fit's and the candidates' median (not the common fit's alone, which
        a bright compact galaxy among a few stars sets).
    max_weight : float
        Largest weight of one candidate in the common profile fit, in units
        of the median candidate's (weights go as S/N²; a candidate above
        the cap has its residuals scaled down to it); 0 leaves the weights
        as they are.  With a few stars per detector one bright contaminant
        (a star with a close galaxy, a transient on its host) otherwise
        sets the wings.
    companion_snr : float
        Undetected companions: after each profile fit, every candidate's
        residual (less its azimuthal median, which a wrong profile leaves) is
        searched through the PSF for peaks above this S/N, and a disc about
        each is masked before the fit is repeated; 0 turns it off.  A faint
        star or galaxy 1.5-3 FWHM from a bright candidate, below the
        detection threshold, otherwise sets heavy wings (seed 282: beta 2.2-2.6,
        PSF fluxes 4-17% high).
    companion_min_radius : float
        Peaks nearer the candidate's centre than this, in FWHM, are the star's
        own core (a broad one is the own-FWHM test's to reject).
    companion_radius : float
        Radius, in FWHM, of the disc masked about each companion.
    residual_radius : float
        Radius, in FWHM, of the pixel residual.
    fit_sky : bool
        Fit a constant sky level per star (else the image's background
        subtraction is trusted).
    max_side : int
        Larger images are measured on their central ``max_side`` square
        (twice that, and so on to the whole image, when it holds too few
        stars): 1024^2 holds ~600 stars at 10,000 per 4096^2 detector, for
        the 40 fitted.
    region_stars : int
        Fewest stars a central region's fit is kept with (else the next
        region is measured): 10 stars of S/N > 50 give the FWHM to ~0.1%.
    """

    min_snr: float = 50.0
    min_stars: int = 3
    max_stars: int = 40
    stamp_fwhm: float = 3.5
    fit_fwhm: float = 3.5
    locus_tolerance: float = 0.25
    beta_prior: float = 3.5
    beta_sigma: float = 0.5
    reject_nsigma: float = 3.0
    reject_fraction: float = 0.02
    median_reference: bool = True
    max_weight: float = 0.0
    companion_snr: float = 3.0
    companion_min_radius: float = 1.0
    companion_radius: float = 1.5
    residual_radius: float = 2.0
    fit_sky: bool = False
    max_side: int = 1024
    region_stars: int = 10

    def __post_init__(self) -> None:
        if not self.min_snr > 0:
            raise BadValueError("min_snr", self.min_snr, "a positive S/N")
        if self.min_stars < 2:
            raise BadValueError("min_stars", self.min_stars, "at least 2 stars")
        if self.max_stars < self.min_stars:
            raise BadValueError("max_stars", self.max_stars, f"at least min_stars={self.min_stars}")
        if not 2.0 <= self.stamp_fwhm <= 10.0:
            raise BadValueError("stamp_fwhm", self.stamp_fwhm, "a half-width of 2 to 10 FWHM")
        if not 1.0 <= self.fit_fwhm <= self.stamp_fwhm:
            raise BadValueError(
                "fit_fwhm", self.fit_fwhm, f"1 to stamp_fwhm={self.stamp_fwhm} FWHM"
            )
        if not 0 < self.locus_tolerance <= 1:
            raise BadValueError("locus_tolerance", self.locus_tolerance, "a fraction in (0, 1]")
        if not self.beta_prior > 1.2:
            raise BadValueError("beta_prior", self.beta_prior, "a Moffat index > 1.2")
        if not self.beta_sigma >= 0:
            raise BadValueError("beta_sigma", self.beta_sigma, "a prior width >= 0 (0: fixed)")
        if not self.reject_nsigma > 0:
            raise BadValueError("reject_nsigma", self.reject_nsigma, "a positive number of sigma")
        if not isinstance(self.median_reference, bool):
            raise BadValueError("median_reference", self.median_reference, "True or False")
        if isinstance(self.max_weight, bool) or not (0 <= self.max_weight < math.inf):
            raise BadValueError("max_weight", self.max_weight, "a weight ratio >= 1, or 0 (off)")
        if 0 < self.max_weight < 1:
            raise BadValueError("max_weight", self.max_weight, "a weight ratio >= 1, or 0 (off)")
        if not (self.companion_snr == 0 or 2.0 <= self.companion_snr < math.inf):
            raise BadValueError("companion_snr", self.companion_snr, "an S/N >= 2, or 0 (off)")
        if not 0 <= self.companion_min_radius <= self.stamp_fwhm:
            raise BadValueError(
                "companion_min_radius",
                self.companion_min_radius,
                f"0 to stamp_fwhm={self.stamp_fwhm} FWHM",
            )
        if not 0.5 <= self.companion_radius <= self.stamp_fwhm:
            raise BadValueError(
                "companion_radius",
                self.companion_radius,
                f"0.5 to stamp_fwhm={self.stamp_fwhm} FWHM",
            )
        if not self.reject_fraction >= 0:
            raise BadValueError("reject_fraction", self.reject_fraction, "a fraction >= 0")
        if self.region_stars < self.min_stars:
            raise BadValueError(
                "region_stars", self.region_stars, f"at least min_stars={self.min_stars}"
            )
        if self.max_side < 256:
            raise BadValueError("max_side", self.max_side, "a region of at least 256 pixels")
        if not 0.5 <= self.residual_radius <= self.stamp_fwhm:
            raise BadValueError(
                "residual_radius", self.residual_radius, f"0.5 to stamp_fwhm={self.stamp_fwhm} FWHM"
            )


@dataclass(frozen=True)
class StarPsfFit:
    """A measured PSF and how it was measured.

    Attributes
    ----------
    psf : PixelPsf
        The model, a ``2 * ceil(stamp_fwhm * fwhm) + 1`` pixel image.
    fwhm, beta : float
        The fitted Moffat profile.
    nstars : int
        Stars in the final fit.
    residual : bool
        Whether a pixel residual was added to the profile.
    """

    psf: PixelPsf
    fwhm: float
    beta: float
    nstars: int
    residual: bool
