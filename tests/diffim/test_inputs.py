"""Bad input gives a clear error or a documented fallback; alignment onto the science WCS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from diffim_helpers import DECAM, ESO, read

from skydm.diffim import NoiseModel, detect_dia_sources, subtract
from skydm.diffim._prepare import align, prepare, same_grid
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure, GaussianPsf, Mask, VisitInfo

TRANSIENT = (130.0, 128.0)


def _noise_pair(rng: np.random.Generator, **kw: object) -> tuple[Exposure, Exposure]:
    info = VisitInfo(gain=2.0, read_noise=5.0)
    imgs = [rng.normal(0, 10, (128, 128)).astype(np.float32) for _ in range(2)]
    # The true variance (100), not the CCD equation's 6.25 for a sky-free
    # image: a 12-fold underestimate would put S_corr at 2.5 sigma rms.
    var = np.full((128, 128), 100.0, dtype=np.float32)
    return tuple(Exposure(i, var, info=info, **kw) for i in imgs)  # type: ignore[return-value]


def test_shapes_differ_without_wcs(data_dir: Path) -> None:
    science = read(data_dir / ESO.format(4))
    template = read(data_dir / ESO.format(5))
    template = Exposure(template.image[:600, :900], info=template.info, source=template.source)
    with pytest.raises(UserError, match="different pixel grids.*no WCS"):
        subtract(science, template)


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_no_stars(method: str) -> None:
    science, template = _noise_pair(np.random.default_rng(1))
    with pytest.raises(UserError, match="PSF|stars"):
        subtract(science, template, method=method)
    # With PSF models attached, AL still needs stars for its kernel ...
    science.psf, template.psf = GaussianPsf(2.0), GaussianPsf(1.5)
    if method == "al":
        with pytest.raises(UserError, match="stars"):
            subtract(science, template, method=method)
    else:
        with pytest.raises(UserError, match="flux ratio"):
            subtract(science, template, method=method)
        # ... and ZOGY falls back on the zero points when both have one.
        science.zero_point, template.zero_point = 27.0, 27.5
        result = subtract(science, template, method=method)
        assert result.flux_ratio == pytest.approx(10 ** (-0.2))
        assert any("zero points" in note for note in result.notes)
        table = detect_dia_sources(result)
        assert np.count_nonzero(~table["flagged"]) <= 2
        assert 0.85 <= table.meta["score_rms"] <= 1.15


def test_all_nan_image_is_an_error(data_dir: Path) -> None:
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    template.image = np.full(template.shape, np.nan, dtype=np.float32)
    with pytest.raises(UserError, match="every pixel is NaN"):
        subtract(science, template)


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_nan_region_is_masked_not_garbage(data_dir: Path, method: str) -> None:
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    template.image = template.image.copy()
    template.image[150:220, 20:90] = np.nan
    result = subtract(science, template, method=method)
    diff = result.difference
    region = (slice(150, 220), slice(20, 90))
    assert np.all(diff.msk[region] & Mask.NO_DATA)
    assert np.all(np.isnan(diff.image[region]))
    table = detect_dia_sources(result)
    inside = (table["x"] > 10) & (table["x"] < 100) & (table["y"] > 140) & (table["y"] < 230)
    assert not np.any(inside & ~table["flagged"])
    hit = table[np.hypot(table["x"] - TRANSIENT[0], table["y"] - TRANSIENT[1]) < 4]
    assert len(hit) == 1 and hit["snr"][0] >= 10
    # Outside the hole the difference is as clean as ever.
    quiet = (diff.msk == 0) & np.isfinite(diff.image)
    assert np.all(np.isfinite(diff.var[quiet]))


def test_missing_gain_fallback_and_override(data_dir: Path) -> None:
    science = read(data_dir / ESO.format(4))
    notes: list[str] = []
    fallback = prepare(science, "science", notes=notes)
    assert any("no gain" in n and "--gain" in n for n in notes)
    assert np.ptp(fallback.var) > 0  # sky noise plus the sources' own noise
    notes = []
    ccd = prepare(science, "science", gain=2.0, read_noise=10.0, notes=notes)
    assert any("CCD equation" in n for n in notes)
    expected = (np.clip(science.image, 0, None) / 2.0 + 25.0).astype(np.float32)
    assert np.allclose(ccd.var, expected, rtol=1e-5)
    with pytest.raises(BadValueError, match="gain"):
        subtract(science, science, science_noise=NoiseModel(gain=-1.0))


def test_bad_parameters(data_dir: Path) -> None:
    science = read(data_dir / DECAM.format("04a"))
    with pytest.raises(BadValueError, match="method"):
        subtract(science, science, method="hotpants")
    with pytest.raises(BadValueError, match="convolve"):
        subtract(science, science, convolve="both")
    with pytest.raises(BadValueError, match="threshold"):
        detect_dia_sources(science.copy(), threshold=-1)


def test_template_resampled_onto_science_wcs(data_dir: Path) -> None:
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    template.mask = template.msk.copy()
    template.msk[100, 60] |= np.uint32(Mask.BAD)
    # A 221-pixel cutout centred off the science centre: different shape and grid.
    cut = template.cutout(140.0, 125.0, 221)
    cut.source = "template cutout"
    notes: list[str] = []
    aligned = align(prepare(science, "science", notes=notes), prepare(cut, "t", notes=notes), notes)
    assert aligned.shape == science.shape
    assert any("resampled" in n for n in notes)
    # The cutout starts at (30, 15): integer shifts resample exactly.
    inside = (slice(25, 225), slice(40, 240))
    assert np.allclose(aligned.image[inside], template.image[inside], atol=1e-2)
    assert np.allclose(aligned.var[inside], template.var[inside], rtol=1e-4)
    assert aligned.msk[100, 60] & Mask.BAD
    assert np.all(aligned.msk[:, :30] & Mask.NO_DATA)
    result = subtract(science, cut)
    table = detect_dia_sources(result)
    hit = table[np.hypot(table["x"] - TRANSIENT[0], table["y"] - TRANSIENT[1]) < 4]
    assert len(hit) == 1 and hit["snr"][0] >= 10 and not hit["flagged"][0]
    assert np.count_nonzero(~table["flagged"]) <= 6


@pytest.mark.parametrize("method", ["al", "zogy"])
def test_result_template_on_science_grid(data_dir: Path, method: str) -> None:
    """``result.template`` lines up pixel for pixel with science and difference."""
    science = read(data_dir / DECAM.format("04a"))
    template = read(data_dir / DECAM.format("18a"))
    cut = template.cutout(140.0, 125.0, 221)  # another shape and grid: resampled
    result = subtract(science, cut, method=method)
    used = result.template
    assert used.shape == science.shape == result.difference.shape
    assert used.wcs is not None and science.wcs is not None
    ys, xs = np.mgrid[0:256:50, 0:256:50]
    assert np.allclose(
        used.wcs.pixel_to_world_values(xs, ys), science.wcs.pixel_to_world_values(xs, ys)
    )
    # The full template shares the science grid (within 0.02 pixel): its
    # brightest star in the overlap peaks at the same pixel, with the same value.
    assert same_grid(science, template)
    inside = (slice(25, 225), slice(40, 240))
    ref = np.where(template.msk[inside] == 0, template.image[inside], -np.inf)
    py, px = np.unravel_index(int(np.argmax(ref)), ref.shape)
    iy, ix = py + inside[0].start, px + inside[1].start
    stamp = used.image[iy - 2 : iy + 3, ix - 2 : ix + 3]
    assert np.unravel_index(int(np.argmax(stamp)), stamp.shape) == (2, 2)
    assert used.image[iy, ix] == pytest.approx(float(template.image[iy, ix]), rel=1e-4)
    assert np.all(used.msk[:, :30] & Mask.NO_DATA)
    # Before PSF matching: the template carries its own (sharper) PSF.
    assert used.psf is result.template_psf
    assert result.template_psf.fwhm < result.science_psf.fwhm
