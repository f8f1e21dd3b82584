"""Calibration per amplifier: overscan, gains and saturation from the instrument definition.

The simulator reads each detector out through two amplifiers whose gains
differ by 20% with their own bias levels and overscan columns; calibration
must give back the scene's fluxes on both sides, with no step at the
amplifier boundary, whether the raw comes from a file or from the archive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skydm.archive import read_raw
from skydm.cli.main import main
from skydm.image import Mask, read_exposure
from skydm.pipeline import calibrate_raw
from skydm.pipeline.isr import amplifiers_of, remove_signature
from skydm.repo import DataId, Repository
from skydm.sim import SurveyConfig, simulate_survey, write_survey

SIZE = 256
OVERSCAN = 16


def _survey(seed: int, **kw: object) -> SurveyConfig:
    return SurveyConfig(
        seed=seed, shape=(SIZE, SIZE), n_visits=1, n_stars=300, n_galaxies=10,
        artefacts=(), n_transients=0, n_variables=0, n_movers=0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture(scope="module", params=[31, 47])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raws of one scene read through two amplifiers (and, under ``one/``, through one)."""
    out = tmp_path_factory.mktemp(f"amps{request.param}")
    survey = simulate_survey(_survey(request.param, n_amps=2, overscan=OVERSCAN))
    write_survey(survey, out, clean=False)
    write_survey(simulate_survey(_survey(request.param)), out / "one", clean=False)
    return out


def test_raw_has_amplifiers_in_the_decam_convention(written: Path) -> None:
    header = fits.getheader(written / "skysim_000001_00_r.fits")
    assert header["NAXIS1"] == SIZE + 2 * OVERSCAN and header["NAXIS2"] == SIZE
    assert header["DATASECA"] == f"[1:{SIZE // 2},1:{SIZE}]"
    assert header["BIASSECB"] == f"[{SIZE + OVERSCAN + 1}:{SIZE + 2 * OVERSCAN},1:{SIZE}]"
    assert header["GAINA"] == pytest.approx(1.35) and header["GAINB"] == pytest.approx(1.65)
    raw = read_exposure(written / "skysim_000001_00_r.fits")
    amps = amplifiers_of(raw)
    assert [a.name for a in amps] == ["A", "B"]
    assert amps[1].bias_section is not None and amps[1].bias_section.x0 == SIZE + OVERSCAN


def _forced_ratio(exp_image: np.ndarray, psf: object, truth: Table) -> np.ndarray:
    """PSF flux at the true positions over the true flux (isolated, unsaturated stars)."""
    from skydm.drp._detect import BandPlanes
    from skydm.drp._photometry import measure_band, stamp_groups

    x, y = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    var = np.ones_like(exp_image, dtype=np.float64)
    planes = BandPlanes(exp_image.astype(np.float64), var, np.zeros(exp_image.shape, np.uint32),
                        np.zeros(exp_image.shape, bool), psf)  # type: ignore[arg-type]  # fmt: skip
    groups = stamp_groups(x, y, 25, 64)
    flux = measure_band(planes, x, y, groups, stamp=25, aperture_radius=3.0).flux
    return np.asarray(flux / np.asarray(truth["flux"], float))


def _bright_stars(written: Path) -> Table:
    t = Table.read(written / "truth" / "visit_000001.ecsv")
    t = t[(t["kind"] == "star") & (t["flux"] > 5e3) & (t["flux"] < 1e6)]
    inside = (t["x"] > 15) & (t["x"] < SIZE - 16) & (t["y"] > 15) & (t["y"] < SIZE - 16)
    return t[inside]


