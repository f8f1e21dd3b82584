"""Sky grid, warping and assembly on small synthetic images with analytic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from scipy import ndimage

from coadd_harness.outliers import outlier_pixels
from skydm.coadd import SkyCell, SkyGrid, WarpStack, assemble_coadd, tan_wcs, warp_exposure
from skydm.coadd.assemble import masked_median
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure, GaussianPsf, Mask, MoffatPsf, PixelPsf

CELL = SkyCell.centred(150.0, 2.0, (96, 96), 0.2)


def _star_image(
    shape: tuple[int, int], x: float, y: float, flux: float, sigma: float
) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    return (
        flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) / (2 * math.pi * sigma**2)
    )


def _warp(image: np.ndarray, var: float = 1.0, psf_sigma: float = 1.5, **kw: object) -> Exposure:
    return Exposure(
        image.astype(np.float32),
        np.full(image.shape, var, dtype=np.float32),
        wcs=CELL.wcs,
        psf=GaussianPsf(psf_sigma),
        zero_point=28.0,
        **kw,  # type: ignore[arg-type]
    )


# -- sky grid ---------------------------------------------------------------
def test_grid_cells_round_trip_and_contain_their_centre() -> None:
    grid = SkyGrid(150.0, 2.0, 0.05, 0.2, margin=20)
    cell = grid.cell_containing(150.0, 2.0)
    assert abs(cell.ra - 150.0) < 1e-9 and abs(cell.dec - 2.0) < 1e-9
    assert grid.cell_by_id(cell.id) == cell
    assert cell.shape == (900 + 40, 900 + 40)
    x, y = cell.wcs.world_to_pixel_values(cell.ra, cell.dec)
    assert abs(x - (cell.shape[1] - 1) / 2) < 1e-6 and abs(y - (cell.shape[0] - 1) / 2) < 1e-6
    # Pixel scale of the cell's WCS is the grid's.
    ra1, _ = cell.wcs.pixel_to_world_values(x + 1, y)
    assert abs((cell.ra - ra1) * 3600 * math.cos(math.radians(2.0)) - 0.2) < 1e-6
    with pytest.raises(BadValueError, match="skycell"):
        grid.cell_by_id("nope")


def test_cells_overlapping_finds_neighbours_and_nothing_far_away() -> None:
    grid = SkyGrid(150.0, 2.0, 0.05, 0.2, margin=20)
    # An image 0.06 deg across centred on a cell corner touches 4 cells.
    corner_ra, corner_dec = 150.0 + 0.025 / math.cos(math.radians(2.0)), 2.025
    wcs = tan_wcs(corner_ra, corner_dec, (1080, 1080), 0.2)
    cells = grid.cells_overlapping(wcs, (1080, 1080))
    assert len(cells) == 4
    assert grid.cell_containing(150.0, 2.0).id in {c.id for c in cells}
    far = tan_wcs(10.0, -40.0, (100, 100), 0.2)
    assert all(c.overlap_bbox(far, (100, 100)) is None for c in cells)


# -- warping ----------------------------------------------------------------
def test_warp_of_shifted_image_is_an_exact_shift_with_mask_and_no_data() -> None:
    shape = (80, 80)
    rng = np.random.default_rng(1)
    image = rng.normal(0, 1, shape).astype(np.float32)
    wcs = CELL.wcs
    wcs.wcs.crpix = wcs.wcs.crpix - np.array([5.0, 3.0])  # input pixel (i, j) = cell (i+5, j+3)
    mask = np.zeros(shape, dtype=np.uint32)
    mask[40, 40] = Mask.SAT
    exp = Exposure(image, np.ones(shape, np.float32), mask, wcs=wcs, psf=GaussianPsf(1.5))
    w = warp_exposure(exp, CELL)
    inner = w.image[3 + 1 : 3 + 79, 5 + 1 : 5 + 79]
    expect = image[1:79, 1:79].copy()
    expect[39, 39] = 0.0  # the saturated pixel is zeroed (and flagged), not interpolated
    assert np.allclose(inner, expect, atol=1e-4)
    assert w.msk[43, 45] & Mask.SAT
    assert w.msk[0, 0] & Mask.NO_DATA and w.msk[95, 95] & Mask.NO_DATA
    assert not (w.msk[50, 20] & Mask.NO_DATA)
    assert isinstance(w.psf, GaussianPsf) and w.psf.sigma == 1.5


def test_warp_conserves_flux_and_rescales_psf_and_zero_point() -> None:
    shape = (60, 60)
    fine = tan_wcs(150.0, 2.0, shape, 0.15)  # input pixels smaller than the cell's
    exp = Exposure(
        _star_image(shape, 29.5, 29.5, 1000.0, 2.0).astype(np.float32),
        np.ones(shape, np.float32),
        wcs=fine,
        psf=MoffatPsf(4.0),
        zero_point=27.0,
    )
    w = warp_exposure(exp, CELL, zero_point=28.0)
    # Flux is conserved across the change of pixel scale, then scaled to the zero point.
    expected = 1000.0 * 10 ** (0.4 * 1.0)
    assert abs(w.image.sum() / expected - 1) < 0.01
    assert isinstance(w.psf, MoffatPsf) and abs(w.psf.fwhm - 3.0) < 1e-9
    assert w.zero_point == 28.0


def test_warp_of_an_image_elsewhere_is_a_clear_error() -> None:
    exp = Exposure(np.zeros((20, 20), np.float32), wcs=tan_wcs(10.0, -40.0, (20, 20), 0.2))
    with pytest.raises(UserError, match="does not overlap sky cell"):
        warp_exposure(exp, CELL)


# -- assembly ---------------------------------------------------------------
def test_weighted_mean_median_and_clipped_match_analytic_values() -> None:
    values = [1.0, 2.0, 3.0, 100.0]
    variances = [1.0, 2.0, 4.0, 1.0]
    warps = [_warp(np.full((40, 40), v), var) for v, var in zip(values, variances, strict=True)]
    w = 1 / np.array(variances)
    mean = assemble_coadd(warps, "mean")
    assert np.allclose(mean.image, np.sum(w * values) / w.sum(), rtol=1e-5)
    assert np.allclose(mean.var, np.sum(w**2 * variances) / w.sum() ** 2, rtol=1e-5)
    assert np.allclose(assemble_coadd(warps, "median").image, 2.5)
    clipped = assemble_coadd(warps, "clipped")
    kept = np.array([1, 1, 1, 0])
    assert np.allclose(clipped.image, np.sum(kept * w * values) / np.sum(kept * w), rtol=1e-5)
    assert (clipped.msk & Mask.CLIPPED).all()
    med, n = masked_median(
        np.array([[[1.0]], [[5.0]], [[3.0]]]), np.array([[[True]], [[False]], [[True]]])
    )
    assert med[0, 0] == 2.0 and n[0, 0] == 2


def test_masked_and_uncovered_pixels_give_no_data_and_files_equal_memory(tmp_path) -> None:
    rng = np.random.default_rng(2)
    warps = []
    for k in range(3):
        mask = np.zeros((40, 40), np.uint32)
        mask[:10] = Mask.NO_DATA  # never covered
        mask[20, 5 * k : 5 * k + 5] = Mask.BAD
        warps.append(_warp(rng.normal(0, 1, (40, 40)), 1.0, mask=mask))
    warps[0].msk[30:35, 30:35] |= np.uint32(Mask.SAT)
    paths = [w.write(tmp_path / f"w{k}.fits") for k, w in enumerate(warps)]
    for method in ("mean", "compare"):
        mem = assemble_coadd(warps, method)
        files = assemble_coadd(paths, method, chunk_rows=8)
        assert np.array_equal(mem.image, files.image)
        assert (mem.msk[:10] & Mask.NO_DATA).all() and np.isinf(mem.var[:10]).all()
        assert not (mem.msk[10:] & Mask.NO_DATA).any()
        others = (warps[1].image[32, 32] + warps[2].image[32, 32]) / 2
        assert math.isclose(float(mem.image[32, 32]), float(others), rel_tol=1e-5)


def test_coadd_psf_is_the_weighted_mean_of_the_input_psfs() -> None:
    warps = [_warp(np.zeros((30, 30)), 1.0, 1.0), _warp(np.zeros((30, 30)), 3.0, 2.0)]
    coadd = assemble_coadd(warps, "mean")
    assert isinstance(coadd.psf, PixelPsf)
    size = coadd.psf.image.shape[0]
    expect = (1.0 * GaussianPsf(1.0).kernel(size) + (1 / 3) * GaussianPsf(2.0).kernel(size)) / (
        4 / 3
    )
    assert np.allclose(coadd.psf.image, expect / expect.sum(), atol=1e-6)


def test_bad_inputs_are_clear_errors_or_documented_results() -> None:
    with pytest.raises(UserError, match="at least one warp"):
        assemble_coadd([], "mean")
    other = Exposure(np.zeros((40, 40), np.float32), wcs=tan_wcs(151.0, 2.0, (40, 40), 0.2))
    with pytest.raises(UserError, match="same pixel grid"):
        assemble_coadd([_warp(np.zeros((40, 40))), other], "mean")
    off = _warp(np.zeros((40, 40)))
    off.zero_point = 27.0
    with pytest.raises(UserError, match="zero points"):
        assemble_coadd([_warp(np.zeros((40, 40))), off], "mean")
    with pytest.raises(BadValueError, match="method"):
        assemble_coadd([_warp(np.zeros((40, 40)))], "best")
    # A single epoch cannot be compared with anything: CompareWarp returns it as it is.
    one = _warp(np.random.default_rng(3).normal(0, 1, (40, 40)))
    one.image[20, 20] = 1e4
    coadd = assemble_coadd([one], "compare", cosmic_rays__enabled=False)
    assert np.array_equal(coadd.image, one.image)
    empty = _warp(np.zeros((40, 40)), mask=np.full((40, 40), Mask.NO_DATA, np.uint32))
    with pytest.raises(UserError, match="no usable pixel"):
        assemble_coadd([empty], "mean")
    with pytest.raises(UserError, match="CompareWarp option"):
        assemble_coadd([one], "compare", nonsense=1.0)
    with pytest.raises(UserError, match="threshold"):
        assemble_coadd([one], "compare", detect__threshold=1.0)


def test_compare_warp_removes_a_trail_and_cosmic_ray_but_keeps_a_variable_star() -> None:
    rng = np.random.default_rng(4)
    shape = (128, 128)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    clean, art, fluxes = [], [], []
    for k in range(8):
        sigma = 1.3 + 0.25 * k  # seeing varies
        flux = 5000.0 * (1.5 if k in (2, 3) else 1.0)  # variable, bright in two epochs
        fluxes.append(flux)
        scene = _star_image(shape, 40.3, 70.6, 20000.0, sigma) + _star_image(
            shape, 90.0, 30.0, flux, sigma
        )
        noisy = scene + rng.normal(0, 3.0, shape)
        extra = np.zeros(shape)
        if k == 5:
            extra5 = extra
            extra += 20.0 * np.exp(-0.5 * ((yy - 0.4 * xx - 20) / 2.0) ** 2)  # trail
            extra[100, 100] += 800.0  # cosmic ray
        clean.append(_warp(noisy, 9.0, sigma))
        art.append(_warp(noisy + extra, 9.0, sigma))
    w = WarpStack(clean).weights
    cw_art = assemble_coadd(WarpStack(art, weights=w), "compare")
    cw_clean = assemble_coadd(WarpStack(clean, weights=w), "compare")
    mean_clean = assemble_coadd(WarpStack(clean, weights=w), "mean")
    extra_mean = np.sum(extra5) * w[5] / w.sum()
    leak = float(np.sum(cw_art.image - cw_clean.image)) / extra_mean
    assert abs(leak) < 0.05
    assert (cw_art.msk[100, 100] & Mask.CLIPPED) and not (cw_clean.msk[30, 90] & Mask.CLIPPED)
    box = (slice(20, 41), slice(80, 101))
    assert abs(cw_clean.image[box].sum() / mean_clean.image[box].sum() - 1) < 0.005


def test_own_light_leakage_charges_a_class_with_its_own_light_only() -> None:
    # A cosmic ray on an artefact that is in every epoch (as an unmodelled
    # slow mover is) at one place, so that CompareWarp keeps it: the ray is
    # clipped, but its footprint's leakage is the other class's light.
    from coadd_harness.scoring import SimWarps, leakage, own_light_leakage

    rng = np.random.default_rng(7)
    shape = (96, 96)
    art, clean, per_epoch = [], [], []
    for k in range(6):
        sigma = 1.3 + 0.15 * k
        noisy = _star_image(shape, 30.0, 60.0, 8000.0, sigma) + rng.normal(0, 3.0, shape)
        blob = _star_image(shape, 50.0, 40.0, 6000.0, sigma)
        ray = np.zeros(shape)
        if k == 2:
            ray[41, 51] = 900.0
        clean.append(_warp(noisy, 9.0, sigma))
        art.append(_warp(noisy + blob + ray, 9.0, sigma))
        per_epoch.append({"asteroids_overlapping": blob > 0.3, "cosmic_rays": ray > 0})
    foot = {c: np.logical_or.reduce([fp[c] for fp in per_epoch]) for c in per_epoch[0]}
    w = WarpStack(clean).weights
    sim = SimWarps(CELL, art, clean, foot, w, Table(), [], per_epoch)
    split = own_light_leakage(sim)
    ray = split["cosmic_rays"]
    parts = ray["own"] + ray["others"] + ray["replacement"]
    assert parts == pytest.approx(ray["leakage"], abs=1e-4)
    cw = [assemble_coadd(WarpStack(s_, weights=w), "compare").image for s_ in (art, clean)]
    means = [assemble_coadd(WarpStack(s_, weights=w), "mean").image for s_ in (art, clean)]
    whole = leakage(cw[0], cw[1], means[0], means[1], foot)["cosmic_rays"]
    assert ray["leakage"] == pytest.approx(whole, abs=1e-4)
    assert whole > 0.5  # the blob's light, kept, on the ray's pixel
    assert abs(ray["own_fraction"]) < 0.02  # the ray itself is clipped
    assert split["asteroids_overlapping"]["own_fraction"] > 0.9


def test_transient_merged_with_a_many_epoch_region_is_still_clipped() -> None:
    """A one-epoch strip (a trail) touching a blob that is an outlier in every
    epoch (a PSF-mismatch halo) fails the fraction rule as one footprint; the
    strip, outlier in one epoch only and seeded, is clipped; the blob is not."""
    from skydm.coadd._cw_rules import clip_maps
    from skydm.coadd.compare_warp import CompareWarpConfig

    n, shape = 10, (60, 60)
    codes = np.zeros((n, *shape), dtype=np.int8)
    codes[:, 10:40, 10:40] = 2  # outlier in every epoch: static, never clipped
    codes[3, 25:27, 40:55] = 2  # epoch 3 only, merged with the blob
    cover = np.full(shape, n, dtype=np.uint8)
    clip = clip_maps(codes, cover, [], CompareWarpConfig().without("trail"), grow=0)
    assert clip[3, 25:27, 40:55].all()
    assert not clip[:, 10:40, 10:40].any()
    assert not np.delete(clip, 3, axis=0).any()


def test_overlapping_transients_at_shifted_places_are_clipped() -> None:
    """Three epochs' blobs (a slow asteroid, a ghost moving with the dithers)
    overlap so much that most pixels are outliers in three epochs, more than
    the rule allows with eight; their peaks are apart, so each is transient."""
    from skydm.coadd._cw_rules import clip_maps
    from skydm.coadd.compare_warp import CompareWarpConfig

    n, shape = 8, (40, 60)
    yy, xx = np.indices(shape)
    codes = np.zeros((n, *shape), dtype=np.int8)
    sparse = [outlier_pixels(np.zeros(0, dtype=np.int64), np.zeros(0), n) for _ in range(n)]
    for k, cx in enumerate((25.0, 28.0, 31.0)):
        dist = np.hypot(yy - 20.0, xx - cx)
        codes[k][dist <= 8] = 2
        idx = np.flatnonzero(codes[k])
        sparse[k] = outlier_pixels(idx, 20 - dist.ravel()[idx], n, chi2=99.0)
    cover = np.full(shape, n, dtype=np.uint8)
    # The epochs are far apart in time, so that the three make no track.
    cfg = CompareWarpConfig().without("trail").without("mover")
    plain = clip_maps(codes, cover, sparse, cfg, grow=0)
    # By the pixel counts alone the middle one stays (but for its edges).
    assert not plain[1][codes[1] > 0].all()
    clip = clip_maps(codes, cover, sparse, cfg, grow=0, fwhm=2.0)
    for k in range(3):
        assert clip[k][codes[k] > 0].all()
    assert not clip[3:].any()


def test_a_variable_under_a_clipped_artefact_keeps_its_flux() -> None:
    """Epoch 0 of a variable star (bright that night) is clipped over the star;
    the replacement holds the other epochs' fainter star unless restored to the
    flux of the same night's other visit."""
    from skydm.coadd._cw_config import RestoreConfig
    from skydm.coadd._cw_pixels import imputation_coefficients
    from skydm.coadd._cw_restore import Restore, restore_targets

    rng = np.random.default_rng(3)
    n, shape, cy, cx = 6, (41, 41), 20.3, 19.8
    sigmas = np.array([1.2, 1.4, 1.6, 1.3, 1.8, 1.5])
    fluxes = np.array([9000.0, 9000.0, 3000.0, 3000.0, 5000.0, 5000.0])  # pairs of nights
    times = [0.0, 0.02, 2.0, 2.02, 4.0, 4.02]
    psfs = [GaussianPsf(float(s)) for s in sigmas]
    img = np.empty((n, *shape), dtype=np.float32)
    for j, p in enumerate(psfs):
        k = p.kernel(41, cx - 20, cy - 20)
        img[j] = fluxes[j] * k + rng.normal(0, 2.0, shape)
    var = np.full(img.shape, 4.0, dtype=np.float32)
    good = np.ones(img.shape, dtype=bool)
    clipped = np.zeros(img.shape, dtype=bool)
    clipped[0, 12:30, 10:30] = True  # a trail's clip over the star in epoch 0
    kept = good & ~clipped
    weights = np.ones(n)
    widths2 = (sigmas * 2.3548) ** 2
    truth = float(np.sum(fluxes * weights) / weights.sum())

    def coadd_flux(restore: list) -> float:
        coef, norm, extra = imputation_coefficients(kept, clipped, weights, widths2, restore)
        mean, _, _ = _combine(img, var, coef, norm, extra)
        return float(mean.sum())

    plain = coadd_flux([])
    assert plain < truth * 0.85  # epoch 0's bright star was replaced by fainter ones
    items = [Restore(0, cy, cx, alpha=0.0)]
    targets = restore_targets(
        items, 0, img, var, kept, clipped, weights, psfs, RestoreConfig(), times=times
    )
    assert len(targets) == 1 and abs(targets[0].target - 9000.0) < 150
    assert abs(coadd_flux(targets) - truth) < 0.01 * truth
    # A constant star is left alone: nothing to restore.
    flat = np.mean(img, axis=0, keepdims=True) * np.ones((n, 1, 1), dtype=np.float32)
    assert (
        restore_targets(
            items, 0, flat, var, kept, clipped, weights, psfs, RestoreConfig(), times=times
        )
        == []
    )


