"""Benchmark of image differencing on a simulated 4096x4096 pair (one JSON line).

Each method runs in its own subprocess, pinned to one thread (FFT workers,
BLAS, OpenMP), so that its peak resident memory (``ru_maxrss``, inputs
included) is its own.  Timed: subtraction plus DIA detection, after the
inputs are read.  HOTPANTS is timed on the same pair when it is on PATH
(build it from its public source outside the repository).

Usage: ``python benchmarks/diffim.py [--size 4096] [--stars 4000]``
"""

from __future__ import annotations

import argparse
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


def _worker(method: str, folder: Path) -> None:
    from skydm.diffim import detect_dia_sources, subtract
    from skydm.image import read_exposure

    science = read_exposure(folder / "science.fits")
    template = read_exposure(folder / "template.fits")
    start = time.perf_counter()
    result = subtract(science, template, method=method)
    table = detect_dia_sources(result)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "s": seconds,
                "peak_mb": peak_mb,
                "n": len(table),
                "unflagged": int((~table["flagged"]).sum()),
            }
        )
    )


def _hotpants(folder: Path, exe: str) -> float:
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
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **ONE_THREAD})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--stars", type=int, default=4000)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]))
        return 0
    from skydm.sim import simulate_pair

    out: dict[str, float | int] = {"size": args.size, "stars": args.stars}
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
            out[f"{method}_peak_mb"] = round(res["peak_mb"], 1)
            out[f"{method}_detections"] = res["n"]
            out[f"{method}_unflagged"] = res["unflagged"]
        exe = shutil.which("hotpants")
        if exe:
            out["hotpants_s"] = round(_hotpants(folder, exe), 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
