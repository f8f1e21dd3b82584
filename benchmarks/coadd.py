"""Benchmark: CompareWarp against SWarp's CLIPPED combine on 20 warps of 4096x4096.

Prints one JSON line: ``warp_s`` (warping every visit onto the cell, art and
clean), ``compare_warp_s`` (CompareWarp assembly of the 20 artefact warps,
read from disk by memory map), ``peak_mb`` (peak memory allocated by that
assembly, traced with tracemalloc on the identical clean run; memory-mapped
warps are not counted), ``swarp_s`` and ``swarp_threads_s`` (SWarp's
combine of the same warps with ``RESAMPLE N``, the SWarp process alone,
one thread and its default of all cores), ``compare_warp_cpu_s`` and
``swarp_cpu_s`` (CPU seconds of the same CompareWarp run, its fit worker
processes included, and of the one-thread SWarp process alone, without the
writing of its inputs: steadier than wall time on a shared machine), ``leakage`` / ``leakage_max``
for CompareWarp and ``swarp_leakage`` / ``swarp_leakage_max`` for SWarp
(worst artefact class; :mod:`coadd_harness.scoring`'s harness), CompareWarp's
leakage split into the artefacts' light (``leakage_light``,
``leakage_light_max``) and the noise of the replaced pixels
(``leakage_noise``; :func:`coadd_harness.scoring.leakage_parts`), and the
process's peak RSS.  The warps are read once before each timed combine, so
that both find them in the page cache.

The visits are dithered (``--dither`` pixels, default size/32), so the
simulator's ghosts, fixed to the optics, move on the sky between visits as
real ghosts do; each visit is simulated, warped onto a cell that every
visit covers, written to disk and released before the next, so memory
stays bounded whatever the size.

With ``--keep-warps DIR`` the warps, footprints and weights are kept in
``DIR`` and reused by a later run with the same size, epochs, seed and
dither (the simulation and warping of 4096x4096 visits take far longer than
the assembly being measured); ``warp_s`` is then that of the run that made
them.

The field has slow movers (``--slow-movers`` per 512x512 of field, at least
two): alternately overlapping their own image from visit to visit and
stepping 1-3 FWHM (the simulator's ``n_slow_movers``).

Usage: ``python benchmarks/coadd.py [--size 4096] [--epochs 20] [--dither PIX]
[--slow-movers PER_512] [--workdir DIR] [--keep-warps DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

# The scoring harness and the SWarp wrapper are testing code, kept with the
# tests (tests/coadd_harness), not in the library package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _warps(
    args: argparse.Namespace, work: Path
) -> tuple[list[Path], list[Path], dict, np.ndarray, float]:
    from coadd_harness.scoring import warp_masks
    from skydm.coadd.skygrid import SkyCell
    from skydm.coadd.stack import WarpStack
    from skydm.coadd.warp import warp_exposure
    from skydm.sim import SurveyConfig, simulate_survey

    dither = args.dither if args.dither is not None else args.size / 32
    cfg = SurveyConfig(
        seed=args.seed,
        shape=(args.size, args.size),
        n_visits=args.epochs,
        dither=dither,
        raw_dtype="float32",
        n_stars=int(300 * (args.size / 512) ** 2 / 4),
        n_galaxies=int(100 * (args.size / 512) ** 2 / 4),
        trail_rate=1.0,
        ghost_rate=0.5,
        n_variables=4,
        # Slow movers overlapping their own earlier images (issue 19): the
        # hardest movers to tell from a static source; one per 512x512 of
        # field, at least two (one overlapping, one stepping).
        n_slow_movers=max(2, round(args.slow_movers * (args.size / 512) ** 2)),
    )
    survey = simulate_survey(cfg)
    ra, dec = survey.fields[0]
    side = args.size - 2 * math.ceil(dither) - 8
    cell = SkyCell.centred(ra, dec, (side, side), cfg.pixel_scale, id="bench")
    zp = float(np.median([v.zero_point for v in survey.visits]))
    art, clean = [], []
    foot: dict[str, np.ndarray] = {}
    warp_s = 0.0
    for k, v in enumerate(survey.visits):
        for src, out, tag in ((v.raw, art, "art"), (v.clean, clean, "clean")):
            exp = src.copy()
            exp.image = (exp.image - np.float32(exp.info.sky)).astype(np.float32)
            start = time.perf_counter()
            warp = warp_exposure(exp, cell, zero_point=zp)
            warp_s += time.perf_counter() - start
            del exp
            path = work / f"{tag}{k:03d}.fits"
            warp.write(path)
            out.append(path)
            del warp
        for cls, m in warp_masks(v.artefacts, v.raw, cell).items():
            foot[cls] = foot[cls] | m if cls in foot else m
        v.release()
        print(
            f"simulated and warped visit {k + 1}/{len(survey.visits)}", file=sys.stderr, flush=True
        )
    with WarpStack(clean) as st:
        weights = st.weights
    return art, clean, foot, weights, warp_s


def _kept_warps(
    args: argparse.Namespace, where: Path
) -> tuple[list[Path], list[Path], dict, np.ndarray, float]:
    """The warps of an earlier run with the same parameters, or new ones kept in ``where``."""
    key = {k: getattr(args, k) for k in ("size", "epochs", "seed", "dither", "slow_movers")}
    manifest = where / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["key"] == key:
        info = json.loads(manifest.read_text())
        with np.load(where / "footprints.npz") as f:
            foot = {k: f[k] for k in f.files}
        art = [where / n for n in info["art"]]
        clean = [where / n for n in info["clean"]]
        return art, clean, foot, np.asarray(info["weights"]), float(info["warp_s"])
    where.mkdir(parents=True, exist_ok=True)
    art, clean, foot, weights, warp_s = _warps(args, where)
    np.savez_compressed(where / "footprints.npz", **foot)
    info = {
        "key": key,
        "art": [p.name for p in art],
        "clean": [p.name for p in clean],
        "weights": [float(w) for w in weights],
        "warp_s": warp_s,
    }
    manifest.write_text(json.dumps(info))
    return art, clean, foot, weights, warp_s


def _cpu() -> float:
    """CPU seconds of this process and its finished children (SWarp, the
    fits' worker processes): on a shared machine, steadier than wall time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the SWarp process)."""
    t = os.times()
    return t.children_user + t.children_system


def _warm(paths: list[Path]) -> None:
    """Read ``paths`` once, so that the timed runs find them in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 26):
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dither", type=float)
    parser.add_argument(
        "--slow-movers",
        type=float,
        default=1.0,
        help="slow movers (overlapping and stepping) per 512x512 of field (default 1; at least 2)",
    )
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep-warps", type=Path, help="keep/reuse the warps in this folder")
    args = parser.parse_args()

    from coadd_harness.scoring import leakage, leakage_parts
    from coadd_harness.swarp import run_swarp
    from skydm.coadd.assemble import assemble_coadd
    from skydm.coadd.stack import WarpStack

    with tempfile.TemporaryDirectory(prefix="skydm-bench-coadd-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.keep_warps is not None:
            art, clean, foot, weights, warp_s = _kept_warps(args, args.keep_warps)
        else:
            art, clean, foot, weights, warp_s = _warps(args, work)

        # Both combines read the same files; both are timed with them in the
        # page cache (otherwise the first to run pays for the disk).
        _warm(art)
        start, cpu0 = time.perf_counter(), _cpu()
        cw_art = assemble_coadd(WarpStack(art, weights=weights), "compare")
        compare_s, compare_cpu = time.perf_counter() - start, _cpu() - cpu0
        # Peak memory of the assembly, traced on the (identical) clean run so
        # that tracing does not slow the timed one.
        tracemalloc.start()
        cw_clean = assemble_coadd(WarpStack(clean, weights=weights), "compare")
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        ref_art = assemble_coadd(WarpStack(art, weights=weights), "mean")
        ref_clean = assemble_coadd(WarpStack(clean, weights=weights), "mean")

        _warm(art)
        cpu0 = _children_cpu()
        sw_art, swarp_s = run_swarp(art, weights=weights, nthreads=1, workdir=work / "sw1")
        # The SWarp process alone, as swarp_s: writing its inputs (in this
        # process) is not SWarp's work.
        swarp_cpu = _children_cpu() - cpu0
        _, swarp_threads_s = run_swarp(art, weights=weights, nthreads=0, workdir=work / "sw0")
        sw_clean, _ = run_swarp(clean, weights=weights, nthreads=0, workdir=work / "sw2")

        from skydm.image import Mask

        nodata = np.uint32(Mask.NO_DATA)
        valid = ((ref_art.msk | ref_clean.msk) & nodata) == 0
        leak = leakage(
            cw_art.image, cw_clean.image, ref_art.image, ref_clean.image, foot, valid=valid
        )
        sw_leak = leakage(
            sw_art.image, sw_clean.image, ref_art.image, ref_clean.image, foot, valid=valid
        )
        light, noise = leakage_parts(
            WarpStack(art, weights=weights),
            WarpStack(clean, weights=weights),
            cw_art,
            cw_clean,
            ref_art,
            ref_clean,
            foot,
            valid=valid,
        )
    out = {
        "size": args.size,
        "epochs": args.epochs,
        "warp_s": round(warp_s, 2),
        "compare_warp_s": round(compare_s, 2),
        "peak_mb": round(peak_mb, 1),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "swarp_s": round(swarp_s, 2),
        "compare_warp_cpu_s": round(compare_cpu, 2),
        "swarp_cpu_s": round(swarp_cpu, 2),
        "swarp_threads_s": round(swarp_threads_s, 2),
        "leakage_max": round(max(leak.values()), 4) if leak else math.nan,
        "swarp_leakage_max": round(max(sw_leak.values()), 4) if sw_leak else math.nan,
        "leakage": {k: round(v, 4) for k, v in leak.items()},
        "leakage_light_max": round(max(light.values()), 4) if light else math.nan,
        "leakage_light": {k: round(v, 4) for k, v in light.items()},
        "leakage_noise": {k: round(v, 4) for k, v in noise.items()},
        "swarp_leakage": {k: round(v, 4) for k, v in sw_leak.items()},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
