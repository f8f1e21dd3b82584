"""DIA source detection and measurement on a difference image.

Detection thresholds the PSF-matched-filter significance image
``Z = (D/V * P) / sqrt(1/V * P^2)`` (``*`` a correlation with the PSF), which
uses the variance plane as it is: noise calibration is the subtraction's
job.  ZOGY hands in its own S_corr instead.  Each connected region above
``+threshold`` or below ``-threshold`` is one source, measured by forced PSF
photometry at the sub-pixel peak of Z, and flagged for the things that make
a difference-image detection untrustworthy.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table
from numba import njit
from scipy import ndimage

from skydm.diffim import _fft
from skydm.diffim._prepare import robust_sigma
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure, psf_photometry
from skydm.image.mask import Mask
from skydm.image.psf import Psf

#: Flag columns and the mask bits that set them (within about one FWHM of the peak).
FLAG_BITS = {
    "flag_edge": Mask.EDGE | Mask.NO_DATA,
    "flag_sat": Mask.SAT,
    "flag_cr": Mask.CR,
    "flag_bad": Mask.BAD | Mask.INTRP | Mask.SUSPECT | Mask.STREAK,
}
FLAG_COLUMNS = ("flag_dipole", "flag_edge", "flag_sat", "flag_cr", "flag_bad")


def matched_filter(
    image: np.ndarray, variance: np.ndarray, psf: Psf, valid: np.ndarray | None = None
) -> np.ndarray:
    """Significance ``Z`` of the inverse-variance matched filter (0 on invalid pixels).

    ``valid`` (optional) restricts the pixels used further than finite image
    and positive finite variance.
    """
    good = np.isfinite(variance)
    good &= variance > 0
    good &= np.isfinite(image)
    if valid is not None:
        good &= valid
    w = np.zeros(image.shape, dtype=np.float32)
    np.divide(np.float32(1.0), variance, out=w, where=good)
    kern = _fft.trimmed(psf.kernel()[::-1, ::-1])
    shape = image.shape
    # The denominator first, so that w can be reused for the numerator.
    spec = _fft.rfft2(w)
    spec *= _fft.kernel_rfft2(_fft.trimmed(kern**2), shape)
    den = _fft.irfft2(spec, shape, overwrite=True)
    np.multiply(w, image, out=w, where=good)
    spec = _fft.rfft2(w)
    del w
    spec *= _fft.kernel_rfft2(kern, shape)
    score = _fft.irfft2(spec, shape, overwrite=True)
    del spec
    np.maximum(den, np.float32(1e-30), out=den)
    np.sqrt(den, out=den)
    score /= den
    del den
    np.logical_not(good, out=good)
    score[good] = 0.0
    return score


def noise_factor(difference: Exposure) -> float:
    """The difference's ``DIFFNCF`` card: its PSF-matched filter's variance over white noise's.

    1 for white noise (a decorrelated AL or a ZOGY difference); written by
    :func:`skydm.diffim.subtract` from the inputs' measured covariances.
    """
    value = difference.meta.get("DIFFNCF", 1.0)
    try:
        factor = float(value)
    except (TypeError, ValueError):
        return 1.0
    return factor if math.isfinite(factor) and factor > 0 else 1.0


def _local_matched_filter(diff: Exposure, psf: Psf, iy: int, ix: int) -> tuple[float, float]:
    """(flux, error) of the matched filter at one pixel, from the pixels the PSF covers.

    For sources where the PSF stamp does not fit inside the image (forced
    photometry gives NaN there): the stamp is truncated at the border.
    """
    kern = psf.kernel()
    h = kern.shape[0] // 2
    ny, nx = diff.shape
    y0, y1, x0, x1 = max(iy - h, 0), min(iy + h + 1, ny), max(ix - h, 0), min(ix + h + 1, nx)
    p = kern[y0 - iy + h : y1 - iy + h, x0 - ix + h : x1 - ix + h]
    data = diff.image[y0:y1, x0:x1].astype(float)
    var = diff.var[y0:y1, x0:x1].astype(float)
    good = np.isfinite(data) & np.isfinite(var) & (var > 0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    den = float(np.sum(w * p * p))
    if not den > 0:
        return math.nan, math.nan
    num = float(np.sum(np.where(good, data, 0.0) * w * p))
    return num / den, 1.0 / math.sqrt(den)


def _subpixel(z: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Peak position refined by a parabola through the peak and its neighbours."""
    ny, nx = z.shape
    out = []
    for axis, (i, n) in enumerate(((ix, nx), (iy, ny))):
        if 0 < i < n - 1:
            if axis == 0:
                lo, mid, hi = z[iy, ix - 1], z[iy, ix], z[iy, ix + 1]
            else:
                lo, mid, hi = z[iy - 1, ix], z[iy, ix], z[iy + 1, ix]
            curv = lo - 2 * mid + hi
            off = 0.5 * (lo - hi) / curv if curv != 0 else 0.0
            out.append(i + float(np.clip(off, -0.5, 0.5)))
        else:
            out.append(float(i))
    return out[0], out[1]


