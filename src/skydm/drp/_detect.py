"""Detection on a set of coadds: one detection image from every band's
matched-filter S/N, thresholded and deblended by sep, with footprints and
centroids from the detection image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage, special

from skydm.drp.config import ObjectConfig
from skydm.image.detect import matched_filter_snr
from skydm.image.psf import GAUSS_FWHM, Psf


@dataclass
class BandPlanes:
    """One band's planes as measurement uses them.

    Attributes
    ----------
    image : numpy.ndarray
        Background-subtracted image, 0 where unusable.
    variance : numpy.ndarray
        Variance, ``inf`` where unusable.
    mask : numpy.ndarray
        The coadd's mask plane.
    bad : numpy.ndarray
        True where a pixel is unusable (masked or non-finite).
    psf : Psf
        The coadd's PSF.
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    bad: np.ndarray
    psf: Psf


@dataclass
class Detections:
    """What detection found.

    Attributes
    ----------
    x, y : numpy.ndarray
        Centroids (0-based pixels, ``x`` the column) from the detection image.
    peak : numpy.ndarray
        Peak of the detection image in the footprint (sigma).
    npix : numpy.ndarray
        Footprint area, pixels.
    parent : numpy.ndarray
        Label of the footprint before deblending (objects sharing it are
        deblended children of one parent).
    n_peaks : numpy.ndarray
        Number of objects deblended from the same parent footprint.
    segmap : numpy.ndarray
        Footprints: object ``k`` holds the pixels labelled ``k + 1``.
    image : numpy.ndarray
        The detection image (sigma).
    linear : numpy.ndarray
        The linear S/N-sum map that peaks and footprints were found on.
    """

    x: np.ndarray
    y: np.ndarray
    peak: np.ndarray
    npix: np.ndarray
    parent: np.ndarray
    n_peaks: np.ndarray
    segmap: np.ndarray
    image: np.ndarray
    linear: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


def _log_gamma_q(a: float, y: np.ndarray) -> np.ndarray:
    """log of the regularised upper incomplete gamma function Q(a, y), for y > 0.

    Where Q underflows, its asymptotic expansion for large ``y`` (two terms,
    relative error O((a/y)^2) in Q, below 1e-6 where it is used).
    """
    q = special.gammaincc(a, y)
    with np.errstate(divide="ignore"):
        exact = np.log(q)
    tiny = q < 1e-250
    if tiny.any():
        yt = y[tiny]
        exact[tiny] = (a - 1.0) * np.log(yt) - yt - special.gammaln(a) + np.log1p((a - 1.0) / yt)
    return np.asarray(exact)


def chi2_sigma(chi2: np.ndarray, n_bands: int) -> np.ndarray:
    """Gaussian sigma of equal false-alarm probability for a positive-chi² image.

    ``chi2`` is the sum over ``n_bands`` of max(S/N, 0)^2 with unit-normal
    S/N: each term is 0 with probability 1/2 and chi² of one degree of
    freedom otherwise, so ``P(X > x) = sum_k C(n, k) 2^-n Q(k/2, x/2)``.
    Returns the sigma whose normal upper tail has that probability.
    """
    x = np.asarray(chi2, dtype=np.float64)
    out = np.full(x.shape, -np.inf)
    pos = x > 0
    if not pos.any():
        return out
    xp = x[pos] / 2.0
    terms = [
        math.log(math.comb(n_bands, k)) - n_bands * math.log(2.0) + _log_gamma_q(k / 2.0, xp)
        for k in range(1, n_bands + 1)
    ]
    log_p = special.logsumexp(np.stack(terms), axis=0)
    out[pos] = -special.ndtri_exp(log_p)
    return out