def test_a_clipped_variable_keeps_its_own_flux_unless_an_artefact_lies_on_it() -> None:
    """Epoch 0 of a variable (bright that night, no other visit that night) is
    clipped over the star with no measured change (``alpha`` 0): its own
    pixels fit the PSF, so their flux is the target, not the other epochs'.
    With a trail's light on the star in that epoch the own flux is refused
    (it would keep the trail) and the other epochs' flux stands."""
    from skydm.coadd._cw_config import RestoreConfig
    from skydm.coadd._cw_restore import Restore, restore_targets

    rng = np.random.default_rng(5)
    n, shape, cy, cx = 6, (41, 41), 20.3, 19.8
    sigmas = np.array([1.2, 1.4, 1.6, 1.3, 1.8, 1.5])
    fluxes = np.array([9000.0, 3000.0, 5000.0, 3500.0, 4500.0, 4000.0])
    times = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    psfs = [GaussianPsf(float(s)) for s in sigmas]
    img = np.empty((n, *shape), dtype=np.float32)
    for j, p in enumerate(psfs):
        img[j] = fluxes[j] * p.kernel(41, cx - 20, cy - 20) + rng.normal(0, 2.0, shape)
    var = np.full(img.shape, 4.0, dtype=np.float32)
    good = np.ones(img.shape, dtype=bool)
    clipped = np.zeros(img.shape, dtype=bool)
    clipped[0, 12:30, 10:30] = True
    kept = good & ~clipped
    items = [Restore(0, cy, cx, alpha=0.0)]
    args = (var, kept, clipped, np.ones(n), psfs, RestoreConfig())
    (t,) = restore_targets(items, 0, img, *args, times=times)
    assert abs(t.target - 9000.0) < 150  # the others' flux is 4000
    yy = np.arange(shape[0], dtype=float)[:, None]
    img[0] += (60.0 * np.exp(-0.5 * ((yy - cy - 0.4 * (np.arange(41) - cx)) / 1.5) ** 2)).astype(
        np.float32
    )  # a trail across the star
    (t,) = restore_targets(items, 0, img, *args, times=times)
    assert abs(t.target - np.mean(fluxes[1:])) < 300