#: A secondary peak in a footprint counts as a source of its own when the
#: significance dips between it and every stronger peak by this many sigma
#: (or this share of its value, if more): noise bumps on a bright source's
#: wings hardly dip at all.
PEAK_DIP_SIGMA = 2.0
PEAK_DIP_SHARE = 0.1


def _footprint_peaks(
    sub: np.ndarray, npix: int, threshold: float, fwhm: float
) -> list[tuple[int, int]]:
    """Peaks of one footprint (``sub``: signed significance, -inf outside it)."""
    top = np.unravel_index(int(np.argmax(sub)), sub.shape)
    best = [(int(top[0]), int(top[1]))]
    # A footprint smaller than two PSF cores holds one source.
    if npix < 2 * math.pi * fwhm**2 / 2:
        return best
    local = (sub == ndimage.maximum_filter(sub, size=3)) & (sub >= threshold)
    cand = np.argwhere(local)
    cand = cand[np.argsort(-sub[local])]
    for cy, cx in cand:
        cy, cx = int(cy), int(cx)
        if (cy, cx) == best[0]:
            continue
        by, bx = np.asarray(best, dtype=float).T
        dist = np.hypot(cy - by, cx - bx)
        if (dist < fwhm).any():
            continue
        value = float(sub[cy, cx])
        level = value - max(PEAK_DIP_SIGMA, PEAK_DIP_SHARE * value)
        if _separate(sub, cy, cx, by, bx, dist, level):
            best.append((cy, cx))
    return best


def _separate(
    sub: np.ndarray, cy: int, cx: int, by: np.ndarray, bx: np.ndarray, dist: np.ndarray,
    level: float,
) -> bool:  # fmt: skip
    """Whether the straight path from (cy, cx) to every peak (by, bx) dips to ``level``.

    The paths are sampled as ``np.linspace(c, q, ceil(dist) + 1)`` rounded to
    pixels, the nearest peaks first (a path that does not dip is usually a
    short one, and it settles the answer), in compiled code: numpy on a few
    short paths at a time still cost 0.7 CPU s on a 4096x4096 difference
    with bright residuals, a Python loop per pair 7.
    """
    order = np.argsort(dist, kind="stable")
    return bool(
        _all_paths_dip(
            np.ascontiguousarray(sub),
            cy,
            cx,
            np.ascontiguousarray(by[order], dtype=np.float64),
            np.ascontiguousarray(bx[order], dtype=np.float64),
            np.ascontiguousarray(dist[order], dtype=np.float64),
            # numpy compared the paths' minima with the level in their dtype.
            float(sub.dtype.type(level)),
        )
    )


