"""Stars for the kernel fit and for ZOGY's flux ratio and astrometric noise.

Candidates are found with sep on the image that gets convolved (bright,
compact, isolated, unsaturated, away from masked pixels in either image) and
spread over the field by taking the brightest in each cell of a coarse grid,
so that the spatial terms of the kernel are constrained everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from scipy.spatial import cKDTree

from skydm.diffim._prepare import robust_sigma
from skydm.image import Exposure
from skydm.image.mask import UNUSABLE, Mask


@dataclass
class Stars:
    """Positions and sep measurements of kernel/ratio stars."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def find_stars(
    source: Exposure,
    target: Exposure,
    *,
    half: int,
    isolation: float,
    max_stars: int,
    min_snr: float = 20.0,
    grid: int = 5,
) -> Stars:
    """Isolated unsaturated sources usable as stamps of half-size ``half``.

    No other detection may lie within ``isolation`` pixels, and no unusable
    pixel (in either image) within the stamp.
    """
    ny, nx = source.shape
    # On large frames, search a window in each cell of the grid only: ~100
    # stamps need a fraction of the image, and extraction is the slow part.
    win = 384
    parts = []
    if ny * nx <= (3 * win) ** 2:
        windows = [(0, ny, 0, nx)]
    else:
        windows = []
        for gy in range(grid):
            for gx in range(grid):
                cy, cx = (gy + 0.5) * ny / grid, (gx + 0.5) * nx / grid
                y0, x0 = max(int(cy - win / 2), 0), max(int(cx - win / 2), 0)
                windows.append((y0, min(y0 + win, ny), x0, min(x0 + win, nx)))
    for y0, y1, x0, x1 in windows:
        sl = (slice(y0, y1), slice(x0, x1))
        sub = np.ascontiguousarray(np.nan_to_num(source.image[sl]), dtype=np.float32)
        subbad = np.ascontiguousarray(_unusable(source, target, sl))
        box = min(128, (y1 - y0) // 2, (x1 - x0) // 2)
        bkg = sep.Background(sub, mask=subbad, bw=box, bh=box, fw=3, fh=3)
        rms = float(bkg.globalrms)
        # sep allocates its pixel stack on every call: size it to the window,
        # not the frame (a frame-sized stack costs 0.1 s per call).
        sep.set_extract_pixstack(max(300000, sub.size))
        # Deblended, so that stars in crowded fields are not merged into blobs.
        objs = sep.extract(
            sub - bkg.back(), 5.0, err=rms, mask=subbad, minarea=5, deblend_cont=0.005
        )
        parts.append((objs, x0, y0, rms))
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return Stars(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    objs = np.concatenate([p[0] for p in parts])
    x = np.concatenate([p[0]["x"] + p[1] for p in parts]).astype(float)
    y = np.concatenate([p[0]["y"] + p[2] for p in parts]).astype(float)
    rms_each = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    flux = np.asarray(objs["flux"], float)
    npix = np.asarray(objs["npix"], float)
    snr = flux / np.sqrt(rms_each**2 * npix + np.clip(flux, 0, None) / max(_gain(source), 1e-3))
    # Merged (flag 1) is fine: the stamp model convolves everything in the cutout.
    ok = ((objs["flag"] & ~1) == 0) & (snr >= min_snr)
    ok &= (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    # Isolation: no other detection within the stamp.
    tree = cKDTree(np.column_stack([x, y]))
    counts = np.array([len(n) for n in tree.query_ball_point(np.column_stack([x, y]), isolation)])
    ok &= counts == 1
    # Nothing unusable anywhere in the stamp, in either image.
    for k in np.flatnonzero(ok):
        ix, iy = round(x[k]), round(y[k])
        if _unusable(
            source, target, np.s_[iy - half : iy + half + 1, ix - half : ix + half + 1]
        ).any():
            ok[k] = False
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return Stars(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    # Round-robin over grid cells, brightest first, for even spatial coverage.
    cell = (
        np.minimum(x[idx] * grid // nx, grid - 1) * grid + np.minimum(y[idx] * grid // ny, grid - 1)
    ).astype(int)
    order = np.argsort(-flux[idx])
    rank = np.zeros(idx.size, dtype=int)
    seen: dict[int, int] = {}
    for o in order:
        rank[o] = seen.get(cell[o], 0)
        seen[cell[o]] = rank[o] + 1
    chosen = idx[np.lexsort((-flux[idx], rank))][:max_stars]
    return Stars(x[chosen], y[chosen], flux[chosen], snr[chosen])


def _unusable(source: Exposure, target: Exposure, sl: tuple[slice, slice]) -> np.ndarray:
    """Pixels of ``sl`` unusable in either image (computed per window, not per frame)."""
    bad = (source.msk[sl] & np.uint32(UNUSABLE)) != 0
    bad |= (target.msk[sl] & np.uint32(UNUSABLE | Mask.EDGE)) != 0
    bad |= ~np.isfinite(source.image[sl])
    bad |= ~np.isfinite(target.image[sl])
    return bad


def _gain(exp: Exposure) -> float:
    return exp.info.gain if exp.info.gain > 0 else math.inf


@dataclass(frozen=True)
class FluxRatio:
    """A fitted science/template photometric ratio.

    Attributes
    ----------
    value, error : float
        The ratio and its error (NaN when it could not be fitted).
    n_stars : int
        Stars kept in the fit.
    scatter : float
        Robust scatter of the single stars' ratios beyond their typical
        noise, in quadrature (NaN with fewer than 3): comparable to the
        ratio itself when the images do not share stars, near 0 when they
        do, however faint the stars are in one of them.
    """

    value: float
    error: float
    n_stars: int
    scatter: float = math.nan


def flux_ratio(
    sci_flux: np.ndarray, sci_err: np.ndarray, tmp_flux: np.ndarray, tmp_err: np.ndarray
) -> FluxRatio:
    """Science/template photometric ratio from fluxes of the same stars.

    A weighted ratio with 3-sigma clipping, so that variable stars and
    transients among the stars do not pull it.  Stars need a positive
    template flux only: a science flux consistent with zero is evidence
    (unrelated images give a ratio consistent with zero, not a small
    positive one).  The error is the larger of the formal one and the
    clipped scatter over the square root of the stars kept.
    """
    good = np.isfinite(sci_flux) & np.isfinite(tmp_flux) & (tmp_flux > 0)
    good &= np.isfinite(sci_err) & np.isfinite(tmp_err) & (tmp_err > 0)
    if good.sum() < 3:
        return FluxRatio(math.nan, math.nan, int(good.sum()))
    r = sci_flux[good] / tmp_flux[good]
    # Error of a ratio whose numerator may be near zero: not relative errors.
    err = np.hypot(sci_err[good], np.abs(r) * tmp_err[good]) / tmp_flux[good]
    keep = np.ones(r.size, dtype=bool)
    est = float(np.median(r))
    scatter = max(robust_sigma(r - est), 1e-6)
    for _ in range(5):
        w = 1.0 / np.hypot(err[keep], scatter) ** 2
        est = float(np.sum(w * r[keep]) / np.sum(w))
        scatter = max(robust_sigma(r[keep] - est), 1e-6)
        new = np.abs(r - est) < 3 * np.hypot(err, scatter)
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
    formal = float(1.0 / math.sqrt(np.sum(1.0 / err[keep] ** 2)))
    n = int(keep.sum())
    spread = robust_sigma(r - float(np.median(r)))
    spread = math.sqrt(max(spread**2 - float(np.median(err)) ** 2, 0.0))
    return FluxRatio(est, max(formal, scatter / math.sqrt(n)), n, spread)


def astrometric_sigma(
    science: np.ndarray,
    template: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    snr: np.ndarray,
    fwhm: float,
) -> tuple[float, float]:
    """Registration noise (sigma_x, sigma_y) in pixels from star centroid differences.

    Windowed centroids are measured in both (background-subtracted) images;
    the robust scatter of their differences, less the scatter expected from
    photon noise alone, is the astrometric noise of ZOGY's S_corr.
    """
    if len(x) < 5:
        return 0.0, 0.0
    sig = fwhm / 2.3548
    # sep reads float32 directly: no double-precision full-frame copies.
    xs, ys, fs = sep.winpos(np.ascontiguousarray(science), x, y, sig)
    xt, yt, ft = sep.winpos(np.ascontiguousarray(template), x, y, sig)
    good = (fs == 0) & (ft == 0) & np.isfinite(xs) & np.isfinite(xt)
    good &= (np.hypot(xs - x, ys - y) < fwhm) & (np.hypot(xt - x, yt - y) < fwhm)
    if good.sum() < 5:
        return 0.0, 0.0
    # Photon-noise centroid error per image ~ sigma_psf / snr; two images.
    expected = 2 * float(np.median((sig / np.clip(snr[good], 1, None)) ** 2))
    out = []
    for d in (xs[good] - xt[good], ys[good] - yt[good]):
        s = robust_sigma(d - np.median(d))
        out.append(math.sqrt(max(s**2 - expected, 0.0)))
    return out[0], out[1]
