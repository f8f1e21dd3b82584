"""Features of a DIA source, computed from cutouts of the difference, science
and template images around it.

Each feature answers a question a person scanning the three cutouts would
ask: is it significant; is it as wide as the PSF (cosmic rays are sharper,
residuals of galaxies wider); is it round (trails and tracks are long); is
there a negative lobe beside it (a dipole of misregistration); does the
template hold a bright source there (residuals of bright stars); are the
pixels around it masked; is the difference noisier than its variance says
(residual structure).  Every feature is a ratio or a signal-to-noise, so
that the same model serves images of any depth and zero point.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from skydm.image import Exposure, Mask

#: Names of the features, in the order of the columns of :func:`compute_features`.
FEATURE_NAMES = (
    "snr",
    "negative",
    "psf_chi2",
    "sharpness",
    "science_sharpness",
    "size_ratio",
    "elongation",
    "neg_fraction",
    "pos_fraction",
    "dipole_ratio",
    "ap_psf_ratio",
    "template_snr",
    "template_ratio",
    "science_snr",
    "science_ratio",
    "template_size",
    "science_size",
    "noise_ratio",
    "template_explained",
    "psf_explained",
    "masked_fraction",
    "cr_fraction",
    "sat_fraction",
    "edge_distance",
    "flag_cr",
    "flag_sat",
    "flag_bad",
    "flag_edge",
    "flag_dipole",
)

#: Half-size of the square cutout the features are computed on, in FWHMs.
HALF_FWHM = 3.0

_BAD_BITS = np.uint32(Mask.BAD | Mask.SAT | Mask.CR | Mask.NO_DATA | Mask.INTRP | Mask.SUSPECT)


def _stamp(image: np.ndarray, ix: int, iy: int, half: int) -> np.ndarray:
    """A (2 half + 1)^2 cutout centred on (ix, iy), NaN beyond the border."""
    ny, nx = image.shape
    out = np.full((2 * half + 1, 2 * half + 1), np.nan, dtype=np.float64)
    y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
    x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
    if y1 > y0 and x1 > x0:
        out[y0 - iy + half : y1 - iy + half, x0 - ix + half : x1 - ix + half] = image[y0:y1, x0:x1]
    return out


def _mask_stamp(mask: np.ndarray, ix: int, iy: int, half: int) -> np.ndarray:
    ny, nx = mask.shape
    out = np.full((2 * half + 1, 2 * half + 1), np.uint32(Mask.NO_DATA), dtype=np.uint32)
    y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
    x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
    if y1 > y0 and x1 > x0:
        out[y0 - iy + half : y1 - iy + half, x0 - ix + half : x1 - ix + half] = mask[y0:y1, x0:x1]
    return out


def _fit(data: np.ndarray, var: np.ndarray, model: np.ndarray, good: np.ndarray) -> float:
    """Flux of ``model`` fitted to ``data`` (inverse-variance weights)."""
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    den = float(np.sum(w * model * model))
    return float(np.sum(w * np.where(good, data, 0.0) * model)) / den if den > 0 else 0.0


def _snr(data: np.ndarray, var: np.ndarray, model: np.ndarray, good: np.ndarray) -> float:
    """Matched-filter signal-to-noise of ``model`` in ``data``."""
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    den = float(np.sum(w * model * model))
    return float(np.sum(w * np.where(good, data, 0.0) * model)) / math.sqrt(den) if den > 0 else 0.0


def _moments(
    data: np.ndarray, good: np.ndarray, r2: np.ndarray, radius2: float
) -> tuple[float, float]:
    """(size, elongation) from the second moments of the positive pixels."""
    w = np.where(good & (r2 <= radius2), np.clip(data, 0.0, None), 0.0)
    total = float(w.sum())
    if total <= 0:
        return 0.0, 1.0
    half = (data.shape[0] - 1) / 2
    yy, xx = np.mgrid[: data.shape[0], : data.shape[1]] - half
    mx, my = float((w * xx).sum() / total), float((w * yy).sum() / total)
    ixx = float((w * (xx - mx) ** 2).sum() / total)
    iyy = float((w * (yy - my) ** 2).sum() / total)
    ixy = float((w * (xx - mx) * (yy - my)).sum() / total)
    tr, det = ixx + iyy, ixx * iyy - ixy * ixy
    disc = math.sqrt(max(tr * tr / 4 - det, 0.0))
    lmax, lmin = tr / 2 + disc, max(tr / 2 - disc, 1e-3)
    return math.sqrt(max(tr / 2, 0.0)), math.sqrt(lmax / lmin)


def _template_terms(
    d: np.ndarray,
    v: np.ndarray,
    good: np.ndarray,
    model: np.ndarray,
    template: Exposure | None,
    ix: int,
    iy: int,
    half: int,
) -> tuple[float, float]:
    """How much of the difference stamp a shifted or re-blurred template explains.

    The residual of a misregistered star is the template's gradient times the
    shift, that of a PSF mismatch its Laplacian; a real change is the PSF.
    The stamp is fitted with the PSF alone and with the PSF plus the
    template's two gradients and its Laplacian.  Returns (the fraction of the
    PSF-only chi-square that the template terms remove, the fraction of the
    no-model chi-square that the PSF alone removes).
    """
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    data = np.where(good, d, 0.0)
    chi0 = float(np.sum(w * data * data))
    if chi0 <= 0 or good.sum() < 8:
        return 0.0, 0.0
    den = float(np.sum(w * model * model))
    a = float(np.sum(w * data * model)) / den if den > 0 else 0.0
    chi_psf = float(np.sum(w * (data - a * model) ** 2))
    if template is None:
        return 0.0, 1.0 - chi_psf / chi0
    t = _stamp(template.image, ix, iy, half)
    t = np.where(np.isfinite(t), t, 0.0)
    gy, gx = np.gradient(t)
    lap = np.zeros_like(t)
    lap[1:-1, 1:-1] = t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:] - 4 * t[1:-1, 1:-1]
    basis = np.stack([model, gx, gy, lap])[:, good]
    sw = np.sqrt(w[good])
    coef, *_ = np.linalg.lstsq((basis * sw).T, data[good] * sw, rcond=None)
    chi_full = float(np.sum(w[good] * (data[good] - coef @ basis) ** 2))
    return (chi_psf - chi_full) / max(chi_psf, 1e-9), 1.0 - chi_psf / chi0


def _features_one(
    x: float,
    y: float,
    flags: dict[str, bool],
    difference: Exposure,
    science: Exposure | None,
    template: Exposure | None,
) -> list[float]:
    psf = difference.require_psf("reliability features")
    fwhm = psf.fwhm
    half = max(math.ceil(HALF_FWHM * fwhm), 4)
    ix, iy = round(x), round(y)
    model = psf.kernel(size=2 * half + 1, dx=x - ix, dy=y - iy).astype(np.float64)
    model /= model.sum()
    d = _stamp(difference.image, ix, iy, half)
    v = _stamp(difference.var, ix, iy, half)
    m = _mask_stamp(difference.msk, ix, iy, half)
    finite = np.isfinite(d) & np.isfinite(v) & (v > 0)
    good = finite & ((m & _BAD_BITS) == 0)
    yy, xx = np.mgrid[: 2 * half + 1, : 2 * half + 1] - half
    r2 = (xx - (x - ix)) ** 2 + (yy - (y - iy)) ** 2
    core = r2 <= fwhm**2
    sig = np.sqrt(np.where(finite, v, np.inf))
    z = np.where(finite, d / sig, 0.0)

    snr = _snr(d, v, model, good)
    flux = _fit(d, v, model, good)
    sign = 1.0 if flux >= 0 else -1.0
    resid = np.where(good & core, (d - flux * model) / sig, 0.0)
    ncore = max(int((good & core).sum()), 1)
    chi2 = float((resid**2).sum()) / ncore
    # Sharpness: the peak pixel's share of the flux, over the PSF's share.
    peak_model = float(model[half, half]) if model[half, half] > 0 else 1e-6
    peak = (
        float(np.nanmax(np.where(good & core, sign * d, -np.inf))) if (good & core).any() else 0.0
    )
    sharp = peak / max(abs(flux), 1e-6) / peak_model if flux != 0 else 0.0
    size, elong = _moments(sign * np.where(finite, d, 0.0), finite, r2, (1.5 * fwhm) ** 2)
    near = r2 <= (2.0 * fwhm) ** 2
    nnear = max(int((finite & near).sum()), 1)
    neg = float(((sign * z < -3.0) & finite & near).sum()) / nnear
    pos = float(((sign * z > 3.0) & finite & near).sum()) / nnear
    pos_sum = float(np.clip(sign * np.where(finite & near, d, 0.0), 0, None).sum())
    neg_sum = float(np.clip(-sign * np.where(finite & near, d, 0.0), 0, None).sum())
    dipole = neg_sum / max(pos_sum, 1e-6)
    ap = float(np.where(finite & (r2 <= (1.5 * fwhm) ** 2), d, 0.0).sum())
    ap_ratio = ap / flux if flux != 0 else 0.0
    ring = finite & ~near & ((m & _BAD_BITS) == 0)
    noise_ratio = float(np.sqrt(np.mean(z[ring] ** 2))) if ring.sum() > 10 else 1.0

    psf_size, _ = _moments(model, np.ones_like(good), r2, (1.5 * fwhm) ** 2)

    def other(exp: Exposure | None) -> tuple[float, float, float, float]:
        if exp is None:
            return 0.0, 0.0, 1.0, 0.0
        img = _stamp(exp.image, ix, iy, half)
        var = _stamp(exp.var, ix, iy, half)
        ok = np.isfinite(img) & np.isfinite(var) & (var > 0)
        ok &= (_mask_stamp(exp.msk, ix, iy, half) & np.uint32(Mask.NO_DATA)) == 0
        s = _snr(img, var, model, ok)
        f = _fit(img, var, model, ok)
        # Sharpness of the same spot on this image (a cosmic ray left in the
        # science image is sharper than any star).
        pk = float(np.nanmax(np.where(ok & core, img, -np.inf))) if (ok & core).any() else 0.0
        shp = pk / max(abs(f), 1e-6) / peak_model if f > 0 else 1.0
        # Size of what is there (a star is as wide as the PSF, a host galaxy
        # wider), zero where nothing significant is.
        size = _moments(np.where(ok, img, 0.0), ok, r2, (1.5 * fwhm) ** 2)[0] if s > 5 else 0.0
        return s, f / max(abs(flux), 1e-6), shp, size / max(psf_size, 1e-6)

    t_snr, t_ratio, _, t_size = other(template)
    t_expl, p_expl = _template_terms(d, v, good & near, model, template, ix, iy, half)
    s_snr, s_ratio, s_sharp, s_size = other(science)
    area = float(m.size)
    ny, nx = difference.shape
    edge = min(x, y, nx - 1 - x, ny - 1 - y) / fwhm
    return [
        abs(snr),
        1.0 if snr < 0 else 0.0,
        chi2,
        sharp,
        s_sharp,
        size / max(psf_size, 1e-6),
        elong,
        neg,
        pos,
        dipole,
        ap_ratio,
        t_snr,
        float(np.sign(t_ratio) * math.log10(1.0 + abs(t_ratio))),
        s_snr,
        float(np.sign(s_ratio) * math.log10(1.0 + abs(s_ratio))),
        t_size,
        s_size,
        noise_ratio,
        t_expl,
        p_expl,
        float(((m & _BAD_BITS) != 0).sum()) / area,
        float(((m & np.uint32(Mask.CR | Mask.INTRP)) != 0).sum()) / area,
        float(((m & np.uint32(Mask.SAT)) != 0).sum()) / area,
        min(edge, 20.0),
        *(1.0 if flags.get(k, False) else 0.0 for k in _FLAGS),
    ]


_FLAGS = ("flag_cr", "flag_sat", "flag_bad", "flag_edge", "flag_dipole")


def compute_features(
    sources: Table,
    difference: Exposure,
    *,
    science: Exposure | None = None,
    template: Exposure | None = None,
) -> np.ndarray:
    """The features of each DIA source (columns in :data:`FEATURE_NAMES` order).

    Parameters
    ----------
    sources : astropy.table.Table
        DIA sources with ``x`` and ``y`` (0-based pixels of ``difference``)
        and, when present, the ``flag_*`` columns of :mod:`skydm.diffim`.
    difference : Exposure
        The difference image, with its PSF.
    science, template : Exposure, optional
        The science image and the template on the difference's pixel grid;
        their features are zero when not given.

    Returns
    -------
    numpy.ndarray
        ``(len(sources), len(FEATURE_NAMES))``, ``float64``, all finite.
    """
    n = len(sources)
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    names = sources.colnames if n else []
    for i in range(n):
        row = sources[i]
        flags = {k: bool(row[k]) for k in _FLAGS if k in names and row[k] is not np.ma.masked}
        out[i] = _features_one(
            float(row["x"]), float(row["y"]), flags, difference, science, template
        )
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1e3, neginf=-1e3)
    return np.clip(out, -1e6, 1e6)
