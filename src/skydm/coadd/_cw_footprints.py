"""Sparse outlier footprints of CompareWarp: connected components of one
epoch's outlier pixels on the binned grid, kept as flat indices with labels,
and the small morphology helpers the rules need (:mod:`skydm.coadd._cw_rules`).

Footprints cover a few per cent of the grid, so they are labelled from
their own pixels (``scipy.sparse.csgraph``) rather than by whole-grid
``ndimage.label``, with the same numbering (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass
class OutlierPixels:
    """One epoch's outlier pixels (binned grid), with the local fit of the
    epoch's difference by a multiple of the model (see
    :func:`skydm.coadd._cw_differences.band_differences`).

    Attributes
    ----------
    idx : numpy.ndarray
        Flat indices of the pixels, ascending.
    sig : numpy.ndarray
        Their significance (positive: brighter than the other epochs).
    chi2 : numpy.ndarray
        Reduced chi-square of the fit by a multiple of the model.
    msig : numpy.ndarray
        The model's S/N over the fit window.
    peak : numpy.ndarray
        The model at the pixel over its local maximum.
    msn : numpy.ndarray
        The model's S/N at the pixel.
    alpha, chi2c : numpy.ndarray
        The multiple and reduced chi-square of the fit with a constant.
    model : numpy.ndarray
        ``(m, ceil(n / 8))`` uint8: the epochs the model holds at the pixel,
        as packed bits (``numpy.packbits``), for any number of epochs.
    """

    idx: np.ndarray
    sig: np.ndarray
    chi2: np.ndarray
    msig: np.ndarray
    peak: np.ndarray
    msn: np.ndarray
    alpha: np.ndarray
    chi2c: np.ndarray
    model: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[OutlierPixels], n_epochs: int) -> OutlierPixels:
        """The parts (bands in order) as one."""
        names = [f.name for f in fields(cls)]
        if not parts:
            out = {k: np.zeros(0, dtype=np.float32) for k in names}
            out["idx"] = np.zeros(0, dtype=np.int64)
            out["model"] = np.zeros((0, -(-n_epochs // 8)), dtype=np.uint8)
            return cls(**out)
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


class _Labels(NamedTuple):
    """Labelled pixels of a grid: flat indices (ascending), their labels 1..n."""

    pix: np.ndarray
    lab: np.ndarray
    n: int


def _disk(radius: float) -> np.ndarray:
    r = math.ceil(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius + 1e-9


def _components(pix: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """4-connected components of the pixels at ascending flat indices ``pix``.

    Labels run 1..n in raster order of each component's first pixel, as
    ``ndimage.label`` numbers them, at a cost that grows with the pixels
    given rather than with the grid.
    """
    m = pix.size
    if m == 0:
        return np.zeros(0, dtype=np.int64), 0
    node = np.arange(m)
    right = (pix[1:] == pix[:-1] + 1) & (pix[:-1] % width != width - 1)
    below = np.searchsorted(pix, pix + width)
    has = below < m
    has[has] = pix[below[has]] == pix[has] + width
    rows = np.concatenate([node[:-1][right], node[has]])
    cols = np.concatenate([node[1:][right], below[has]])
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(m, m))
    n, lab = connected_components(graph.tocsr(), directed=False)
    return lab.astype(np.int64) + 1, int(n)


def _label_at(labels: _Labels, idx: np.ndarray) -> np.ndarray:
    """Label of each flat index ``idx`` (0 where unlabelled)."""
    if labels.pix.size == 0:
        return np.zeros(idx.size, dtype=np.int64)
    pos = np.minimum(np.searchsorted(labels.pix, idx), labels.pix.size - 1)
    return np.where(labels.pix[pos] == idx, labels.lab[pos], 0)


def _groups(
    labels: _Labels, wanted: np.ndarray, width: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(label, rows, columns) of the pixels of each label in ``wanted`` (sorted),
    pixels in raster order as ``np.nonzero(lab == label)`` gives them."""
    if wanted.size == 0:
        return
    lut = np.zeros(labels.n + 1, dtype=bool)
    lut[wanted] = True
    mask = lut[labels.lab]
    pix, lab = labels.pix[mask], labels.lab[mask]
    order = np.argsort(lab, kind="stable")
    pix, lab = pix[order], lab[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ends = np.r_[starts[1:], lab.size]
    for a, b in zip(starts, ends, strict=True):
        ys, xs = np.divmod(pix[a:b], width)
        yield int(lab[a]), ys, xs


def _footprints(code: np.ndarray, sign: int, streak_length: float, aspect: float) -> _Labels:
    """Outlier footprints of one epoch and sign.

    Regions of ``code * sign >= 1`` that hold a seed (``code * sign >= 2``),
    plus seedless regions that are long and thin (:func:`_is_streak`): a faint
    trail is never 5 sigma anywhere but runs above the lower threshold for
    hundreds of pixels, which noise does not.
    """
    signed = code.ravel() * np.int8(sign)
    pix = np.flatnonzero(signed >= 1)
    lab, nlab = _components(pix, code.shape[1])
    if nlab == 0:
        return _Labels(pix, lab, 0)
    keep = np.zeros(nlab + 1, dtype=bool)
    keep[lab[signed[pix] >= 2]] = True
    if streak_length > 0:
        sizes = np.bincount(lab, minlength=nlab + 1)
        long = np.flatnonzero((sizes >= streak_length) & ~keep)
        for label, ys, xs in _groups(_Labels(pix, lab, nlab), long[long > 0], code.shape[1]):
            if _is_streak(ys, xs, streak_length, aspect):
                keep[label] = True
    keep[0] = False
    # Kept footprints renumbered 1.. in their order (that of labelling the kept map).
    renumber = np.cumsum(keep)
    sel = keep[lab]
    return _Labels(pix[sel], renumber[lab[sel]], int(renumber[-1]))


def _is_streak(ys: np.ndarray, xs: np.ndarray, min_length: float, aspect: float) -> bool:
    """Whether pixels (ys, xs) form a straight strip at least ``min_length`` long
    and ``aspect`` times longer than wide (from their second moments)."""
    cov = np.cov(np.vstack([xs, ys]).astype(np.float64))
    evals = np.linalg.eigvalsh(cov)
    length, width = math.sqrt(12 * max(evals[1], 0)), math.sqrt(12 * max(evals[0], 0))
    return length >= min_length and length >= aspect * max(width, 1.0)


def _dilate(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``ndimage.binary_dilation(mask, structure)`` for a disk (each row of the
    structure one centred run): a horizontal growth per run width, then one
    shifted OR per row, instead of a test of every structure pixel everywhere."""
    r = structure.shape[0] // 2
    half = structure.sum(axis=1) // 2
    grown = {0: mask}
    h = mask.copy()
    for w in range(1, int(half.max()) + 1):
        h[:, w:] |= mask[:, :-w]
        h[:, :-w] |= mask[:, w:]
        grown[w] = h.copy()
    out, rows = np.zeros_like(mask), mask.shape[0]
    for i, w in enumerate(half):
        dy = i - r
        if not structure[i].any() or abs(dy) >= rows:
            continue
        if dy >= 0:
            out[dy:] |= grown[int(w)][: rows - dy]
        else:
            out[:dy] |= grown[int(w)][-dy:]
    return out
