"""Lossless raw archive: compression ratio and one-core throughput against fpack.

Compresses the same files with the archive's codec (``skydm.archive.encode``)
and with ``fpack -r`` (Rice, its default), in the same run, timed the same way:
each reads its source file and writes its output file into the same temporary
directory (no fsync); fpack is one process per file, as a user runs it.  Prints
one JSON line:

* ``ratio``, ``mb_per_s`` — the archive's codec: total source bytes / total
  container bytes, and MB (1e6 bytes) of source per second of compression;
* ``fpack_ratio``, ``fpack_mb_per_s`` — the same for ``fpack`` (timed as a
  process per file, like a user runs it);
* ``codec_warmup_s`` — the first ``encode`` in the process, which loads
  (or, on a fresh install, compiles) the numba Rice coder; it is done once
  before timing and reported here rather than hidden;
* ``ingest_mb_per_s`` — full ``ingest_files`` into a fresh repository, which
  also proves each container restores byte for byte, fsyncs and registers;
* per-set figures under ``sets`` (``eso085``: the two real 16-bit frames;
  ``sim4k``: simulated 4096x4096 16-bit raws).

Every figure is the best of ``--repeat`` runs on one core (numpy and the
codecs are single-threaded; fpack is too).  Run:
``.venv/bin/python benchmarks/archive.py [--n-sim 2] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "real"


def simulated_raws(out: Path, n: int, shape: tuple[int, int]) -> list[Path]:
    """4096^2 16-bit raws from the simulator (or a sky+stars+noise model without it)."""
    try:
        from skydm.sim import SurveyConfig, simulate_survey, write_survey
    except ImportError:
        return _fallback_raws(out, n, shape)
    cfg = SurveyConfig(
        seed=7, shape=shape, n_visits=n, n_stars=4000, n_galaxies=1000, raw_dtype="uint16"
    )
    return [Path(p) for p in write_survey(simulate_survey(cfg), out, clean=False)]


def _fallback_raws(out: Path, n: int, shape: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(7)
    paths = []
    for visit in range(1, n + 1):
        model = np.full(shape, 1000.0)
        ys = rng.integers(8, shape[0] - 8, 4000)
        xs = rng.integers(8, shape[1] - 8, 4000)
        yy, xx = np.mgrid[-7:8, -7:8]
        stamp = np.exp(-(xx**2 + yy**2) / (2 * 1.8**2))
        stamp /= stamp.sum()
        for y, x, f in zip(ys, xs, 10 ** rng.uniform(3, 5.5, 4000), strict=True):
            model[y - 7 : y + 8, x - 7 : x + 8] += f * stamp
        pix = rng.poisson(model) + rng.normal(0, 5, shape) + 300
        h = fits.Header({"INSTRUME": "SKYSIM", "VISIT": visit, "FILTER": "r"})
        path = out / f"fallback_{visit}.fits"
        fits.PrimaryHDU(np.clip(pix, 0, 65535).astype(np.uint16), header=h).writeto(path)
        paths.append(path)
    return paths


def archive_codec(paths: list[Path], work: Path) -> tuple[int, int, float]:
    """(source bytes, container bytes, seconds) of the archive's codec.

    Timed like ``fpack``: read the source file, compress, write the container
    to a file in the same directory (no fsync, as fpack does none).
    """
    from skydm.archive import encode

    src = dst = 0
    seconds = 0.0
    for path in paths:
        out = work / (path.name + ".skydm")
        out.unlink(missing_ok=True)
        path.read_bytes()  # same warm page cache as fpack
        start = time.perf_counter()
        container, info = encode(path)
        out.write_bytes(container)
        seconds += time.perf_counter() - start
        src, dst = src + info.size, dst + out.stat().st_size
    return src, dst, seconds


def fpack(paths: list[Path], work: Path) -> tuple[int, int, float]:
    """(source bytes, .fz bytes, seconds) of ``fpack -r`` on each file."""
    exe = shutil.which("fpack")
    if exe is None:
        sys.exit("fpack is not on PATH: install Debian package libcfitsio-bin")
    src = dst = 0
    seconds = 0.0
    for path in paths:
        out = work / (path.name + ".fz")
        out.unlink(missing_ok=True)
        path.read_bytes()  # same warm page cache as the archive's codec
        start = time.perf_counter()
        subprocess.run([exe, "-r", "-O", str(out), str(path)], check=True)
        seconds += time.perf_counter() - start
        src, dst = src + path.stat().st_size, dst + out.stat().st_size
    return src, dst, seconds


def ingest(paths: list[Path], work: Path) -> tuple[int, float]:
    """(source bytes, seconds) of a full ``ingest_files`` into a new repository."""
    from skydm.archive import ingest_files
    from skydm.repo import Repository

    root = work / "repo"
    shutil.rmtree(root, ignore_errors=True)
    with Repository.open(root) as repo:
        report = ingest_files(repo, paths)
    if not report.ok:
        sys.exit("; ".join(r.line() for r in report.failed))
    return report.source_bytes, report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=2, help="simulated 4096^2 raws")
    parser.add_argument("--size", type=int, default=4096, help="simulated raw side")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    with tempfile.TemporaryDirectory(prefix="skydm-bench-archive-") as tmp:
        work = Path(tmp)
        sets = {
            "eso085": sorted((DATA / "eso085_null_pair").glob("*.fit")),
            "sim4k": simulated_raws(work, args.n_sim, (args.size, args.size)),
        }
        from skydm.archive import encode

        start = time.perf_counter()
        encode(sets["eso085"][0])
        warmup = time.perf_counter() - start
        figures: dict[str, dict[str, float]] = {}
        totals = np.zeros(7)
        for name, paths in sets.items():
            # Interleaved, so a change in the machine's load hits both alike.
            runs = [
                (archive_codec(paths, work), fpack(paths, work), ingest(paths, work))
                for _ in range(args.repeat)
            ]
            s, d, t = min((r[0] for r in runs), key=lambda x: x[-1])
            fs, fd, ft = min((r[1] for r in runs), key=lambda x: x[-1])
            ib, it = min((r[2] for r in runs), key=lambda x: x[-1])
            figures[name] = {
                "files": len(paths),
                "mb": round(s / 1e6, 2),
                "ratio": round(s / d, 3),
                "mb_per_s": round(s / 1e6 / t, 1),
                "fpack_ratio": round(fs / fd, 3),
                "fpack_mb_per_s": round(fs / 1e6 / ft, 1),
                "ingest_mb_per_s": round(ib / 1e6 / it, 1),
            }
            totals += [s, d, t, fs, fd, ft, it]
        s, d, t, fs, fd, ft, it = totals
        print(
            json.dumps(
                {
                    "benchmark": "archive",
                    "ratio": round(s / d, 3),
                    "mb_per_s": round(s / 1e6 / t, 1),
                    "fpack_ratio": round(fs / fd, 3),
                    "fpack_mb_per_s": round(fs / 1e6 / ft, 1),
                    "ingest_mb_per_s": round(s / 1e6 / it, 1),
                    "codec_warmup_s": round(warmup, 2),
                    "timing": "both read the source and write their output file; best of "
                    f"{args.repeat}, one core",
                    "sets": figures,
                }
            )
        )


if __name__ == "__main__":
    main()
