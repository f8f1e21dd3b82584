"""Held-out fields for coadd acceptance: every artefact class, seeds drawn at run time.

A field is defined by its seed and epoch count alone
(:func:`heldout_config`): the seed also draws the cadence (one to three
visits a night, 0.8 to 4 nights apart), the dither (about an eighth of the
image side, as a survey dithers) and a small rotation, so that no field is
one that a method was tuned on.  :func:`draw_seeds` picks the seeds at
random, or replays those of ``SKYDM_COADD_SEEDS``.

Run as a script it prints, per field, every metric of CompareWarp (and of
SWarp CLIPPED with ``--methods compare,swarp``) as one JSON line
(``--fields`` or ``SKYDM_COADD_SEEDS`` replays fields)::

    PYTHONPATH=src:tests python -m coadd_harness.fields --fields 1:8,2:20 --methods compare,swarp

With ``--own-light`` CompareWarp's line also holds, per class, its leakage
split into its own light, other classes' and the replacement noise
(:func:`~coadd_harness.scoring.own_light_leakage`; slower).
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

from coadd_harness.scoring import SimWarps, own_light_leakage, score, warps_from_survey
from skydm.coadd import SkyCell, WarpStack, assemble_coadd
from skydm.image import Exposure
from skydm.sim import SurveyConfig, simulate_survey

#: Environment variable replaying fields: comma-separated seeds.
SEEDS_ENV = "SKYDM_COADD_SEEDS"

#: Image side of a held-out field, pixels; the cell is the part every visit
#: covers (about 180 pixels a side after the dithers).
SIDE = 256

#: Mean number of each artefact class per field, whatever its epoch count
#: (the rate per exposure is this over the epochs): enough that each class
#: is judged (its light in the plain mean at 20 sigma) on most fields, so
#: that ``test_every_class_is_on_most_fields`` holds by a wide margin on
#: random seeds.  A ghost is faint (0.5-2.5 sky sigma in one exposure,
#: about 8 sigma in the mean of 20) and about half of them fall in the
#: cell; half the trails are faint.  Measured on 15 random fields with 6
#: trails and 8 ghosts a field: faint trails were judged on 10, ghosts on
#: 12, ghosts on stars (12 a field; with 4, on half the fields) on 14.
#: The trails cost variables clear of every artefact; ``n_variables`` in
#: :func:`heldout_config` makes up for it.
PER_FIELD = {
    "trail_rate": 9.0,
    "ghost_rate": 12.0,
    "ghosts_on_stars": 12.0,
    "trails_on_variables": 2.5,
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
    turn from ``epochs``; or those of ``SKYDM_COADD_SEEDS``
    (:func:`parse_fields`)."""
    given = os.environ.get(SEEDS_ENV, "").strip()
    if given:
        return parse_fields(given, epochs, source=SEEDS_ENV)
    # Above the tuning seeds (1-5) and anything a test fixes.
    seeds = [1000 + secrets.randbelow(2**31 - 1000) for _ in range(n)]
    return [(seed, epochs[i % len(epochs)]) for i, seed in enumerate(seeds)]


def parse_fields(
    text: str, epochs: Sequence[int] = (8, 20), *, source: str = "--fields"
) -> list[tuple[int, int]]:
    """Fields from ``seed[:epochs],...`` (without a count, the counts of
    ``epochs`` alternate); a bad entry exits with one line naming ``source``."""
    out = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        seed, _, count = part.partition(":")
        try:
            out.append((int(seed), int(count) if count else epochs[i % len(epochs)]))
        except ValueError:
            raise SystemExit(
                f"{source}={text!r}: bad field {part!r}; give seeds or seed:epochs, "
                "comma-separated, e.g. 123:20,456:8"
            ) from None
    return out


def field_label(seed: int, epochs: int) -> str:
    """How to name a field in a message so that it can be replayed."""
    return f"{seed}:{epochs}"


def score_field(seed: int, epochs: int, *, side: int = SIDE, swarp: bool = False) -> dict[str, Any]:
    """Simulate one held-out field and score CompareWarp on it (numbers only,
    so that it can run in a worker process).

    A method that fails is reported, not raised: ``error`` holds its message,
    so that the other fields' results survive and the failing field is named.
    With ``swarp``, SWarp CLIPPED's metrics on the same warps are under
    ``swarp`` (or its failure under ``swarp_error``).
    """
    label = field_label(seed, epochs)
    head: dict[str, Any] = {"seed": seed, "epochs": epochs, "label": label}
    field = simulate_field(seed, epochs, side=side)
    try:
        out = {**head, **summary(score(field.sim, compare_warp))}
    except Exception as exc:  # a crash of the method under test is a result
        out = {**head, "error": f"{type(exc).__name__}: {exc}"}
    if swarp:
        from coadd_harness.swarp import run_swarp

        try:
            out["swarp"] = summary(score(field.sim, lambda w, wt: run_swarp(w, weights=wt)[0]))
        except Exception as exc:
            out["swarp_error"] = f"{type(exc).__name__}: {exc}"
    return out


def heldout_config(seed: int, epochs: int, *, side: int = SIDE) -> SurveyConfig:
    """The survey of one held-out field (deterministic in ``seed`` and ``epochs``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epochs,)))
    return SurveyConfig(
        seed=seed,
        shape=(side, side),
        n_visits=epochs,
        raw_dtype="float32",  # integer raws would round raw and clean differently
        n_variables=24,  # so that some are clear of every artefact
        n_galaxies=40,  # fewer than the default 100: galaxies are most of the rendering time
        n_movers=4,  # two fast (trailed), two slow (tens of pixels per visit)
        n_slow_movers=2,  # one overlapping (< 1 FWHM per visit), one stepping
        visits_per_night=int(rng.integers(1, 4)),
        night_gaps=(0.8, 4.0),
        dither=float(side * rng.uniform(0.09, 0.14)),
        rotation=float(rng.uniform(0.0, 1.5)),
        **{name: total / epochs for name, total in PER_FIELD.items()},
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
    p.add_argument(
        "--fields",
        default="",
        help=f"seed[:epochs],... (default: {SEEDS_ENV}, else 10 drawn at random)",
    )
    p.add_argument("--side", type=int, default=SIDE, help=f"image side, pixels ({SIDE})")
    p.add_argument(
        "--methods", default="compare", help="compare and/or swarp, comma-separated (compare)"
    )
    p.add_argument(
        "--own-light",
        action="store_true",
        help="split CompareWarp's leakage per class into own light, others', replacement",
    )
    args = p.parse_args(argv)
    fields = parse_fields(args.fields) if args.fields else draw_fields(10)
    methods: dict[str, Any] = {}
    for name in args.methods.split(","):
        if name == "compare":
            methods[name] = compare_warp
        elif name == "swarp":
            from coadd_harness.swarp import run_swarp

            methods["swarp_clipped"] = lambda w, wt: run_swarp(w, weights=wt)[0]
        else:
            p.error(f"--methods: unknown method {name!r}; give compare and/or swarp")
    for seed, epochs in fields:
        field = simulate_field(seed, epochs, side=args.side)
        for name, coadder in methods.items():
            out = summary(score(field.sim, coadder))
            line = {"label": field.label, "method": name, **out}
            if args.own_light and name == "compare":
                split = own_light_leakage(field.sim)
                line["own_light"] = {c: summary(parts) for c, parts in split.items()}
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
