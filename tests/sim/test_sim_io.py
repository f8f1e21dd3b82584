"""Written raws, clean twins and truth files; the ``skydm sim`` command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from skydm.cli.main import main
from skydm.image import read_exposure
from skydm.sim import FOOTPRINT_CLASSES, simulate_survey, write_survey
from skydm.sim.survey import Survey


@pytest.mark.parametrize(("dtype", "bitpix"), [("uint16", 16), ("int32", 32), ("float32", -32)])
def test_written_raws_read_back_with_the_same_pixels(
    small_survey: Survey, tmp_path: Path, dtype: str, bitpix: int
) -> None:
    cfg = dataclasses.replace(
        small_survey.config, n_visits=1, shape=(64, 96), raw_dtype=dtype, n_stars=20, n_galaxies=5
    )
    survey = simulate_survey(cfg)
    paths = write_survey(survey, tmp_path)
    assert [p.name for p in paths] == ["skysim_000001_00_r.fits"]
    v = survey.visits[0]
    with fits.open(paths[0], do_not_scale_image_data=True) as hdul:
        assert len(hdul) == 1
        h = hdul[0].header
        assert h["BITPIX"] == bitpix
        if dtype == "uint16":
            assert h["BZERO"] == 32768 and h.get("BSCALE", 1) == 1
            stored = hdul[0].data.astype(np.int64) + 32768
            assert np.array_equal(stored, v.raw.image.astype(np.int64))
        else:
            assert "BZERO" not in h
        assert h["INSTRUME"] == "SKYSIM" and h["VISIT"] == 1 and h["DETECTOR"] == 0
        assert h["FILTER"] == "r" and h["EXPTIME"] == cfg.exptime
        assert h["GAIN"] == cfg.gain and h["RDNOISE"] == cfg.read_noise
        assert h["SATURATE"] == cfg.saturation
        assert h["SEEING"] == pytest.approx(v.seeing, abs=1e-4)
        assert h["MJD-OBS"] == pytest.approx(v.mjd) and "DATE-OBS" in h
        assert h["CTYPE1"] == "RA---TAN" and h["CTYPE2"] == "DEC--TAN"
    for path, exp in ((paths[0], v.raw), (tmp_path / "clean" / paths[0].name, v.clean)):
        back = read_exposure(path)
        assert np.array_equal(back.image, exp.image)
        assert back.info.visit == 1 and back.info.band == "r"
        assert back.info.gain == cfg.gain and back.info.mjd == pytest.approx(v.mjd)
        assert back.wcs is not None
        t = v.truth
        x, y = back.wcs.wcs_world2pix(t["ra"], t["dec"], 0)
        assert np.allclose(x, t["x"], atol=1e-4) and np.allclose(y, t["y"], atol=1e-4)


def test_truth_files_hold_the_catalog_visits_and_footprints(
    small_survey: Survey, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(
        small_survey.config, n_visits=2, shape=(96, 96), n_stars=20, n_galaxies=5, trail_rate=3.0
    )
    survey = simulate_survey(cfg)
    paths = write_survey(survey, tmp_path, clean=False)
    assert not (tmp_path / "clean").exists()
    cat = Table.read(tmp_path / "truth.ecsv")
    assert len(cat) == len(survey.truth) and set(cat["kind"]) >= {"star", "galaxy"}
    visits = Table.read(tmp_path / "visits.ecsv")
    assert list(visits["file"]) == [p.name for p in paths]
    assert list(visits["visit"]) == [v.visit for v in survey.visits]
    for v in survey.visits:
        # write_survey releases what it rendered; rendering again is identical.
        assert not v.rendered
        t = Table.read(tmp_path / "truth" / f"visit_{v.visit:06d}.ecsv")
        assert np.allclose(t["flux"], v.truth["flux"])
        with fits.open(tmp_path / "truth" / f"footprints_{v.visit:06d}.fits") as hdul:
            bits = hdul["FOOTPRNT"].data
            for i, cls in enumerate(FOOTPRINT_CLASSES):
                assert hdul["FOOTPRNT"].header[f"FPBIT{i}"] == cls
                assert np.array_equal((bits & (1 << i)) != 0, v.artefacts[cls])


def test_sim_command_writes_a_survey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "survey"
    argv = [
        "sim",
        "--out",
        str(out),
        "--seed",
        "3",
        "--visits",
        "2",
        "--size",
        "64",
        "--bands",
        "g,r",
        "--stars",
        "10",
        "--galaxies",
        "3",
        "--artefacts",
        "cosmic_rays,ghosts",
        "--dtype",
        "int32",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote 4 raw exposures" in captured.out
    assert "visits:" in captured.err  # progress on stderr
    raws = sorted(out.glob("skysim_*.fits"))
    assert len(raws) == 4 and len(list((out / "clean").glob("*.fits"))) == 4
    bands = {fits.getheader(p)["FILTER"] for p in raws}
    assert bands == {"g", "r"}
    assert fits.getheader(raws[0])["BITPIX"] == 32


def test_sim_command_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--out", str(tmp_path), "--artefacts", "dragons"])
    assert exc.value.code == 2
    assert "dragons" in capsys.readouterr().err
    assert main(["sim", "--out", str(tmp_path), "--size", "8"]) == 2  # a usage error
    assert "--size 8 is not allowed" in capsys.readouterr().err
