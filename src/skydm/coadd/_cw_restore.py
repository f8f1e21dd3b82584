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
   the epochs taken within ``same_time_days`` of it (the light curve
   hardly moves within a night), else ``(1 + a)``
   times the flux of the epochs the model held there; but where epoch
   ``k``'s own pixels fit its PSF about the static sky (:func:`_own_chi2`
   at most ``own_chi2``: no artefact's light on the source), its own flux
   on all its pixels.
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
    from skydm.coadd._cw_config import CompareWarpConfig, RestoreConfig
    from skydm.coadd._cw_footprints import OutlierPixels

#: The model at a flagged pixel over its local maximum from which the pixel
#: is the source's peak (a measured change is centred on the source).
CENTRED_PEAK = 0.95


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
    #: Epochs in the model there, packed bits (numpy.packbits); None: all.
    model: np.ndarray | None = None

    def in_model(self, j: int) -> bool:
        """Whether epoch ``j`` was in the model where the change was fitted."""
        return self.model is None or bool((self.model[j >> 3] >> (7 - (j & 7))) & 1)


@dataclass(frozen=True)
class Target:
    """A restoration at assembly: on a stamp at (y0, x0) of the band, epoch ``k``'s
    replaced pixels ``mask`` get ``prof`` (its PSF there, unit sum) times the
    difference between ``target`` and the replacing epochs' fluxes ``f``."""

    k: int
    y0: int
    x0: int
    mask: np.ndarray
    f: np.ndarray
    target: float
    prof: np.ndarray

    def moved(self, dy: int) -> Target:
        """The same target with its row origin moved by ``dy``."""
        return Target(self.k, self.y0 + dy, self.x0, self.mask, self.f, self.target, self.prof)


def split_targets(targets: list[Target], y0: int, y1: int) -> tuple[list[Target], list[Target]]:
    """Targets (image rows) cut to the band ``[y0, y1)`` (band rows), and those
    that reach rows at or after ``y1`` (image rows, for the next bands)."""
    now: list[Target] = []
    later: list[Target] = []
    for t in targets:
        top, bottom = t.y0, t.y0 + t.mask.shape[0]
        r0, r1 = max(top, y0), min(bottom, y1)
        if r0 < r1:
            a, b = r0 - top, r1 - top
            now.append(Target(t.k, r0 - y0, t.x0, t.mask[a:b], t.f, t.target, t.prof[a:b]))
        if bottom > y1:
            later.append(t)
    return now, later


def find_restorations(
    clip: np.ndarray,
    pixels: list[OutlierPixels],
    cfg: CompareWarpConfig,
    b: int,
    fwhm: float,
    peaks: np.ndarray | None = None,
) -> list[Restore]:
    """Static sources whose flux change in an epoch is measured where it is clipped.

    A source qualifies at an outlier pixel of epoch ``k`` that is clipped,
    on a significant static source (model S/N at the pixel and over the fit
    window at least ``cfg.threshold``), at the model's local maximum, where
    the fit with a constant is good (reduced chi-square at most
    ``cfg.rules.variable.chi2_compact``).  One per source and epoch (the pixel
    with the brightest model within ``fwhm`` binned pixels).  Every other
    bright static source (``peaks``: the model's local maxima at S/N at
    least ``cfg.restore.sn``) near epoch ``k``'s clipped pixels is a
    candidate too, with no measured change (``alpha`` 0): the replacing
    epochs may hold a variable at another brightness than epoch ``k``'s
    even where ``k`` itself hardly differs from the model.
    """
    out: list[Restore] = []
    if not cfg.restore.enabled or cfg.rules.variable.chi2_compact <= 0:
        return out
    wb = clip.shape[2]
    c = (b - 1) / 2.0
    for k in range(clip.shape[0]):
        if not clip[k].any():
            continue
        # The source need not be clipped at its peak: a bright variable's
        # halo is clipped alone where the rules keep its core.
        reach = 2 * math.ceil(2 * fwhm) + 1
        near = ndimage.maximum_filter(clip[k].view(np.uint8), size=reach) > 0
        taken: list[tuple[int, int]] = []
        on = near.ravel()[pixels[k].idx]
        if on.any():
            _flagged_cores(k, pixels[k], on, cfg, wb, b, fwhm, taken, out)
        if peaks is not None:
            for i in np.flatnonzero((peaks & near).ravel()):
                y, x = divmod(int(i), wb)
                if any((y - ty) ** 2 + (x - tx) ** 2 <= fwhm * fwhm for ty, tx in taken):
                    continue
                taken.append((y, x))
                out.append(Restore(k, y * b + c, x * b + c, 0.0))
    return out


