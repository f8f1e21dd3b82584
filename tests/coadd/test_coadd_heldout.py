"""CompareWarp acceptance on held-out fields: seeds drawn at random in the test.

Ten fields (five of 8 epochs, five of 20) with every artefact class of the
simulator, slow movers that overlap from one epoch to the next included,
realistic dithers (about an eighth of the image) and cadences of one to
three visits a night (:mod:`coadd_harness.fields`).  No method was tuned on
these seeds: they are drawn anew at each run and named in every failure
message, so that a failing field can be replayed::

    SKYDM_COADD_SEEDS=123:20,456:8 python -m pytest tests/coadd/test_coadd_heldout.py

The goals (issue 19): leakage at most 0.02 for every class on at least nine
fields in ten and at most 0.05 on all; noise within 1.02 of the weighted
mean; median star bias within 0.02 sigma; variables clear of artefacts
within 1% of their flux; no 5-sigma detection that the plain weighted mean
of the artefact-free warps lacks.  The fields are scored in two worker
processes (about three minutes on two cores); with ``SKYDM_COADD_SWARP=1``
SWarp CLIPPED is scored on the same warps too and printed beside it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
import pytest

from coadd_harness.fields import SEEDS_ENV, draw_fields, field_label, score_field
from skydm.sim import FOOTPRINT_CLASSES

#: The whole module is one computation (the fixture): about three minutes on
#: two idle cores, but a shared machine can take several times that.
pytestmark = pytest.mark.timeout(1800)

N_FIELDS = 10
EPOCHS = (8, 20)

#: A class is judged on a field only where the plain mean's excess over its
#: footprint is this many times that sum's noise: a class that grazes the
#: cell in a few pixels (a trail across a corner) cannot be told from noise
#: by any method, and its leakage is noise (1.000 for every method).
MIN_SNR = 20.0

Results = list[dict[str, Any]]


def _judged(r: dict[str, Any], cls: str) -> bool:
    return cls in r["leakage"] and r["leakage_snr"].get(cls, 0.0) >= MIN_SNR


@pytest.fixture(scope="module")
def all_results() -> Results:
    fields = draw_fields(N_FIELDS, EPOCHS)
    # SWarp CLIPPED on the same warps, for context (not asserted).
    swarp = os.environ.get("SKYDM_COADD_SWARP", "") == "1"
    # Spawned workers: no state forked from pytest's process.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = {
            pool.submit(score_field, seed, epochs, swarp=swarp): field_label(seed, epochs)
            for seed, epochs in fields
        }
        out = []
        for done in as_completed(futures):
            try:
                r = done.result()
            except Exception as exc:  # the simulation itself failed
                r = {"label": futures[done], "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(r), flush=True)  # shown with any failure: the per-field table
            out.append(r)
    order = list(futures.values())
    return sorted(out, key=lambda r: order.index(r["label"]))


@pytest.fixture(scope="module")
def results(all_results: Results) -> Results:
    """The fields that CompareWarp coadded (a crash fails the test below)."""
    return [r for r in all_results if "error" not in r]


def _replay(fields: Results) -> str:
    return f"replay with {SEEDS_ENV}={','.join(r['label'] for r in fields)}"


def test_every_field_is_coadded(all_results: Results) -> None:
    bad = [r for r in all_results if "error" in r]
    errors = {r["label"]: r["error"] for r in bad}
    assert not bad, f"CompareWarp failed: {errors}; {_replay(bad)}"


def test_no_pixel_with_data_is_left_without_it(results: Results) -> None:
    """Where the plain mean has data, so has the coadd (the harness's ``holes``)."""
    bad = [r for r in results if r["holes"] != 0]
    counts = {r["label"]: r["holes"] for r in bad}
    assert not bad, f"pixels without data {counts}; {_replay(bad)}"


#: Fraction of the fields on which each class must be judged.  The fields are
#: random, so this is a bound on the harness's rates, set with a margin:
#: a class judged on 80% of fields (the rarest, faint trails, measured at
#: about that) falls below 4 fields in 10 once in a thousand runs.
MIN_JUDGED = 0.4


def test_every_class_is_on_most_fields(results: Results) -> None:
    """Otherwise the leakage tests below would judge a class on too few fields."""
    for cls in FOOTPRINT_CLASSES:
        on = [r for r in results if _judged(r, cls)]
        assert len(on) >= MIN_JUDGED * len(results), (
            f"{cls} on {len(on)} fields; {_replay(results)}"
        )


def _open(reason: str) -> pytest.MarkDecorator:
    """Issue 19 is open: on held-out fields today's CompareWarp does not yet
    meet these (docs/coadd.md, "Held-out acceptance" and the dated rounds).
    They run and report their figures; an XPASS says a criterion held on
    this draw.  ``reason``'s figures: the 40 fresh fields of 2026-12-08
    ("Issue 19, centroid floor round"; leakage, variables and star bias as
    moved by the "spurious detections" and "variable-blend guard" rounds)."""
    return pytest.mark.xfail(strict=False, reason=f"issue 19 (open): {reason}")


#: Per class, fields over 0.05 of those judged, on the 40 fields.
LEAKING = {
    "cosmic_rays": "10/40",
    "satellite_trails_bright": "0/40",
    "satellite_trails_faint": "6/40",
    "asteroids_fast": "14/40",
    "asteroids_slow": "8/40",
    "ghosts": "13/40",
    "asteroids_overlapping": "20/40",
    "asteroids_stepping": "15/40",
    "satellite_trails_on_variables": "5/38",
    "ghosts_on_stars": "13/39",
}


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(
            c,
            marks=_open(
                f"leakage over 0.05 on {LEAKING.get(c, 'some')} held-out fields"
                + (
                    " (movers slower than a FWHM in all on a brighter source or a variable"
                    " are not found)"
                    if c == "asteroids_overlapping"
                    else ""
                )
            ),
        )
        for c in FOOTPRINT_CLASSES
    ],
)
def test_leakage_within_two_percent_on_nine_fields_in_ten(results: Results, cls: str) -> None:
    scored = [r for r in results if _judged(r, cls)]
    values = {r["label"]: r["leakage"][cls] for r in scored}
    over = [r for r in scored if not r["leakage"][cls] <= 0.02]  # NaN counts as over
    far = [r for r in scored if not r["leakage"][cls] <= 0.05]
    allowed = round(len(scored) / 10)  # one field in ten (none when replaying a few)
    assert len(over) <= allowed and not far, (
        f"{cls}: leakage over 0.02 on {len(over)} fields (allowed {allowed}), over 0.05 on "
        f"{len(far)}: {values}; {_replay(over + far)}"
    )
    # Negative leakage is over-subtraction: only the noise of clipped pixels may cause it.
    under = [r for r in scored if r["leakage"][cls] < -0.05]
    assert not under, f"{cls}: over-subtracted {values}; {_replay(under)}"


