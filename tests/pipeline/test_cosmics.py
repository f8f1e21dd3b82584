"""Tiled L.A.Cosmic: the same mask as the whole-frame run, at a fraction of the cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skydm.image import Mask, read_exposure
from skydm.pipeline._cosmic_bounds import candidate_pixels, laplacian_plus
from skydm.pipeline.cosmics import (
    CosmicRayConfig,
    dilate_sparse,
    near_marked,
    repair_cosmic_rays,
)
from skydm.pipeline.isr import remove_signature

astroscrappy = pytest.importorskip("astroscrappy")


@pytest.mark.parametrize("reach", [1, 2, 4, 7])
def test_sparse_dilations_equal_the_iterated_dilation(reach: int) -> None:
    """The saturation margin looked up at the hits: binary_dilation's set, border included."""
    from scipy import ndimage

    rng = np.random.default_rng(reach)
    marked = rng.random((90, 70)) > 0.995
    marked[0, 5] = marked[-1, -1] = True
    at = rng.random(marked.shape) > 0.7
    ref = ndimage.binary_dilation(marked, iterations=reach)
    assert np.array_equal(near_marked(marked, at, reach), ref[at])
    assert np.array_equal(dilate_sparse(marked, reach), ref)


utils = pytest.importorskip("astroscrappy.utils")


def _cr_mask(raw, config: CosmicRayConfig) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    exp = remove_signature(raw).exposure
    gain = exp.require_gain("the test")
    image = repair_cosmic_rays(
        exp, exp.image, gain=gain, read_noise=exp.info.read_noise, config=config
    )
    return (exp.msk & np.uint32(Mask.CR)) != 0, image


@pytest.fixture(scope="module")
def crowded_visits():  # type: ignore[no-untyped-def]
    """A 384x384 simulated raw: crowded, sharp seeing, many cosmic rays."""
    from skydm.sim import SurveyConfig, simulate_survey

    survey = simulate_survey(
        SurveyConfig(
            seed=303, shape=(384, 384), n_visits=1, n_stars=450, n_galaxies=120,
            seeing_range=(0.55, 0.8), artefacts=("cosmic_rays",), cosmic_ray_rate=80.0,
        )
    )  # fmt: skip
    return survey.visits


def test_tiled_mask_equals_whole_frame_on_simulated_raws(crowded_visits) -> None:  # type: ignore[no-untyped-def]
    flagged = 0
    for v in crowded_visits:
        tiled, image_t = _cr_mask(v.raw, CosmicRayConfig())
        whole, image_w = _cr_mask(v.raw, CosmicRayConfig(tiled=False))
        assert np.array_equal(tiled, whole), f"{int((tiled ^ whole).sum())} pixels differ"
        assert np.array_equal(image_t, image_w)
        flagged += int(whole.sum())
    assert flagged > 300  # the comparison covers many cosmic rays


def test_banded_tiles_equal_whole_frame_beside_a_dead_column(crowded_visits) -> None:  # type: ignore[no-untyped-def]
    """An unflagged dead column makes its neighbours candidates in every row: the
    region is cut into bands of ``tile_rows`` (here 64 of 400 padded rows), same mask."""
    from scipy import ndimage

    from skydm.pipeline._cosmic_bounds import dilate_box
    from skydm.pipeline.cosmics import tile_boxes

    raw = crowded_visits[0].raw.copy()
    raw.image[:, 201] = 0.0  # as a written raw holds it: no BAD mask
    raw.msk[:, 201] = 0
    cfg = CosmicRayConfig(tile_rows=64)
    tiled, image_t = _cr_mask(raw, cfg)
    whole, image_w = _cr_mask(raw, CosmicRayConfig(tiled=False))
    assert np.array_equal(tiled, whole), f"{int((tiled ^ whole).sum())} pixels differ"
    assert np.array_equal(image_t, image_w)
    assert whole.sum() > 300
    # The column's region was banded: some tile gives fewer rows than its region spans.
    exp = remove_signature(raw).exposure
    padded = np.pad(exp.image, 8, mode="symmetric").astype(np.float32)
    seeds = candidate_pixels(
        padded * np.float32(exp.require_gain("the test")), np.ones(padded.shape, bool),
        read_noise=exp.info.read_noise, config=cfg,
    )  # fmt: skip
    labels, _ = ndimage.label(dilate_box(seeds, cfg.tile_margin))
    spans = {i + 1: b[0] for i, b in enumerate(ndimage.find_objects(labels)) if b is not None}
    tiles = tile_boxes(labels, cfg)
    assert any(t.rows != spans[t.label] for t in tiles)
    # Every row of every region is given by exactly one tile.
    for label, span in spans.items():
        given = [r for t in tiles if t.label == label for r in range(t.rows.start, t.rows.stop)]
        assert sorted(given) == list(range(span.start, span.stop))


