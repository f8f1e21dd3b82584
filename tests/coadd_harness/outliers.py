"""Outlier pixels made by hand, and CompareWarp's cosmic-ray test on bare
arrays, for tests of its rules."""

from __future__ import annotations

from typing import Any

import numpy as np

from skydm.coadd._cw_cosmics import cosmic_ray_pixels, laplacian
from skydm.coadd._cw_footprints import OutlierPixels


def outlier_pixels(
    idx: np.ndarray, dabs: np.ndarray, n: int, **values: float | np.ndarray
) -> OutlierPixels:
    """An epoch's outlier pixels at ``idx`` for the rules' tests: ``values``
    (chi2, msig, peak, msn, alpha, chi2c) default to 0, every epoch in the model."""
    m = idx.size
    cols = {
        k: np.broadcast_to(np.asarray(values.get(k, 0.0), dtype=np.float32), (m,)).copy()
        for k in ("chi2", "msig", "peak", "msn", "alpha", "chi2c")
    }
    model = np.packbits(np.ones((m, n), dtype=bool), axis=1)
    return OutlierPixels(idx, np.asarray(dabs, dtype=np.float32), model=model, **cols)


def laplacian_scale(img: np.ndarray, var: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per epoch, the robust rms of ``lap(x) / sqrt(20 var)`` on the usable pixels of
    a grid of every third row and column off the edges, as CompareWarp's
    :func:`~skydm.coadd._cw_cosmics.cell_laplacian_scales` takes it over a
    cell (for tests on bare arrays)."""
    lap = laplacian(img)
    out = np.ones(img.shape[0])
    grid = (slice(1, -1, 3), slice(1, -1, 3))
    for k in range(img.shape[0]):
        ok = good[k][grid]
        vals = lap[k][grid][ok] / np.sqrt(20 * var[k][grid][ok])
        if vals.size >= 100:
            s = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
            out[k] = s if 0.05 < s < 20 else 1.0
    return out


def cosmic_rays(
    img: np.ndarray, var: np.ndarray, good: np.ndarray, bounds: np.ndarray, **options: Any
) -> np.ndarray:
    """:func:`~skydm.coadd._cw_cosmics.cosmic_ray_pixels` (with the same
    ``options``) as boolean hits, ``(n, rows, columns)``, not grown."""
    out = np.zeros(img.shape, dtype=bool)
    for k, flat in enumerate(cosmic_ray_pixels(img, var, good, bounds, **options)):
        out[k].reshape(-1)[flat] = True
    return out
