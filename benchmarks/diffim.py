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

``measure_s`` (``measure_cpu_s``): :func:`skydm.diffim.measure.measure_dia_sources`
on ``--measure-sources`` (1,000) DIA sources of a 2048x2048 difference with
its science and template images: point sources of either sign at S/N 5-100,
5% misregistration dipoles and 2% trails, every measurement included (the
dipole and trail fits on the sources their rules select); in this process.

Usage: ``python benchmarks/diffim.py [--size 4096] [--stars 4000]
[--measure-sources 1000] [--only-measure]``
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


def _measure(n_sources: int, size: int = 2048, seed: int = 3) -> dict[str, float | int]:
    """Time the DIA measurement of ``n_sources`` sources (see the module docstring)."""
    import numpy as np
    from astropy.table import Table
    from astropy.wcs import WCS

    from skydm.diffim.measure import measure_dia_sources
    from skydm.image import Exposure
    from skydm.image.psf import GaussianPsf

    rng = np.random.default_rng(seed)
    psf = GaussianPsf.from_fwhm(3.5)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cd = np.diag([-0.2 / 3600, 0.2 / 3600])
    noise = 10.0

    def image() -> Exposure:
        return Exposure(
            image=rng.normal(0.0, noise, (size, size)).astype(np.float32),
            variance=np.full((size, size), noise**2, np.float32),
            wcs=wcs,
            psf=psf,
            zero_point=28.0,
        )

    diff, science, template = image(), image(), image()
    half = 20
    kernels = {}

    def add(x: float, y: float, flux: float) -> None:
        ix, iy = round(x), round(y)
        key = (round((x - ix) * 4), round((y - iy) * 4))
        if key not in kernels:
            kernels[key] = psf.kernel(2 * half + 1, key[0] / 4, key[1] / 4).astype(np.float32)
        sl = np.s_[iy - half : iy + half + 1, ix - half : ix + half + 1]
        diff.image[sl] += np.float32(flux) * kernels[key]

    margin = 40
    xs = rng.uniform(margin, size - margin, n_sources)
    ys = rng.uniform(margin, size - margin, n_sources)
    snr = rng.uniform(5, 100, n_sources) * rng.choice([-1.0, 1.0], n_sources)
    flux = snr * noise * np.sqrt(4 * np.pi * (3.5 / 2.3548) ** 2)
    kind = rng.uniform(0, 1, n_sources)
    for x, y, f, k in zip(xs, ys, flux, kind, strict=True):
        if k < 0.05:  # dipole: a shifted star
            add(x, y, abs(f))
            add(x + 4.0, y + 1.0, -abs(f))
        elif k < 0.07:  # trail
            for t in np.linspace(-0.5, 0.5, 30):
                add(x + 15 * t, y + 8 * t, f / 30)
        else:
            add(x, y, f)
    table = Table({"x": xs, "y": ys, "psf_flux": flux, "snr": snr})
    table.meta["threshold"] = 5.0
    t0, c0 = time.perf_counter(), time.process_time()
    measured = measure_dia_sources(table, diff, science=science, template=template)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "measure_s": round(wall, 3),
        "measure_cpu_s": round(cpu, 3),
        "measure_sources": n_sources,
        "measure_dipole_fits": int(np.count_nonzero(measured["dipoleFitAttempted"])),
        "measure_trail_fits": int(np.count_nonzero(measured["trailNdata"] > 0)),
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
    parser.add_argument("--measure-sources", type=int, default=1000)
    parser.add_argument("--only-measure", action="store_true", help="only the measure_* figures")
    parser.add_argument("--reliability-seeds", default="300-301", help="held-out survey seeds")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]))
        return 0
    if args.only_measure:
        print(json.dumps(_measure(args.measure_sources)))
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
    out.update(_measure(args.measure_sources))
    out["reliability_auc"] = reliability_auc(args.reliability_seeds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