@pytest.mark.parametrize("stamp", ["DEC-OBS04c", "DEC-OBS18b"])
def test_tiled_mask_equals_whole_frame_on_real_decam(data_dir: Path, stamp: str) -> None:
    raw = read_exposure(data_dir / "decam_pair" / f"input_data__{stamp}.mini.fits")
    tiled, _ = _cr_mask(raw, CosmicRayConfig())
    whole, _ = _cr_mask(read_exposure(data_dir / "decam_pair" / f"input_data__{stamp}.mini.fits"),
                        CosmicRayConfig(tiled=False))  # fmt: skip
    assert np.array_equal(tiled, whole), f"{stamp}: {int((tiled ^ whole).sum())} pixels differ"


def test_candidates_hold_every_first_iteration_hit(crowded_visits) -> None:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    exp = remove_signature(crowded_visits[0].raw).exposure
    gain, rn = exp.require_gain("the test"), exp.info.read_noise
    data = exp.image.astype(np.float32)
    cfg = CosmicRayConfig()
    seeds = candidate_pixels(
        data * np.float32(gain), np.ones(data.shape, bool), read_noise=rn, config=cfg
    )
    first, _ = astroscrappy.detect_cosmics(
        data, sigclip=cfg.sigclip, sigfrac=cfg.sigfrac, objlim=cfg.objlim, gain=gain,
        readnoise=rn, satlevel=1e30, niter=1, sepmed=True, cleantype="meanmask",
    )  # fmt: skip
    # astroscrappy grows its hits twice by one pixel (3x3) before returning them.
    grown = ndimage.binary_dilation(seeds, structure=np.ones((3, 3)), iterations=2)
    assert first.sum() > 100
    # astroscrappy's medians copy a border of up to 4 pixels unfiltered (the
    # calibration pads the image by 8 against it): the bounds hold inside.
    inner = (slice(9, -9), slice(9, -9))
    assert not (first & ~grown)[inner].any()
    # And the bounds are tight enough to pay: few candidates per hit.
    assert seeds.sum() < 2 * first.sum()


def test_laplacian_and_fine_structure_match_astroscrappy() -> None:
    from skydm.pipeline._cosmic_bounds import _fine_structure

    rng = np.random.default_rng(5)
    image = (1000.0 + 30.0 * rng.standard_normal((120, 130))).astype(np.float32)
    image[40, 50] += 4000.0
    image[70:74, 90] += 2500.0
    ref = utils.rebin(np.clip(utils.laplaceconvolve(utils.subsample(image)), 0, None))
    lap = laplacian_plus(image)
    assert np.allclose(lap[1:-1, 1:-1], ref[1:-1, 1:-1], rtol=1e-5, atol=1e-2)
    med5 = utils.sepmedfilt5(image)
    fine = med5 - utils.sepmedfilt9(med5)
    ys, xs = np.mgrid[8:112, 8:122]
    got = _fine_structure(image, ys.ravel(), xs.ravel())
    assert np.array_equal(got, fine[ys.ravel(), xs.ravel()])


def test_tiling_config_is_validated() -> None:
    from skydm.errors import BadValueError

    with pytest.raises(BadValueError, match="tile_margin/keep_margin"):
        CosmicRayConfig(tile_margin=12, keep_margin=12)
    with pytest.raises(BadValueError, match="tile_rows"):
        CosmicRayConfig(tile_rows=8)


