"""CompareWarp: coadds that reject transient artefacts and keep real flux (DMTN-080).

The algorithm, in three passes over bands of rows:

1. **Outlier detection.**  Each warp is binned (``config.bin`` x ``bin``) and
   convolved with a Gaussian that brings its PSF to a common, wider target
   PSF (the broadest input PSF convolved with a little more), so that
   seeing differences do not make stars outliers.  A robust static-sky model
   is the sigma-clipped weighted mean of these PSF-matched warps.  Each
   matched warp minus the model, divided by its noise (the matched
   variance plus a small fraction ``systematic`` of the model, for PSF
   mismatch on bright stars, rescaled so that its robust rms is 1), is
   thresholded with hysteresis: regions above ``grow_threshold`` that hold
   a pixel above ``threshold`` are outlier footprints, positive and negative.
2. **The temporal rule.**  The number of epochs in which each pixel is in
   an outlier footprint is counted.  A footprint of one epoch is clipped
   when more than ``spatial_threshold`` of its pixels are outliers in at
   most ``E`` epochs, with ``E = floor(min(max_fraction_low * n,
   max_epochs + max_fraction_high * n))`` growing with the number ``n`` of
   epochs covering it (DMTN-080's rule; Rubin's defaults 0.4, 2, 0.03).
   Variable stars differ from the model in many epochs and are kept;
   artefacts are in few and are clipped.  Clipped footprints are grown by
   ``grow_fwhm`` target-PSF FWHMs to take the wings of bright artefacts.
3. **Assembly.**  The original (not PSF-matched) warps are averaged with
   their scalar inverse-variance weights, leaving out clipped pixels; the
   coadd mask gets ``CLIPPED`` where a pixel was clipped from some epoch and
   ``NO_DATA`` where no epoch is left.

Memory holds one band of rows of the stack plus one byte per binned pixel
per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from skydm.coadd.assemble import _coadd_exposure, clip_outliers, weighted_mean
from skydm.coadd.stack import WarpStack, check_rows
from skydm.errors import BadValueError
from skydm.image import Exposure, Mask
from skydm.image.psf import GAUSS_FWHM
from skydm.progress import Progress


@dataclass(frozen=True)
class CompareWarpConfig:
    """Parameters of :func:`compare_warp` (see the module docs for their roles)."""

    bin: int = 2
    threshold: float = 5.0
    grow_threshold: float = 2.5
    systematic: float = 0.05
    model_nsigma: float = 3.0
    spatial_threshold: float = 0.5
    max_epochs: float = 2.0
    max_fraction_low: float = 0.4
    max_fraction_high: float = 0.03
    grow_fwhm: float = 1.0
    target_extra: float = 1.0
    variable_chi2: float = 2.0
    streak_length: float = 40.0
    cr_threshold: float = 5.0
    cr_sharpness: float = 1.5

    def __post_init__(self) -> None:
        if self.bin not in (1, 2, 3, 4):
            raise BadValueError("bin", self.bin, "1, 2, 3 or 4 pixels")
        if not self.threshold > self.grow_threshold > 0:
            raise BadValueError(
                "grow_threshold", self.grow_threshold, f"in (0, threshold={self.threshold})"
            )
        if not 0 <= self.spatial_threshold < 1:
            raise BadValueError("spatial_threshold", self.spatial_threshold, "a fraction in [0, 1)")
        for name in ("systematic", "grow_fwhm", "target_extra", "max_epochs"):
            if not getattr(self, name) >= 0:
                raise BadValueError(name, getattr(self, name), "a number >= 0")

    def epoch_threshold(self, n: np.ndarray) -> np.ndarray:
        """Largest number of outlier epochs for which a footprint is still clipped."""
        low = self.max_fraction_low * n
        high = self.max_epochs + self.max_fraction_high * n
        return np.floor(np.minimum(low, high))


def matching_sigmas(stack: WarpStack, extra: float) -> tuple[np.ndarray, float]:
    """Gaussian sigmas (pixels) that bring each warp's PSF to the common target PSF.

    The target is the broadest input PSF convolved with a Gaussian of sigma
    ``extra`` pixels; each warp's sigma minimises the squared difference
    between its PSF convolved with the Gaussian and the target.  Warps
    without a PSF are taken to have the target PSF already (sigma 0).

    Returns
    -------
    sigmas : numpy.ndarray
        One sigma per warp.
    fwhm : float
        The target PSF's FWHM in pixels (approximate).
    """
    psfs = [m.psf for m in stack.members]
    known = [p for p in psfs if p is not None]
    if not known:
        return np.zeros(len(psfs)), 2.0 + GAUSS_FWHM * extra
    widest = max(known, key=lambda p: p.fwhm)
    size = max(int(4 * widest.fwhm + 8 * extra) | 1, max(p.default_size() for p in known) | 1)
    target = (
        ndimage.gaussian_filter(widest.kernel(size), extra) if extra > 0 else widest.kernel(size)
    )
    fwhm = math.sqrt(widest.fwhm**2 + (GAUSS_FWHM * extra) ** 2)
    sigmas = np.zeros(len(psfs))
    for k, p in enumerate(psfs):
        if p is None:
            continue
        kern = p.kernel(size)

        def cost(s: float, kern: np.ndarray = kern) -> float:
            out = ndimage.gaussian_filter(kern, s) if s > 1e-3 else kern
            return float(np.sum((out - target) ** 2))

        res = optimize.minimize_scalar(cost, bounds=(0.0, fwhm), method="bounded")
        sigmas[k] = float(res.x)
    return sigmas, fwhm


def _bin(img: np.ndarray, var: np.ndarray, good: np.ndarray, b: int) -> tuple[np.ndarray, ...]:
    """Bin ``(n, h, w)`` planes by ``b`` x ``b``: mean image, its variance, good fraction."""
    if b == 1:
        return img, var, good.astype(np.float32)
    n, h, w = img.shape
    hp, wp = -(-h // b) * b, -(-w // b) * b
    if (hp, wp) != (h, w):
        pad = ((0, 0), (0, hp - h), (0, wp - w))
        img, var, good = np.pad(img, pad), np.pad(var, pad), np.pad(good, pad)
    shape = (n, hp // b, b, wp // b, b)
    cnt = good.reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    s = np.where(good, img, 0).reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    sv = np.where(good, var, 0).reshape(shape).sum(axis=(2, 4), dtype=np.float32)
    safe = np.maximum(cnt, 1.0)
    return s / safe, sv / (safe * safe), cnt / (b * b)


def compare_warp(
    stack: WarpStack,
    *,
    config: CompareWarpConfig | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
) -> Exposure:
    """Coadd ``stack`` with CompareWarp artefact rejection (see the module docs).

    With fewer than three epochs no footprint can be told to be an outlier
    (the epoch threshold is 0) and the result is the weighted mean.
    """
    cfg = config or CompareWarpConfig()
    b = cfg.bin
    n = len(stack)
    ny, nx = stack.shape
    rows = check_rows(chunk_rows or stack.default_chunk_rows())
    rows = max(b, rows - rows % b)
    weights = stack.weights
    sigmas, target_fwhm = matching_sigmas(stack, cfg.target_extra)
    bsig = sigmas / b
    halo = math.ceil(4 * float(bsig.max(initial=0.0)) + 2) * b
    hb, wb = -(-ny // b), -(-nx // b)
    fw = max(3, round(target_fwhm / b) | 1)
    codes = np.zeros((n, hb, wb), dtype=np.int8)
    # Difference and model (in units of the difference's noise) at outlier
    # pixels only, for the variable-source test: (epoch, flat index, d, m).
    sparse: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    cover = np.zeros((hb, wb), dtype=np.uint8)
    chunks = list(stack.chunks(rows))
    bar = progress
    if bar is not None:
        bar.total = 2 * len(chunks)

    # Pass 1: PSF-matched, binned outlier maps.
    for y0, y1 in chunks:
        ya, yb = max(y0 - halo, 0), min(y1 + halo, ny)
        img, var, good, _ = _read(stack, ya, yb, cfg)
        bi, bv, bc = _bin(img, var, good, b)
        del img, var, good
        matched = np.empty_like(bi)
        mvar = np.empty_like(bv)
        ok = np.empty(bi.shape, dtype=bool)
        for k in range(n):
            s = float(bsig[k])
            if s > 0.3:
                # Normalised convolution: missing pixels and the borders of the
                # data neither bias the matched image nor hide its larger noise.
                num = ndimage.gaussian_filter(bi[k] * bc[k], s, mode="constant", truncate=4.0)
                den = ndimage.gaussian_filter(bc[k], s, mode="constant", truncate=4.0)
                vs = s / math.sqrt(2.0)
                vnum = ndimage.gaussian_filter(bv[k] * bc[k] ** 2, vs, mode="constant")
                vnum *= np.float32(1.0 / (4 * math.pi * s * s))
            else:
                num, den, vnum = bi[k] * bc[k], bc[k], bv[k] * bc[k] ** 2
            # Down to a tenth of a kernel's worth of data the normalised
            # convolution is usable (its variance says how noisy).
            ok[k] = (den > 0.1) & (bc[k] > 0)
            safe = np.maximum(den, 1e-6)
            matched[k] = np.where(ok[k], num / safe, 0.0)
            mvar[k] = np.where(ok[k], vnum / (safe * safe), 0.0)
        keep = clip_outliers(
            matched, mvar, ok, weights, nsigma=cfg.model_nsigma, ampfrac=cfg.systematic
        )
        core = slice((y0 - ya) // b, (y0 - ya) // b + (-(-(y1 - y0) // b)))
        rb = slice(y0 // b, y0 // b + (core.stop - core.start))
        # Each epoch is compared with the model made of the other epochs, so that
        # an epoch's own noise neither shrinks its difference nor inflates it
        # where the clipping took it out of the model.
        wk = np.where(keep, weights[:, None, None].astype(np.float32), np.float32(0))
        s_all = np.einsum("kij,kij->ij", wk, matched)
        w_all = wk.sum(axis=0)
        v_all = np.einsum("kij,kij->ij", wk * wk, mvar)
        model = s_all / np.maximum(w_all, 1e-30)
        # PSF mismatch leaves residuals that scale with the brightness of the
        # nearby sky (cores and wings of stars): the local peak of the model.
        peak = ndimage.maximum_filter(np.abs(model), size=fw)[core]
        for k in range(n):
            w_o = (w_all - wk[k])[core]
            okc = ok[k, core] & (w_o > 0)
            safe = np.maximum(w_o, 1e-30)
            others = (s_all - wk[k] * matched[k])[core] / safe
            v_o = np.divide(
                (v_all - wk[k] ** 2 * mvar[k])[core],
                safe * safe,
                out=np.zeros(okc.shape, dtype=np.float32),
                where=okc,
            )
            noise = np.sqrt(mvar[k, core] + np.maximum(v_o, 0) + (cfg.systematic * peak) ** 2)
            diff = matched[k, core] - others
            sig = np.where(okc, diff / np.maximum(noise, 1e-12), 0.0)
            vals = sig[okc]
            scale = 1.0
            if vals.size > 100:
                # The variance plane ignores the noise correlations of warping and
                # the model's share of each epoch: rescale to unit robust rms.
                scale = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
                if 0.2 < scale < 5:
                    sig /= scale
                else:
                    scale = 1.0
            code = np.zeros(sig.shape, dtype=np.int8)
            code[sig > cfg.grow_threshold] = 1
            code[sig > cfg.threshold] = 2
            code[sig < -cfg.grow_threshold] = -1
            code[sig < -cfg.threshold] = -2
            codes[k, rb] = code
            cover[rb] += okc.astype(np.uint8)
            flagged = np.flatnonzero(code)
            if flagged.size:
                # Local fit of the difference by a multiple of the model over a
                # PSF-sized window: good where a static source changed flux.
                m_sn = np.where(okc, others / np.maximum(noise, 1e-12), 0.0) / scale
                win = fw
                sdm = ndimage.uniform_filter(sig * m_sn, win)
                smm = ndimage.uniform_filter(m_sn * m_sn, win)
                sdd = ndimage.uniform_filter(sig * sig, win)
                npw = win * win
                chi2 = npw * (sdd - sdm * sdm / np.maximum(smm, 1e-12)) / (npw - 1)
                sparse.append(
                    (
                        k,
                        flagged + rb.start * wb,
                        np.abs(sig.ravel()[flagged]).astype(np.float32),
                        chi2.ravel()[flagged].astype(np.float32),
                        np.sqrt(npw * smm.ravel()[flagged]).astype(np.float32),
                    )
                )
        if bar is not None:
            bar.advance(1, "outlier detection")

    # Pass 2: footprints and the temporal rule.
    clip = _clip_maps(codes, cover, sparse, cfg, grow=cfg.grow_fwhm * target_fwhm / b)
    del codes

    # Pass 3: weighted mean of the original warps without clipped pixels.
    image = np.zeros((ny, nx), dtype=np.float32)
    variance = np.full((ny, nx), np.inf, dtype=np.float32)
    mask = np.zeros((ny, nx), dtype=np.uint32)
    used = np.zeros(n)
    for y0, y1 in chunks:
        img, var, good, cr = _read(stack, y0, y1, cfg)
        c = clip[:, y0 // b : -(-y1 // b)]
        if b > 1:
            c = np.repeat(np.repeat(c, b, axis=1), b, axis=2)
            off = y0 % b
            c = c[:, off : off + (y1 - y0), :nx]
        c |= cr
        kept = good & ~c
        m, v, ws = weighted_mean(img, var, kept, weights)
        image[y0:y1], variance[y0:y1] = m, v
        band = mask[y0:y1]
        band[ws <= 0] |= np.uint32(Mask.NO_DATA)
        band[((good | cr) & c).any(axis=0)] |= np.uint32(Mask.CLIPPED)
        used += kept.sum(axis=(1, 2)) * weights
        if bar is not None:
            bar.advance(1, "assembly")
    exp = _coadd_exposure(stack, image, variance, mask, used, "compare")
    exp.meta["CWTHRESH"] = (cfg.threshold, "CompareWarp outlier threshold, sigma")
    exp.meta["CWTFWHM"] = (target_fwhm, "CompareWarp target PSF FWHM, pixels")
    exp.meta["CWNCLIP"] = (int(clip.sum()), "binned pixels clipped, all epochs")
    return exp


def _read(
    stack: WarpStack, y0: int, y1: int, cfg: CompareWarpConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``y0:y1`` of the stack with cosmic rays found and taken out of ``good``.

    Returns image, variance, good (usable and not a cosmic ray) and the
    cosmic-ray mask, each ``(n, rows, columns)``.
    """
    ny = stack.shape[0]
    pad = 2
    ya, yb = max(y0 - pad, 0), min(y1 + pad, ny)
    img, var, good = stack.rows(ya, yb)
    cr = _sharp(img, var, good, cfg) if cfg.cr_threshold > 0 else np.zeros_like(good)
    core = slice(y0 - ya, y0 - ya + (y1 - y0))
    img, var, good, cr = img[:, core], var[:, core], good[:, core], cr[:, core]
    return img, var, good & ~cr, cr & good