@njit(cache=True, nogil=True)
def _all_paths_dip(sub, cy, cx, by, bx, dist, level):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Whether every path dips to ``level``, with linspace's own arithmetic.

    ``k * step + start`` with the end point exact, rounded half to even: the
    pixels one ``np.linspace`` per pair samples.
    """
    for p in range(len(by)):
        n = int(np.ceil(dist[p])) + 1
        div = float(n - 1)
        sy = (by[p] - cy) / div
        sx = (bx[p] - cx) / div
        lowest = np.inf
        for k in range(n):
            if k == n - 1:
                ly, lx = by[p], bx[p]
            else:
                ly, lx = k * sy + cy, k * sx + cx
            v = sub[int(np.rint(ly)), int(np.rint(lx))]
            if v < lowest:
                lowest = v
        if lowest > level:
            return False
    return True


def detect(
    difference: Exposure,
    *,
    threshold: float = 5.0,
    score: np.ndarray | None = None,
    set_mask: bool = True,
) -> Table:
    """Detect and measure positive and negative DIA sources (see :func:`detect_dia_sources`)."""
    if not (threshold > 0 and math.isfinite(threshold)):
        raise BadValueError("threshold", threshold, "a positive number of sigma")
    psf = difference.require_psf("DIA source detection")
    image, var, mask = difference.image, difference.var, difference.msk
    valid = (mask & np.uint32(Mask.NO_DATA)) == 0
    valid &= np.isfinite(image)
    valid &= np.isfinite(var)
    if not valid.any():
        raise UserError(f"{difference.source or 'difference'}: no valid pixels to detect on")
    factor = noise_factor(difference)
    if score is None:
        z = matched_filter(image, var, psf, valid)
        if factor != 1.0:
            # Correlated noise: the white-noise filter's variance times DIFFNCF.
            z /= np.float32(math.sqrt(factor))
    elif valid.all():
        z = score  # read only below
    else:
        z = np.where(valid, score, np.float32(0.0)).astype(np.float32, copy=False)
    fwhm = psf.fwhm
    rows: list[dict[str, object]] = []
    footprints = np.zeros(image.shape, dtype=np.int8)
    for sign in (1, -1):
        above = z >= threshold if sign > 0 else z <= -threshold
        above &= valid
        labels, n = ndimage.label(above)
        if n == 0:
            continue
        footprints[above] = sign
        idx = np.arange(1, n + 1)
        # Peaks per footprint within its bounding box (ndimage.maximum_position
        # sorts the whole image, far slower on large frames): the highest,
        # and any other local maximum that stands apart from every stronger
        # one (two transients whose footprints touch are two sources).
        peaks: list[tuple[int, int]] = []
        peak_npix: list[int] = []
        for lab, box in zip(idx, ndimage.find_objects(labels), strict=True):
            inside = labels[box] == lab
            count = int(np.count_nonzero(inside))
            sub = np.where(inside, sign * z[box], -np.inf)
            for py, px in _footprint_peaks(sub, count, threshold, fwhm):
                peaks.append((py + box[0].start, px + box[1].start))
                peak_npix.append(count)
        # Noise can split one source's footprint in two: of peaks of one sign
        # closer than a FWHM, keep the strongest.
        order = np.argsort([-sign * z[p] for p in peaks])
        kept_y = np.empty(len(peaks))
        kept_x = np.empty(len(peaks))
        n_kept = 0
        for k in order:
            py, px = peaks[k]
            if (np.hypot(py - kept_y[:n_kept], px - kept_x[:n_kept]) < fwhm).any():
                continue
            kept_y[n_kept], kept_x[n_kept] = py, px
            n_kept += 1
            # The parabola's vertex does not depend on the sign of z.
            x, y = _subpixel(z, int(py), int(px))
            rows.append({"x": x, "y": y, "iy": int(py), "ix": int(px), "npix": peak_npix[k]})
    table = _measure(difference, rows, z, fwhm, threshold, factor)
    if set_mask:
        mask[footprints > 0] |= np.uint32(Mask.DETECTED)
        mask[footprints < 0] |= np.uint32(Mask.DETECTED_NEGATIVE)
    table.meta["threshold"] = float(threshold)
    # A diagnostic only (never used to rescale): a sparse sample is plenty.
    every = np.s_[::3, ::4]
    quiet = valid[every] & (footprints[every] == 0) & (mask[every] == 0)
    sample = z[every][quiet]
    table.meta["score_rms"] = robust_sigma(sample) if sample.size > 100 else math.nan
    return table


def _measure(
    diff: Exposure,
    rows: list[dict[str, object]],
    z: np.ndarray,
    fwhm: float,
    threshold: float,
    factor: float,
) -> Table:
    n = len(rows)
    x = np.array([r["x"] for r in rows], dtype=float)
    y = np.array([r["y"] for r in rows], dtype=float)
    iy = np.array([r["iy"] for r in rows], dtype=int)
    ix = np.array([r["ix"] for r in rows], dtype=int)
    table = Table()
    table["id"] = np.arange(n, dtype=np.int64)
    table["x"], table["y"] = x, y
    if n:
        flux, err = psf_photometry(diff, x, y, psf=diff.psf)
    else:
        flux, err = np.zeros(0), np.zeros(0)
    # Near the edge the PSF stamp does not fit: fall back on the matched filter.
    psf = diff.require_psf("DIA measurement")
    kern = psf.kernel()
    for j in np.flatnonzero(~np.isfinite(flux)):
        flux[j], err[j] = _local_matched_filter(diff, psf, int(iy[j]), int(ix[j]))
    # A PSF fit's error under correlated noise grows like the matched filter's.
    err = err * math.sqrt(factor)
    score = z[iy, ix] if n else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err > 0, flux / err, 0.0)
    sig_psf = fwhm / 2.3548
    pos_err = math.sqrt(2) * sig_psf / np.maximum(np.abs(snr), 1e-3)
    table["x_err"], table["y_err"] = pos_err, pos_err
    table["snr"] = snr
    table["flux"], table["flux_err"] = flux, err
    table["psf_flux"], table["psf_flux_err"] = flux, err
    table["score"] = score
    table["npix"] = np.array([r["npix"] for r in rows], dtype=np.int64)
    table["is_negative"] = score < 0
    flags = {name: np.zeros(n, dtype=bool) for name in FLAG_COLUMNS}
    bits = np.zeros(n, dtype=np.uint32)
    ny, nx = diff.shape
    r = max(2, round(fwhm))
    rd = 1.5 * fwhm
    pmax = float(kern.max())
    for k in range(n):
        y0, y1, x0, x1 = max(iy[k] - r, 0), iy[k] + r + 1, max(ix[k] - r, 0), ix[k] + r + 1
        bits[k] = np.bitwise_or.reduce(diff.msk[y0:y1, x0:x1], axis=None)
        for name, bit in FLAG_BITS.items():
            flags[name][k] = bool(bits[k] & np.uint32(bit))
        if ix[k] < r or iy[k] < r or ix[k] >= nx - r or iy[k] >= ny - r:
            flags["flag_edge"][k] = True
        # Dipole: a significant lobe of the other sign right next to the peak.
        sgn = -1.0 if score[k] < 0 else 1.0
        ry = math.ceil(rd)
        sl = (
            slice(max(iy[k] - ry, 0), min(iy[k] + ry + 1, ny)),
            slice(max(ix[k] - ry, 0), min(ix[k] + ry + 1, nx)),
        )
        yy, xx = np.mgrid[sl]
        disk = np.hypot(yy - iy[k], xx - ix[k]) <= rd
        opposite = float(np.min(sgn * z[sl][disk]))
        if opposite <= -max(threshold * 0.6, 0.25 * abs(score[k])):
            flags["flag_dipole"][k] = True
        # Cosmic ray: a peak pixel far above what the PSF with the fitted flux allows.
        peak = float(diff.image[iy[k], ix[k]])
        model = float(flux[k]) * pmax
        noise = math.sqrt(float(diff.var[iy[k], ix[k]])) if diff.var[iy[k], ix[k]] > 0 else 0.0
        if np.isfinite(model) and abs(peak) > 2.5 * abs(model) and abs(peak - model) > 5 * noise:
            flags["flag_cr"][k] = True
    for name in FLAG_COLUMNS:
        table[name] = flags[name]
    # np.any of an empty list would give a float column: keep it boolean.
    table["flagged"] = np.logical_or.reduce([flags[name] for name in FLAG_COLUMNS])
    table["mask_bits"] = bits
    if diff.wcs is not None:
        ra, dec = diff.wcs.pixel_to_world_values(x, y) if n else (np.zeros(0), np.zeros(0))
        table["ra"], table["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    return table
