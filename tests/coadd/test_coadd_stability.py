"""CompareWarp's decisions do not depend on float32 rounding of its inputs.

A measured pixel PSF is float64 in memory and float32 on disk (a relative
change of about 4e-8), so the coadd made from warp files must equal the
one made in memory bit for bit; and perturbing every PSF and variance by
1e-6 relative must leave the clip masks unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from coadd_harness.scoring import warps_from_survey
from skydm.coadd import SkyCell, WarpStack, assemble_coadd
from skydm.coadd._cw_assemble import Clips
from skydm.coadd.compare_warp import find_clips
from skydm.image import Exposure
from skydm.image.psf import PixelPsf

# A field no tuning used (the acceptance fields are seeds 1 and 2).
SEED, EPOCHS, SIDE, DITHER = 23, 8, 288, 16.0


@pytest.fixture(scope="module")
def warps() -> list[Exposure]:
    """Artefact warps with pixel PSFs as a pipeline measures them (float64,
    not exactly symmetric), so that writing them to FITS rounds them."""
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        seed=SEED,
        shape=(SIDE, SIDE),
        n_visits=EPOCHS,
        raw_dtype="float32",
        trail_rate=1.0,
        ghost_rate=0.5,
        n_variables=6,
        dither=DITHER,
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    inner = SIDE - 2 * int(DITHER) - 8
    sim = warps_from_survey(survey, SkyCell.centred(ra, dec, (inner, inner), cfg.pixel_scale))
    rng = np.random.default_rng(SEED)
    out = []
    for w in sim.art:
        assert w.psf is not None
        kern = w.psf.kernel(w.psf.default_size() | 1)
        # A measured PSF carries noise from the stars it was built from.
        w.psf = PixelPsf(kern * (1 + 0.01 * rng.standard_normal(kern.shape)))
        out.append(w)
    return out


def _perturbed(warps: list[Exposure], rel: float, seed: int) -> list[Exposure]:
    rng = np.random.default_rng(seed)
    out = []
    for w in warps:
        p = w.copy()
        assert isinstance(w.psf, PixelPsf)
        img = w.psf.image
        p.psf = PixelPsf(img * (1 + rel * rng.uniform(-1, 1, img.shape)))
        p.var[...] = w.var * (1 + rel * rng.uniform(-1, 1, w.var.shape))
        assert not np.shares_memory(p.var, w.var)
        out.append(p)
    return out


def test_coadd_from_warp_files_equals_the_coadd_from_memory(
    warps: list[Exposure], tmp_path: Path
) -> None:
    paths = [w.write(tmp_path / f"w{k}.fits") for k, w in enumerate(warps)]
    mem = assemble_coadd(warps, "compare")
    files = assemble_coadd(paths, "compare")
    differ = np.count_nonzero(mem.image != files.image)
    assert differ == 0, f"{differ} coadd pixels differ between files and memory"
    assert np.array_equal(mem.msk, files.msk)
    assert np.array_equal(mem.var, files.var)


@pytest.fixture(scope="module")
def base_clips(warps: list[Exposure]) -> tuple[Clips, list[int]]:
    """The warps' clips, found with BLAS allowed two threads, and the BLAS
    thread counts that the stages saw (one clip search serves two tests)."""
    import importlib

    from threadpoolctl import threadpool_info, threadpool_limits

    cwm = importlib.import_module("skydm.coadd.compare_warp")
    seen: list[int] = []

    def recorded(stage: Callable[..., object]) -> Callable[..., object]:
        def run(*args: object, **kwargs: object) -> object:
            seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
            return stage(*args, **kwargs)

        return run

    with pytest.MonkeyPatch.context() as mp, threadpool_limits(2, user_api="blas"):
        for name in ("detect_outliers", "clip_maps", "model_movers", "model_streaks"):
            mp.setattr(cwm, name, recorded(getattr(cwm, name)))
        clips = find_clips(WarpStack(warps))
    return clips, seen


def test_clip_finding_runs_with_one_blas_thread_whatever_the_callers_limit(
    base_clips: tuple[Clips, list[int]],
) -> None:
    """The outlier pass, the rules and the models run with one BLAS thread
    even where the caller allows more, so that their bits cannot depend on
    the machine's cores (and BLAS's threads do not spin on small matrices)."""
    seen = base_clips[1]
    assert seen, "no BLAS library found, or the stages were not reached"
    assert set(seen) == {1}, f"BLAS threads seen by the stages: {sorted(set(seen))}"


def test_a_1e_6_perturbation_of_psfs_and_variances_leaves_the_clips_unchanged(
    warps: list[Exposure], base_clips: tuple[Clips, list[int]]
) -> None:
    base = base_clips[0]
    assert base.clip.any()  # the field has artefacts to clip
    for seed in (1, 2):
        other = find_clips(WarpStack(_perturbed(warps, 1e-6, seed)))
        flipped = np.count_nonzero(base.clip != other.clip)
        assert flipped == 0, f"perturbation {seed}: {flipped} binned clip pixels flipped"
        for k, (a, b) in enumerate(zip(base.cosmic_rays, other.cosmic_rays, strict=True)):
            assert np.array_equal(np.sort(a), np.sort(b)), f"epoch {k}: cosmic rays differ"


def test_band_height_and_threads_leave_the_coadd_unchanged(warps: list[Exposure]) -> None:
    """Noise statistics are taken over fixed tiles of the cell, so bands of one
    tile, of two tiles and the default (the whole cell here), read by one or
    two threads, give the same coadd bit for bit (with the default tiles and
    with tiles small enough for several bands of one tile)."""
    from dataclasses import replace

    from skydm.coadd.compare_warp import CompareWarpConfig, compare_warp

    for tile_rows in (64, 32):
        cfg = CompareWarpConfig()
        cfg = replace(cfg, detect=replace(cfg.detect, noise_tile=tile_rows))
        tile = tile_rows * cfg.detect.bin
        assert warps[0].image.shape[0] > tile  # so that bands of one tile are several
        ref = compare_warp(WarpStack(warps), config=cfg, threads=2)
        for rows, threads in ((tile, 1), (tile, 2), (2 * tile + 5, 2), (None, 1)):
            other = compare_warp(WarpStack(warps), config=cfg, chunk_rows=rows, threads=threads)
            for plane in ("image", "var", "msk"):
                differ = np.count_nonzero(getattr(ref, plane) != getattr(other, plane))
                assert differ == 0, (
                    f"tiles of {tile} rows, bands of {rows}, {threads} threads: "
                    f"{differ} {plane} pixels differ"
                )