@pytest.mark.parametrize("source", ["file", "archive"])
def test_calibration_recovers_fluxes_across_amplifiers(
    written: Path, tmp_path: Path, source: str
) -> None:  # fmt: skip
    path = written / "skysim_000001_00_r.fits"
    if source == "file":
        raw = read_exposure(path)
    else:
        repo_dir = tmp_path / "repo"
        assert main(["ingest", "--repo", str(repo_dir), str(path)]) == 0
        with Repository.open(repo_dir) as repo:
            raw = read_raw(repo, DataId("skysim", detector=0, visit=1, band="r"))
        assert raw.meta["AMP2GAIN"] == pytest.approx(1.65)
        # Not estimated from pixels that still hold the bias: calibration makes it.
        assert np.isnan(raw.var).all()
    exp = calibrate_raw(raw)
    assert np.isfinite(exp.var).all() and (exp.var > 0).all()
    assert exp.shape == (SIZE, SIZE)  # the overscan trimmed away
    assert exp.info.gain == pytest.approx(1.5)
    one = calibrate_raw(read_exposure(written / "one" / path.name))
    stars = _bright_stars(written)
    ratio = _forced_ratio(exp.image, exp.psf, stars)
    ratio_one = _forced_ratio(one.image, one.psf, stars)
    left, right = stars["x"] < SIZE / 2 - 0.5, stars["x"] >= SIZE / 2 - 0.5
    assert left.sum() >= 5 and right.sum() >= 5
    # The scene's fluxes come back (neighbours and the measured PSF scatter
    # single ratios; the median is good to a few per cent) ...
    assert abs(np.median(ratio) - 1) < 0.05, np.median(ratio)
    # ... and on each side of the boundary exactly as from the same scene read
    # through one amplifier without bias: no gain step, no bias left.
    for side in (left, right):
        assert abs(np.median(ratio[side] / ratio_one[side]) - 1) < 0.005
    # The sky is continuous across the boundary: columns either side agree
    # to a tenth of the per-column noise.
    good = (exp.msk & np.uint32(Mask.DETECTED | Mask.SAT | Mask.BAD | Mask.CR)) == 0
    cols = [np.median(exp.image[:, c][good[:, c]]) for c in range(SIZE // 2 - 4, SIZE // 2 + 4)]
    noise = float(np.sqrt(np.median(exp.var))) / np.sqrt(SIZE)
    assert abs(np.mean(cols[4:]) - np.mean(cols[:4])) < 3 * noise
    # Saturated cores are flagged in both amplifiers at their own levels.
    sat_stars = Table.read(written / "truth" / "visit_000001.ecsv")
    sat_stars = sat_stars[(sat_stars["kind"] == "star") & (sat_stars["flux"] > 3e6)]
    for row in sat_stars:
        ix, iy = round(float(row["x"])), round(float(row["y"]))
        if 2 <= ix < SIZE - 2 and 2 <= iy < SIZE - 2:
            assert (exp.msk[iy, ix] & np.uint32(Mask.SAT)) != 0, (ix, iy)


def test_the_same_scene_read_through_one_amplifier_agrees(written: Path) -> None:
    """Two amplifiers with overscan and one without give the same image after ISR."""
    a = remove_signature(read_exposure(written / "skysim_000001_00_r.fits")).exposure
    b = remove_signature(read_exposure(written / "one" / "skysim_000001_00_r.fits")).exposure
    assert a.shape == b.shape
    ok = ((a.msk | b.msk) & np.uint32(Mask.SAT)) == 0
    diff = (a.image - b.image)[ok]
    # Digitisation in each amplifier's ADU and the overscan's read noise
    # per row are all that differ.
    assert abs(float(np.median(diff))) < 0.5
    assert float(np.std(diff)) < 2.0


def test_amplifier_without_data_section_is_refused(written: Path) -> None:
    from skydm.errors import BadFileError

    raw = read_exposure(written / "skysim_000001_00_r.fits")
    del raw.meta["DATASECB"]
    with pytest.raises(BadFileError, match="amplifier B has no data section"):
        calibrate_raw(raw)


def test_bad_amplifier_options_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from skydm.errors import BadValueError

    with pytest.raises(BadValueError, match="n_amps"):
        SurveyConfig(shape=(256, 256), n_amps=3)  # 256 columns do not split in 3
    assert main(["sim", "--out", str(tmp_path / "s"), "--amps", "5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--amps" in err and "5" in err and "1 to 4" in err
    assert main(["sim", "--out", str(tmp_path / "t"), "--overscan", "-1", "-q"]) == 2
