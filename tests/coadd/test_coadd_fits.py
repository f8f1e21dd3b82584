"""CompareWarp's streak fits in worker processes (skydm.coadd._cw_fits) give the
fits made one by one, bit for bit, in the candidates' order."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from skydm.coadd._cw_fits import MIN_PARALLEL, fit_candidates
from skydm.coadd._cw_streaks import Candidate, fit_streak
from skydm.image import GaussianPsf, MoffatPsf

SIDE = 64


def _trail(k: int, angle: float, flux: float, seed: int) -> Candidate:
    """A faint trail across a footprint of epoch ``k``, with white noise."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    dist = (xx - SIDE / 2) * math.sin(angle) - (yy - SIDE / 2) * math.cos(angle)
    signal = flux * np.exp(-0.5 * (dist / 1.8) ** 2)
    foot = np.abs(dist) < 8
    index = np.flatnonzero(foot)
    rng = np.random.default_rng(seed)
    d = (signal + rng.normal(0, 1.0, signal.shape)).reshape(-1)[index]
    return Candidate(k, index, d, np.ones(index.size), np.ones(index.size, dtype=bool))


def test_parallel_fits_equal_serial_fits_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    psfs = [MoffatPsf(3.5), GaussianPsf.from_fwhm(3.0), None]
    # Epoch 2 has no PSF: its candidate is not fitted.  Epochs interleave, so
    # that the results must be put back in the candidates' order.
    cands = [
        _trail(k % 3, 0.3 + 0.4 * i, 1.5 if i % 4 else 40.0, seed=i) for i, k in enumerate(range(7))
    ]
    assert len(cands) >= MIN_PARALLEL
    serial = fit_candidates(cands, psfs, SIDE, workers=1)
    # Called from a thread, the fits are made in the calling process.
    with ThreadPoolExecutor(1) as pool:
        in_thread = pool.submit(fit_candidates, cands, psfs, SIDE, workers=2).result()
    # The worker processes are forked only where no other Python thread runs;
    # a test runner's own thread must not make this test compare serial fits.
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    parallel = fit_candidates(cands, psfs, SIDE, workers=2)
    assert len(serial) == len(parallel) == len(cands)
    fitted = 0
    for c, a, b, t in zip(cands, serial, parallel, in_thread, strict=True):
        psf = psfs[c.k]
        one = None if psf is None else fit_streak(c, SIDE, psf)
        assert (a is None) == (b is None) == (one is None) == (t is None)
        if a is None or b is None or one is None or t is None:
            continue
        fitted += 1
        for s in (b, one, t):
            assert s.k == a.k
            np.testing.assert_array_equal(s.index, a.index)
            np.testing.assert_array_equal(s.value, a.value)
            ends = (s.x0, s.y0, s.x1, s.y1, s.flux, s.chi2)
            assert ends == (a.x0, a.y0, a.x1, a.y1, a.flux, a.chi2)
    # Faint trails are modelled (the bright ones stay replaced): the test
    # compares real fits, not only Nones.
    assert fitted >= 2