def test_a_star_on_the_edge_of_the_data_is_no_cosmic_ray() -> None:
    """The Laplacian takes the missing neighbour beyond the edge as the one
    opposite: a star cut by the edge stays within its PSF's sharpness, while
    a hit on the edge is still found."""
    from coadd_harness.outliers import cosmic_rays, laplacian_scale
    from skydm.coadd._cw_cosmics import sharpness_bound

    rng = np.random.default_rng(11)
    psf = GaussianPsf(1.5)
    img = rng.normal(0.0, 10.0, (1, 40, 40)).astype(np.float32)
    img[0, :8, 6:23] += 2e5 * psf.kernel(17)[8:16, :]  # a bright star centred on row 0
    img[0, 0, 33] += 400.0  # a cosmic ray on the edge
    var = np.full(img.shape, 100.0, dtype=np.float32)
    good = np.ones(img.shape, dtype=bool)
    hits = cosmic_rays(
        img,
        var,
        good,
        np.array([sharpness_bound(psf)]),
        threshold=5.0,
        margin=1.3,
        sharp=1.5,
        scales=laplacian_scale(img, var, good),
    )
    assert not hits[0, :10, 4:25].any()
    assert hits[0, 0, 33]


def test_restoration_stamps_are_split_between_bands() -> None:
    """A restoration measured in one band of rows is applied to every band its
    stamp reaches, each row once."""
    from skydm.coadd._cw_restore import Target, split_targets

    mask = np.ones((10, 4), dtype=bool)
    prof = np.arange(40, dtype=np.float32).reshape(10, 4)
    t = Target(0, 95, 3, mask, np.ones(2), 1.0, prof)  # image rows 95-104
    now, later = split_targets([t], 90, 100)
    assert len(now) == 1 and now[0].y0 == 5 and now[0].mask.shape == (5, 4)
    assert np.array_equal(now[0].prof, prof[:5]) and later == [t]
    now, later = split_targets(later, 100, 110)
    assert now[0].y0 == 0 and np.array_equal(now[0].prof, prof[5:]) and later == []


