"""The template resampling of ``diffim`` against ``reproject_interp`` (what it replaced)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from skydm.diffim._prepare import align
from skydm.image import Exposure, Mask


def _wcs(crpix: tuple[float, float], rot_deg: float, scale_as: float = 0.2) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = np.array([[-c, s], [s, c]]) * scale_as / 3600.0
    return w


def test_align_matches_reproject_interp() -> None:
    rp = pytest.importorskip("reproject")
    rng = np.random.default_rng(3)
    ty, tx = 300, 320
    yy, xx = np.mgrid[0:ty, 0:tx]
    # A smooth image (bilinear interpolation of it is well defined) with a NaN hole.
    image = (np.sin(xx / 7.0) * np.cos(yy / 9.0) * 100 + 500).astype(np.float32)
    image[100:104, 50:53] = np.nan
    var = (image * 0 + rng.uniform(4, 6, image.shape)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint32)
    mask[200:210, 200:230] = Mask.SAT
    template = Exposure(image=image, variance=var, mask=mask, wcs=_wcs((160.0, 150.0), 0.0))
    science = Exposure(
        image=np.zeros((256, 270), np.float32), variance=np.ones((256, 270), np.float32),
        mask=np.zeros((256, 270), np.uint32), wcs=_wcs((120.3, 140.7), 1.5),
    )  # fmt: skip
    out = align(science, template, [])

    ref, foot = rp.reproject_interp(
        (image.astype(np.float64), template.wcs), science.wcs, shape_out=(256, 270), order=1
    )
    ref_nodata = (foot < 0.99) | ~np.isfinite(ref)
    nodata = (out.msk & Mask.NO_DATA) != 0
    # The same pixels have data (up to a handful on the template's edge) ...
    assert np.sum(nodata != ref_nodata) <= 0.002 * nodata.size
    both = ~nodata & ~ref_nodata
    assert both.sum() > 0.8 * both.size
    # ... and the same values there.
    np.testing.assert_allclose(out.image[both], ref[both], rtol=0, atol=1e-3)
    ref_m, _ = rp.reproject_interp(
        (mask.astype(np.float64), template.wcs), science.wcs, shape_out=(256, 270),
        order="nearest-neighbor",
    )  # fmt: skip
    sat = (out.msk & Mask.SAT) != 0
    ref_sat = (np.nan_to_num(ref_m).astype(np.uint32) & Mask.SAT) != 0
    assert np.sum(sat[both] != ref_sat[both]) <= 2 and sat.sum() > 200