@_open("noise within 1.02 on 40/40 fields, the worst 1.0197 (1.044-1.10 on earlier rounds)")
def test_noise_within_two_percent_of_the_weighted_mean(results: Results) -> None:
    bad = [r for r in results if not r["noise_ratio"] <= 1.02]
    ratios = {r["label"]: r["noise_ratio"] for r in results}
    assert not bad, f"noise ratio {ratios}; {_replay(bad)}"


@_open("median star bias beyond 0.02 sigma on 1 of 40 fields (-0.042)")
def test_median_star_bias_within_two_hundredths_of_sigma(results: Results) -> None:
    assert all(r["n_stars"] >= 20 for r in results), {r["label"]: r["n_stars"] for r in results}
    bad = [r for r in results if not abs(r["star_bias"]) <= 0.02]
    bias = {r["label"]: r["star_bias"] for r in results}
    assert not bad, f"median star bias (sigma) {bias}; {_replay(bad)}"


@_open("6 of 60 clear variables off by more than 1% on 40 fields (0.88-1.07)")
def test_variables_clear_of_artefacts_keep_their_flux(results: Results) -> None:
    judged = 0
    bad = []
    for r in results:
        clear = np.asarray(r["variable_clear"], dtype=bool)
        ratios = np.asarray(r["variable_ratio"], dtype=float)[clear]
        judged += ratios.size
        if not np.all(np.abs(ratios - 1.0) <= 0.01):
            bad.append(r)
    assert judged >= 10, f"only {judged} variables clear of artefacts; {_replay(results)}"
    shown = {r["label"]: r["variable_ratio"] for r in bad}
    assert not bad, f"variable flux ratios {shown}; {_replay(bad)}"


@_open("spurious 5-sigma detections on 34 of 40 fields (179 in all)")
def test_no_detection_that_the_clean_weighted_mean_lacks(results: Results) -> None:
    bad = [r for r in results if r["spurious_vs_mean"] != 0]
    counts = {r["label"]: r["spurious_vs_mean"] for r in bad}
    assert not bad, f"spurious 5-sigma detections {counts}; {_replay(bad)}"
