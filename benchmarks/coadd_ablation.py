"""Ablation of CompareWarp's rules: each rule switched off in turn.

For every simulated field (the acceptance fields, seeds 1 and 2, and the
held-out seed 23 of the stability test), CompareWarp is scored with its
default configuration and with each rule disabled (see
:mod:`coadd_harness.scoring`): ``leakage_max`` (worst artefact class) and
the damage to clean data (``noise`` ratio to the weighted mean minus 1,
``star_bias``, the worst variable flux error on the artefact-free coadd,
and spurious 5-sigma detections).  Prints ONE JSON line:
``{"fields": [...], "rows": {rule: {field: {...}}}}``.

Fields ``held<seed>x<epochs>`` are the held-out fields of
:mod:`coadd_harness.fields` (slow overlapping movers, ghosts on stars...).

Usage: ``python benchmarks/coadd_ablation.py [--rules a,b] [--fields 8,20,h8,held101x8]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# (epochs, side, seed, dither)
FIELDS = {"8": (8, 320, 1, 20.0), "20": (20, 384, 2, 48.0), "h8": (8, 288, 23, 16.0)}


def _field(epochs: int, side: int, seed: int, dither: float):  # type: ignore[no-untyped-def]
    from coadd_harness.scoring import warps_from_survey
    from skydm.coadd import SkyCell
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        seed=seed,
        shape=(side, side),
        n_visits=epochs,
        raw_dtype="float32",
        trail_rate=1.0,
        ghost_rate=0.5,
        n_variables=6,
        dither=dither,
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    inner = side - 2 * int(dither) - 8
    return warps_from_survey(survey, SkyCell.centred(ra, dec, (inner, inner), cfg.pixel_scale))


def main() -> None:
    from coadd_harness.scoring import score, variable_flux_ratios
    from skydm.coadd import WarpStack
    from skydm.coadd.compare_warp import CompareWarpConfig, compare_warp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="", help="comma-separated rules (default: all)")
    p.add_argument("--fields", default=",".join(FIELDS), help="comma-separated fields")
    args = p.parse_args()
    names = ["none", *CompareWarpConfig().rule_names()]
    if args.rules:
        names = ["none", *args.rules.split(",")]
    rows: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    for f in args.fields.split(","):
        if f.startswith("held"):  # held-out fields: held<seed>x<epochs>
            from coadd_harness.fields import simulate_field

            seed, epochs = f[4:].split("x")
            sim = simulate_field(int(seed), int(epochs)).sim
        else:
            sim = _field(*FIELDS[f])
        for name in names:
            cfg = CompareWarpConfig() if name == "none" else CompareWarpConfig().without(name)
            start = time.perf_counter()
            res = score(sim, lambda w, wt, c=cfg: compare_warp(WarpStack(w, weights=wt), config=c))
            var = variable_flux_ratios(res["coadd_clean"], res["ref_clean"], sim.truth)
            worst = max(res["leakage"], key=res["leakage"].get)
            rows[name][f] = {
                "leakage_max": round(float(res["leakage_max"]), 4),
                "worst": worst,
                "leakage": {k: round(float(v), 4) for k, v in res["leakage"].items()},
                "noise": round(float(res["noise_ratio"]) - 1, 4),
                "star_bias": round(float(res["star_bias"]), 4),
                "var_err": round(float(np.max(np.abs(var - 1))) if var.size else 0.0, 4),
                "spurious": int(res["spurious"]),
                "s": round(time.perf_counter() - start, 1),
            }
            print(name, f, rows[name][f], file=sys.stderr, flush=True)
    print(json.dumps({"fields": args.fields.split(","), "rows": rows}))


if __name__ == "__main__":
    main()
