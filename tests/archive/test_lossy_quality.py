"""``skydm archive quality`` and ``skydm archive budget`` on small simulated repositories.

The quality report's flux errors are checked against an independent
measurement (photutils aperture photometry at the simulator's true star
positions, on the original and the decompressed images) and against the
analytic expectation for dithered quantization: an error uniform over one
quantum σ/q per pixel gives ``|ΔF|/σ_F`` distributed as ``|N(0, 1/(q√12))|``
for sky-limited sources (median ``0.6745/(q√12)``), and a noise growth of
``sqrt(1 + 1/(12 q²)) − 1``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import photutils
import photutils.aperture as photutils_aperture
import photutils.detection as photutils_detection
import pytest

from skydm.archive.quality import roundtrip
from skydm.archive.recipes import RecipeSet, WriteRecipe
from skydm.cli.main import main
from skydm.image.exposure import Exposure
from skydm.repo import DataId, Repository
from skydm_testing import DemoRun

photutils.future_column_names = True


def _lossless_repo(root: Path) -> Repository:
    repo = Repository.open(root)
    types = ("calexp", "diff", "template")
    repo.set_recipes(RecipeSet({t: WriteRecipe.named("lossless") for t in types}))
    return repo


@pytest.fixture(scope="module")
def sim_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Exposure]]:
    from skydm.sim import simulate_pair

    root = tmp_path_factory.mktemp("quality") / "repo"
    repo = _lossless_repo(root)
    calexps = []
    for visit, seed in ((1, 31), (2, 32)):
        science, template, _ = simulate_pair(
            seed, shape=(512, 512), n_stars=500, seeing_science=1.0, seeing_template=1.0,
            n_transients=3,
        )  # fmt: skip
        repo.put_exposure(science, "calexp", DataId("skysim", 0, visit, "r"))
        diff = Exposure(
            science.image - template.image, science.var + template.var,
            science.msk | template.msk, science.wcs, science.psf, science.zero_point,
        )  # fmt: skip
        repo.put_exposure(diff, "diff", DataId("skysim", 0, visit, "r"))
        calexps.append(science)
    repo.close()
    return root, calexps


def photutils_positions(exposure: Exposure) -> tuple[np.ndarray, np.ndarray]:
    """Stars found by photutils' DAOStarFinder (not by skydm's detection) away from the edges."""
    assert exposure.psf is not None
    sigma = float(np.sqrt(np.median(exposure.var)))
    finder = photutils_detection.DAOStarFinder(threshold=3 * sigma, fwhm=exposure.psf.fwhm)
    found = finder(exposure.image)
    x, y = np.asarray(found["x_centroid"]), np.asarray(found["y_centroid"])
    ny, nx = exposure.shape
    inside = (x > 20) & (x < nx - 20) & (y > 20) & (y < ny - 20)
    return x[inside], y[inside]


def photutils_flux_error(original: Exposure, decoded: Exposure, x: np.ndarray, y: np.ndarray):
    """|ΔF|/σ_F and S/N of photutils aperture fluxes (radius 1 FWHM) at fixed positions."""
    assert original.psf is not None
    ap = photutils_aperture.CircularAperture(np.column_stack([x, y]), r=original.psf.fwhm)
    err = np.sqrt(original.var)
    t0 = photutils_aperture.aperture_photometry(original.image, ap, error=err)
    t1 = photutils_aperture.aperture_photometry(decoded.image, ap, error=err)
    f0, e0 = np.asarray(t0["aperture_sum"]), np.asarray(t0["aperture_sum_err"])
    f1 = np.asarray(t1["aperture_sum"])
    return np.abs(f1 - f0) / e0, f0 / e0


def test_quality_report_agrees_with_photutils_and_theory(sim_repo, tmp_path: Path) -> None:
    root, calexps = sim_repo
    out = tmp_path / "report"
    args = ["archive", "quality", "--repo", str(root), "--q", "4,16", "--out", str(out), "--quiet"]
    assert main(args) == 0
    report = json.loads((out / "quality.json").read_text())
    for png in ("quality_vs_snr.png", "quality_vs_q.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    levels = {level["q"]: level for level in report["levels"]}
    assert set(levels) == {4, 16}
    assert levels[4]["ratio"] > levels[16]["ratio"] > 2
    for q, level in levels.items():
        faint = [b for b in level["bins"] if b["snr_lo"] == 5.0 or b["snr_lo"] == 10.0]
        n = sum(b["n"] for b in faint)
        assert n >= 30
        reported = sum(b["flux_err_sigma"] * b["n"] for b in faint) / n
        # Independent: photutils' stars and apertures, on our codec's output.
        errs, snrs = [], []
        for calexp in calexps:
            decoded, *_ = roundtrip(calexp, WriteRecipe.named(f"lossy{q}"))
            x, y = photutils_positions(calexp)
            e, s = photutils_flux_error(calexp, decoded, x, y)
            errs.append(e)
            snrs.append(s)
        e, s = np.concatenate(errs), np.concatenate(snrs)
        check = float(np.median(e[(s >= 5) & (s < 20)]))
        theory = 0.6745 / (q * math.sqrt(12))
        assert check == pytest.approx(theory, rel=0.3), (q, check, theory)
        assert reported == pytest.approx(check, rel=0.35), (q, reported, check)
        growth = math.sqrt(1 + 1 / (12 * q**2)) - 1
        assert level["noise_growth"] == pytest.approx(growth, rel=0.3)
        assert level["frac_changed_gt_quantum"] == 0.0  # dithered errors stay within ±q/2
        # The background re-fit moves by less than a quantum (sep's mode estimator sees the
        # quantized histogram, so it can move by a fraction of one).
        assert level["background_max_sigma"] < 1 / q, (q, level["background_max_sigma"])
        assert level["difference"]["n_images"] == 2
        # Noise of 1/(q√12) σ cannot push a 5σ DIA detection in or out by more than a few.
        assert level["difference"]["dia_added"] + level["difference"]["dia_lost"] <= 4
    assert levels[16]["bins"][-1]["centroid_px"] < 0.01


def test_quality_refuses_bad_levels_and_empty_repositories(tmp_path: Path, capsys) -> None:
    root = tmp_path / "empty"
    Repository.open(root).close()
    assert main(["archive", "quality", "--repo", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no calexp" in err[0]
    assert main(["archive", "quality", "--repo", str(root), "--q", "4,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--q" in err[0] and "4,x" in err[0]
    assert main(["archive", "quality", "--repo", str(root), "--q", "0"]) == 2
    assert "lossy0" in capsys.readouterr().err


def test_budget_projects_from_stored_sizes_nights_and_recipes(tmp_path: Path, capsys) -> None:
    from skydm.archive import ingest_files
    from skydm.pipeline.calibrate import calibrate_raw
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    root = tmp_path / "repo"
    repo = _lossless_repo(root)
    cfg = SurveyConfig(seed=5, shape=(128, 128), n_visits=3, n_stars=60, n_galaxies=10)
    paths = write_survey(simulate_survey(cfg), tmp_path / "raws", clean=False)
    report = ingest_files(repo, paths)
    assert report.ok
    raws = repo.query(dataset_type="raw")
    for ref in raws:
        calexp = calibrate_raw(repo.get_exposure("raw", ref.data_id))
        repo.put_exposure(calexp, "calexp", ref.data_id)
    nights = {math.floor(r.meta["mjd"] - 0.5) for r in raws}
    repo.set_recipes(repo.recipes.with_type("calexp", WriteRecipe.named("lossy16")))
    repo.close()

    assert main(["archive", "budget", "--repo", str(root), "--json", "--budget", "2TB"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["nights_stored"] == len(nights)
    per_night = len(raws) / len(nights)
    assert figures["visits_per_night"] == pytest.approx(per_night)
    types = {t["dataset_type"]: t for t in figures["types"]}
    raw_bytes = sum(r.size for r in raws)
    assert types["raw"]["bytes_per_night"] == pytest.approx(raw_bytes / len(raws) * per_night)
    assert types["raw"]["bytes_per_year"] == pytest.approx(300 * types["raw"]["bytes_per_night"])
    # Calexps were stored losslessly; the recipe is now lossy16: projected smaller.
    calexp = types["calexp"]
    assert calexp["recipe"] == "lossy16" and calexp["recipe_scale"] < 0.7
    assert calexp["bytes_per_night"] == pytest.approx(
        calexp["stored_bytes"] * calexp["recipe_scale"] / len(raws) * per_night
    )
    years = 2e12 / (figures["bytes_per_night"] * 300)
    assert figures["years_to_fill"] == pytest.approx(years)

    args = ["archive", "budget", "--repo", str(root), "--visits-per-night", "1000"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1000 visits a night" in text and "calexp" in text and "total" in text
    assert main(["archive", "budget", "--repo", str(root), "--budget", "12XB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget" in err[0] and "12XB" in err[0]


def test_quality_report_runs_on_the_demo_repository(
    demo_run: DemoRun, tmp_path: Path, capsys
) -> None:
    """The demo stores lossy16 calexps, warps, diffs and a coadd; the report says so."""
    root = tmp_path / "demo"  # a copy: the session's demo repository stays as made
    shutil.copytree(demo_run.repo, root)
    out = tmp_path / "report"
    args = ["archive", "quality", "--repo", str(root), "--q", "16", "--out", str(out)]
    assert main([*args, "--max-images", "1", "--quiet"]) == 0
    report = json.loads((out / "quality.json").read_text())
    (level,) = report["levels"]
    kinds = {i["dataset_type"]: i["stored_codec"] for i in level["images"]}
    assert set(kinds) >= {"calexp", "coadd", "diff"}  # the demo runs drp and ap
    assert set(kinds.values()) == {"lossy16"}
    assert level["coadd"]["n_images"] == 1 and level["difference"]["n_images"] == 1
    # Quantizing lossy16 data again at σ/16 adds about the same again, no more.
    assert level["noise_growth"] < 2 * (math.sqrt(1 + 1 / (12 * 16**2)) - 1)
    assert "quality.json" in capsys.readouterr().out
