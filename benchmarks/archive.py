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

Processed (float) images, written by the repository's write recipes
(``skydm.archive.lossy``), are timed the same way against ``fpack -q 16`` on
the same uncompressed calexp files (the two ESO085 frames calibrated to float,
and ``--n-calexp`` simulated calexps of ``--calexp-size`` pixels a side):

* ``lossy_ratio``, ``lossy_mb_per_s`` — the ``lossy16`` recipe (image and
  variance quantized at σ/16, mask lossless, masked pixels exact);
* ``fpack_q16_ratio``, ``fpack_q16_mb_per_s`` — ``fpack -q 16`` (its
  defaults otherwise: Rice, SUBTRACTIVE_DITHER_1, row tiles, per-tile noise);
* ``float_lossless_ratio``, ``float_lossless_mb_per_s`` — the ``lossless``
  recipe (standard GZIP_2 tiles deflated by ISA-L at level 1, libdeflate
  without ``isal``; tiles in threads); ``float_lossless_1thread_mb_per_s``
  the same on one thread; ``float_lossless_libdeflate_ratio``/``_mb_per_s``
  the same recipe with libdeflate (the coder before ISA-L);
  ``astropy_gzip2_mb_per_s`` astropy's own GZIP_2; ``fpack_lossless_mb_per_s``
  ``fpack -g -q 0`` (lossless GZIP_2 by cfitsio);
* ``float_lossless_1thread_mb_per_cpu_s``, ``fpack_lossless_mb_per_cpu_s``,
  ``fpack_q16_mb_per_cpu_s``, ``lossy_mb_per_cpu_s`` — MB per CPU-second
  (the process's, or fpack's as a child): what one uncontended core does,
  which the wall-clock figures of a loaded shared machine do not show;
* ``blosc2_zstd_ratio``/``_mb_per_s`` (when blosc2 is installed) and
  ``imagecodecs_zstd_ratio``/``_mb_per_s`` — byte-shuffled zstd level 1 of
  the image and variance planes by the field codec libraries, codec only
  (no FITS container, not readable by FITS tools).

Transfer between sites (``skydm.archive.transfer``): a source repository of
``--transfer-files`` incompressible raws of ``--transfer-mb`` MB (like
archived, already compressed raws) is copied into a fresh repository with
``--streams`` streams (``transfer_mb_per_s``: CRC-32 per part at both ends,
SHA-256 end to end, part journal, fsync, registry), against
``loopback_mb_per_s``, the plain copy limit measured in the same run and
interleaved with it (the same stored files read and written with an fsync
each, one after another, no checksum).

Every figure is the best of ``--repeat`` runs on one core (numpy and the
codecs are single-threaded; fpack is too).  Run:
``.venv/bin/python benchmarks/archive.py [--n-sim 2] [--repeat 3]``.
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
from typing import Any

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


