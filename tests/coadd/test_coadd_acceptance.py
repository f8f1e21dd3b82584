"""CompareWarp acceptance on simulated surveys with exact artefact-free twins.

Each survey is simulated with cosmic rays, bright and faint satellite
trails, fast and slow asteroids, ghosts and variable stars; every visit is
warped (with and without its artefacts, same noise) onto a cell inside the
area that all dithered visits cover, and coadded.  See
:mod:`coadd_harness.scoring` for the metrics.
"""

from __future__ import annotations

import numpy as np
import pytest

from coadd_harness.scoring import (
    FOOTPRINT_CLASSES,
    SimWarps,
    score,
    spurious_detections,
    variable_flux_ratios,
    warps_from_survey,
)
from skydm.coadd import SkyCell, WarpStack, assemble_coadd
from skydm.image import Exposure, Mask
from skydm_testing import require_executable

# (epochs, image side, seed, dither in pixels): the cell is the image less twice the
# largest dither.  The 20-epoch field is dithered as a survey is (an eighth of the
# image side, larger than the ghosts, which therefore move on the sky by more than
# their size); the 8-epoch field keeps small dithers (20 px), where ghosts overlap.
CASES = {8: (8, 320, 1, 20.0), 20: (20, 384, 2, 48.0)}


def _simulate(epochs: int, side: int, seed: int, dither: float) -> SimWarps:
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        seed=seed,
        shape=(side, side),
        n_visits=epochs,
        raw_dtype="float32",  # integer raws would round raw and clean differently
        trail_rate=1.0,
        ghost_rate=0.5,
        n_variables=6,  # so that some are clear of every artefact
        dither=dither,
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    inner = side - 2 * int(cfg.dither) - 8
    return warps_from_survey(survey, SkyCell.centred(ra, dec, (inner, inner), cfg.pixel_scale))


def _compare(warps: list[Exposure], weights: np.ndarray) -> Exposure:
    return assemble_coadd(WarpStack(warps, weights=weights), "compare")


@pytest.fixture(scope="module", params=sorted(CASES))
def scored(request: pytest.FixtureRequest) -> tuple[int, SimWarps, dict]:
    sim = _simulate(*CASES[request.param])
    return request.param, sim, score(sim, _compare)


#: The classes these fields inject (the held-out fields of
#: ``test_coadd_heldout.py`` add slow movers, trails on variables and ghosts on stars).
INJECTED = (
    "cosmic_rays",
    "satellite_trails_bright",
    "satellite_trails_faint",
    "asteroids_fast",
    "asteroids_slow",
    "ghosts",
)


def test_every_artefact_class_is_present(scored: tuple[int, SimWarps, dict]) -> None:
    _, sim, result = scored
    assert set(result["leakage"]) == set(INJECTED)
    assert all(sim.footprints[c].sum() > 50 for c in INJECTED)
    assert not any(sim.footprints[c].any() for c in FOOTPRINT_CLASSES if c not in INJECTED)


def test_leakage_is_well_below_the_plain_mean_for_every_class(
    scored: tuple[int, SimWarps, dict],
) -> None:
    n, _, result = scored
    # Holds on every field of the seeds 1-5 sweep (docs/coadd.md, 'Status'):
    # worst 0.042 (faint cosmic-ray tracks), lowest -0.0497.
    for cls, value in result["leakage"].items():
        assert -0.05 < value <= 0.05, f"{n} epochs: {cls} leaks {value:.4f}"


def test_leakage_of_every_class_is_at_most_two_percent(scored: tuple[int, SimWarps, dict]) -> None:
    """The issue's goal on both test fields.  Not met on every realisation:
    over seeds 1-5 of the realistic-dither field it holds on 8 of 10 (a
    cosmic ray's light 0.029 with 8 epochs; a small ghost 0.036 with 8
    epochs, of which 0.016 the noise of replaced pixels); docs/coadd.md,
    'Status'."""
    n, _, result = scored
    for cls, value in result["leakage"].items():
        assert value <= 0.02, f"{n} epochs: {cls} leaks {value:.4f}"
        # Negative leakage is over-subtraction; only the noise of clipped pixels may cause it.
        assert value > -0.05, f"{n} epochs: {cls} over-subtracted ({value:.4f})"


def test_the_artefacts_own_light_leaks_within_the_goal(
    scored: tuple[int, SimWarps, dict],
) -> None:
    """The clean twins assembled with the artefacts' clips split each class's
    leakage into the artefacts' own light and the noise of replaced pixels;
    the light left is within the 2% goal."""
    from coadd_harness.scoring import leakage_parts

    n, sim, result = scored
    valid = ((result["ref_art"].msk | result["ref_clean"].msk) & np.uint32(Mask.NO_DATA)) == 0
    light, noise = leakage_parts(
        WarpStack(sim.art, weights=sim.weights),
        WarpStack(sim.clean, weights=sim.weights),
        result["coadd_art"],
        result["coadd_clean"],
        result["ref_art"],
        result["ref_clean"],
        sim.footprints,
        valid=valid,
    )
    assert set(light) == set(noise) == set(result["leakage"])
    for cls in result["leakage"]:
        assert light[cls] <= 0.02, f"{n} epochs: {cls} lets {light[cls]:.4f} of its light through"


