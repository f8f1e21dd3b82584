"""Robust differencing: sentinels, mask growth, flux-ratio checks, small images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from skydm.diffim import DiffimConfig, ZogyConfig, detect_dia_sources, subtract
from skydm.errors import UserError
from skydm.image import Exposure, Mask
from skydm.sim.pair import simulate_pair


@pytest.fixture(scope="module")
def pair() -> tuple[Exposure, Exposure]:
    science, template, _ = simulate_pair(41, shape=(320, 320), n_stars=300)
    science.source, template.source = "sci41.fits", "tmp41.fits"
    return science, template


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_sentinels_masked_and_spread_no_further_than_the_kernel(
    pair: tuple[Exposure, Exposure], method: str
) -> None:
    science, template = pair
    tmp = template.copy()
    tmp.image = tmp.image.copy()
    tmp.image[150:155, 100:105] = np.float32(-3.4e38)  # a block of sentinels
    tmp.image[60, 200] = np.float32(1e30)
    tmp.image[230, 240] = np.float32(np.inf)
    tmp.image[90, 260] = np.float32(np.nan)
    result = subtract(science, tmp, method=method)
    diff = result.difference
    nodata = (diff.msk & np.uint32(Mask.NO_DATA)) != 0
    # The rest of the difference is finite and sane (a sentinel spread by an
    # FFT would turn everything to NaN or to 1e30-scale values).
    good = ~nodata
    assert np.isfinite(diff.image[good]).all()
    assert np.nanmax(np.abs(diff.image[good] / np.sqrt(diff.var[good]))) < 1e4
    # Growth: no further than the matching kernel's radius (AL) or the
    # PSF-filter radius (ZOGY) from a bad input pixel.
    if method == "al":
        assert result.kernel is not None
        radius = result.kernel.basis.size // 2
    else:
        radius = max(result.science_psf.kernel().shape[0], result.template_psf.kernel().shape[0])
        radius //= 2
    bad_in = np.zeros(diff.shape, dtype=bool)
    bad_in[150:155, 100:105] = True
    bad_in[60, 200] = bad_in[230, 240] = bad_in[90, 260] = True
    reach = ndimage.binary_dilation(bad_in, structure=np.ones((2 * radius + 3, 2 * radius + 3)))
    assert nodata[bad_in].all()
    assert not (nodata & ~reach).any()
    table = detect_dia_sources(result)
    near = np.zeros(len(table), dtype=bool)
    for k, (x, y) in enumerate(zip(table["x"], table["y"], strict=True)):
        near[k] = reach[round(y), round(x)]
    assert not (near & ~table["flagged"]).any()


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_negative_flux_ratio_names_both_images(
    pair: tuple[Exposure, Exposure], method: str
) -> None:
    science, template = pair
    inverted = science.copy()
    inverted.image = -science.image
    inverted.source = "inverted.fits"
    with pytest.raises(UserError) as err:
        subtract(inverted, template, method=method)
    msg = str(err.value)
    assert "inverted.fits" in msg and "tmp41.fits" in msg
    assert "flux ratio" in msg


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_unrelated_images_refused(pair: tuple[Exposure, Exposure], method: str) -> None:
    science, _ = pair
    _, other, _ = simulate_pair(977, shape=(320, 320), n_stars=300)
    other.source = "elsewhere.fits"
    other.wcs = science.wcs  # claims the same sky; holds other stars
    with pytest.raises(UserError) as err:
        subtract(science, other, method=method)
    msg = str(err.value)
    assert "sci41.fits" in msg and "elsewhere.fits" in msg


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_flux_ratio_far_from_zero_points_refused(
    pair: tuple[Exposure, Exposure], method: str
) -> None:
    science, template = pair
    sci = science.copy()
    sci.zero_point = template.zero_point + 2.0  # predicts a ratio of 6.3; the truth is 1
    with pytest.raises(UserError, match="zero points predict"):
        subtract(sci, template, method=method)
    # A wider tolerance (a --config field) accepts it.
    loose = DiffimConfig(zogy=ZogyConfig(ratio_tolerance=10.0))
    assert subtract(sci, template, method=method, config=loose).flux_ratio == pytest.approx(
        1.0, abs=0.05
    )


def test_non_positive_variance_refused(pair: tuple[Exposure, Exposure]) -> None:
    science, template = pair
    sci = science.copy()
    sci.variance = sci.var.copy()
    sci.variance[10:12, 10:12] = 0.0
    with pytest.raises(UserError, match="variance plane is zero, negative or NaN on 4"):
        subtract(sci, template)
    # Masked pixels may carry any variance.
    sci.mask = sci.msk.copy()
    sci.mask[10:12, 10:12] |= np.uint32(Mask.BAD)
    subtract(sci, template)


def test_zogy_robust_ratio_with_a_wrong_psf(pair: tuple[Exposure, Exposure]) -> None:
    """A given PSF that is too broad biases a PSF-fit ratio; the aperture ratio is not."""
    from skydm.image import MoffatPsf

    science, template = pair
    sci, tmp = science.copy(), template.copy()
    assert science.psf is not None and template.psf is not None
    sci.psf = MoffatPsf(science.psf.fwhm * 1.8, 3.5)
    tmp.psf = template.psf
    result = subtract(sci, tmp, method="zogy")
    assert result.flux_ratio == pytest.approx(1.0, abs=0.05)
    assert any("aperture ratio is used" in note for note in result.notes)
