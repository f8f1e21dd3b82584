"""Variable sources under clipped artefacts: keeping the clipped epoch's flux.

CompareWarp replaces a clipped pixel of epoch ``k`` by a mixture of other
epochs (:func:`skydm.coadd._cw_pixels.imputation_coefficients`).  Where the
pixel lies on a variable star (a trail beside it, a ghost over it, a slow
asteroid passing a supernova), the mixture holds the star at the *other*
epochs' brightness, and the coadd loses epoch ``k``'s share of the
variability, which no rejection of pixels can keep.  Here the source's
flux in epoch ``k`` is estimated and the replacement corrected by the
source's PSF profile (epoch ``k``'s PSF) times the difference between that
flux and the replacing epochs' own:

1. *Where* (:func:`find_restorations`): static sources (significant in the
   model, at its local maximum) within two target FWHM of a clipped pixel of
   epoch ``k`` where the leave-one-out difference is fitted well by a
   multiple ``a`` of the model plus a constant (the artefact's light).
2. *Whether and how much* (:func:`restore_targets`, at assembly, full
   resolution): every epoch's PSF flux of the source on its unclipped
   pixels.  A source whose other epochs agree with a constant flux is not
   a variable and is left alone (the fitted ``a`` is then the artefact's
   light or a PSF-matching residual).  Epoch ``k``'s flux is the mean of
   the epochs taken within ``pair_days`` of it (visits come in pairs within
   a night; the light curve hardly moves in between), else ``(1 + a)``
   times the flux of the epochs the model held there.
3. The correction ``(f_k - sum_j c_j f_j) PSF_k`` is added over the
   replaced pixels (:func:`replacement_correction`): a deterministic
   profile, so neither the replacing epochs' noise nor any light of theirs
   is amplified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from skydm.image.psf import Psf

if TYPE_CHECKING:
    from skydm.coadd._cw_rules import Sparse
    from skydm.coadd.compare_warp import CompareWarpConfig


@dataclass(frozen=True)
class Restore:
    """A static source under epoch ``k``'s clipped pixels, with ``f_k = (1 + alpha) f_others``.

    ``y``, ``x`` are full-resolution pixel coordinates of the source (the
    centre of its binned peak pixel; refined on the data at assembly).
    """

    k: int
    y: float
    x: float
    alpha: float
    model: int = -1  # epochs in the model there, as bits (-1: all)


def find_restorations(
    clip: np.ndarray, sparse: Sparse, cfg: CompareWarpConfig, b: int, fwhm: float
) -> list[Restore]:
    """Static sources whose flux change in an epoch is measured where it is clipped.

    A source qualifies at an outlier pixel of epoch ``k`` that is clipped,
    on a significant static source (model S/N at the pixel and over the fit
    window at least ``cfg.threshold``), at the model's local maximum, where
    the fit with a constant is good (reduced chi-square at most
    ``cfg.variable_chi2_compact``).  One per source and epoch (the pixel
    with the brightest model within ``fwhm`` binned pixels).
    """
    out: list[Restore] = []
    if cfg.restore_variables is False or cfg.variable_chi2_compact <= 0:
        return out
    wb = clip.shape[2]
    for k in range(clip.shape[0]):
        parts = [p for p in sparse if p[0] == k]
        if not parts:
            continue
        if not clip[k].any():
            continue
        # The source need not be clipped at its peak: a bright variable's
        # halo is clipped alone where the rules keep its core.
        near = ndimage.binary_dilation(clip[k], structure=_disk(2 * fwhm))
        idx = np.concatenate([p[1] for p in parts])
        on = near.ravel()[idx]
        if not on.any():
            continue
        msig, peak, msn, alpha, chi2c, bits = (
            np.concatenate([p[i] for p in parts])[on] for i in (4, 5, 6, 7, 8, 9)
        )
        idx = idx[on]
        ok = (
            (msn >= cfg.threshold)
            & (msig >= cfg.threshold)
            & (peak >= 0.95)
            & (chi2c <= cfg.variable_chi2_compact)
            & np.isfinite(alpha)
            & (alpha > -1.0)
        )
        if not ok.any():
            continue
        idx, msn, alpha, bits = idx[ok], msn[ok], alpha[ok], bits[ok]
        order = np.argsort(-msn)
        taken: list[tuple[int, int]] = []
        for i in order:
            y, x = divmod(int(idx[i]), wb)
            if any((y - ty) ** 2 + (x - tx) ** 2 <= fwhm * fwhm for ty, tx in taken):
                continue
            taken.append((y, x))
            c = (b - 1) / 2.0
            out.append(Restore(k, y * b + c, x * b + c, float(alpha[i]), int(bits[i])))
    return out


def _disk(radius: float) -> np.ndarray:
    r = max(math.ceil(radius), 1)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius + 1e-9


def restore_targets(
    items: list[Restore],
    y0: int,
    img: np.ndarray,
    var: np.ndarray,
    kept: np.ndarray,
    clipped: np.ndarray,
    weights: np.ndarray,
    psfs: list[Psf | None],
    *,
    variable_spread: float = 25.0,
    variable_floor: float = 0.03,
    times: list[float] | None = None,
    pair_days: float = 0.1,
) -> list[tuple[int, np.ndarray, np.ndarray, float, np.ndarray]]:
    """Per restoration in this band (rows ``y0`` on): ``(k, mask, f, target, prof)``.

    Sources whose PSF fluxes in the other epochs are consistent with a
    constant (reduced chi-square at most ``variable_spread``, errors from the
    variance plus ``variable_floor`` of the flux for photometric systematics)
    are left as they are.  The target is the mean flux of the epochs taken
    within ``pair_days`` of epoch ``k`` (``times``: MJD per epoch), or, with
    none, ``(1 + alpha)`` times the flux of the epochs in the model there.

    ``mask`` is epoch ``k``'s clipped pixels within two FWHM of the source,
    ``f`` every epoch's PSF flux of the source (``nan`` where unmeasured) and
    ``target`` the flux that epoch ``k``'s replacement should have, ``prof``
    epoch ``k``'s PSF at the source (unit sum).
    """
    out: list[tuple[int, np.ndarray, np.ndarray, float, np.ndarray]] = []
    n, rows, cols = img.shape
    fw = [p.fwhm if p is not None else math.nan for p in psfs]
    big = max((f for f in fw if math.isfinite(f)), default=4.0)
    h = max(3, math.ceil(1.5 * big))
    for it in items:
        yc, xc = it.y - y0, it.x
        if not (0 <= yc < rows and 0 <= xc < cols):
            continue
        iy, ix = round(yc), round(xc)
        ys = slice(max(iy - h, 0), min(iy + h + 1, rows))
        xs = slice(max(ix - h, 0), min(ix + h + 1, cols))
        w = np.where(kept[:, ys, xs], weights[:, None, None], 0.0)
        wsum = w.sum(axis=0)
        mean = np.where(wsum > 0, (w * img[:, ys, xs]).sum(axis=0) / np.maximum(wsum, 1e-30), 0)
        cy, cx = _centroid(mean, iy - ys.start, ix - xs.start)
        yy, xx = np.indices(mean.shape)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        # The fit uses the core (one FWHM): a neighbour's wings hardly reach it.
        core = r2 <= big * big
        top = int(np.argmax(np.where(core, mean, -np.inf)))
        if r2.ravel()[top] > 2.25:
            continue  # a brighter source within the core: its flux, not ours
        f = np.full(n, np.nan)
        ef = np.full(n, np.nan)
        for j in range(n):
            p = psfs[j]
            if p is None:
                continue
            f[j], ef[j] = _psf_flux(
                img[j, ys, xs], var[j, ys, xs], kept[j, ys, xs] & core, p, cy, cx
            )
        others = [j for j in range(n) if j != it.k and np.isfinite(f[j])]
        if len(others) < max(3, n // 2):
            continue
        wo = weights[others]
        f_oth = float(np.sum(wo * f[others]) / np.sum(wo))
        # The change was fitted against the model of the other epochs that
        # the model held there (the clipped mean leaves out the brightest).
        ref = [j for j in others if it.model < 0 or (it.model >> j) & 1]
        if not ref:
            continue
        f_ref = float(np.sum(weights[ref] * f[ref]) / np.sum(weights[ref]))
        # Only a source that varies among the other epochs is a variable: a
        # constant one needs no restoring, and its fitted multiple is then
        # the artefact's light (or a PSF-matching residual), not a change.
        err2 = ef[others] ** 2 + (variable_floor * f[others]) ** 2
        spread = float(np.sum((f[others] - f_oth) ** 2 / err2)) / (len(others) - 1)
        if not spread > variable_spread:
            continue
        target = (1.0 + it.alpha) * f_ref
        if times is not None and math.isfinite(times[it.k]):
            # The light curve at epoch k's time: the epochs taken within
            # ``pair_days`` of it (visits come in pairs within a night)
            # measure it better than the fit, which the artefact's own
            # light under the source biases.
            dt = np.abs(np.asarray(times)[others] - times[it.k])
            near = np.asarray(others)[dt <= min(pair_days, float(dt.min()) + 1e-9)]
            if near.size:
                target = float(np.mean(f[near]))
        r = 2.0 * (fw[it.k] if math.isfinite(fw[it.k]) else big)
        disk = r2 <= r * r
        mask = np.zeros((rows, cols), dtype=bool)
        mask[ys, xs] = disk & clipped[it.k, ys, xs]
        psf_k = psfs[it.k]
        if not (mask.any() and target > 0 and psf_k is not None):
            continue
        prof = np.zeros((rows, cols), dtype=np.float32)
        prof[ys, xs] = _psf_stamp(psf_k, mean.shape, cy, cx)
        out.append((it.k, mask, f, target, prof))
    return out


def _centroid(stamp: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Peak of ``stamp`` near (iy, ix), refined by its 3x3 first moment."""
    ny, nx = stamp.shape
    ya, yb, xa, xb = max(iy - 2, 0), min(iy + 3, ny), max(ix - 2, 0), min(ix + 3, nx)
    win = stamp[ya:yb, xa:xb]
    qy, qx = np.unravel_index(int(np.argmax(win)), win.shape)
    py, px = int(qy) + ya, int(qx) + xa
    sub = np.clip(stamp[max(py - 1, 0) : py + 2, max(px - 1, 0) : px + 2], 0, None)
    if sub.sum() <= 0:
        return float(py), float(px)
    gy, gx = np.indices(sub.shape)
    return (
        float(max(py - 1, 0) + (gy * sub).sum() / sub.sum()),
        float(max(px - 1, 0) + (gx * sub).sum() / sub.sum()),
    )


