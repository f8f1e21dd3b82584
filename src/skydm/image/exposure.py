"""The Exposure: the one image model shared by every stage."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skydm.errors import BadValueError, MissingMetadataError
from skydm.image.mask import Mask, mask_to_header
from skydm.image.psf import Psf
from skydm.image.visit import VisitInfo

#: AB magnitude of a flux of 1 nJy (the unit of LSST alert and catalog fluxes).
NJY_AB_MAG = 31.4


@dataclass
class Exposure:
    """An image with its variance, mask, WCS, PSF, calibration and visit metadata.

    Attributes
    ----------
    image : numpy.ndarray
        Pixel values (``float32`` or ``float64``), ADU or calibrated flux.
    variance : numpy.ndarray
        Per-pixel variance in the same units squared.
    mask : numpy.ndarray
        ``uint32`` plane of :class:`~skydm.image.mask.Mask` bits.
    wcs : astropy.wcs.WCS or None
        Celestial WCS, ``None`` when the image has none.
    psf : Psf or None
        The PSF model.
    zero_point : float
        Photometric zero point (AB magnitude of one count), NaN if uncalibrated.
    info : VisitInfo
        Visit metadata.
    meta : astropy.io.fits.Header
        Any other header cards, kept so that nothing is lost on a round trip.
    source : str or None
        Where the exposure was read from, for error messages.
    """

    image: np.ndarray
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None
    wcs: WCS | None = None
    psf: Psf | None = None
    zero_point: float = math.nan
    info: VisitInfo = field(default_factory=VisitInfo)
    meta: fits.Header = field(default_factory=fits.Header)
    source: str | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 2:
            raise BadValueError("image", f"{self.image.ndim}-d array", "a 2-d image")
        if not np.issubdtype(self.image.dtype, np.floating):
            self.image = self.image.astype(np.float32)
        if self.variance is None:
            self.variance = _estimate_variance(self.image, self.info)
        if self.mask is None:
            self.mask = np.zeros(self.image.shape, dtype=np.uint32)
        for name in ("variance", "mask"):
            plane = getattr(self, name)
            if plane.shape != self.image.shape:
                raise BadValueError(name, plane.shape, f"the image's shape {self.image.shape}")
        self.mask = self.mask.astype(np.uint32, copy=False)
        # Non-finite pixels carry no information: flag them rather than let
        # them poison convolutions and sums downstream.
        bad = ~np.isfinite(self.image)
        if bad.any():
            self.mask[bad] |= np.uint32(Mask.NO_DATA)

    # -- convenience -----------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    @property
    def var(self) -> np.ndarray:
        """The variance plane (never ``None`` after construction)."""
        assert self.variance is not None
        return self.variance

    @property
    def msk(self) -> np.ndarray:
        """The mask plane (never ``None`` after construction)."""
        assert self.mask is not None
        return self.mask

    def require_wcs(self, needed_by: str) -> WCS:
        """The WCS, or an error saying that ``needed_by`` needs one."""
        if self.wcs is None:
            raise MissingMetadataError(
                "a celestial WCS (CTYPE1/2, CRVAL, CRPIX, CD or CDELT cards)",
                needed_by,
                self.source,
                "add one with astrometry.net or give images on the same pixel grid",
            )
        return self.wcs

    def require_psf(self, needed_by: str) -> Psf:
        """The PSF, or an error saying that ``needed_by`` needs one."""
        if self.psf is None:
            raise MissingMetadataError(
                "a PSF model", needed_by, self.source, "measure one with skydm.image.measure_psf"
            )
        return self.psf

    def nanojansky_per_count(self, needed_by: str) -> float:
        """Flux in nJy of one count of this image, from its AB zero point.

        ``10 ** ((31.4 - zero_point) / 2.5)``: 31.4 is the AB magnitude of 1 nJy.

        Raises
        ------
        MissingMetadataError
            When the image has no zero point.
        """
        if not math.isfinite(self.zero_point):
            raise MissingMetadataError(
                "a photometric zero point (ZP card: AB magnitude of one count)",
                needed_by,
                self.source,
                "calibrate the image (skydm's calexps carry one) or set the ZP card",
            )
        return float(10.0 ** ((NJY_AB_MAG - self.zero_point) / 2.5))

    def require_gain(self, needed_by: str) -> float:
        """The gain in e-/ADU, or an error saying that ``needed_by`` needs it."""
        if not (self.info.gain > 0):
            raise MissingMetadataError(
                "the gain (GAIN header card, electrons per ADU)",
                needed_by,
                self.source,
                "set the GAIN card or pass the gain as an option",
            )
        return self.info.gain

    def copy(self) -> Exposure:
        """A deep copy."""
        return Exposure(
            image=self.image.copy(),
            variance=self.var.copy(),
            mask=self.msk.copy(),
            wcs=self.wcs.deepcopy() if self.wcs is not None else None,
            psf=self.psf,
            zero_point=self.zero_point,
            info=VisitInfo(**{k: getattr(self.info, k) for k in self.info.__dataclass_fields__}),
            meta=self.meta.copy(),
            source=self.source,
        )

    def cutout(self, x: float, y: float, size: int) -> Exposure:
        """A ``size`` x ``size`` sub-exposure centred on pixel (x, y), padded with NO_DATA."""
        half = size // 2
        x0, y0 = round(x) - half, round(y) - half
        image = np.full((size, size), np.nan, dtype=self.image.dtype)
        var = np.full((size, size), np.inf, dtype=self.var.dtype)
        mask = np.full((size, size), np.uint32(Mask.NO_DATA), dtype=np.uint32)
        ny, nx = self.shape
        ys, xs = slice(max(y0, 0), min(y0 + size, ny)), slice(max(x0, 0), min(x0 + size, nx))
        dst = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        if ys.stop > ys.start and xs.stop > xs.start:
            image[dst] = self.image[ys, xs]
            var[dst] = self.var[ys, xs]
            mask[dst] = self.msk[ys, xs]
        wcs = None
        if self.wcs is not None:
            wcs = self.wcs.deepcopy()
            wcs.wcs.crpix = wcs.wcs.crpix - np.array([x0, y0])
        return Exposure(image, var, mask, wcs, self.psf, self.zero_point, self.info, self.meta)

    # -- FITS ------------------------------------------------------------
    def to_hdulist(self) -> fits.HDUList:
        """Multi-extension FITS: primary (metadata), IMAGE, VARIANCE, MASK, PSF."""
        primary = fits.PrimaryHDU()
        h = primary.header
        h["SKYDMEXP"] = (True, "a skydm Exposure")
        for card in self.meta.cards:
            if card.keyword not in h and card.keyword not in ("", "COMMENT", "HISTORY"):
                try:
                    h.append(card)
                except (ValueError, fits.verify.VerifyError):
                    continue
        self.info.to_header(h)
        if math.isfinite(self.zero_point):
            h["ZP"] = (self.zero_point, "photometric zero point (AB mag of 1 count)")
        wcs_header = self.wcs.to_header(relax=True) if self.wcs is not None else fits.Header()
        image = fits.ImageHDU(self.image, header=wcs_header, name="IMAGE")
        variance = fits.ImageHDU(self.var, header=wcs_header, name="VARIANCE")
        mask = fits.ImageHDU(self.msk, header=wcs_header, name="MASK")
        mask_to_header(mask.header)
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary, image, variance, mask]
        if self.psf is not None:
            hdus.append(self.psf.to_hdu())
        return fits.HDUList(hdus)

    def write(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the Exposure atomically as multi-extension FITS."""
        from skydm.repo.atomic import atomic_write_hdulist

        return atomic_write_hdulist(Path(path), self.to_hdulist(), overwrite=overwrite)

    @classmethod
    def read(cls, path: str | Path, *, hdu: int | str | None = None) -> Exposure:
        """Read a skydm Exposure file or any FITS image (see :func:`read_exposure`)."""
        from skydm.image.io import read_exposure

        return read_exposure(path, hdu=hdu)


