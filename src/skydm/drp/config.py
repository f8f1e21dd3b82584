"""The configuration of Object detection and measurement on deep coadds, and the
Object flag bits."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from skydm.errors import BadValueError

#: Ways of combining the bands' matched-filter S/N maps into one detection image.
DETECTION_IMAGES = ("chi2", "sum")
#: Deblenders: prominent peaks with watershed footprints, or sep's own.
DEBLENDERS = ("peaks", "sep")


class ObjectFlag(enum.IntFlag):
    """Bits of the Object table's ``flags`` column (OR over the bands)."""

    EDGE = 1 << 0  #: PSF stamp crosses the cell's border, or the footprint touches NO_DATA/EDGE
    SATURATED = 1 << 1  #: a SAT pixel in the footprint
    BAD = 1 << 2  #: a BAD, CR or SUSPECT pixel in the footprint
    CLIPPED = 1 << 3  #: a pixel rejected as an artefact when coadding in the footprint
    DEBLENDED = 1 << 4  #: one of several objects deblended from one footprint
    PARTIAL_PSF = 1 << 5  #: masked pixels removed a part of the PSF's weight in some band
    NO_FLUX = 1 << 6  #: no PSF flux could be measured in some band
    NO_APCORR = 1 << 7  #: too few stars for a band's stellar locus (apcorr='stars': its correction)