def simulated_calexps(n: int, size: int) -> list[Any]:
    """Calexps of ``simulate_pair`` science images (held-out seeds)."""
    from skydm.sim import simulate_pair

    return [
        simulate_pair(900 + k, shape=(size, size), n_stars=size * size // 1000)[0] for k in range(n)
    ]


def eso_calexps() -> list[Any]:
    """The ESO085 frames calibrated to float, with the gain from their own sky noise."""
    from skydm.archive.lossy import noise_sigma
    from skydm.image.io import read_exposure
    from skydm.pipeline.calibrate import calibrate_raw

    out = []
    for path in sorted((DATA / "eso085_null_pair").glob("*.fit")):
        raw = read_exposure(path)
        raw.info.gain = float(np.median(raw.image)) / noise_sigma(raw.image) ** 2
        raw.info.read_noise = 0.0
        out.append(calibrate_raw(raw))
    return out


def write_plain(exposures: list[Any], work: Path) -> list[Path]:
    from skydm.archive.lossy import hdulist_bytes

    paths = []
    for k, exposure in enumerate(exposures):
        path = work / f"calexp_{k}.fits"
        path.write_bytes(hdulist_bytes(exposure.to_hdulist()))
        paths.append(path)
    return paths


def recipe_codec(paths: list[Path], work: Path, recipe: str) -> tuple[int, int, float, float]:
    """(source bytes, output bytes, seconds, CPU seconds) of a write recipe, file to file."""
    from skydm.archive.lossy import encode_exposure_hdulist, hdulist_bytes
    from skydm.archive.recipes import WriteRecipe

    chosen = WriteRecipe.named(recipe)
    src = dst = 0
    seconds = cpu = 0.0
    for path in paths:
        out = work / (path.name + f".{recipe}")
        path.read_bytes()
        start, start_cpu = time.perf_counter(), time.process_time()
        with fits.open(path, memmap=False) as hdul:
            encoded, _ = encode_exposure_hdulist(hdul, chosen)
            out.write_bytes(hdulist_bytes(encoded))
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        src, dst = src + path.stat().st_size, dst + out.stat().st_size
    return src, dst, seconds, cpu


def astropy_gzip2(paths: list[Path], work: Path) -> tuple[int, int, float]:
    """(source bytes, output bytes, seconds) of astropy's GZIP_2 on the float planes."""
    src = dst = 0
    seconds = 0.0
    for path in paths:
        out = work / (path.name + ".agz")
        start = time.perf_counter()
        with fits.open(path, memmap=False) as hdul:
            hdus = [hdul[0]]
            for hdu in hdul[1:]:
                if hdu.name in ("IMAGE", "VARIANCE"):
                    hdu = fits.CompImageHDU(
                        hdu.data, hdu.header, compression_type="GZIP_2", quantize_level=0.0
                    )
                hdus.append(hdu)
            fits.HDUList(hdus).writeto(out, overwrite=True)
        seconds += time.perf_counter() - start
        src, dst = src + path.stat().st_size, dst + out.stat().st_size
    return src, dst, seconds


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fpack_args(paths: list[Path], work: Path, args: list[str]) -> tuple[int, int, float, float]:
    """(source bytes, .fz bytes, seconds, CPU seconds) of ``fpack ARGS`` on each file."""
    exe = shutil.which("fpack")
    if exe is None:
        sys.exit("fpack is not on PATH: install Debian package libcfitsio-bin")
    src = dst = 0
    seconds = cpu = 0.0
    for path in paths:
        out = work / (path.name + ".fz")
        out.unlink(missing_ok=True)
        path.read_bytes()
        start, start_cpu = time.perf_counter(), _children_cpu()
        subprocess.run([exe, *args, "-O", str(out), str(path)], check=True)
        seconds += time.perf_counter() - start
        cpu += _children_cpu() - start_cpu
        src, dst = src + path.stat().st_size, dst + out.stat().st_size
    return src, dst, seconds, cpu


def field_codec(exposures: list[Any], library: str) -> tuple[int, int, float]:
    """(bytes, compressed bytes, seconds) of byte-shuffled zstd-1 on image + variance."""
    planes = [np.ascontiguousarray(p) for e in exposures for p in (e.image, e.var)]
    src = dst = 0
    seconds = 0.0
    for plane in planes:
        start = time.perf_counter()
        if library == "blosc2":
            import blosc2

            cparams = {
                "codec": blosc2.Codec.ZSTD, "clevel": 1, "typesize": plane.itemsize,
                "nthreads": 1, "filters": [blosc2.Filter.SHUFFLE],
            }  # fmt: skip
            n = len(blosc2.compress2(plane.tobytes(), cparams=cparams))
        else:
            import imagecodecs

            shuffled = np.ascontiguousarray(plane.view(np.uint8).reshape(-1, plane.itemsize).T)
            n = len(imagecodecs.zstd_encode(shuffled.tobytes(), level=1))
        seconds += time.perf_counter() - start
        src, dst = src + plane.nbytes, dst + n
    return src, dst, seconds


def float_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The processed-image figures (see the module notes)."""
    from skydm.archive import _gzip2

    exposures = eso_calexps() + simulated_calexps(args.n_calexp, args.calexp_size)
    paths = write_plain(exposures, work)
    recipe_codec(paths[:1], work, "lossy16")  # imports and first-call costs, not timed

    def best(run: Any) -> tuple[Any, ...]:
        return min((run() for _ in range(args.repeat)), key=lambda r: r[2])  # wall time

    def one_thread() -> tuple[int, int, float, float]:
        _gzip2.THREADS = 1
        try:
            return recipe_codec(paths, work, "lossless")
        finally:
            _gzip2.THREADS = None

    def libdeflate() -> tuple[int, int, float, float]:
        _gzip2.CODER = "libdeflate"
        try:
            return recipe_codec(paths, work, "lossless")
        finally:
            _gzip2.CODER = "isal"

    runs = {
        "lossy": lambda: recipe_codec(paths, work, "lossy16"),
        "fpack_q16": lambda: fpack_args(paths, work, ["-q", "16"]),
        "float_lossless": lambda: recipe_codec(paths, work, "lossless"),
        "float_lossless_1thread": one_thread,
        "float_lossless_libdeflate": libdeflate,
        "astropy_gzip2": lambda: astropy_gzip2(paths, work),
        "fpack_lossless": lambda: fpack_args(paths, work, ["-g", "-q", "0"]),
        "imagecodecs_zstd": lambda: field_codec(exposures, "imagecodecs"),
    }
    try:
        import blosc2  # noqa: F401

        runs["blosc2_zstd"] = lambda: field_codec(exposures, "blosc2")
    except ImportError:
        pass
    out: dict[str, Any] = {"calexp_files": len(paths)}
    for name, run in runs.items():
        # astropy's GZIP_2 runs at a few MB/s: once is enough to place it.
        s, d, t, *cpu = run() if name == "astropy_gzip2" else best(run)
        if name != "float_lossless_1thread":
            out[f"{name}_ratio"] = round(s / d, 3)
        out[f"{name}_mb_per_s"] = round(s / 1e6 / t, 1)
        if cpu and name in ("float_lossless_1thread", "fpack_lossless", "fpack_q16", "lossy"):
            # MB per CPU-second: what one uncontended core does, whatever the machine's load.
            out[f"{name}_mb_per_cpu_s"] = round(s / 1e6 / cpu[0], 1)
    return out


def transfer_source(work: Path, n_files: int, mb: float) -> Path:
    """A repository of ``n_files`` raws of ``mb`` MB each (incompressible, like archived raws)."""
    from skydm.repo import DataId, Repository

    root = work / "transfer-source"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(18)
    size = int(mb * 1e6)
    with Repository.open(root) as source:
        for k in range(n_files):
            blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            source.put_file(lambda fh, b=blob: fh.write(b), "raw", DataId("skysim", 1, k + 1, "r"))
    return root


def transfer_figures(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """``transfer_mb_per_s`` and ``loopback_mb_per_s`` (see the module notes)."""
    from skydm.archive.transfer import TransferConfig, transfer
    from skydm.repo import Repository

    source_root = transfer_source(work, args.transfer_files, args.transfer_mb)
    with Repository.open(source_root) as source:
        stored = [r.path for r in source.query(dataset_type="raw")]
        best_t = best_l = 0.0
        for k in range(args.repeat):
            # Interleaved, so a change in the machine's load hits both alike.
            copy_dir = work / f"loopback-{k}"
            copy_dir.mkdir()
            start = time.perf_counter()
            nbytes = 0
            for path in stored:
                data = path.read_bytes()
                with open(copy_dir / path.name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                nbytes += len(data)
            best_l = max(best_l, nbytes / 1e6 / (time.perf_counter() - start))
            shutil.rmtree(copy_dir)
            dest_root = work / f"transfer-dest-{k}"
            with Repository.open(dest_root) as dest:
                report = transfer(source, dest, TransferConfig(streams=args.streams))
            if not report.ok:
                sys.exit("transfer failed: " + report.summary())
            best_t = max(best_t, report.mb_per_s)
            shutil.rmtree(dest_root)
    return {
        "transfer_mb_per_s": round(best_t, 1),
        "loopback_mb_per_s": round(best_l, 1),
        "transfer_files": args.transfer_files,
        "transfer_file_mb": args.transfer_mb,
        "transfer_streams": args.streams,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=2, help="simulated 4096^2 raws")
    parser.add_argument("--size", type=int, default=4096, help="simulated raw side")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-calexp", type=int, default=2, help="simulated calexps")
    parser.add_argument("--calexp-size", type=int, default=2048, help="simulated calexp side")
    parser.add_argument("--transfer-files", type=int, default=24, help="files in the transfer set")
    parser.add_argument("--transfer-mb", type=float, default=32.0, help="MB per transfer file")
    parser.add_argument("--streams", type=int, default=4, help="transfer streams")
    parser.add_argument(
        "--only",
        choices=["all", "raw", "float", "transfer"],
        default="all",
        help="run one part of the benchmark (the full JSON keys need 'all')",
    )
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    with tempfile.TemporaryDirectory(prefix="skydm-bench-archive-") as tmp:
        work = Path(tmp)
        out: dict[str, Any] = {"benchmark": "archive"}
        if args.only in ("all", "raw"):
            out.update(raw_figures(args, work))
        if args.only in ("all", "float"):
            out.update(float_figures(args, work))
        if args.only in ("all", "transfer"):
            out.update(transfer_figures(args, work))
        out["timing"] = f"best of {args.repeat}; codecs: read the source, write the output file"
        print(json.dumps(out))


def raw_figures(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The lossless raw figures against ``fpack -r`` (see the module notes)."""
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
    return {
        "ratio": round(s / d, 3),
        "mb_per_s": round(s / 1e6 / t, 1),
        "fpack_ratio": round(fs / fd, 3),
        "fpack_mb_per_s": round(fs / 1e6 / ft, 1),
        "ingest_mb_per_s": round(s / 1e6 / it, 1),
        "codec_warmup_s": round(warmup, 2),
        "sets": figures,
    }


if __name__ == "__main__":
    main()