def test_band_combination_equals_the_dense_replacement() -> None:
    """combine_band (weighted mean, replacement only where something is
    clipped) gives the coadd of the dense per-pixel coefficients, with a
    restoration's stamp placed in the compact layout."""
    from skydm.coadd._cw_pixels import combine_band, imputation_coefficients
    from skydm.coadd._cw_restore import Target

    rng = np.random.default_rng(11)
    n, shape = 7, (30, 40)
    img = rng.normal(10, 3, (n, *shape)).astype(np.float32)
    var = rng.uniform(4, 9, (n, *shape)).astype(np.float32)
    good = rng.random((n, *shape)) > 0.05
    good[:, :3, :5] = False  # no data at all in a corner
    img[~good], var[~good] = 0, 0
    clipped = good & (rng.random((n, *shape)) < 0.03)
    clipped[2, 10:16, 20:27] = good[2, 10:16, 20:27]
    weights = rng.uniform(0.5, 2, n)
    widths2 = rng.uniform(3, 9, n)
    prof = np.full((6, 7), 1 / 42, dtype=np.float32)
    f = rng.uniform(900, 1100, n)
    target = Target(2, 10, 20, clipped[2, 10:16, 20:27].copy(), f, 1500.0, prof)
    kept = good & ~clipped
    coef, norm, extra = imputation_coefficients(kept, clipped, weights, widths2, [target])
    assert extra is not None and np.count_nonzero(extra) > 0
    mean, variance, _ = _combine(img, var, coef, norm, extra)
    m, v, ws, used = combine_band(img, var, good, clipped, weights, widths2, [target])
    np.testing.assert_allclose(m, mean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(v, variance, rtol=1e-5)
    np.testing.assert_allclose(ws, norm, rtol=1e-6)
    np.testing.assert_allclose(used, coef.sum(axis=(1, 2)), rtol=1e-6)
    assert np.all(m[:3, :5] == 0) and np.all(np.isinf(v[:3, :5]))


def test_sparse_footprint_helpers_match_ndimage() -> None:
    """The rules label footprints from their pixels alone, grow them by rows of
    the disk and draw streak strips from a band about the axis; each gives
    what ndimage's whole-grid labelling and dilation, and a whole-grid
    distance test, give."""
    from skydm.coadd._cw_footprints import _components, _dilate, _disk
    from skydm.coadd._cw_rules import _strip

    rng = np.random.default_rng(21)
    for _ in range(60):
        rows, cols = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((rows, cols)) < rng.uniform(0.02, 0.5)
        lab, n = _components(np.flatnonzero(mask), cols)
        ref, nref = ndimage.label(mask)
        assert n == nref and np.array_equal(lab, ref.ravel()[np.flatnonzero(mask)])
        disk = _disk(float(rng.choice([0.5, 1.5, 2.3, 3.92])))
        assert np.array_equal(_dilate(mask, disk), ndimage.binary_dilation(mask, disk))
        theta, half = rng.uniform(0, np.pi), float(rng.uniform(0.5, 6))
        ux, uy, cx, cy = np.cos(theta), np.sin(theta), rng.uniform(0, cols), rng.uniform(0, rows)
        yy, xx = np.indices((rows, cols), dtype=np.float32)
        dist = np.abs(-(xx - cx) * uy + (yy - cy) * ux)
        strip = np.zeros(rows * cols, dtype=bool)
        strip[_strip((rows, cols), cx, cy, ux, uy, half)] = True
        assert np.array_equal(strip, (dist <= half).ravel())


def test_a_cosmic_ray_on_a_bright_galaxy_is_found_from_the_other_epochs() -> None:
    """A faint cosmic-ray track across a bright galaxy stays under the PSF's
    sharpness bound (any static source could be that sharp), but not under
    the galaxy's own sharpness measured in the other epochs; the galaxy alone
    gives no hit in any epoch, sharper or broader."""
    from coadd_harness.outliers import laplacian_scale
    from skydm.coadd._cw_cosmics import cosmic_ray_pixels, laplacian, sharpness_bound
    from skydm.coadd._cw_pixels import psf_widths2

    rng = np.random.default_rng(5)
    sigmas = [1.6, 2.0, 2.4, 2.8, 3.2]
    psfs = [GaussianPsf(s) for s in sigmas]
    n, side = len(psfs), 64
    yy, xx = np.mgrid[:side, :side]
    img = np.empty((n, side, side), dtype=np.float32)
    for k, s in enumerate(sigmas):
        # A round galaxy of sigma 2.5 px seen through each epoch's PSF.
        w2 = 2.5**2 + s**2
        gal = 6e5 / (2 * np.pi * w2) * np.exp(-((yy - 32) ** 2 + (xx - 31) ** 2) / (2 * w2))
        img[k] = gal + rng.normal(0.0, 10.0, (side, side))
    track = (np.abs(yy - xx - 2) <= 0) & (np.abs(yy - 32) <= 6)
    img[2][track] += 600.0  # 13 to 60 sigma per pixel, on a galaxy peaking at ~8000
    var = np.full(img.shape, 100.0, dtype=np.float32) + np.maximum(img, 0) / 4
    good = np.ones(img.shape, dtype=bool)
    lap = laplacian(img)
    args = dict(
        threshold=5.0,
        margin=1.3,
        sharp=1.5,
        scales=laplacian_scale(img, var, good),
        lap=lap,
    )
    bounds = np.array([sharpness_bound(p) for p in psfs])
    plain = cosmic_ray_pixels(img, var, good, bounds, **args)  # type: ignore[arg-type]
    both = cosmic_ray_pixels(
        img,
        var,
        good,
        bounds,
        widths2=psf_widths2(psfs),
        **args,  # type: ignore[arg-type]
    )
    on_track = np.flatnonzero(track.ravel())
    r2 = ((yy - 32) ** 2 + (xx - 31) ** 2).ravel()
    # Within 5 px of the centre (the galaxy above ~40% of its peak) the bound
    # alone finds nothing of the track; the other epochs' sharpness does.
    assert not (r2[plain[2]] < 25).any()
    assert (r2[both[2]] < 25).sum() >= 3
    assert set(plain[2]) <= set(both[2])
    assert np.all(np.isin(both[2], on_track))
    for k in (0, 1, 3, 4):
        assert both[k].size == 0, (k, both[k])


def test_upsampled_clip_maps_are_the_repeated_binned_maps() -> None:
    """The final pass's upsampling of binned clip maps (strided assignments)
    equals repeating each binned pixel b x b and cutting the band's rows."""
    from skydm.coadd._cw_assemble import upsample

    rng = np.random.default_rng(0)
    for b in (1, 2, 3, 4):
        for off in range(b):
            for rows, cols in ((1, 1), (5, 6), (17, 13)):
                coarse = rng.random((3, -(-(rows + off) // b), -(-cols // b))) > 0.5
                full = np.repeat(np.repeat(coarse, b, axis=1), b, axis=2)
                expected = full[:, off : off + rows, :cols]
                assert np.array_equal(upsample(coarse, b, off, rows, cols), expected)


def _combine(
    img: np.ndarray,
    var: np.ndarray,
    coef: np.ndarray,
    csum: np.ndarray,
    extra: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dense reference: ``(sum c x + extra) / csum`` and its variance, 0 and
    inf where no coefficient is left."""
    safe = np.where(csum > 0, csum, np.float32(1.0))
    num = np.einsum("kij,kij->ij", coef, img)
    if extra is not None:
        num += extra
    v = np.einsum("kij,kij->ij", coef * coef, var) / (safe * safe)
    return (
        np.where(csum > 0, num / safe, 0.0).astype(np.float32),
        np.where(csum > 0, v, np.inf).astype(np.float32),
        csum,
    )