def _psf_stamp(psf: Psf, shape: tuple[int, ...], cy: float, cx: float) -> np.ndarray:
    """``psf`` centred at (cy, cx) on a ``shape`` stamp (zero where it does not reach)."""
    ny, nx = shape
    size = max(psf.default_size(), 2 * max(ny, nx) + 1) | 1
    half = size // 2
    iy, ix = round(cy), round(cx)
    k = psf.kernel(size, cx - ix, cy - iy)
    return np.asarray(k[half - iy : half - iy + ny, half - ix : half - ix + nx], dtype=np.float32)


def _psf_flux(
    x: np.ndarray, v: np.ndarray, ok: np.ndarray, psf: Psf, cy: float, cx: float
) -> tuple[float, float]:
    """Least-squares PSF flux of ``x`` (variance ``v``, usable where ``ok``) at (cy, cx)
    and its error; nan if the core is lost."""
    size = max(psf.default_size(), 2 * max(x.shape) + 1) | 1
    half = size // 2
    iy, ix = round(cy), round(cx)
    k = psf.kernel(size, cx - ix, cy - iy)
    ny, nx = x.shape
    ky = slice(half - iy, half - iy + ny)
    kx = slice(half - ix, half - ix + nx)
    p = k[ky, kx]
    if p.shape != x.shape:
        return math.nan, math.nan
    pk = np.where(ok, p, 0.0)
    # Half the PSF's weight must be measured, or the flux rests on wings.
    s2 = float(np.sum(pk * pk))
    if s2 < 0.5 * np.sum(p * p):
        return math.nan, math.nan
    err = math.sqrt(float(np.sum(pk * pk * np.where(ok, v, 0.0)))) / s2
    return float(np.sum(pk * x)) / s2, err


def replacement_correction(share: np.ndarray, f: np.ndarray, target: float) -> np.ndarray:
    """Per replaced pixel, the flux to add (times the PSF there) so that the
    mixture with ``share`` (``(n, m)``, from
    :func:`skydm.coadd._cw_pixels.replacement_shares`) holds the source at
    ``target``; 0 where a replacing epoch's flux is unknown."""
    known = np.isfinite(f)
    fin = np.where(known, f, 0.0)
    mix = (share * fin[:, None]).sum(axis=0)
    ok = ~((share != 0) & ~known[:, None]).any(axis=0)
    return np.where(ok, target - mix, 0.0).astype(np.float32)