def _reference_interpolate(image: np.ndarray, unusable: np.ndarray, targets: np.ndarray):  # type: ignore[no-untyped-def]
    """The full-frame definition: masked box means from box filters of image and weights."""
    from scipy import ndimage

    out = image.copy()
    good = np.where(unusable, 0.0, image).astype(np.float64)
    weight = (~unusable).astype(np.float64)
    todo = targets.copy()
    for size in (5, 9, 17, 33):
        total = ndimage.uniform_filter(good, size, mode="constant")
        count = ndimage.uniform_filter(weight, size, mode="constant")
        fill = todo & (count > 0.5 / size**2)
        out[fill] = (total[fill] / count[fill]).astype(out.dtype)
        todo &= ~fill
    return out


def test_interpolation_at_the_targets_equals_the_box_filters() -> None:
    from skydm.pipeline.cosmics import _interpolate

    rng = np.random.default_rng(8)
    image = (1000.0 + 30.0 * rng.standard_normal((90, 110))).astype(np.float32)
    targets = rng.random(image.shape) < 0.01
    targets[0, :6] = targets[-1, -1] = True  # at the edges
    targets[30:42, 50:62] = True  # a blob wider than the first box
    unusable = targets | (rng.random(image.shape) < 0.05)
    unusable[60:, :40] = True  # a long dead region: the widest box
    targets[75, 10] = True
    got = _interpolate(image, unusable, targets)
    ref = _reference_interpolate(image, unusable, targets)
    assert np.allclose(got, ref, rtol=2e-7, atol=0)
    assert not np.array_equal(got, image)


def _reference_candidates(  # type: ignore[no-untyped-def]
    electrons: np.ndarray, good: np.ndarray, read_noise: float, cfg: CosmicRayConfig
):
    """The bounds with full-frame numpy and scipy filters (what the compiled pass replaced)."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy import ndimage

    lap = laplacian_plus(electrons)
    var = ndimage.minimum_filter(electrons, size=7, mode="nearest") + np.float32(read_noise**2)
    noise = np.sqrt(np.maximum(var, np.float32(1e-5)))
    cand = good & (lap > np.float32(0.98 * 2.0 * cfg.sigclip) * noise)
    ys, xs = np.nonzero(cand)
    padded = np.pad(electrons, 6, mode="edge")
    offsets = np.arange(-6, 7)
    win = padded[ys[:, None, None] + 6 + offsets[None, :, None], xs[:, None, None] + 6 + offsets]
    rows = np.median(sliding_window_view(win, 5, axis=2), axis=-1)
    med5 = np.median(sliding_window_view(rows, 5, axis=1), axis=-1)
    fine = med5[:, 4, 4] - np.median(np.median(med5, axis=2), axis=1)
    bound = lap[ys, xs] / (2.0 * np.maximum(fine, 0.01 * noise[ys, xs]))
    cand[ys, xs] = bound > 0.98 * cfg.objlim
    return cand


def test_candidates_equal_the_full_frame_definition(crowded_visits) -> None:  # type: ignore[no-untyped-def]
    exp = remove_signature(crowded_visits[0].raw).exposure
    electrons = (exp.image * np.float32(exp.require_gain("the test"))).astype(np.float32)
    good = np.ones(electrons.shape, dtype=bool)
    good[:3] = good[:, -5:] = False
    cfg = CosmicRayConfig()
    got = candidate_pixels(electrons, good, read_noise=5.0, config=cfg)
    ref = _reference_candidates(electrons, good, 5.0, cfg)
    assert np.array_equal(got, ref)
    assert 20 < got.sum() < 0.05 * got.size


@pytest.mark.parametrize("half", [0, 3, 16])
def test_box_dilation_equals_the_maximum_filter(half: int) -> None:
    from scipy import ndimage

    from skydm.pipeline._cosmic_bounds import dilate_box

    rng = np.random.default_rng(half)
    for density in (0.002, 0.3):  # painted, and the dense fallback
        seeds = rng.random((97, 120)) < density
        seeds[0, 0] = seeds[-1, 60] = seeds[50, -1] = True  # at the edges
        ref = ndimage.maximum_filter(seeds, size=2 * half + 1)
        assert np.array_equal(dilate_box(seeds, half), ref)
