"""CompareWarp's faint-trail line test: a trail found in pieces is clipped
along its whole line where the epoch's difference, summed along that line,
is significant.

A faint satellite trail is found in one epoch only where noise lifts it
over the outlier threshold: in pieces 8-35 binned pixels long, each too
short for the :class:`~skydm.coadd._cw_rules.Trail` strip, and in its gaps
the outlier codes are at the background.  Summed along its line the
trail's light is significant although no pixel is.  So each elongated
clipped piece of an epoch proposes a line (its own axis, and the line
through it and another such piece of the same epoch along both their
axes); the strip along the line, off everything clipped and off bright
sources, is compared with the two parallel strips beside it, segment by
segment along the line, in the epoch's unmatched binned difference from
the other epochs' median (a t-test of the segments' differences, which
measures its own noise: pixel correlation, PSF residuals).  A line whose
test reaches ``TrailConfig.line_sn`` is clipped across the whole grid.

Each pixel's difference depends only on that pixel's column through the
epochs, so the maps are equal whatever the bands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from skydm.coadd._cw_config import TrailConfig
from skydm.coadd._cw_footprints import _dilate, _disk
from skydm.coadd._cw_pixels import bin_planes
from skydm.coadd._cw_rules import _strip
from skydm.coadd.stack import WarpStack

#: Most pieces per epoch that propose lines (the largest): the pairs grow
#: as their square.
MAX_PIECES = 24

#: A candidate line: centre, direction, half-width, the pieces on it.
_Line = tuple[float, float, float, float, float, tuple[int, ...]]

#: Fewest usable pixels of a strip in a segment for the segment to count.
MIN_SEGMENT = 4


def _pieces(
    clip: np.ndarray, cfg: TrailConfig
) -> list[tuple[float, float, float, float, float, float]]:
    """(cx, cy, ux, uy, length, half-width) of each elongated clipped piece
    of one epoch's map that the :class:`Trail` strip does not already cover."""
    lab, n = ndimage.label(clip)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    order = [int(i) for i in np.argsort(-sizes[1:], kind="stable")[:MAX_PIECES] + 1]
    boxes = ndimage.find_objects(lab)
    out = []
    for i in order:
        if sizes[i] < cfg.piece_length:
            break
        sl = boxes[i - 1]
        ys, xs = np.nonzero(lab[sl] == i)
        ys, xs = ys + sl[0].start, xs + sl[1].start
        cy, cx = float(ys.mean()), float(xs.mean())
        evals, evecs = np.linalg.eigh(np.cov(np.vstack([xs - cx, ys - cy])))
        length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
        if length < cfg.piece_length or length < cfg.piece_aspect * max(width, 1.0):
            continue
        if length >= cfg.length and length >= cfg.aspect * max(width, 1.0):
            continue  # the Trail rule's strip is already clipped
        ux, uy = float(evecs[0, 1]), float(evecs[1, 1])
        perp = np.abs(-(xs - cx) * uy + (ys - cy) * ux)
        out.append((cx, cy, ux, uy, length, float(np.percentile(perp, 90)) + 1.0))
    return out


def _lines(
    pieces: list[tuple[float, float, float, float, float, float]], max_angle: float
) -> list[_Line]:
    """Candidate lines (cx, cy, ux, uy, half, pieces on it): each piece's
    axis, and the line through two pieces' centres where it lies within
    ``max_angle`` (radians) of both their axes."""
    out: list[_Line] = [(p[0], p[1], p[2], p[3], p[5], (i,)) for i, p in enumerate(pieces)]
    cos_max = math.cos(max_angle)
    for i, a in enumerate(pieces):
        for j in range(i + 1, len(pieces)):
            b = pieces[j]
            dx, dy = b[0] - a[0], b[1] - a[1]
            d = math.hypot(dx, dy)
            if d < 1.0:
                continue
            ux, uy = dx / d, dy / d
            if abs(ux * a[2] + uy * a[3]) < cos_max or abs(ux * b[2] + uy * b[3]) < cos_max:
                continue
            out.append((a[0], a[1], ux, uy, max(a[5], b[5]), (i, j)))
    return out


