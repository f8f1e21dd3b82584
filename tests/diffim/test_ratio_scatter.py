"""The unrelated-images check's scatter: beyond the stars' noise, not the raw spread.

A single shallow visit against a deep template gives stars whose flux ratios
scatter by a third of the ratio from photon noise alone; the check refused
such correct pairs (issue 12, ``test_run.py``'s ``ap`` run) when it compared
the raw spread with half the ratio.
"""

from __future__ import annotations

import numpy as np

from skydm.diffim._stars import flux_ratio


def _stars(n: int, ratio: float, rel_err: float, intrinsic: float, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    tmp = rng.uniform(2e3, 2e4, n)
    err = rel_err * ratio * tmp
    true = ratio * tmp * (1 + intrinsic * rng.standard_normal(n))
    sci = true + err * rng.standard_normal(n)
    return sci, err, tmp, np.full(n, 1.0)


def test_noisy_shared_stars_have_no_excess_scatter() -> None:
    # 40% noise per star, the same ratio for all: the raw spread is ~0.4 of
    # the ratio, the spread beyond the noise small.
    fit = flux_ratio(*_stars(17, 74.0, 0.4, 0.0, seed=1))
    assert abs(fit.value / 74.0 - 1) < 0.2
    assert fit.scatter < 0.25 * fit.value


def test_ratios_that_differ_star_to_star_keep_their_scatter() -> None:
    # Precise fluxes (2%) whose ratios differ by 80% from star to star:
    # the images do not show the same stars.
    fit = flux_ratio(*_stars(17, 74.0, 0.02, 0.8, seed=2))
    assert fit.scatter > 0.5 * fit.value
