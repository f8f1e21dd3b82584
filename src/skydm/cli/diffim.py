"""``skydm diffim``: one difference image and its DIA source table from two FITS files."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from astropy.table import Table

    from skydm.diffim import DiffimConfig
    from skydm.image import Exposure
    from skydm.image.psf import Psf

#: Source-table formats by file extension (astropy's writers).
TABLE_FORMATS = {
    ".ecsv": "ascii.ecsv",
    ".csv": "ascii.csv",
    ".txt": "ascii.basic",
    ".dat": "ascii.basic",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".vot": "votable",
    ".xml": "votable",
    ".parquet": "parquet",
}

#: What every numeric option accepts, said once (issue 14: one rule, one message).
_RULES = {
    "positive": (lambda v: v > 0, "a finite number > 0"),
    "nonneg": (lambda v: v >= 0, "a finite number >= 0"),
    "any": (lambda v: True, "a finite number"),
}


def _number(rule: str) -> Callable[[str], float]:
    check, allowed = _RULES[rule]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give {allowed}") from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give {allowed}")
        return value

    parse.__name__ = rule  # argparse names the type in its messages
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``diffim`` command."""
    p = subparsers.add_parser(
        "diffim",
        help="difference two images (Alard-Lupton or ZOGY) and detect DIA sources",
        description=(
            "Subtract TEMPLATE from SCIENCE with PSF matching (Alard-Lupton with decorrelation, "
            "or ZOGY), resampling the template onto the science WCS when the grids differ, and "
            "detect positive and negative DIA sources. Gain, read noise and sky come from the "
            "headers (GAIN, RDNOISE, SKYSUB/SKYDIP) unless given here; without a gain the "
            "variance is estimated from each image's noise. Each input's noise covariance "
            "(resampled images) is measured and propagated, so thresholds are in true sigma."
        ),
    )
    positive, nonneg, anyf = _number("positive"), _number("nonneg"), _number("any")
    p.add_argument("science", type=Path, nargs="?", help="science image (FITS)")
    p.add_argument("template", type=Path, nargs="?", help="template image (FITS)")
    p.add_argument("--out", type=Path, help="difference Exposure to write (.fits)")
    p.add_argument(
        "--sources",
        type=Path,
        help=f"DIA source table to write ({', '.join(TABLE_FORMATS)})",
    )
    p.add_argument("--method", choices=("al", "zogy"), default="al", help="method (al)")
    p.add_argument(
        "--threshold",
        type=positive,
        help="detection threshold in sigma (5; detection.threshold in --config)",
    )
    p.add_argument(
        "--convolve",
        choices=("auto", "template", "science", "preconvolve"),
        default="auto",
        help="AL: image to convolve (auto: the sharper one)",
    )
    p.add_argument("--no-decorrelate", action="store_true", help="AL: skip decorrelation")
    p.add_argument("--psf", type=Path, help="science PSF: a PSF image or a skydm PSF/Exposure")
    p.add_argument("--template-psf", type=Path, help="template PSF (as --psf)")
    p.add_argument("--fwhm", type=positive, help="science PSF FWHM in pixels (a Gaussian PSF)")
    p.add_argument("--template-fwhm", type=positive, help="template PSF FWHM in pixels")
    p.add_argument("--zp", type=anyf, help="science zero point (mag of 1 count; header ZP)")
    p.add_argument("--template-zp", type=anyf, help="template zero point")
    p.add_argument("--gain", type=positive, help="gain e-/ADU of both images (header GAIN)")
    p.add_argument("--read-noise", type=nonneg, help="read noise in e- of both images")
    p.add_argument("--sky", type=nonneg, help="sky level (ADU) already subtracted, both images")
    p.add_argument(
        "--saturation",
        type=anyf,
        help="saturation level of both images in their pixel values as stored",
    )
    p.add_argument("--template-gain", type=positive, help="gain of the template only")
    p.add_argument("--template-read-noise", type=nonneg, help="read noise of the template only")
    p.add_argument("--template-sky", type=nonneg, help="subtracted sky of the template only")
    p.add_argument("--template-saturation", type=anyf, help="saturation of the template only")
    p.add_argument(
        "--config",
        type=Path,
        help="YAML file of settings (sections al, zogy, noise, detection; see --show-config)",
    )
    p.add_argument(
        "--show-config", action="store_true", help="print the default settings as YAML and exit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_repo_mode(p)
    p.set_defaults(func=run)


def _add_repo_mode(p: argparse.ArgumentParser) -> None:
    from skydm.cli.run import add_run_options

    group = p.add_argument_group(
        "over a repository",
        "with --repo (and no files): difference the calexps selected by --where against the "
        "repository's coadds (the diffim task of `skydm run ap`; its settings with "
        "--task-config diffim.KEY=VALUE)",
    )
    add_run_options(group, repo_required=False, quiet=False, config_flag="--task-config")


def _run_repo(args: argparse.Namespace) -> int:
    from skydm.cli._checks import existing_repository
    from skydm.cli.run import run_and_report
    from skydm.errors import UsageError

    existing_repository(args.repo)  # the repository first, as every --repo command does
    if args.science is not None or args.out is not None:
        raise UsageError("give either SCIENCE TEMPLATE --out DIFF.fits or --repo, not both")
    if args.config is not None:
        raise UsageError(
            f"--config {args.config}: a settings file is for the file mode; over a repository "
            "give --task-config diffim.KEY=VALUE"
        )
    overrides = [f"diffim.method={args.method}"]
    if args.threshold is not None:
        overrides.append(f"diffim.threshold={args.threshold}")
    args.config = [*overrides, *args.task_config]
    return run_and_report(("diffim",), args)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skydm diffim``."""

    if args.repo is not None:
        return _run_repo(args)
    if args.show_config:
        config = _load_config(args.config)
        print(config.to_yaml(), end="")
        return 0
    return run_files(args)


def _check_output(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    from skydm.errors import BadFileError

    if path.is_dir():
        raise BadFileError(path, f"{option} names a directory; give a file name inside it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadFileError(
            path, f"{option}: the directory {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadFileError(
            path, f"{option}: cannot write there (permission denied); pick another place"
        )
    try:
        # Pseudo file systems (/proc, /sys) pass access() but refuse new files.
        # A unique name: two commands writing beside each other must not
        # unlink each other's probe.
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".skydm-probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadFileError(
            path, f"{option}: cannot write there ({exc.strerror}); pick another place"
        ) from exc


def _check_outputs(args: argparse.Namespace) -> None:
    from skydm.errors import BadFileError, UserError

    if args.science is None or args.template is None or args.out is None:
        raise UserError(
            "skydm diffim needs SCIENCE and TEMPLATE images and --out DIFF.fits "
            "(see skydm diffim --help)"
        )
    _check_output(args.out, "--out")
    if args.out.suffix.lower() not in (".fits", ".fit", ".fts"):
        raise BadFileError(
            args.out, "--out must be a FITS file (.fits, .fit or .fts): the difference Exposure"
        )
    if args.sources is not None:
        if args.sources.suffix.lower() not in TABLE_FORMATS:
            raise BadFileError(
                args.sources,
                f"--sources: unknown table format {args.sources.suffix or '(no extension)'!r}; "
                f"use one of {', '.join(TABLE_FORMATS)}",
            )
        _check_output(args.sources, "--sources")
        if args.sources.resolve() == args.out.resolve():
            raise BadFileError(args.sources, "--sources and --out name the same file")
    for option in ("psf", "template_psf"):
        path = getattr(args, option)
        if path is not None and getattr(args, option.replace("psf", "fwhm")) is not None:
            name = "--" + option.replace("_", "-")
            other = name.replace("psf", "fwhm")
            raise UserError(f"{name} and {other} both given; give one of them")


def read_psf(path: Path, option: str) -> Psf:
    """A PSF from a file: a skydm PSF (``PSF`` extension or ``PSFTYPE`` card) or a PSF image.

    Raises
    ------
    BadFileError
        When the file is not FITS or holds no usable PSF image.
    """
    import numpy as np

    from skydm.errors import BadFileError, UserError
    from skydm.image.io import open_fits
    from skydm.image.psf import PixelPsf, psf_from_hdu

    with open_fits(path) as hdul:
        names = [h.name for h in hdul]
        try:
            if "PSF" in names:
                return psf_from_hdu(hdul["PSF"])
            if "PSFTYPE" in hdul[0].header:
                return psf_from_hdu(hdul[0])
            data = next((h.data for h in hdul if h.data is not None and h.data.ndim == 2), None)
            if data is None:
                raise BadFileError(path, f"{option}: holds no 2-d PSF image")
            img = np.nan_to_num(np.asarray(data, dtype=np.float64))
            if img.shape[0] != img.shape[1] or img.shape[0] % 2 == 0:
                # An even or rectangular stamp: pad to an odd square around the peak.
                py, px = np.unravel_index(int(np.argmax(img)), img.shape)
                h = max(py, img.shape[0] - 1 - py, px, img.shape[1] - 1 - px)
                out = np.zeros((2 * h + 1, 2 * h + 1))
                out[h - py : h - py + img.shape[0], h - px : h - px + img.shape[1]] = img
                img = out
            return PixelPsf(np.clip(img, 0.0, None))
        except UserError as exc:
            if isinstance(exc, BadFileError):
                raise
            raise BadFileError(path, f"{option}: not a usable PSF image ({exc})") from exc


def _attach(
    exp: Exposure, psf_path: Path | None, fwhm: float | None, zp: float | None, option: str
) -> None:
    from skydm.image.psf import GaussianPsf

    if psf_path is not None:
        exp.psf = read_psf(psf_path, option)
    elif fwhm is not None:
        exp.psf = GaussianPsf.from_fwhm(fwhm)
    if zp is not None:
        exp.zero_point = float(zp)


def _either(own: float | None, shared: float | None) -> float | None:
    return own if own is not None else shared


def _load_config(path: Path | None) -> DiffimConfig:
    """The ``--config`` file's settings; any fault in it is a fault of that file (exit 1)."""
    from skydm.diffim import DiffimConfig
    from skydm.errors import BadFileError, UserError

    if path is None:
        return DiffimConfig()
    try:
        return DiffimConfig.from_yaml(path)
    except BadFileError:
        raise
    except UserError as exc:
        raise BadFileError(path, f"--config: {exc}") from exc


def run_files(args: argparse.Namespace) -> int:
    """``skydm diffim SCIENCE TEMPLATE --out DIFF.fits``: the file mode."""
    from skydm.diffim import NoiseModel, detect_dia_sources, subtract
    from skydm.diffim.measure import measure_dia_sources
    from skydm.image import read_exposure

    _check_outputs(args)
    config = _load_config(args.config)
    threshold = args.threshold if args.threshold is not None else config.detection.threshold
    science = read_exposure(args.science)
    template = read_exposure(args.template)
    _attach(science, args.psf, args.fwhm, args.zp, "--psf")
    _attach(template, args.template_psf, args.template_fwhm, args.template_zp, "--template-psf")
    sci_noise = NoiseModel(
        gain=args.gain, read_noise=args.read_noise, sky=args.sky, saturation=args.saturation
    )
    tmp_noise = NoiseModel(
        gain=_either(args.template_gain, args.gain),
        read_noise=_either(args.template_read_noise, args.read_noise),
        sky=_either(args.template_sky, args.sky),
        saturation=_either(args.template_saturation, args.saturation),
    )
    result = subtract(
        science,
        template,
        method=args.method,
        convolve=args.convolve,
        decorrelate=not args.no_decorrelate,
        config=config,
        science_noise=sci_noise,
        template_noise=tmp_noise,
        quiet=args.quiet,
    )
    for note in result.notes:
        print(f"skydm diffim: note: {note}", file=sys.stderr)
    table = detect_dia_sources(result, threshold=threshold)
    # The LSST diaSource measurements (aperture, forced science/template fluxes,
    # moments, dipole and trail fits, pixel flags), as the pipelines make them.
    table = measure_dia_sources(
        table,
        result.difference,
        science=science,
        template=result.template,
        science_psf=result.science_psf,
        template_psf=result.template_psf,
    )
    if "noise_warning" in table.meta:
        print(f"skydm diffim: warning: {table.meta['noise_warning']}", file=sys.stderr)
    result.difference.write(args.out)
    if args.sources is not None:
        _write_table(table, args.sources)
    n_flag = int(table["flagged"].sum()) if len(table) else 0
    print(
        f"{args.out}: {args.method} difference (convolved {result.convolved}, flux ratio "
        f"{result.flux_ratio:.4f}); {len(table)} DIA sources at {threshold:g} sigma "
        f"({n_flag} flagged)" + (f" -> {args.sources}" if args.sources else "")
    )
    return 0


def _write_table(table: Table, path: Path) -> None:
    """Write the source table atomically (a temporary file renamed into place)."""
    from skydm.errors import BadFileError

    fmt = TABLE_FORMATS[path.suffix.lower()]
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        table.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, path)
    except (OSError, ValueError, ImportError) as exc:
        tmp.unlink(missing_ok=True)
        raise BadFileError(path, f"--sources: cannot write the source table ({exc})") from exc