@dataclass(frozen=True)
class ObjectConfig:
    """Every tunable of :func:`skydm.drp.measure_objects`, validated when built.

    Parameters
    ----------
    threshold : float
        Detection threshold, in sigma of the detection image (true sigma:
        each band's S/N map is computed from its variance plane).
    detection_image : {"chi2", "sum"}
        ``"chi2"``: the sum over bands of the squared positive matched-filter
        S/N, converted to the Gaussian sigma of equal false-alarm probability
        (Szalay, Connolly & Szokoly 1999); finds sources of any colour.
        ``"sum"``: the sum of the bands' S/N divided by the square root of the
        number of bands (best for flat spectra).
    min_area : int
        Fewest connected pixels above the threshold for a detection.
    deblender : {"peaks", "sep"}
        ``"peaks"``: every local maximum of the linear S/N map that rises
        ``peak_prominence`` sigma above its saddle to a higher peak is an
        object; footprints are split among them by watershed.  ``"sep"``:
        sep's (SExtractor's) multi-threshold deblender, whose contrast is
        relative to the whole parent's flux, so that faint objects on large
        bright footprints are lost (see ``docs/drp.md``).
    peak_prominence : float
        Least rise of a peak above its saddle, in sigma, for the peak deblender.
    deblend_nthresh : int
        Number of sub-thresholds of sep's deblender.
    deblend_cont : float
        Minimum flux fraction of a child for sep's deblender; 1 switches it off.
    centroid_iterations : int
        Rounds of the multi-band linearised PSF fit that refines the
        detection-image centroids (0 keeps those).
    centroid_max_shift : float
        Largest move of that fit, pixels; an object that would move further
        (a blend the fit cannot untangle) keeps its detection centroid.
    residual_detection : bool
        Detect a second time on the coadds with the first pass's PSF models
        subtracted (finds faint objects on the slopes of bright ones; see
        ``docs/drp.md``).
    residual_model_error : float
        Fractional error of a subtracted PSF model per pixel: the residual's
        variance gains ``(residual_model_error * model)**2``, so that the
        imperfect cores of bright objects do not come back as detections.
    residual_min_separation : float
        Least distance, in PSF FWHM, of a residual detection from any object
        (and from another residual detection).
    residual_roundness : float
        Least ratio of the smaller to the larger curvature of the residual
        S/N map at a residual detection (1 for a round point source; the
        arcs a PSF model leaves around a galaxy are near 0); 0 switches the
        test off.
    subtract_background : bool
        Re-estimate and subtract a smooth background from each coadd first.
    background_box : int
        Mesh size of that background, pixels.
    psf_stamp : int
        Largest side of the PSF stamp used in fits (odd, pixels); the PSF
        model's own size when that is smaller.
    max_group : int
        Most objects fitted together; objects whose stamps overlap are fitted
        simultaneously, larger groups one object at a time.
    crowded_sweeps : int
        Sweeps of the refit of objects in groups larger than ``max_group``:
        each object's amplitude fitted on the data less its neighbours'
        current models (Gauss-Seidel towards the joint fit); 0 keeps the
        lone fits, which give a faint object its bright neighbours' wings.
    partial_psf_fraction : float
        ``PARTIAL_PSF`` is set when the usable pixels hold less than this
        fraction of the PSF's squared weight.
    aperture_radius : float
        Radius of the aperture compared with the PSF flux for extendedness,
        in units of the band's PSF FWHM.
    extended_fraction : float
        An object is extended when its aperture flux (corrected to the PSF
        model) exceeds its PSF flux by more than this fraction ...
    extended_nsigma : float
        ... and by more than this many sigma of the difference.
    apcorr : str
        Where the aperture correction comes from: ``"psf"`` (default), the
        PSF model itself (the inverse of the share of the coadd PSF's light
        inside the fitted stamp: 1 when the whole model is fitted), or
        ``"stars"``, the median over bright isolated stars of their flux in
        ``apcorr_radius`` FWHM over their PSF flux (with 0-10 stars per
        cell it scattered by +-2-5%: one star with a faint companion moves it).
    apcorr_radius : float
        Radius, in PSF FWHM, of the aperture whose flux the PSF fluxes are
        corrected to with ``apcorr="stars"`` (the PSF model's stamp
        truncates the wings).
    apcorr_min_snr : float
        Smallest PSF S/N of a star used to measure the aperture correction.
    apcorr_min_stars : int
        Fewest stars for a band's stellar locus (and, with
        ``apcorr="stars"``, its aperture correction); with fewer both are 1
        and ``NO_APCORR`` is set.
    """

    threshold: float = 5.0
    detection_image: str = "chi2"
    min_area: int = 5
    deblender: str = "peaks"
    peak_prominence: float = 3.0
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    centroid_iterations: int = 2
    centroid_max_shift: float = 1.5
    residual_detection: bool = True
    residual_model_error: float = 0.1
    residual_min_separation: float = 1.5
    residual_roundness: float = 0.5
    subtract_background: bool = False
    background_box: int = 128
    psf_stamp: int = 41
    max_group: int = 64
    crowded_sweeps: int = 8
    partial_psf_fraction: float = 0.9
    aperture_radius: float = 1.5
    extended_fraction: float = 0.02
    extended_nsigma: float = 3.0
    apcorr: str = "psf"
    apcorr_radius: float = 4.0
    apcorr_min_snr: float = 50.0
    apcorr_min_stars: int = 5

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = float(getattr(self, name))
            if not (value > 0 and math.isfinite(value)):
                raise BadValueError(name, getattr(self, name), "a positive finite number")

        for name in (
            "threshold",
            "aperture_radius",
            "apcorr_radius",
            "extended_nsigma",
            "peak_prominence",
            "centroid_max_shift",
            "residual_min_separation",
        ):
            positive(name)
        if not isinstance(self.residual_detection, bool):
            raise BadValueError("residual_detection", self.residual_detection, "true or false")
        if not (0 <= self.residual_roundness <= 1):
            raise BadValueError("residual_roundness", self.residual_roundness, "a ratio in [0, 1]")
        value = self.residual_model_error
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (0 <= value < math.inf)
        ):
            raise BadValueError("residual_model_error", value, "a finite number >= 0")
        if self.detection_image not in DETECTION_IMAGES:
            raise BadValueError(
                "detection_image", self.detection_image, f"one of {', '.join(DETECTION_IMAGES)}"
            )
        if self.deblender not in DEBLENDERS:
            raise BadValueError("deblender", self.deblender, f"one of {', '.join(DEBLENDERS)}")
        for name, low in (
            ("min_area", 1),
            ("deblend_nthresh", 1),
            ("max_group", 1),
            ("crowded_sweeps", 0),
            ("apcorr_min_stars", 1),
            ("centroid_iterations", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise BadValueError(name, value, f"an integer >= {low}")
        if not (0 < self.deblend_cont <= 1):
            raise BadValueError("deblend_cont", self.deblend_cont, "a flux fraction in (0, 1]")
        if not isinstance(self.background_box, int) or self.background_box < 8:
            raise BadValueError("background_box", self.background_box, "an integer >= 8 pixels")
        if not isinstance(self.psf_stamp, int) or self.psf_stamp < 5 or self.psf_stamp % 2 == 0:
            raise BadValueError("psf_stamp", self.psf_stamp, "an odd integer >= 5 pixels")
        for name in ("partial_psf_fraction", "extended_fraction"):
            value = getattr(self, name)
            if not (0 <= value < 1):
                raise BadValueError(name, value, "a fraction in [0, 1)")
        if self.apcorr not in ("psf", "stars"):
            raise BadValueError("apcorr", self.apcorr, "'psf' or 'stars'")
        if not (self.apcorr_min_snr >= 0 and math.isfinite(self.apcorr_min_snr)):
            raise BadValueError("apcorr_min_snr", self.apcorr_min_snr, "a finite number >= 0")
        if self.apcorr_radius <= self.aperture_radius:
            raise BadValueError(
                "apcorr_radius",
                self.apcorr_radius,
                f"a radius larger than aperture_radius={self.aperture_radius}",
            )
