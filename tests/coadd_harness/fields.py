"""Held-out fields for coadd acceptance: every artefact class, seeds drawn at run time.

A field is defined by its seed and epoch count alone
(:func:`heldout_config`): the seed also draws the cadence (one to three
visits a night, 0.8 to 4 nights apart), the dither (about an eighth of the
image side, as a survey dithers) and a small rotation, so that no field is
one that a method was tuned on.  :func:`draw_seeds` picks the seeds at
random, or replays those of ``SKYDM_COADD_SEEDS``.

Run as a script it prints, per field, every metric of CompareWarp (and of
SWarp CLIPPED with ``--swarp``) as one JSON line (``SKYDM_COADD_SEEDS`` or
``--seeds`` replays fields)::

    PYTHONPATH=src:tests python -m coadd_harness.fields --seeds 1,2 --epochs 8,20 --swarp
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coadd_harness.scoring import SimWarps, score, warps_from_survey
from skydm.coadd import SkyCell, WarpStack, assemble_coadd
from skydm.image import Exposure
from skydm.sim import SurveyConfig, simulate_survey

#: Environment variable replaying fields: comma-separated seeds.
SEEDS_ENV = "SKYDM_COADD_SEEDS"

#: Image side of a held-out field, pixels; the cell is the part every visit
#: covers (about 180 pixels a side after the dithers).
SIDE = 256

#: Rates of the artefact classes, per exposure: high enough that each class
#: shows up on most fields (a rate of 0.5 over 8 epochs misses a class on 2%
#: of fields), low enough that some variables stay clear of every artefact.
RATES = {
    "trail_rate": 0.8,
    "ghost_rate": 0.5,
    "ghosts_on_stars": 0.5,
    "trails_on_variables": 0.4,
}


@dataclass(frozen=True)
class HeldoutField:
    """One held-out field: what defines it and its warps.

    Attributes
    ----------
    seed, epochs : int
        The field's seed and number of epochs (visits in its one band).
    config : SurveyConfig
        The survey it was simulated from.
    sim : SimWarps
        Its warps with and without artefacts on the common cell.
    """

    seed: int
    epochs: int
    config: SurveyConfig
    sim: SimWarps

    @property
    def label(self) -> str:
        """How to name the field in a message (and replay it)."""
        return field_label(self.seed, self.epochs)


def draw_fields(n: int, epochs: Sequence[int] = (8, 20)) -> list[tuple[int, int]]:
    """``n`` fields as (seed, epochs): seeds drawn at random, epoch counts in
    turn from ``epochs``; or those of ``SKYDM_COADD_SEEDS``.

    ``SKYDM_COADD_SEEDS`` lists seeds, comma-separated, each optionally with
    its epoch count (``123:20,456:8``; without one, the counts alternate).
    """
    given = os.environ.get(SEEDS_ENV, "").strip()
    if not given:
        # Above the tuning seeds (1-5) and anything a test fixes.
        seeds = [1000 + secrets.randbelow(2**31 - 1000) for _ in range(n)]
        return [(seed, epochs[i % len(epochs)]) for i, seed in enumerate(seeds)]
    out = []
    for i, part in enumerate(p.strip() for p in given.split(",") if p.strip()):
        seed, _, count = part.partition(":")
        try:
            out.append((int(seed), int(count) if count else epochs[i % len(epochs)]))
        except ValueError:
            raise SystemExit(
                f"{SEEDS_ENV}={given!r}: bad field {part!r}; give seeds or seed:epochs, "
                "comma-separated, e.g. 123:20,456:8"
            ) from None
    return out


def field_label(seed: int, epochs: int) -> str:
    """How to name a field in a message so that it can be replayed."""
    return f"{seed}:{epochs}"


def score_field(seed: int, epochs: int, *, side: int = SIDE) -> dict[str, Any]:
    """Simulate one held-out field and score CompareWarp on it (numbers only,
    so that it can run in a worker process)."""
    field = simulate_field(seed, epochs, side=side)
    out = summary(score(field.sim, compare_warp))
    return {"seed": seed, "epochs": epochs, "label": field_label(seed, epochs), **out}


def heldout_config(seed: int, epochs: int, *, side: int = SIDE) -> SurveyConfig:
    """The survey of one held-out field (deterministic in ``seed`` and ``epochs``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epochs,)))
    return SurveyConfig(
        seed=seed,
        shape=(side, side),
        n_visits=epochs,
        raw_dtype="float32",  # integer raws would round raw and clean differently
        n_variables=10,  # so that some are clear of every artefact
        n_galaxies=40,  # fewer than the default 100: galaxies are most of the rendering time
        n_movers=2,  # one fast (trailed), one slow (tens of pixels per visit)
        n_slow_movers=2,  # one overlapping (< 1 FWHM per visit), one stepping
        visits_per_night=int(rng.integers(1, 4)),
        night_gaps=(0.8, 4.0),
        dither=float(side * rng.uniform(0.09, 0.14)),
        rotation=float(rng.uniform(0.0, 1.5)),
        **RATES,
    )


def simulate_field(seed: int, epochs: int, *, side: int = SIDE) -> HeldoutField:
    """Simulate one held-out field and warp it onto the cell every visit covers."""
    cfg = heldout_config(seed, epochs, side=side)
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    # Less twice the dither, and the corners that a small rotation takes off.
    inner = side - 2 * math.ceil(cfg.dither) - math.ceil(side * math.radians(cfg.rotation)) - 8
    cell = SkyCell.centred(ra, dec, (inner, inner), cfg.pixel_scale)
    return HeldoutField(seed, epochs, cfg, warps_from_survey(survey, cell))


def compare_warp(warps: Sequence[Exposure], weights: np.ndarray) -> Exposure:
    """CompareWarp with its default configuration (the method under test)."""
    return assemble_coadd(WarpStack(warps, weights=weights), "compare")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of :func:`~coadd_harness.scoring.score`'s result (no images)."""
    keep = {}
    for key, value in result.items():
        if isinstance(value, Exposure):
            continue
        if isinstance(value, np.ndarray) and value.dtype == bool:
            value = [bool(v) for v in value]
        elif isinstance(value, np.ndarray):
            value = [round(float(v), 4) for v in value]
        elif isinstance(value, dict):
            value = {k: round(float(v), 4) for k, v in value.items()}
        elif isinstance(value, float):
            value = round(value, 4)
        keep[key] = value
    return keep


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line of metrics per field and method."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="", help="comma-separated seeds (default: 5 at random)")
    p.add_argument("--epochs", default="8,20", help="epoch counts, each run on every seed")
    p.add_argument("--side", type=int, default=SIDE, help=f"image side, pixels ({SIDE})")
    p.add_argument("--swarp", action="store_true", help="score SWarp CLIPPED too")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s] or [s for s, _ in draw_fields(5)]
    for seed in seeds:
        for epochs in (int(e) for e in args.epochs.split(",")):
            field = simulate_field(seed, epochs, side=args.side)
            methods: dict[str, Any] = {"compare": compare_warp}
            if args.swarp:
                from coadd_harness.swarp import run_swarp

                methods["swarp_clipped"] = lambda w, wt: run_swarp(w, weights=wt)[0]
            for name, coadder in methods.items():
                out = summary(score(field.sim, coadder))
                line = {"seed": seed, "epochs": epochs, "method": name, **out}
                print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
