"""CPU per stage of one detector through the prompt worker's task bodies, on one thread.

Prints one JSON line.  A one-detector repository (templates and ``--raws``
night raws ingested; :func:`skydm.prompt.simulate.prepare_night`, as the
served benchmark makes it) is prepared once under ``--keep DIR``; each run
copies it (so that every run starts from the same APDB and outbox), warms
up as a worker does (:func:`skydm.prompt.worker.warm_up` with one thread:
the BLAS and OpenMP pools limited, as ``PromptConfig.worker_threads``),
preloads, and runs :func:`skydm.prompt.worker.process_detector` on raw
number ``--raw`` of the night, with no Kafka (``alerts`` is the outbox).
``stages_cpu_s`` are CPU seconds (``time.process_time``) between the
worker's stamps; ``to_alerts_cpu_s`` is raw -> alerts.  With ``--profile``
it runs under cProfile on the CPU clock and adds the cumulative CPU of the
main steps (``steps_cpu_s``).

Usage: ``python benchmarks/prompt_detector.py --size 4096 --stars 10000
--keep DIR [--profile]``.  Preparing takes minutes at 4096 pixels (the
templates); a run about 15 CPU s.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any

#: The steps reported with ``--profile``: function name -> a piece of its file's path.
STEPS = {
    "read_raw": "restore.py",
    "repair_cosmic_rays": "cosmics.py",
    "lacosmic_mask": "cosmics.py",
    "masked_background": "sky.py",
    "measure_star_psf": "starpsf.py",
    "calibrate_raw": "calibrate.py",
    "subtract": "subtract.py",
    "detect_dia_sources": "subtract.py",
    "measure_dia_sources": "measure.py",
    "produce_visit_alerts": "produce.py",
    "export": "handoff.py",
}


def prepare(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The night's raws of the kept repository (prepared and ingested on the first run)."""
    from skydm.archive import ingest_files
    from skydm.prompt import NightConfig
    from skydm.prompt.simulate import prepare_night
    from skydm.repo import Repository

    listing = root / "night.json"
    if listing.exists():
        return list(json.loads(listing.read_text()))
    cfg = NightConfig(
        visits=args.raws, cadence=40.0, detectors=1, size=args.size, stars=args.stars,
        templates=args.templates, seed=args.seed,
    )  # fmt: skip
    night = prepare_night(root, cfg, render=True, jobs=args.jobs)
    raws = []
    with Repository.open(root, create=False) as repo:
        for n, dets in sorted(night.visits.items()):
            for v, path in dets:
                assert path is not None
                result = ingest_files(repo, [path])
                if not result.ok:
                    raise SystemExit(f"raw not ingested: {result.results[0].line()}")
                ny, nx = v.config.shape
                ra, dec = v.wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
                raws.append(
                    {"instrument": v.config.instrument, "visit": n, "detector": v.detector,
                     "band": cfg.band, "ra": float(ra) % 360.0, "dec": float(dec)}
                )  # fmt: skip
    listing.write_text(json.dumps(raws))
    return raws


def run(root: Path, raw: dict[str, Any], profile: bool) -> dict[str, Any]:
    """One detector in this process: CPU per stage (and per step when profiled)."""
    from skydm.prompt import timing
    from skydm.prompt.config import load_config
    from skydm.prompt.worker import DetectorJob, preload_detector, process_detector, warm_up

    warm_up(1)
    job = DetectorJob(
        str(root), raw["instrument"], raw["visit"], raw["detector"], raw["band"], raw["ra"],
        raw["dec"], time.time() + 1e6, "", load_config(root),
    )  # fmt: skip
    store = timing.TimingStore(root)
    store.expect(*job.key, job.band, time.time(), ra=job.ra, dec=job.dec, deadline=job.deadline)
    store.close()
    preload_detector(job)
    cpu_at: dict[str, float] = {}
    stamp = timing.TimingStore.stamp

    def stamped(self: timing.TimingStore, *a: Any, **kw: Any) -> None:
        cpu_at[a[3]] = time.process_time()
        stamp(self, *a, **kw)

    timing.TimingStore.stamp = stamped  # type: ignore[method-assign]
    prof = cProfile.Profile(time.process_time)
    if profile:
        prof.enable()
    outcome = process_detector(job)
    if profile:
        prof.disable()
    order = ["start", "calibrate", "diffim", "association", "alerts", "export"]
    out: dict[str, Any] = {
        "state": outcome.state,
        "n_sources": outcome.n_sources,
        "stages_cpu_s": {
            b: round(cpu_at[b] - cpu_at[a], 2)
            for a, b in itertools.pairwise(order)
            if a in cpu_at and b in cpu_at
        },
    }
    if "alerts" in cpu_at:
        out["to_alerts_cpu_s"] = round(cpu_at["alerts"] - cpu_at["start"], 2)
    if profile:
        steps: dict[str, float] = {}
        for (path, _line, name), row in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
            if name in STEPS and STEPS[name] in path:
                steps[name] = round(steps.get(name, 0.0) + row[3], 2)
        out["steps_cpu_s"] = steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, required=True, help="prepared repository (made if absent)")
    p.add_argument("--size", type=int, default=4096, help="detector side, pixels (4096)")
    p.add_argument("--stars", type=int, default=10000, help="stars on the detector (10000)")
    p.add_argument("--templates", type=int, default=3, help="template visits (3)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--raws", type=int, default=2, help="night raws prepared (2)")
    p.add_argument("--raw", type=int, default=0, help="which night raw to process (0)")
    p.add_argument("--jobs", type=int, default=1, help="processes for the preparation (1)")
    p.add_argument("--profile", action="store_true", help="under cProfile, with steps_cpu_s")
    args = p.parse_args()
    # Before numpy is imported (skydm is, lazily, below): one thread for
    # every pool, the goal's premise (warm_up limits them again).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    raws = prepare(args.keep / "one", args)
    work = args.keep / "run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.keep / "one", work)
    try:
        out = run(work, raws[args.raw], args.profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = {"benchmark": "prompt_detector", "size": args.size, "stars": args.stars,
            "seed": args.seed, "visit": raws[args.raw]["visit"], **out}  # fmt: skip
    print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