def _flagged_cores(
    k: int,
    o: OutlierPixels,
    on: np.ndarray,
    cfg: CompareWarpConfig,
    wb: int,
    b: int,
    fwhm: float,
    taken: list[tuple[int, int]],
    out: list[Restore],
) -> None:
    """Sources where epoch ``k``'s change was measured (see :func:`find_restorations`)."""
    idx, msig, peak, msn = o.idx[on], o.msig[on], o.peak[on], o.msn[on]
    alpha, chi2c, bits = o.alpha[on], o.chi2c[on], o.model[on]
    t = cfg.detect.threshold
    ok = (
        (msn >= t)
        & (msig >= t)
        & (peak >= CENTRED_PEAK)
        & (chi2c <= cfg.rules.variable.chi2_compact)
        & np.isfinite(alpha)
        & (alpha > -1.0)
    )
    if not ok.any():
        return
    idx, msn, alpha, bits = idx[ok], msn[ok], alpha[ok], bits[ok]
    order = np.argsort(-msn)
    c = (b - 1) / 2.0
    for i in order:
        y, x = divmod(int(idx[i]), wb)
        if any((y - ty) ** 2 + (x - tx) ** 2 <= fwhm * fwhm for ty, tx in taken):
            continue
        taken.append((y, x))
        out.append(Restore(k, y * b + c, x * b + c, float(alpha[i]), bits[i].copy()))


