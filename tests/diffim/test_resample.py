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


def test_compiled_warp_equals_the_pixel_map_sampling() -> None:
    """One compiled pass gives map_coordinates' and the nearest pixel's planes, bit for bit."""
    from skydm.diffim import _resample

    rng = np.random.default_rng(11)
    ty, tx = 140, 150
    image = (500 + 50 * rng.standard_normal((ty, tx))).astype(np.float32)
    image[60:63, 70:72] = np.nan
    var = rng.uniform(4, 6, (ty, tx)).astype(np.float32)
    var[20:24, 30:33] = np.inf  # NO_DATA variance
    mask = rng.integers(0, 4, (ty, tx)).astype(np.uint32) * np.uint32(Mask.SAT)
    tw, sw = _wcs((75.0, 70.0), 0.0), _wcs((60.3, 86.7), 1.5)
    pm = _resample.pixel_map(sw, tw, (128, 136), (ty, tx))
    img, v, m = _resample.warp(pm, image, var, mask, int(Mask.NO_DATA))
    ref = _resample.sample_bilinear(image, pm)
    ref_v = _resample.sample_bilinear(var, pm)
    ref_m = _resample.sample_nearest(mask, pm)
    nodata = ~pm.inside | ~np.isfinite(ref)
    ref[nodata], ref_v[nodata] = np.nan, np.inf
    ref_m[nodata] |= np.uint32(Mask.NO_DATA)
    assert 0.05 * nodata.size < nodata.sum() < 0.5 * nodata.size
    assert img.tobytes() == ref.tobytes()
    assert np.array_equal(v, ref_v, equal_nan=True)
    assert (~np.isfinite(v) & ~nodata).any()  # next to the infinite variance
    assert np.array_equal(m, ref_m)


def test_pixel_map_interpolates_the_knots_as_the_matrix_products() -> None:
    """The compiled bilinear pass against ``wy @ c @ wx.T`` (what it replaced) and the WCS."""
    from skydm.diffim import _resample

    ty, tx = 200, 210
    tw, sw = _wcs((110.0, 95.0), 0.0), _wcs((90.3, 101.7), 1.2)
    ny, nx = 190, 205
    pm = _resample.pixel_map(sw, tw, (ny, nx), (ty, tx))
    step = _resample.FIRST_STEP_PX
    my, mx = -(-(ny - 1) // step) + 1, -(-(nx - 1) // step) + 1
    ky, kx = np.linspace(0, ny - 1, my), np.linspace(0, nx - 1, mx)
    cx, cy = _resample._exact(sw, tw, *np.meshgrid(kx, ky))

    def weights(n: int, m: int) -> np.ndarray:
        lo, frac = _resample._knots(n, m)
        w = np.zeros((n, m))
        w[np.arange(n), lo] = 1.0 - frac
        w[np.arange(n), lo + 1] += frac
        return w

    wy, wx = weights(ny, my), weights(nx, mx)
    np.testing.assert_allclose(pm.x, wy @ cx @ wx.T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pm.y, wy @ cy @ wx.T, rtol=0, atol=1e-9)
    ex, ey = _resample._exact(sw, tw, *np.meshgrid(np.arange(nx), np.arange(ny)))
    assert np.max(np.hypot(pm.x - ex, pm.y - ey)) <= _resample.MAP_TOLERANCE_PX
    inside = (ex >= -0.5) & (ex <= tx - 0.5) & (ey >= -0.5) & (ey <= ty - 0.5)
    assert (~pm.inside).sum() > 0.1 * inside.size
    assert np.sum(pm.inside != inside) <= 0.001 * inside.size