def _sharp(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, cfg: CompareWarpConfig
) -> np.ndarray:
    """Pixels sharper than any PSF: cosmic rays (and hot pixels), grown by one pixel.

    The discrete Laplacian ``4 x - (sum of the 4 neighbours)`` of a point
    source is at most about its peak value for the sharpest seeing
    (FWHM >= 3 pixels) but up to 4 times (2 when bilinear warping shares
    it among 2x2 pixels) the value of a hit that the optics did not blur.
    A pixel is a cosmic ray when its Laplacian is significant
    (``cr_threshold`` sigma, robustly normalised) and more than
    ``cr_sharpness`` times the pixel's value.
    """
    x = np.where(good, img, 0.0)
    lap = 4 * x
    lap[:, 1:] -= x[:, :-1]
    lap[:, :-1] -= x[:, 1:]
    lap[:, :, 1:] -= x[:, :, :-1]
    lap[:, :, :-1] -= x[:, :, 1:]
    # Neighbours that are masked would fake sharpness: require all five usable.
    full = good.copy()
    full[:, 1:] &= good[:, :-1]
    full[:, :-1] &= good[:, 1:]
    full[:, :, 1:] &= good[:, :, :-1]
    full[:, :, :-1] &= good[:, :, 1:]
    sig = lap / np.sqrt(np.maximum(20 * var, 1e-30))
    out = np.zeros(good.shape, dtype=bool)
    for k in range(x.shape[0]):
        vals = sig[k][full[k]]
        if vals.size < 100:
            continue
        # Warping correlates the noise; measure the Laplacian's real scatter.
        scale = 1.4826 * float(np.median(np.abs(vals[:: max(1, vals.size // 200_000)])))
        scale = scale if scale > 0 else 1.0
        hit = full[k] & (sig[k] > cfg.cr_threshold * scale) & (lap[k] > cfg.cr_sharpness * x[k])
        if hit.any():
            out[k] = ndimage.binary_dilation(hit, structure=np.ones((3, 3), dtype=bool))
    return out


def _disk(radius: float) -> np.ndarray:
    r = math.ceil(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius + 1e-9


def _footprints(code: np.ndarray, streak_length: float) -> np.ndarray:
    """Outlier footprints of one epoch and sign.

    Regions of ``code >= 1`` that hold a seed (``code >= 2``), plus seedless
    regions that are long and thin (:func:`_is_streak`): a faint trail is
    never 5 sigma anywhere but runs above the lower threshold for hundreds
    of pixels, which noise does not.
    """
    lab, nlab = ndimage.label(code >= 1)
    if nlab == 0:
        return np.zeros(code.shape, dtype=bool)
    keep = np.zeros(nlab + 1, dtype=bool)
    seeded = np.unique(lab[code >= 2])
    keep[seeded] = True
    if streak_length > 0:
        sizes = np.bincount(lab.ravel(), minlength=nlab + 1)
        for label in np.flatnonzero((sizes >= streak_length) & ~keep):
            ys, xs = np.nonzero(lab == label)
            if label > 0 and _is_streak(ys, xs, streak_length):
                keep[label] = True
    keep[0] = False
    return keep[lab]


def _is_streak(ys: np.ndarray, xs: np.ndarray, min_length: float) -> bool:
    """Whether pixels (ys, xs) form a straight strip at least ``min_length`` long
    and 8 times longer than wide (from their second moments)."""
    cov = np.cov(np.vstack([xs, ys]).astype(np.float64))
    evals = np.linalg.eigvalsh(cov)
    length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
    return length >= min_length and length >= 8 * max(width, 1.0)


def _clip_maps(
    codes: np.ndarray,
    cover: np.ndarray,
    sparse: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    cfg: CompareWarpConfig,
    *,
    grow: float,
) -> np.ndarray:
    """Per-epoch boolean maps of the pixels to clip (binned grid).

    Positive and negative outliers are counted separately.  Artefacts add
    light, so a positive footprint may be clipped even where only two epochs
    overlap (at least one outlier epoch is allowed from two epochs on); a
    negative one needs the full rule.  A footprint whose difference is
    a multiple of the model there (see :func:`_variable`) is a variable
    source, and is kept whatever its number of epochs.
    """
    n = codes.shape[0]
    clip = np.zeros(codes.shape, dtype=bool)
    structure = _disk(grow) if grow >= 0.5 else None
    r = math.ceil(grow) if structure is not None else 0
    for sign in (1, -1):
        fps = np.zeros(codes.shape, dtype=bool)
        for k in range(n):
            fps[k] = _footprints(codes[k] * sign, cfg.streak_length if sign > 0 else 0.0)
        count = fps.sum(axis=0, dtype=np.uint8)
        for k in range(n):
            lab, nlab = ndimage.label(fps[k])
            if nlab == 0:
                continue
            index = np.arange(1, nlab + 1)
            mean_cover = np.asarray(ndimage.mean(cover, lab, index))
            limit = cfg.epoch_threshold(mean_cover)
            if sign > 0:
                limit = np.where(mean_cover >= 2, np.maximum(limit, 1), limit)
            # Fraction of each footprint's pixels that are outliers in few
            # enough epochs (footprints differ only through their coverage).
            frac = np.zeros(nlab)
            for lo in np.unique(limit):
                sel = limit == lo
                ok_pix = (count >= 1) & (count <= lo)
                frac[sel] = np.asarray(ndimage.mean(ok_pix, lab, index[sel]))
            candidate = frac > cfg.spatial_threshold
            candidate &= ~_variable(lab, nlab, k, sparse, cfg)
            chosen = index[candidate]
            if chosen.size == 0:
                continue
            sel_map = np.isin(lab, chosen)
            if sign > 0 and cfg.streak_length > 0:
                sel_map |= _extend_streaks(lab, chosen, cover > 0, cfg.streak_length)
            if structure is None:
                clip[k] |= sel_map
                continue
            for obj in ndimage.find_objects(np.where(sel_map, lab, 0)):
                if obj is None:
                    continue
                ys = slice(max(obj[0].start - r, 0), obj[0].stop + r)
                xs = slice(max(obj[1].start - r, 0), obj[1].stop + r)
                clip[k, ys, xs] |= ndimage.binary_dilation(sel_map[ys, xs], structure=structure)
    return clip


def _extend_streaks(
    lab: np.ndarray, chosen: np.ndarray, data: np.ndarray, min_length: float
) -> np.ndarray:
    """Straight strips through every long, thin footprint, across the whole grid.

    Satellite trails cross a whole image, but where a faint one dips into
    the noise its footprint breaks into segments and the gaps would leak.
    A footprint at least ``min_length`` binned pixels long and 8 times
    longer than wide is taken to be a segment of a straight trail, and the
    strip along its axis (as wide as the footprint) is clipped wherever the
    epoch has data, as Rubin's streak masking does.
    """
    out = np.zeros(lab.shape, dtype=bool)
    big = chosen[np.asarray(ndimage.sum(np.ones_like(lab), lab, chosen)) >= min_length]
    if big.size == 0:
        return out
    yy, xx = np.indices(lab.shape, dtype=np.float32)
    for label in big:
        ys, xs = np.nonzero(lab == label)
        cy, cx = ys.mean(), xs.mean()
        cov = np.cov(np.vstack([xs - cx, ys - cy]))
        evals, evecs = np.linalg.eigh(cov)
        length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
        if length < min_length or length < 8 * max(width, 1.0):
            continue
        ux, uy = evecs[0, 1], evecs[1, 1]
        perp = np.abs(-(xs - cx) * uy + (ys - cy) * ux)
        half = float(np.max(perp)) + 1.0
        dist = np.abs(-(xx - cx) * uy + (yy - cy) * ux)
        out |= (dist <= half) & data
    return out


def _variable(
    lab: np.ndarray,
    nlab: int,
    k: int,
    sparse: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    cfg: CompareWarpConfig,
) -> np.ndarray:
    """Which footprints of epoch ``k`` look like a flux change of a static source.

    At each footprint's most significant pixel, the difference over a
    PSF-sized window must be fit by a multiple of the model (reduced
    chi-square at most ``cfg.variable_chi2``) where the model is a
    significant source (window S/N at least ``cfg.threshold``).
    """
    out = np.zeros(nlab, dtype=bool)
    if cfg.variable_chi2 <= 0:
        return out
    parts = [p for p in sparse if p[0] == k]
    if not parts:
        return out
    idx = np.concatenate([p[1] for p in parts])
    dabs = np.concatenate([p[2] for p in parts])
    chi2 = np.concatenate([p[3] for p in parts])
    msig = np.concatenate([p[4] for p in parts])
    which = lab.ravel()[idx]
    inside = which > 0
    which, dabs, chi2, msig = which[inside], dabs[inside], chi2[inside], msig[inside]
    # The most significant pixel of each footprint: sort by label, then |d|.
    order = np.lexsort((-dabs, which))
    first = np.ones(order.size, dtype=bool)
    first[1:] = which[order][1:] != which[order][:-1]
    top = order[first]
    good = (chi2[top] <= cfg.variable_chi2) & (msig[top] >= cfg.threshold)
    out[which[top] - 1] = good
    return out
