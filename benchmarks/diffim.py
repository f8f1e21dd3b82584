"""Benchmark of image differencing on a simulated 4096x4096 pair (one JSON line).

Each method runs in its own subprocess, pinned to one thread (FFT workers,
BLAS, OpenMP).  Timed (``<method>_s`` wall clock, ``<method>_cpu_s`` process
CPU time, which a shared machine inflates less): one
``subtract(science, template, method=...)`` plus ``detect_dia_sources`` call,
with both Exposures already in memory as native-endian ``float32`` planes
(reading FITS and byte swapping are not timed).  ``<method>_peak_mb`` is the
peak resident memory of the process during that call, the inputs included
(``VmHWM``, reset just before the call); ``<method>_inputs_mb`` the resident
memory before it.  HOTPANTS is timed on the same pair, as a subprocess reading
and writing FITS, when ``hotpants`` is on PATH (build it from its public
source outside the repository).

Usage: ``python benchmarks/diffim.py [--size 4096] [--stars 4000]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "SKYDM_FFT_WORKERS": "1",
}


def _status_mb(key: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MB (peak RSS from getrusage if unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start the peak-RSS count (``VmHWM``) afresh, so that reading FITS is not in it."""
    # Where this fails the peak includes reading the inputs: an overestimate.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _worker(method: str, folder: Path) -> None:
    import numpy as np

    from skydm.diffim import detect_dia_sources, subtract
    from skydm.image import read_exposure

    science = read_exposure(folder / "science.fits")
    template = read_exposure(folder / "template.fits")
    for exp in (science, template):
        # FITS planes are big-endian: in memory, a pipeline holds native ones.
        exp.image = exp.image.astype(np.float32)
        exp.variance = exp.var.astype(np.float32)
        exp.mask = exp.msk.astype(np.uint32)
    inputs_mb = _status_mb("VmRSS")
    _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    result = subtract(science, template, method=method)
    table = detect_dia_sources(result)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    print(
        json.dumps(
            {
                "s": seconds,
                "cpu_s": cpu_s,
                "peak_mb": _status_mb("VmHWM"),
                "inputs_mb": inputs_mb,
                "n": len(table),
                "unflagged": int((~table["flagged"]).sum()),
            }
        )
    )


def _hotpants(folder: Path, exe: str) -> dict[str, float]:
    from astropy.io import fits

    from skydm.image import read_exposure

    for name in ("science", "template"):
        exp = read_exposure(folder / f"{name}.fits")
        fits.writeto(folder / f"{name}_plain.fits", exp.image, overwrite=True)
    cmd = [
        exe,
        "-inim",
        str(folder / "science_plain.fits"),
        "-tmplim",
        str(folder / "template_plain.fits"),
        "-outim",
        str(folder / "hp_diff.fits"),
        "-tu",
        "60000",
        "-iu",
        "60000",
        "-tl",
        "-500",
        "-il",
        "-500",
        "-n",
        "i",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **ONE_THREAD})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "hotpants_s": round(seconds, 3),
        "hotpants_cpu_s": round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3
        ),
        "hotpants_peak_mb": round(after.ru_maxrss / 1024, 1),
    }


def reliability_auc(seeds: str = "300-301") -> float:
    """ROC AUC of the shipped reliability model on demo-scale surveys of
    ``seeds`` (none of them used in training), real against bogus DIA sources."""
    from skydm.reliability import packaged_model
    from skydm.reliability.sample import Sample, simulate_sample
    from skydm.reliability.training import evaluate

    lo, _, hi = seeds.partition("-")
    sample = Sample.concatenate([simulate_sample(s) for s in range(int(lo), int(hi or lo) + 1)])
    return round(evaluate(packaged_model(), sample).auc, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=4000)
    parser.add_argument("--reliability-seeds", default="300-301", help="held-out survey seeds")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]))
        return 0
    from skydm.sim import simulate_pair

    out: dict[str, float | int | str] = {
        "size": args.size,
        "stars": args.stars,
        "timed": "subtract()+detect_dia_sources(), inputs in memory, 1 thread",
    }
    with tempfile.TemporaryDirectory(prefix="skydm-bench-diffim-") as tmp:
        folder = Path(tmp)
        science, template, _ = simulate_pair(
            11,
            (args.size, args.size),
            n_stars=args.stars,
            seeing_science=1.0,
            seeing_template=0.8,
            n_transients=20,
        )
        science.write(folder / "science.fits")
        template.write(folder / "template.fits")
        del science, template
        exe = shutil.which("hotpants")
        if exe:
            # First, while it is this process's only child: the children's
            # peak RSS is then HOTPANTS's own.
            out.update(_hotpants(folder, exe))
        for method in ("al", "zogy"):
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", method, str(folder)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, **ONE_THREAD},
            )
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"{method}_s"] = round(res["s"], 3)
            out[f"{method}_cpu_s"] = round(res["cpu_s"], 3)
            out[f"{method}_peak_mb"] = round(res["peak_mb"], 1)
            out[f"{method}_inputs_mb"] = round(res["inputs_mb"], 1)
            out[f"{method}_detections"] = res["n"]
            out[f"{method}_unflagged"] = res["unflagged"]
    out["reliability_auc"] = reliability_auc(args.reliability_seeds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