def restore_targets(
    items: list[Restore],
    y0: int,
    img: np.ndarray,
    var: np.ndarray,
    kept: np.ndarray,
    clipped: np.ndarray,
    weights: np.ndarray,
    psfs: list[Psf | None],
    cfg: RestoreConfig,
    *,
    times: list[float] | None = None,
    kernels: Kernels | None = None,
) -> list[Target]:
    """Per restoration in this band (rows ``y0`` on), a :class:`Target`.

    Sources whose PSF fluxes in the other epochs are consistent with a
    constant (reduced chi-square at most ``cfg.spread``, errors from the
    variance plus ``cfg.floor`` of the flux for photometric systematics)
    are left as they are.  The target is the mean flux of the epochs taken
    within ``cfg.same_time_days`` of epoch ``k`` (``times``: MJD per epoch), or, with
    none, ``(1 + alpha)`` times the flux of the epochs in the model there;
    epoch ``k``'s own flux where its pixels fit (``cfg.own_chi2``).

    ``mask`` is epoch ``k``'s clipped pixels within two FWHM of the source,
    ``f`` every epoch's PSF flux of the source (``nan`` where unmeasured) and
    ``target`` the flux that epoch ``k``'s replacement should have, ``prof``
    epoch ``k``'s PSF at the source (unit sum).
    """
    out: list[Target] = []
    n, rows, cols = img.shape
    kernels = kernels or Kernels(psfs)
    fw = [p.fwhm if p is not None else math.nan for p in psfs]
    big, h = kernels.big, kernels.half
    # Each source's photometry serves every epoch clipped over it.
    cache: dict[tuple[int, int], tuple | None] = {}
    usable = kept | clipped if items else kept
    for it in items:
        yc, xc = it.y - y0, it.x
        if not (0 <= yc < rows and 0 <= xc < cols):
            continue
        iy, ix = round(yc), round(xc)
        ys = slice(max(iy - h, 0), min(iy + h + 1, rows))
        xs = slice(max(ix - h, 0), min(ix + h + 1, cols))
        if (iy, ix) not in cache:
            cache[iy, ix] = _photometry(
                img, var, kept, usable, weights, kernels, ys, xs, iy, ix, big, cfg.floor
            )
        meas = cache[iy, ix]
        if meas is None:
            continue
        cy, cx, r2, mean, f, ef, g, q = meas
        others = [j for j in range(n) if j != it.k and np.isfinite(f[j])]
        if len(others) < max(3, n // 2):
            continue
        wo = weights[others]
        f_oth = float(np.sum(wo * f[others]) / np.sum(wo))
        # The change was fitted against the model of the other epochs that
        # the model held there (the clipped mean leaves out the brightest).
        ref = [j for j in others if it.in_model(j)]
        if not ref:
            continue
        f_ref = float(np.sum(weights[ref] * f[ref]) / np.sum(weights[ref]))
        # Only a source that varies among the other epochs is a variable: a
        # constant one needs no restoring, and its fitted multiple is then
        # the artefact's light (or a PSF-matching residual), not a change.
        err2 = ef[others] ** 2 + (cfg.floor * f[others]) ** 2
        spread = float(np.sum((f[others] - f_oth) ** 2 / err2)) / (len(others) - 1)
        if not spread > cfg.spread:
            continue
        target = (1.0 + it.alpha) * f_ref
        if times is not None and math.isfinite(times[it.k]):
            # The light curve at epoch k's time: the epochs taken within
            # ``same_time_days`` of it (the same night) measure it better
            # than the fit, which the artefact's own light under the source
            # biases.
            # A partner clipped there too is measured on all its pixels; an
            # artefact only adds light, so of the partner's flux and epoch
            # k's own (on all its pixels) the smaller is the less touched.
            est = np.where(np.isfinite(f), f, g)
            cand = [j for j in range(n) if j != it.k and np.isfinite(est[j])]
            if cand:
                dt = np.abs(np.asarray(times)[cand] - times[it.k])
                near = np.asarray(cand)[dt <= min(cfg.same_time_days, float(dt.min()) + 1e-9)]
                if near.size:
                    target = float(np.mean(est[near]))
                    if np.isfinite(g[it.k]):
                        target = min(target, float(g[it.k]))
        if np.isfinite(g[it.k]) and q[it.k] <= cfg.own_chi2:
            # The epoch's own pixels are the source and noise (no artefact's
            # light on it): its own flux is the measurement, exact where the
            # fitted multiple and the same night's epochs only estimate it.
            target = float(g[it.k])
        r = 2.0 * (fw[it.k] if math.isfinite(fw[it.k]) else big)
        disk = r2 <= r * r
        mask = disk & clipped[it.k, ys, xs]
        prof = kernels.stamp(it.k, mean.shape, cy, cx)
        if not (mask.any() and target > 0 and prof is not None):
            continue
        out.append(Target(it.k, ys.start, xs.start, mask, f, target, prof.astype(np.float32)))
    return out


def _photometry(
    img: np.ndarray,
    var: np.ndarray,
    kept: np.ndarray,
    usable: np.ndarray,
    weights: np.ndarray,
    kernels: Kernels,
    ys: slice,
    xs: slice,
    iy: int,
    ix: int,
    big: float,
    floor: float = 0.0,
) -> tuple | None:
    """Centre and every epoch's PSF flux of the source near (iy, ix) on the stamp
    (ys, xs): ``(cy, cx, r2, mean, f, ef, g, q)``, or None beside a brighter
    source.  ``f`` uses the kept pixels, ``g`` every usable one (clipped ones
    too), ``q`` is how well ``g`` fits (:func:`_own_chi2`)."""
    n = img.shape[0]
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
        return None  # a brighter source within the core: its flux, not ours
    prof = np.zeros((n, *mean.shape))
    for j in range(n):
        p = kernels.stamp(j, mean.shape, cy, cx)
        if p is not None:
            prof[j] = p
    x, v = img[:, ys, xs], var[:, ys, xs]
    f, ef = _psf_flux(x, v, kept[:, ys, xs] & core, prof)
    on = usable[:, ys, xs] & core
    g, _ = _psf_flux(x, v, on, prof)
    q = _own_chi2(x, v, on, prof, g, weights, floor)
    return cy, cx, r2, mean, f, ef, g, q


def _centroid(stamp: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """Peak of ``stamp`` near (iy, ix), refined to a sub-pixel position by a parabola
    through the logarithms of the peak pixel and its neighbours (exact for a
    Gaussian core; a first moment would pull it to the pixel's centre)."""
    ny, nx = stamp.shape
    ya, yb, xa, xb = max(iy - 2, 0), min(iy + 3, ny), max(ix - 2, 0), min(ix + 3, nx)
    win = stamp[ya:yb, xa:xb]
    qy, qx = np.unravel_index(int(np.argmax(win)), win.shape)
    py, px = int(qy) + ya, int(qx) + xa

    def vertex(lo: float, mid: float, hi: float) -> float:
        if min(lo, mid, hi) <= 0:
            return 0.0
        a, b, c = math.log(lo), math.log(mid), math.log(hi)
        den = a - 2 * b + c
        return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0

    dy = vertex(stamp[py - 1, px], stamp[py, px], stamp[py + 1, px]) if 0 < py < ny - 1 else 0.0
    dx = vertex(stamp[py, px - 1], stamp[py, px], stamp[py, px + 1]) if 0 < px < nx - 1 else 0.0
    return py + dy, px + dx


class Kernels:
    """PSF kernels per epoch and quarter-pixel centring, rendered once.

    Only ``size`` pixels (the photometry stamps' reach) are rendered; each is
    scaled from unit sum to the flux fraction that its centred default-size
    kernel puts in that window, so that all are in units of total flux.
    """

    def __init__(self, psfs: list[Psf | None]) -> None:
        self.psfs = psfs
        fw = [p.fwhm for p in psfs if p is not None and math.isfinite(p.fwhm)]
        #: The broadest FWHM; photometry uses the core within it.
        self.big = max(fw, default=4.0)
        #: Half-side of the photometry stamps.
        self.half = max(3, math.ceil(1.5 * self.big))
        self.size = 2 * self.half + 5
        self.cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.frac: dict[int, tuple[int, float]] = {}

    def _window(self, j: int, psf: Psf) -> tuple[int, float]:
        if j not in self.frac:
            full = psf.default_size()
            size = min(full, self.size | 1)
            k = psf.kernel(full)
            c, h = full // 2, size // 2
            self.frac[j] = (size, float(k[c - h : c + h + 1, c - h : c + h + 1].sum()))
        return self.frac[j]

    def stamp(self, j: int, shape: tuple[int, ...], cy: float, cx: float) -> np.ndarray | None:
        """Epoch ``j``'s PSF centred at (cy, cx) on a ``shape`` stamp (0 beyond its reach)."""
        psf = self.psfs[j]
        if psf is None:
            return None
        iy, ix = round(cy), round(cx)
        qy, qx = round(4 * (cy - iy)), round(4 * (cx - ix))
        key = (j, qy, qx)
        if key not in self.cache:
            size, frac = self._window(j, psf)
            self.cache[key] = psf.kernel(size, qx / 4, qy / 4) * frac
        k = self.cache[key]
        half = k.shape[0] // 2
        ny, nx = shape
        out = np.zeros(shape, dtype=np.float64)
        y0, x0 = iy - half, ix - half  # stamp coordinates of the kernel's corner
        ya, yb = max(y0, 0), min(y0 + k.shape[0], ny)
        xa, xb = max(x0, 0), min(x0 + k.shape[1], nx)
        if ya < yb and xa < xb:
            out[ya:yb, xa:xb] = k[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return out


def _own_chi2(
    x: np.ndarray,
    v: np.ndarray,
    on: np.ndarray,
    p: np.ndarray,
    g: np.ndarray,
    w: np.ndarray,
    floor: float,
) -> np.ndarray:
    """Per epoch, the reduced chi-square of its pixels ``on`` the core about its
    own PSF fit ``g`` (all its pixels) plus the static sky around the source
    (the other epochs' weighted mean residual there): about 1 where the
    source's change is all the epoch differs by, large where an artefact's
    light (a trail, a ghost, a mover) lies on the source."""
    n = x.shape[0]
    model = np.where(np.isfinite(g), g, 0.0)[:, None, None] * p
    r = x - model
    # The PSF's systematics (``floor`` of the flux) as in the spread test.
    v = v + (floor * model) ** 2
    ok = on & np.isfinite(g)[:, None, None]
    wk = np.where(ok, w[:, None, None] / np.maximum(v, 1e-30), 0.0)
    # The other epochs' weighted mean: the totals less epoch k's own share.
    wsum, wrsum = wk.sum(axis=0), (wk * r).sum(axis=0)
    out = np.full(n, np.inf)
    for k in range(n):
        ws = wsum - wk[k]
        sky = (wrsum - wk[k] * r[k]) / np.maximum(ws, 1e-30)
        use = ok[k] & (ws > 0) & (v[k] > 0)
        if use.sum() > 1:
            out[k] = float(((r[k] - sky)[use] ** 2 / v[k][use]).sum()) / (int(use.sum()) - 1)
    return out


def _psf_flux(
    x: np.ndarray, v: np.ndarray, ok: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, the least-squares flux of ``x`` (variance ``v``, usable where
    ``ok``; ``(n, h, w)``) with the profile ``p`` (each epoch's PSF on the stamp)
    and its error; nan where less than half the PSF's weight is usable (the
    flux would rest on the wings) or the PSF is unknown."""
    pk = np.where(ok, p, 0.0)
    s2 = (pk * pk).sum(axis=(1, 2))
    full = (p * p).sum(axis=(1, 2))
    good = (full > 0) & (s2 >= 0.5 * full)
    safe = np.where(good, s2, 1.0)
    flux = (pk * x).sum(axis=(1, 2)) / safe
    err = np.sqrt((pk * pk * np.where(ok, v, 0.0)).sum(axis=(1, 2))) / safe
    return np.where(good, flux, np.nan), np.where(good, err, np.nan)


def replacement_correction(
    epochs: np.ndarray, share: np.ndarray, f: np.ndarray, target: float
) -> np.ndarray:
    """Per replaced pixel, the flux to add (times the PSF there) so that the
    mixture of ``epochs`` with ``share`` (``(r, m)``, from
    :func:`skydm.coadd._cw_pixels.replacement_shares`) holds the source at
    ``target``; 0 where a replacing epoch's flux is unknown."""
    fe = np.where(epochs >= 0, f[np.maximum(epochs, 0)], 0.0)
    used = (epochs >= 0) & (share != 0)
    ok = ~(used & ~np.isfinite(fe)).any(axis=0)
    mix = np.where(used, share * np.where(np.isfinite(fe), fe, 0.0), 0.0).sum(axis=0)
    return np.where(ok, target - mix, 0.0).astype(np.float32)