def detection_image(
    bands: Sequence[BandPlanes], kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detection image, the linear S/N sum (for centroids) and where nothing was seen.

    Returns
    -------
    detection : numpy.ndarray
        In sigma (see :class:`~skydm.drp.config.ObjectConfig` ``detection_image``).
    linear : numpy.ndarray
        Sum of the bands' S/N over the square root of the number of bands
        with data: unit variance, and linear in the pixels, so that its
        windowed centroid is unbiased.
    empty : numpy.ndarray
        True where no band has data.
    """
    snrs = []
    covered = np.zeros(bands[0].image.shape, dtype=np.int32)
    for b in bands:
        snr = matched_filter_snr(b.image, b.variance, b.psf)
        has = ~b.bad
        snrs.append(np.where(has, snr, 0.0))
        covered += has
    n = np.maximum(covered, 1)
    linear = np.sum(snrs, axis=0) / np.sqrt(n)
    if kind == "sum":
        detection = linear
    else:
        chi2 = np.sum([np.clip(s, 0.0, None) ** 2 for s in snrs], axis=0)
        detection = np.zeros_like(chi2)
        for k in np.unique(covered[covered > 0]):
            sel = covered == k
            detection[sel] = chi2_sigma(chi2[sel], int(k))
        # Below the mixture's median the sigma is negative and meaningless
        # for detection; the floor keeps the map finite for sep.
        detection = np.clip(detection, -5.0, None)
    empty = covered == 0
    return (
        np.ascontiguousarray(np.where(empty, 0.0, detection)),
        np.ascontiguousarray(np.where(empty, 0.0, linear)),
        empty,
    )


def _refine_peak(
    image: np.ndarray, xpeak: np.ndarray, ypeak: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak positions: a parabola through the peak pixel and its two
    neighbours along each axis (the peak pixel itself at the image border)."""
    ix = np.asarray(xpeak, dtype=np.int64)
    iy = np.asarray(ypeak, dtype=np.int64)
    ny, nx = image.shape
    out = []
    for axis, i, n in ((1, ix, nx), (0, iy, ny)):
        inner = (i > 0) & (i < n - 1)
        lo = np.clip(i - 1, 0, n - 1)
        hi = np.clip(i + 1, 0, n - 1)
        if axis == 1:
            a, b, c = image[iy, lo], image[iy, ix], image[iy, hi]
        else:
            a, b, c = image[lo, ix], image[iy, ix], image[hi, ix]
        curv = a - 2.0 * b + c
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(inner & (curv < 0), 0.5 * (a - c) / curv, 0.0)
        out.append(i + np.clip(shift, -0.5, 0.5))
    return out[0].astype(np.float64), out[1].astype(np.float64)


def _prominent_peaks(
    linear: np.ndarray, det: np.ndarray, parents: np.ndarray, n_parents: int, config: ObjectConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (x, y) of the peaks of every parent footprint.

    A peak is a local maximum (3x3) of the linear S/N map inside a footprint
    where the detection image is above threshold.  Going down from the
    highest, a peak is kept when it rises by ``peak_prominence`` sigma above
    the lowest point of the straight path to the nearest higher peak kept
    (an estimate of the saddle between them); the highest peak of a
    footprint is always kept, and a footprint without one keeps the maximum
    of its detection image.
    """
    maxf = ndimage.maximum_filter(linear, size=3, mode="nearest")
    cand = (linear >= maxf) & (parents > 0) & (det >= config.threshold)
    py, px = np.nonzero(cand)
    order = np.argsort(-linear[py, px], kind="stable")
    py, px = py[order], px[order]
    kept_x: dict[int, list[int]] = {}
    kept_y: dict[int, list[int]] = {}
    for x, y in zip(px.tolist(), py.tolist(), strict=True):
        label = int(parents[y, x])
        xs, ys = kept_x.setdefault(label, []), kept_y.setdefault(label, [])
        if xs:
            d2 = (np.asarray(xs) - x) ** 2 + (np.asarray(ys) - y) ** 2
            k = int(np.argmin(d2))
            steps = math.ceil(math.sqrt(float(d2[k]))) + 1
            t = np.linspace(0.0, 1.0, steps + 1)
            lx = np.rint(x + t * (xs[k] - x)).astype(np.int64)
            ly = np.rint(y + t * (ys[k] - y)).astype(np.int64)
            if linear[y, x] - float(linear[ly, lx].min()) < config.peak_prominence:
                continue
        xs.append(x)
        ys.append(y)
    missing = [k for k in range(1, n_parents + 1) if not kept_x.get(k)]
    if missing:
        for k, (y, x) in zip(
            missing, ndimage.maximum_position(det, parents, index=missing), strict=True
        ):
            kept_x[k], kept_y[k] = [int(x)], [int(y)]
    labels = sorted(kept_x)
    all_x = np.array([x for k in labels for x in kept_x[k]], dtype=np.int64)
    all_y = np.array([y for k in labels for y in kept_y[k]], dtype=np.int64)
    return all_x, all_y


def _watershed(
    linear: np.ndarray, parents: np.ndarray, px: np.ndarray, py: np.ndarray
) -> np.ndarray:
    """Children's footprints: each parent's pixels flooded from its peaks."""
    level = np.log(np.clip(linear, 0.1, None))
    lo, hi = float(level.min()), float(level.max())
    scaled = (hi - level) / max(hi - lo, 1e-12) * 65000.0
    cost = np.where(parents > 0, scaled, 65535.0).astype(np.uint16)
    markers = np.zeros(linear.shape, dtype=np.int32)
    markers[py, px] = np.arange(1, px.size + 1, dtype=np.int32)
    seg = ndimage.watershed_ift(cost, markers)
    return np.where(parents > 0, seg, 0).astype(np.int32)


def detect(bands: Sequence[BandPlanes], config: ObjectConfig) -> Detections:
    """Detect, deblend and centroid objects on the bands together."""
    det, linear, empty = detection_image(bands, config.detection_image)
    sep.set_extract_pixstack(max(300000, det.size))
    sep.set_sub_object_limit(4096)
    by_peaks = config.deblender == "peaks"
    objs, segmap = sep.extract(
        det,
        config.threshold,
        err=np.ones_like(det),
        mask=empty,
        minarea=config.min_area,
        filter_kernel=None,
        deblend_nthresh=config.deblend_nthresh,
        # With the peak deblender sep only finds the parent footprints.
        deblend_cont=1.0 if by_peaks else config.deblend_cont,
        segmentation_map=True,
    )
    segmap = np.asarray(segmap, dtype=np.int32)
    if by_peaks:
        parents = segmap
        xpeak, ypeak = _prominent_peaks(linear, det, parents, len(objs), config)
        segmap = _watershed(linear, parents, xpeak, ypeak)
        npix = np.bincount(segmap.ravel(), minlength=xpeak.size + 1)[1:]
        peak = det[ypeak, xpeak]
    else:
        xpeak, ypeak = np.asarray(objs["xpeak"]), np.asarray(objs["ypeak"])
        npix, peak = np.asarray(objs["npix"]), np.asarray(objs["peak"])
    n = int(xpeak.size)
    # Windowed centroid (SExtractor's XWIN) on the linear map, whose profile
    # for a point source is the PSF's autocorrelation: symmetric about the
    # true position.  The window is the width of that profile.  It starts
    # from each child's peak: the barycentre of a deblended child's pixels
    # is pulled towards whatever shares its footprint.
    fwhm = float(np.mean([b.psf.fwhm for b in bands]))
    sig = np.full(n, math.sqrt(2.0) * fwhm / GAUSS_FWHM)
    x0, y0 = _refine_peak(linear, xpeak, ypeak)
    if n:
        xw, yw, wflag = sep.winpos(linear, x0, y0, sig, mask=empty)
        # A window pulled towards a brighter neighbour (or off the data) keeps
        # the refined peak instead.
        moved = (wflag != 0) | ~np.isfinite(xw) | (np.hypot(xw - x0, yw - y0) > 0.25 * fwhm)
        x = np.where(moved, x0, xw)
        y = np.where(moved, y0, yw)
    else:
        x, y = x0, y0
    labels, _ = ndimage.label(segmap > 0, structure=np.ones((3, 3), dtype=bool))
    parent = np.zeros(n, dtype=np.int64)
    inside = segmap > 0
    parent[segmap[inside] - 1] = labels[inside]
    counts = np.bincount(parent, minlength=1)
    return Detections(
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        peak=np.asarray(peak, dtype=np.float64),
        npix=np.asarray(npix, dtype=np.int64),
        parent=parent,
        n_peaks=counts[parent].astype(np.int64),
        segmap=segmap,
        image=det,
        linear=linear,
    )
