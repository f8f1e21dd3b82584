"""A visit's PSFs cross-checked against each other: one detector's outlier replaced.

The seeing is one per visit; the PSF varies over a focal plane by a few
per cent at most, while a detector's own PSF fit rests on the few stars
that detector holds (3-7 on a 256^2 simulated detector).  When those
include a star with an unresolved neighbour or a compact galaxy that the
profile check kept, the fitted Moffat index drops (beta 2.2 against the
true 3.5 on seed 43's detector 0 in two r visits) and the PSF flux of every
star measured with it is 12-14% too high.  Averaged into a coadd PSF, one
such detector moved a field's median flux by 1-2%.

:func:`visit_consistent_kernels` compares each detector's PSF with the
pixel-wise median of its visit's PSFs (robust to one outlier among three
or more) in the quantity that matters downstream, the PSF flux of a star
with the visit's PSF measured with the detector's model, and replaces a
model that is off by more than ``tolerance`` by that median.  It needs
only the kernels and the visit each came from, so it runs where a visit's
detectors meet (the coadd PSF); a detector's own calexp keeps its own fit,
so prompt processing never needs another detector.  See ``docs/drp.md``,
*Visit-consistent PSFs*.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from skydm.errors import BadValueError

__all__ = ["VisitPsfCheck", "VisitPsfConfig", "psf_flux_bias", "visit_consistent_kernels"]


@dataclass(frozen=True)
class VisitPsfConfig:
    """Tunables of :func:`visit_consistent_kernels`.

    Parameters
    ----------
    tolerance : float
        Largest relative PSF-flux bias a detector's model may show against
        its visit's median PSF before it is replaced.  A focal plane's real
        PSF variation moves it by ~1% (a 2% FWHM change); the fits this
        catches are off by 4-14%.
    min_detectors : int
        Fewest PSFs of one visit for a median that one outlier cannot move
        (with two, neither can be told from the other).
    """

    tolerance: float = 0.03
    min_detectors: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance < 1.0:
            raise BadValueError("tolerance", self.tolerance, "a fraction in (0, 1)")
        if self.min_detectors < 3:
            raise BadValueError("min_detectors", self.min_detectors, "at least 3 PSFs per visit")


@dataclass(frozen=True)
class VisitPsfCheck:
    """What :func:`visit_consistent_kernels` gives back.

    Attributes
    ----------
    kernels : list of numpy.ndarray
        The kernels, outliers replaced by their visit's median (unit sum).
    bias : numpy.ndarray
        Each input kernel's PSF-flux bias against its visit's median (NaN
        where the visit had too few PSFs to check).
    replaced : tuple of int
        Indices of the kernels replaced.
    """

    kernels: list[np.ndarray]
    bias: np.ndarray
    replaced: tuple[int, ...]


def psf_flux_bias(truth: np.ndarray, model: np.ndarray) -> float:
    """Relative PSF-flux error of a star shaped ``truth`` fitted with ``model``.

    The PSF flux is the least-squares amplitude ``sum(d m) / sum(m m)`` of
    the unit-sum model ``m`` (uniform noise: the faint-star limit).

    Parameters
    ----------
    truth, model : numpy.ndarray
        Centred PSF images of one shape.

    Returns
    -------
    float
        Measured over true flux, minus one.
    """
    t = np.asarray(truth, dtype=np.float64)
    m = np.asarray(model, dtype=np.float64)
    t = t / t.sum()
    m = m / m.sum()
    return float(np.sum(t * m) / np.sum(m * m) - 1.0)


def visit_consistent_kernels(
    kernels: Sequence[np.ndarray],
    visits: Sequence[Hashable],
    config: VisitPsfConfig | None = None,
) -> VisitPsfCheck:
    """Replace each visit's outlying PSF kernels by the visit's median kernel.

    Parameters
    ----------
    kernels : sequence of numpy.ndarray
        PSF images of one shape, centred (one per detector-visit image).
    visits : sequence of hashable
        The visit of each kernel (with its band and instrument: any key that
        is shared exactly by one exposure's detectors).
    config : VisitPsfConfig, optional
        Tolerance and the fewest PSFs per visit; defaults otherwise.

    Returns
    -------
    VisitPsfCheck
        The kernels (replaced ones new arrays, the others as given), every
        kernel's bias and the indices replaced.
    """
    cfg = config or VisitPsfConfig()
    if len(kernels) != len(visits):
        raise BadValueError("visits", len(visits), f"one visit per kernel ({len(kernels)})")
    out = list(kernels)
    bias = np.full(len(kernels), np.nan)
    replaced: list[int] = []
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for k, visit in enumerate(visits):
        groups[visit].append(k)
    for members in groups.values():
        if len(members) < cfg.min_detectors:
            continue
        stack = np.stack([np.asarray(kernels[k], dtype=np.float64) for k in members])
        stack /= stack.sum(axis=(1, 2), keepdims=True)
        # The pixel-wise median: with three or more PSFs one outlier cannot
        # pull it, whichever way its profile errs.
        median = np.median(stack, axis=0)
        median = np.clip(median, 0.0, None)
        median /= median.sum()
        for k, kernel in zip(members, stack, strict=True):
            bias[k] = psf_flux_bias(median, kernel)
            if abs(bias[k]) > cfg.tolerance:
                out[k] = median.copy()
                replaced.append(k)
    return VisitPsfCheck(out, bias, tuple(sorted(replaced)))
