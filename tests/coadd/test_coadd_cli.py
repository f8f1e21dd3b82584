"""``skydm coadd`` on warp files and on a repository's calexps."""

from __future__ import annotations

import numpy as np
import pytest

from skydm.cli.main import main
from skydm.coadd import SkyCell, warp_exposure
from skydm.image import Mask, read_exposure


@pytest.fixture(scope="module")
def visits():  # type: ignore[no-untyped-def]
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(seed=5, shape=(128, 128), n_visits=4, n_stars=60, n_galaxies=10,
                       raw_dtype="float32", n_movers=0)  # fmt: skip
    survey = simulate_survey(cfg)
    out = []
    for v in survey.visits:
        exp = v.raw.copy()
        exp.image = (exp.image - np.float32(exp.info.sky)).astype(np.float32)
        exp.zero_point = survey.visits[0].zero_point  # one calibration for all
        out.append(exp)
    return survey, out


def test_coadd_of_warp_files(tmp_path, visits, capsys) -> None:  # type: ignore[no-untyped-def]
    survey, exps = visits
    ra, dec = survey.fields[0]
    cell = SkyCell.centred(ra, dec, (100, 100), 0.2)
    paths = [str(warp_exposure(e, cell).write(tmp_path / f"w{k}.fits")) for k, e in enumerate(exps)]
    out = tmp_path / "coadd.fits"
    assert main(["coadd", *paths, "--out", str(out), "--method", "mean", "--quiet"]) == 0
    coadd = read_exposure(out)
    assert coadd.shape == (100, 100) and coadd.meta["COADD"] == "mean"
    assert coadd.psf is not None and not (coadd.msk & Mask.NO_DATA).all()
    assert "coadd of 4 warps" in capsys.readouterr().out
    assert main(["coadd", paths[0]]) == 2  # --out missing: a usage error, one line
    assert "--out" in capsys.readouterr().err
    assert main(["coadd", str(tmp_path / "missing.fits"), "--out", str(out)]) == 1


def test_template_from_a_repository(tmp_path, visits, capsys) -> None:  # type: ignore[no-untyped-def]
    from skydm.repo import DataId, Repository

    _survey, exps = visits
    with Repository.open(tmp_path / "repo", create=True) as repo:
        for e in exps:
            repo.put_exposure(e, "calexp", DataId("skysim", 0, e.info.visit, "r"))
    code = main(["coadd", "--repo", str(tmp_path / "repo"), "--band", "r", "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    cell_id = err.split("sky cell: ")[1].split()[0]
    with Repository.open(tmp_path / "repo") as repo:
        template = repo.get_exposure("template", DataId("skysim", band="r", skycell=cell_id))
    assert template.meta["COADD"] == "compare" and int(template.meta["NEPOCHS"]) == 4
    # The template holds the field: its covered part has the stars' flux.
    assert (~(template.msk & Mask.NO_DATA).astype(bool)).sum() > 100 * 100
    assert main(["coadd", "--repo", str(tmp_path / "repo"), "--band", "g"]) == 1
    assert "no calexp in band 'g'" in capsys.readouterr().err


def test_template_names_the_calexp_whose_warp_has_no_psf(tmp_path, visits, capsys) -> None:  # type: ignore[no-untyped-def]
    from skydm.repo import DataId, Repository

    _survey, exps = visits
    with Repository.open(tmp_path / "repo", create=True) as repo:
        for k, e in enumerate(exps):
            e = e.copy()
            if k == 2:
                e.psf = None
            repo.put_exposure(e, "calexp", DataId("skysim", 0, e.info.visit, "r"))
    code = main(["coadd", "--repo", str(tmp_path / "repo"), "--band", "r", "--quiet"])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "sky cell" not in line]
    assert len(err) == 1, err
    assert "the warp of calexp {instrument=skysim" in err[0] and "needs a PSF" in err[0]
    assert f"visit={exps[2].info.visit}," in err[0] and "skydm-warps-" not in err[0]
