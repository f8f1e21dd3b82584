"""Survey simulator speed and memory at full size (4096 x 4096).

Prints one JSON line:

* ``pair_s`` — :func:`skydm.sim.simulate_pair` of two 4096^2 images with ~4000
  stars (the differencing benchmark's input);
* ``visit_s`` — rendering one survey visit, 4096^2 with ~4000 stars, ~1000
  galaxies and every artefact class (raw, clean, footprints, truth);
* ``write_s`` — writing that visit (uint16 raw, clean twin, truth, footprints);
* ``stars``, ``galaxies`` — objects on that image;
* ``pair_cpu_s``, ``visit_cpu_s`` — the same in CPU time of this process
  (steadier than wall time on a shared machine);
* ``peak_rss_mb`` — the process's peak resident memory.

Each time is the best of ``--repeat`` runs (one core; numpy here is
single-threaded).  Run: ``.venv/bin/python benchmarks/sim.py [--size 4096] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from skydm.sim import SurveyConfig, simulate_pair, simulate_survey
from skydm.sim.io import write_visit


def main() -> int:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    shape = (args.size, args.size)
    scale = (args.size / 4096) ** 2
    n_stars, n_gal = round(4000 * scale), round(1000 * scale)

    pair, pair_cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        simulate_pair(1, shape, n_stars, 1.2, 0.8, n_transients=20)
        pair.append(time.perf_counter() - t0)
        pair_cpu.append(time.process_time() - c0)

    cfg = SurveyConfig(seed=1, shape=shape, n_visits=1, n_stars=n_stars, n_galaxies=n_gal)
    render, render_cpu, write = [], [], []
    counts: dict[str, int] = {}
    for _ in range(args.repeat):
        v = simulate_survey(cfg).visits[0]
        t0, c0 = time.perf_counter(), time.process_time()
        truth = v.truth
        render.append(time.perf_counter() - t0)
        render_cpu.append(time.process_time() - c0)
        counts = {k: int((truth["kind"] == k).sum()) for k in ("star", "galaxy")}
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_visit(v, Path(tmp))
            write.append(time.perf_counter() - t0)
        v.release()

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "benchmark": "sim",
        "size": args.size,
        "pair_s": round(min(pair), 3),
        "visit_s": round(min(render), 3),
        "pair_cpu_s": round(min(pair_cpu), 3),
        "visit_cpu_s": round(min(render_cpu), 3),
        "write_s": round(min(write), 3),
        "stars": counts.get("star", 0),
        "galaxies": counts.get("galaxy", 0),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
