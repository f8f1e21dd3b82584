"""Truth matching: every kind of injected thing is recognised where it is."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from skydm.errors import BadValueError
from skydm.reliability.truth import CLASSES, MatchConfig, label_sources
from skydm.sim import SurveyConfig, simulate_survey


@pytest.fixture(scope="module")
def visit():  # type: ignore[no-untyped-def]
    survey = simulate_survey(
        SurveyConfig(seed=5, shape=(256, 256), n_visits=1, trail_rate=3.0, ghost_rate=2.0)
    )
    return survey.visits[0]


def _at(v, xs: list[float], ys: list[float]) -> Table:  # type: ignore[no-untyped-def]
    ra, dec = v.wcs.wcs_pix2world(np.asarray(xs), np.asarray(ys), 0)
    return Table({"ra": ra, "dec": dec})


def test_each_truth_kind_is_labelled_as_itself(visit) -> None:  # type: ignore[no-untyped-def]
    truth = visit.truth
    fwhm = visit.psf.fwhm
    checked = 0
    for kind, cls in (
        ("transient", "transient"),
        ("variable", "variable"),
        ("cosmic_ray", "cosmic_ray"),
        ("trail", "trail"),
        ("ghost", "ghost"),
    ):
        rows = truth[truth["kind"] == kind]
        for row in rows:
            x, y = float(row["x"]), float(row["y"])
            if not (0 <= x < 256 and 0 <= y < 256):
                continue
            got = label_sources(_at(visit, [x], [y]), truth, visit.wcs, fwhm)[0]
            # An earlier class in CLASSES may sit on top of this one.
            assert CLASSES.index(got) <= CLASSES.index(cls), (kind, got)
            checked += got == cls
    assert checked >= 10


def test_empty_sky_is_noise_and_stars_are_residuals(visit) -> None:  # type: ignore[no-untyped-def]
    truth = visit.truth
    fwhm = visit.psf.fwhm
    xs, ys = np.meshgrid(np.arange(8.0, 250.0, 16.0), np.arange(8.0, 250.0, 16.0))
    cfg = visit.config
    sigma = float(np.sqrt(visit.sky / cfg.gain + (cfg.read_noise / cfg.gain) ** 2))
    grid = _at(visit, list(xs.ravel()), list(ys.ravel()))
    labels = label_sources(grid, truth, visit.wcs, fwhm, sky_sigma=sigma)
    assert (labels == "noise").sum() > 20
    # Without the sky noise every star counts, however faint: no noise left.
    assert (label_sources(grid, truth, visit.wcs, fwhm) == "noise").sum() < (
        labels == "noise"
    ).sum()
    # Bright stars (S/N > 50 by the match's own rule) are star residuals.
    bright = (truth["kind"] == "star") & (truth["flux"] > 50 * sigma * 3.545 * fwhm / 2.3548)
    stars = truth[bright & (truth["x"] > 0) & (truth["x"] < 255)]
    assert len(stars) >= 5
    near = _at(visit, list(stars["x"] + 0.5), list(stars["y"]))
    got = label_sources(near, truth, visit.wcs, fwhm, sky_sigma=sigma)
    assert (got == "star").mean() > 0.7


def test_match_config_is_validated() -> None:
    with pytest.raises(BadValueError, match="MatchConfig.point_fwhm"):
        MatchConfig(point_fwhm=0.0)