def test_noise_and_star_fluxes_match_the_weighted_mean(scored: tuple[int, SimWarps, dict]) -> None:
    _, _, result = scored
    assert result["noise_ratio"] <= 1.02
    assert result["n_stars"] >= 20
    assert abs(result["star_bias"]) <= 0.02


def test_variable_stars_keep_their_flux(scored: tuple[int, SimWarps, dict]) -> None:
    _, sim, result = scored
    truth = sim.truth[sim.truth["kind"] == "variable"]
    # A variable under an artefact loses that epoch like any pixel there; judge the others.
    union = np.zeros(sim.cell.shape, dtype=bool)
    for fp in sim.footprints.values():
        union |= fp
    clear = []
    for row in truth:
        x, y = round(float(row["x"])), round(float(row["y"]))
        clear.append(not union[max(y - 8, 0) : y + 9, max(x - 8, 0) : x + 9].any())
    ratios = np.asarray(result["variable_ratio"])[np.asarray(clear)]
    if ratios.size == 0:
        # Nothing to judge: with 20 visits the trails cover almost every
        # variable (over seeds 1-5 one 20-epoch field has two clear ones, at
        # 1.000 and 0.998); docs/coadd.md, 'Status'.
        pytest.xfail("no variable clear of every artefact in this field")
    assert np.all(np.abs(ratios - 1.0) <= 0.01), ratios


def test_without_artefacts_every_variable_keeps_its_flux(
    scored: tuple[int, SimWarps, dict],
) -> None:
    """CompareWarp of the artefact-free twins against their plain mean: nothing
    to reject, so every variable, even one clipped as an outlier, keeps its
    flux (59 of the 60 variables of the seeds 1-5 sweep within 1%, the other
    at 1.018; docs/coadd.md, 'Status')."""
    _, sim, result = scored
    ratios = variable_flux_ratios(result["coadd_clean"], result["ref_clean"], sim.truth)
    assert ratios.size == 6
    assert np.all(np.abs(ratios - 1.0) <= 0.01), ratios


def test_no_spurious_detections(scored: tuple[int, SimWarps, dict]) -> None:
    """No 5-sigma detection that neither artefact-free coadd (the method's
    own, nor the plain mean of the clean warps) has."""
    n, _, result = scored
    assert result["spurious"] == 0, f"{n} epochs: {result['spurious']} spurious detections"
    # Against the method's clean coadd alone, one region of the 8-epoch field
    # counts: the saddle between two stars (S/N 5.6 in the plain mean, 5.6
    # in the artefact coadd), which the clean coadd lowers to 3.7 by a false
    # clip of one clean epoch (docs/coadd.md, 'Status').
    assert result["spurious_vs_clean"] <= (1 if n == 8 else 0), result["spurious_vs_clean"]


def test_fewer_spurious_detections_than_the_artefacts_make(
    scored: tuple[int, SimWarps, dict],
) -> None:
    _, _, result = scored
    plain = spurious_detections(result["ref_art"], result["ref_clean"])
    assert result["spurious"] <= max(3, plain // 4), (result["spurious"], plain)


def test_swarp_clipped_on_the_same_warps_leaks_more(scored: tuple[int, SimWarps, dict]) -> None:
    require_executable("SWarp", "install the Debian package swarp")
    from coadd_harness.swarp import run_swarp

    _n, sim, result = scored
    swarp = score(sim, lambda w, wt: run_swarp(w, weights=wt)[0])
    assert swarp["leakage_max"] > result["leakage_max"]
    assert swarp["spurious"] > result["spurious"]


def test_bands_filtered_by_two_threads_give_the_same_coadd(
    scored: tuple[int, SimWarps, dict],
) -> None:
    """The outlier pass reads and filters bands two at a time; the coadd does not
    depend on it (bands small enough here that there are several)."""
    from skydm.coadd.compare_warp import compare_warp

    _, sim, _ = scored
    one = compare_warp(WarpStack(sim.art, weights=sim.weights), chunk_rows=40, threads=1)
    two = compare_warp(WarpStack(sim.art, weights=sim.weights), chunk_rows=40, threads=2)
    np.testing.assert_array_equal(one.image, two.image)
    np.testing.assert_array_equal(one.var, two.var)
    np.testing.assert_array_equal(one.msk, two.msk)
    assert one.meta["CWNCLIP"] == two.meta["CWNCLIP"] > 0
