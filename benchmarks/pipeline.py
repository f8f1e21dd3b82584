"""Benchmark of the pipeline framework; prints one JSON line.

* ``drp_local_s``: ``skydm run drp`` (calibrate, warp, coadd, and Object
  measurement where ``skydm.drp`` is installed) on a simulated survey, local
  process pool of ``--workers`` processes: graph, plan and execution on
  started workers (``local_start_s``: starting the pool's processes and
  their imports; ``drp_local_total_s``: everything);
* ``drp_dask_s``: the same on a fresh repository, Dask ``LocalCluster`` of
  ``--workers`` worker processes of one thread each, measured the same way
  (``dask_start_s``: the cluster's start and the workers' imports;
  ``dask_vs_local``: the ratio of the two);
* ``units``: work units of that run;
* ``overhead_ms_per_unit``: framework time outside the task bodies (graph,
  plan, registry, provenance, scheduling), per unit, from the local run:
  ``(graph_s + scheduler_s + sum(unit_s - task_s)) / units``; worker start-up
  and idle workers (a coadd running alone at the end) are not in it, and
  ``idle_ms_per_unit`` says how much the latter was;
* ``graph_100k_s``: building (and planning) the ``drp`` graph of ~100,000
  units over a synthetic registry of that size, footprints cached (as on any
  rerun); ``graph_100k_cold_s`` the first build, which computes every raw's
  sky-cell overlaps; ``graph_100k_cpu_s`` and ``graph_100k_cold_cpu_s`` the
  CPU seconds of the same builds.

Usage: ``python benchmarks/pipeline.py [--size 2048 --detectors 4 --visits 10] [--repeat N]``
(``--visits`` per band; two bands; ``--repeat``: local and Dask runs
alternate N times and the medians are kept).  The defaults are reduced to
fit a small shared machine; the JSON says which size was run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def simulate(out: Path, size: int, detectors: int, visits: int) -> list[Path]:
    """Raws of ``detectors`` detectors side by side, 2 bands, ``visits`` per band."""
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    step = (size + 10) * 0.2 / 3600.0
    raws: list[Path] = []
    for k in range(detectors):
        cfg = SurveyConfig(
            seed=11,
            shape=(size, size),
            n_visits=visits,
            bands=("g", "r"),
            n_stars=int(300 * (size / 512) ** 2),
            n_galaxies=int(100 * (size / 512) ** 2),
            dither=10.0,
            ra=150.0 + (k - (detectors - 1) / 2) * step / math.cos(math.radians(2.0)),
            dec=2.0,
            detector=k,
        )
        raws += write_survey(simulate_survey(cfg), out / f"det{k}", clean=False)
    return raws


def grid_config(size: int, detectors: int) -> list[str]:
    """One sky cell holding the whole focal plane."""
    side = (detectors * (size + 10) + 40) * 0.2 / 3600.0
    return ["ra0=150.0", "dec0=2.0", f"cell_size_deg={side:.6f}", "margin=20"]


def run_drp(raws: list[Path], repo: Path, config: list[str], **kwargs: object) -> dict[str, float]:
    import importlib.util

    from skydm.archive import ingest_files
    from skydm.pipeline import BUILTIN, run_pipeline
    from skydm.repo import Repository

    with Repository.open(repo) as r:
        assert ingest_files(r, raws).ok
    tasks = BUILTIN["drp"][1]
    if importlib.util.find_spec("skydm.drp") is None:
        tasks = tuple(t for t in tasks if t not in ("measure", "object_catalog"))
    t0 = time.perf_counter()
    outcome = run_pipeline(tasks, repo, config=config, quiet=True, **kwargs)  # type: ignore[arg-type]
    total = time.perf_counter() - t0
    report = outcome.report
    assert report is not None and report.ok, report and report.failures[:3]
    return {
        "total_s": total,
        "start_s": outcome.timings["start_s"],
        "run_s": outcome.graph_s + outcome.timings["execute_s"],
        "wall_s": report.wall_s,
        "graph_s": outcome.graph_s,
        "task_s": sum(r.task_s for r in report.results),
        "task_cpu_s": sum(r.task_cpu_s for r in report.results),
        "unit_cpu_s": sum(r.unit_cpu_s for r in report.results),
        "scheduler_s": report.scheduler_s,
        "unit_s": sum(r.unit_s for r in report.results),
        "units": len(report.results),
    }


def synthetic_graph(root: Path, n_units: int) -> dict[str, float]:
    """Time the drp graph of ~n_units over a synthetic registry (fields x detectors x visits)."""
    import sqlalchemy as sa

    from skydm.coadd.skygrid import tan_wcs
    from skydm.pipeline import build_graph, load_pipeline, plan
    from skydm.pipeline.regions import RegionIndex, footprint
    from skydm.repo import Repository
    from skydm.repo.registry import datasets

    n_raws = n_units // 2  # a calibrate and a warp unit per raw (plus the coadds)
    n_det, n_vis = 4, 25
    n_fields = max(1, n_raws // (n_det * n_vis))
    repo = Repository.open(root / "synthetic")
    rows, footprints = [], {}
    created = datetime.now(UTC)
    for f in range(n_fields):
        # Fields 0.1 degree apart along the equator: each raw overlaps a few cells.
        ra0 = (f * 0.1) % 360.0
        for det in range(n_det):
            shape = footprint(tan_wcs(ra0 + det * 0.015, 0.0, (512, 512), 0.2), (512, 512))
            for v in range(n_vis):
                checksum = f"{f:08d}{det:04d}{v:04d}".ljust(64, "0")
                rows.append({
                    "dataset_type": "raw", "instrument": "skysim", "detector": det,
                    "visit": f * n_vis + v + 1, "band": "gr"[v % 2], "skycell": "",
                    "path": f"raw/{checksum}.fits", "checksum": checksum, "size": 1,
                    "created": created, "meta": {},
                })  # fmt: skip
                footprints[checksum] = {**shape, "cells": {}}
    with repo.registry.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.insert(datasets), rows)
    # The raws' borders as an ingest-time graph would have cached them (the
    # synthetic raws have no files to read them from).
    index = RegionIndex(repo.root)
    for checksum, entry in footprints.items():
        index.prime(checksum, entry)
    index.save()
    pipe = load_pipeline("drp", ["cell_size_deg=0.05", "margin=50"])
    out: dict[str, float] = {}
    for label in ("cold", "warm", "warm2"):
        t0, c0 = time.perf_counter(), time.process_time()
        graph = build_graph(pipe, repo)
        todo = plan(graph, repo)
        out[label] = time.perf_counter() - t0
        out[label + "_cpu"] = time.process_time() - c0
        out["units"] = len(graph.units)
        assert len(todo) == len(graph.units)
    repo.close()
    return out


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median ``run_s`` (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["run_s"])
    return ordered[(len(ordered) - 1) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="detector side in pixels (512)")
    p.add_argument("--detectors", type=int, default=4, help="detectors (4)")
    p.add_argument("--visits", type=int, default=10, help="visits per band, 2 bands (10)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--graph-units", type=int, default=100_000, help="synthetic graph size")
    p.add_argument("--skip-runs", action="store_true", help="only the synthetic graph")
    p.add_argument(
        "--repeat", type=int, default=1, help="alternating local/Dask runs, medians kept (1)"
    )
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="skydm-bench-pipeline-"))
    figures: dict[str, object] = {
        "size": f"{args.detectors} detectors of {args.size}^2, {2 * args.visits} visits, 2 bands",
        "workers": args.workers,
    }
    try:
        if not args.skip_runs:
            raws = simulate(tmp / "sim", args.size, args.detectors, args.visits)
            config = grid_config(args.size, args.detectors)
            # Local and Dask runs alternate (each on a fresh repository) and
            # the median of each is kept: a shared machine's load changes
            # over minutes, and one run of each would compare two loads.
            runs: dict[str, list[dict[str, float]]] = {"local": [], "dask": []}
            for k in range(args.repeat):
                runs["local"].append(run_drp(raws, tmp / f"local{k}", config, jobs=args.workers))
                runs["dask"].append(
                    run_drp(raws, tmp / f"dask{k}", config, dask=f"local:{args.workers}")
                )
            local = _median_run(runs["local"])
            dask = _median_run(runs["dask"])
            # Framework time outside the task bodies: graph and plan, the
            # scheduler loop, and each unit's opening, provenance and registry
            # work in its worker (process start-up and idle workers excluded).
            overhead = local["graph_s"] + local["scheduler_s"] + local["unit_s"] - local["task_s"]
            figures.update(
                # Both measured alike: graph, plan and execution on started
                # workers; starting them (processes, imports) is apart.
                drp_local_s=round(local["run_s"], 2),
                drp_dask_s=round(dask["run_s"], 2),
                local_start_s=round(local["start_s"], 2),
                dask_start_s=round(dask["start_s"], 2),
                drp_local_total_s=round(local["total_s"], 2),
                drp_dask_total_s=round(dask["total_s"], 2),
                units=int(local["units"]),
                overhead_ms_per_unit=round(1000 * overhead / local["units"], 1),
                worker_overhead_ms_per_unit=round(
                    1000 * (local["unit_s"] - local["task_s"]) / local["units"], 1
                ),
                worker_overhead_cpu_ms_per_unit=round(
                    1000 * (local["unit_cpu_s"] - local["task_cpu_s"]) / local["units"], 1
                ),
                dask_vs_local=round(dask["run_s"] / local["run_s"], 3),
                # CPU seconds of the units (bodies and framework) on each:
                # equal work costs equal CPU whatever the load's swings.
                drp_local_cpu_s=round(local["unit_cpu_s"], 2),
                drp_dask_cpu_s=round(dask["unit_cpu_s"], 2),
                repeats=args.repeat,
                drp_local_runs_s=[round(r["run_s"], 2) for r in runs["local"]],
                drp_dask_runs_s=[round(r["run_s"], 2) for r in runs["dask"]],
                idle_ms_per_unit=round(
                    1000 * (args.workers * local["wall_s"] - local["unit_s"]) / local["units"], 1
                ),
            )
        graph = synthetic_graph(tmp, args.graph_units)
        figures.update(
            graph_units=int(graph["units"]),
            graph_100k_s=round(graph["warm"], 2),
            graph_100k_cold_s=round(graph["cold"], 2),
            # CPU seconds of the same builds: what a shared machine's load
            # does not inflate as much as it does the wall-clock figures.
            graph_100k_cpu_s=round(graph["warm_cpu"], 2),
            graph_100k_cold_cpu_s=round(graph["cold_cpu"], 2),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
