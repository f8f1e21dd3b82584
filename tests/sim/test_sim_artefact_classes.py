"""The artefact classes made for held-out coadd tests: slow movers that overlap
from one visit to the next, trails across variable stars, ghosts on bright
stars, and visit plans that are not two visits a night.

Each test checks the truth tables against the pixels (the class's own
artefact signal), so that scoring per class can rely on them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from skydm.errors import BadValueError
from skydm.sim import FOOTPRINT_CLASSES, SurveyConfig, simulate_survey
from skydm.sim.artefacts import GHOST_SHIFT
from skydm.sim.config import SLOW_MOVER_STEPS
from skydm.sim.survey import Survey

#: One visit a night (no pairs), so that every step of a slow mover is a night's.
NEW = SurveyConfig(
    seed=11,
    shape=(192, 192),
    n_visits=6,
    n_stars=60,
    n_galaxies=10,
    n_transients=0,
    n_variables=3,
    n_movers=0,
    n_slow_movers=2,
    cosmic_ray_rate=0.0,
    trail_rate=0.0,
    ghost_rate=0.0,
    trails_on_variables=1.0,
    ghosts_on_stars=1.0,
    visits_per_night=1,
    night_gaps=(0.8, 4.0),
    raw_dtype="float32",
    dither=10.0,
)


@pytest.fixture(scope="module")
def survey() -> Survey:
    return simulate_survey(NEW)


def _class_signal(v, cls: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    # Only this class's footprint (the classes of this survey barely overlap).
    return np.where(v.artefacts[cls], v.artefact_signal, 0.0)


def test_slow_movers_step_less_than_one_fwhm_or_one_to_three(survey: Survey) -> None:
    cfg = survey.config
    sharpest = cfg.seeing_range[0] / cfg.pixel_scale
    tracks: dict[str, list[tuple[float, float, float]]] = {}
    for v in survey.visits:
        for r in v.truth[v.truth["kind"] == "mover"]:
            tracks.setdefault(str(r["cls"]), []).append((v.mjd, float(r["x"]), float(r["y"])))
    assert set(tracks) == {"asteroids_overlapping", "asteroids_stepping"}
    for cls, seen in tracks.items():
        lo, hi = SLOW_MOVER_STEPS[cls]
        # Dithers move the pixel grid; steps are on the sky, so measure them
        # in the catalog's rate instead of pixel positions.
        steps = []
        cat = survey.truth[survey.truth["mover_cls"] == cls][0]
        rate_pix_day = math.hypot(cat["rate_xi"], cat["rate_eta"]) * 24 / cfg.pixel_scale
        for (m0, *_), (m1, *_) in itertools.pairwise(seen):
            steps.append(rate_pix_day * (m1 - m0) / sharpest)
        assert len(seen) == cfg.n_visits  # on the image in every visit
        assert lo <= max(steps) <= hi, (cls, steps)


def test_slow_mover_pixels_are_at_their_truth_positions(survey: Survey) -> None:
    checked = 0
    for v in survey.visits:
        for r in v.truth[v.truth["kind"] == "mover"]:
            sig = _class_signal(v, str(r["cls"]))
            yy, xx = np.indices(sig.shape)
            near = np.hypot(xx - r["x"], yy - r["y"]) < 2 * v.psf.fwhm
            others = [m for c, m in v.artefacts.items() if c != r["cls"]]
            if np.any(np.logical_or.reduce(others) & near):
                continue  # another artefact adds its signal here
            checked += 1
            s = sig * near
            # The centroid of the mover's own signal is its truth position, and it
            # holds nearly all of its flux (all but what the 0.1-sigma cut drops).
            assert (s * xx).sum() / s.sum() == pytest.approx(r["x"], abs=0.05)
            assert (s * yy).sum() / s.sum() == pytest.approx(r["y"], abs=0.05)
            assert 0.9 * r["flux"] < s.sum() <= 1.001 * r["flux"]
    assert checked >= 3  # of 12


def test_overlapping_movers_overlap_from_one_visit_to_the_next(survey: Survey) -> None:
    ra_dec = []
    for v in survey.visits:
        t = v.truth[v.truth["cls"] == "asteroids_overlapping"]
        ra_dec.append((float(t["ra"][0]), float(t["dec"][0]), v.psf.fwhm))
    for (ra0, dec0, f0), (ra1, dec1, f1) in itertools.pairwise(ra_dec):
        sep = math.hypot((ra1 - ra0) * math.cos(math.radians(dec0)), dec1 - dec0) * 3600
        assert sep / NEW.pixel_scale < min(f0, f1)


def test_trails_on_variables_cross_a_variable(survey: Survey) -> None:
    n = 0
    for v in survey.visits:
        t = v.truth
        var = t[t["kind"] == "variable"]
        for r in t[t["cls"] == "satellite_trails_on_variables"]:
            dx, dy = r["x1"] - r["x0"], r["y1"] - r["y0"]
            dist = np.abs((var["x"] - r["x0"]) * dy - (var["y"] - r["y0"]) * dx) / math.hypot(
                dx, dy
            )
            k = int(np.argmin(dist))
            assert dist[k] < 2.5  # drawn within ~0.5 px (rms) of the star
            ix, iy = round(float(var["x"][k])), round(float(var["y"][k]))
            # The trail's footprint covers the variable's pixel, and its signal
            # there is at least what its truth (flux, width, ends) predicts at
            # that distance from the line (other artefacts can only add).
            sig = _class_signal(v, "satellite_trails_on_variables")
            assert v.artefacts["satellite_trails_on_variables"][iy, ix]
            d = abs((ix - r["x0"]) * dy - (iy - r["y0"]) * dx) / math.hypot(dx, dy)
            peak = r["flux"] / math.hypot(dx, dy) / (math.sqrt(2 * math.pi) * r["size"])
            assert sig[iy, ix] >= 0.8 * peak * math.exp(-0.5 * (d / r["size"]) ** 2)
            n += 1
    assert n >= 3


def test_ghosts_on_stars_surround_a_bright_star(survey: Survey) -> None:
    n = 0
    for v in survey.visits:
        t = v.truth
        stars = t[t["kind"] == "star"]
        top = stars[np.argsort(-np.asarray(stars["flux"]))[:5]]
        ny, nx = v.raw.shape
        cx, cy = (nx - 1) / 2, (ny - 1) / 2
        for g in t[t["cls"] == "ghosts_on_stars"]:
            # Shifted radially from one of the five brightest stars by 2-8% of its
            # distance from the axis.
            ok = False
            for s in top:
                f = np.array([g["x"] - s["x"], g["y"] - s["y"]])
                axis = np.array([s["x"] - cx, s["y"] - cy])
                frac = np.linalg.norm(f) / max(np.linalg.norm(axis), 1e-9)
                aligned = np.linalg.norm(f - frac * axis) < 1e-6 * (1 + np.linalg.norm(axis))
                ok |= bool(aligned and GHOST_SHIFT[0] - 1e-9 <= frac <= GHOST_SHIFT[1] + 1e-9)
            assert ok, (v.visit, g["x"], g["y"])
            # Its footprint reaches the star's neighbourhood (halo around it).
            fp = v.artefacts["ghosts_on_stars"]
            yy, xx = np.indices(fp.shape)
            ring = np.hypot(xx - g["x"], yy - g["y"]) <= g["size"]
            assert fp[ring].mean() > 0.5
            n += 1
    assert n >= 3


def test_one_visit_a_night_and_three_a_night() -> None:
    one = simulate_survey(NEW)
    gaps = np.diff([v.mjd for v in one.visits])
    assert np.all((gaps >= 0.8 - 1e-9) & (gaps <= 4.0 + 1e-9))
    three = simulate_survey(
        SurveyConfig(seed=2, shape=(64, 64), n_visits=7, visits_per_night=3, pair_gap=0.02)
    )
    mjds = np.array([v.mjd for v in three.visits])
    nights = np.floor(mjds - 0.1 - three.config.mjd_start + 1e-9)
    assert np.allclose(np.diff(mjds[:3]), 0.02) and np.allclose(np.diff(mjds[3:6]), 0.02)
    assert np.diff(mjds)[2] >= 1.0 - 0.04  # a new night
    assert len(set(nights.tolist())) == 3


def test_every_footprint_class_has_truth_rows_and_the_reverse(survey: Survey) -> None:
    seen = set()
    for v in survey.visits:
        kinds = set(v.truth["cls"])
        for cls in FOOTPRINT_CLASSES:
            assert v.artefacts[cls].any() == (cls in kinds), (v.visit, cls)
            seen |= {cls} if v.artefacts[cls].any() else set()
    assert seen == {
        "asteroids_overlapping",
        "asteroids_stepping",
        "satellite_trails_on_variables",
        "ghosts_on_stars",
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_slow_movers", -1),
        ("trails_on_variables", -0.5),
        ("ghosts_on_stars", float("nan")),
        ("visits_per_night", 0),
        ("night_gaps", (3.0, 1.0)),
        ("pair_gap", 0.3),
    ],
)
def test_new_fields_are_validated(name: str, value: object) -> None:
    with pytest.raises(BadValueError, match=name):
        SurveyConfig(**{name: value})  # type: ignore[arg-type]
