"""Outlier pixels made by hand, for tests of CompareWarp's rules."""

from __future__ import annotations

import numpy as np

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