def _score(
    sig: np.ndarray,
    usable: np.ndarray,
    line: tuple[float, float, float, float, float],
    segment: float,
    gap: float,
) -> float:
    """t statistic of the strip's mean less its flanks' along the segments of
    ``line`` (cx, cy, ux, uy, half) on the usable pixels of ``sig``."""
    shape = (int(sig.shape[0]), int(sig.shape[1]))
    cx, cy, ux, uy, half = line
    nx_, ny_ = -uy, ux  # the normal
    # The trail's light is within a FWHM of its axis (the piece's width is
    # that of its PSF-matched footprint, merged with what it touched): the
    # sum is taken there, and beside it a FWHM beyond (not beyond the
    # piece's width, which would take the flanks off a small cell).
    core = min(half, gap / 2)
    off = 2 * core + gap
    strips = [
        _strip(shape, cx + f * off * nx_, cy + f * off * ny_, ux, uy, core) for f in (0, 1, -1)
    ]
    span = math.ceil(math.hypot(*shape) / segment) + 1
    flat_sig, flat_use = sig.reshape(-1), usable.reshape(-1)
    means: list[np.ndarray] = []
    counts_c = np.zeros(0)
    for idx in strips:
        idx = idx[flat_use[idx]]
        ys, xs = np.divmod(idx, shape[1])
        # Segments counted from the line's centre, the same for all three strips.
        seg = np.floor(((xs - cx) * ux + (ys - cy) * uy) / segment).astype(np.int64) + span
        sums = np.bincount(seg, weights=flat_sig[idx].astype(np.float64), minlength=2 * span)
        counts = np.bincount(seg, minlength=2 * span)
        if not means:
            counts_c = counts.astype(np.float64)
        with np.errstate(all="ignore"):
            means.append(np.where(counts >= MIN_SEGMENT, sums / np.maximum(counts, 1), np.nan))
    # Either flank may leave the cell or lie on clipped pixels: the
    # segment's background is the flanks it has.
    flank = np.vstack(means[1:])
    have = np.isfinite(flank).sum(axis=0)
    with np.errstate(all="ignore"):
        vals = means[0] - np.where(have > 0, np.nansum(flank, axis=0) / have, np.nan)
    null = (means[1] - means[2]) * math.sqrt(0.75)  # same variance, no trail
    ok = np.isfinite(vals)
    if ok.sum() < 3:
        return 0.0
    # The noise of a segment's value, measured beside the line (pixel
    # correlation, faint sources' residuals), and at least what the flank
    # pixels' own scatter gives (for a segment with one flank, 2 pixel
    # samples): the trail's own segments (bright pieces clipped, faint gaps)
    # must not set it.
    flanks = np.concatenate([flat_sig[i[flat_use[i]]] for i in strips[1:]])
    per = float(np.mean(counts_c[ok]))
    both = ok & np.isfinite(null)
    sd = float(np.std(flanks)) * math.sqrt(2.0 / per)
    if both.sum() >= 3:
        sd = max(sd, float(np.sqrt(np.mean(null[both] ** 2))))
    if sd <= 0:
        return 0.0
    # A trail is as bright along its whole line; sources beside which the
    # line passes lift one or two segments: the median segment, not only
    # the mean, must be significant (the median's error is 1.2533 times the
    # mean's for Gaussian noise).
    m = math.sqrt(float(ok.sum()))
    z_mean = float(vals[ok].mean()) * m / sd
    z_median = float(np.median(vals[ok])) * m / (1.2533 * sd)
    return min(z_mean, z_median)


def _significance(
    stack: WarpStack,
    epochs: Sequence[int],
    b: int,
    shape: tuple[int, int],
    chunks: Sequence[tuple[int, int]],
    run: Callable[
        [Callable[[int, int], np.ndarray], Sequence[tuple[int, int]]], Iterator[np.ndarray]
    ],
) -> np.ndarray:
    """``(len(epochs), *shape)`` binned significance of each of ``epochs``
    against the median of the epochs with data (NaN where it has none)."""
    sel = np.asarray(epochs, dtype=np.int64)

    def band(y0: int, y1: int) -> np.ndarray:
        img, var, good = stack.rows(y0, y1)
        bi, bv, bc = bin_planes(img, var, good, b)
        del img, var, good
        full = bc >= 1.0
        # A pixel no epoch fully covers has no median (NaN here, not a warning).
        data = np.where(full | ~full.any(axis=0), bi, np.nan)
        with np.errstate(all="ignore"):
            med = np.nanmedian(data, axis=0)
            out = np.where(full[sel], (data[sel] - med) / np.sqrt(bv[sel]), np.nan)
        return np.asarray(out, dtype=np.float32)

    sig = np.full((sel.size, *shape), np.nan, dtype=np.float32)
    for (y0, _), part in zip(chunks, run(band, chunks), strict=True):
        r0 = y0 // b
        sig[:, r0 : r0 + part.shape[1]] = part
    return sig


def trail_lines(
    clip: np.ndarray,
    stack: WarpStack,
    bright: np.ndarray | None,
    cfg: TrailConfig,
    *,
    b: int,
    fwhm: float,
    chunks: Sequence[tuple[int, int]],
    run: Callable[
        [Callable[[int, int], np.ndarray], Sequence[tuple[int, int]]], Iterator[np.ndarray]
    ],
) -> int:
    """Clip in ``clip`` (per-epoch binned maps, changed in place) the strips
    along the lines of clipped trail pieces whose summed difference is
    significant (see the module docs); ``bright``: the binned map of bright
    sources, whose PSF residuals the test leaves out.  Returns the number of
    lines clipped."""
    if not cfg.enabled or cfg.line_sn <= 0:
        return 0
    n, rows, cols = clip.shape
    max_angle = math.radians(cfg.max_angle)
    found = {k: _lines(_pieces(clip[k], cfg), max_angle) for k in range(n)}
    found = {k: v for k, v in found.items() if v}
    if not found:
        return 0
    epochs = sorted(found)
    sig = _significance(stack, epochs, b, (rows, cols), chunks, run)
    avoid = np.zeros((rows, cols), dtype=bool)
    if bright is not None and bright.any():
        avoid = _dilate(bright, _disk(fwhm))
    taken = 0
    for s, k in enumerate(epochs):
        usable = np.isfinite(sig[s]) & ~clip[k] & ~avoid
        scored = [
            (_score(sig[s], usable, ln[:5], cfg.segment, fwhm), i) for i, ln in enumerate(found[k])
        ]
        done: set[int] = set()
        for z, i in sorted(scored, key=lambda t: (-t[0], t[1])):
            line = found[k][i]
            if z < cfg.line_sn:
                break
            if set(line[5]) <= done:
                continue  # these pieces' trail is already clipped
            done.update(line[5])
            # As wide as the piece, but no wider than a trail's PSF-matched
            # footprint (a piece merged with a star is wider).
            half = min(line[4], 2 * fwhm)
            strip = _strip((rows, cols), *line[:4], half)
            clip[k].reshape(-1)[strip[np.isfinite(sig[s].reshape(-1)[strip])]] = True
            taken += 1
    return taken