def _estimate_variance(image: np.ndarray, info: VisitInfo) -> np.ndarray:
    """Variance from the gain and read noise when known, else from the image's noise.

    With a gain the variance is the CCD equation (counts plus sky plus read
    noise, in ADU^2); without one it is a flat plane at the robust
    background variance, which is what detection needs.
    """
    img = image.astype(np.float64, copy=False)
    finite = np.isfinite(img)
    if info.gain > 0:
        rn = info.read_noise if math.isfinite(info.read_noise) else 0.0
        signal = np.clip(np.where(finite, img, 0.0) + info.sky, 0.0, None)
        return (signal / info.gain + (rn / info.gain) ** 2).astype(np.float32)
    vals = img[finite]
    if vals.size == 0:
        return np.full(image.shape, np.inf, dtype=np.float32)
    # Robust sigma from differences of neighbours: insensitive to sources and gradients.
    diffs = np.diff(img, axis=1)
    diffs = diffs[np.isfinite(diffs)]
    mad = float(np.median(np.abs(diffs - np.median(diffs)))) if diffs.size else 0.0
    sigma = 1.4826 * mad / math.sqrt(2.0)
    return np.full(image.shape, max(sigma, 1e-12) ** 2, dtype=np.float32)


def wcs_from_header(header: fits.Header) -> WCS | None:
    """A celestial WCS from ``header``, or ``None`` if it has no usable one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        try:
            wcs = WCS(header, naxis=2, relax=True)
        except Exception:
            # A WCS that astropy cannot parse is treated as absent; stages that
            # need one will say so by name.
            return None
    if not wcs.has_celestial:
        return None
    return wcs.celestial
