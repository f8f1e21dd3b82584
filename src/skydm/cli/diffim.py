"""``skydm diffim``: one difference image and its DIA source table from two FITS files."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _nonneg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _positive(text: str) -> float:
    value = _nonneg(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


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
            "variance is estimated from each image's noise."
        ),
    )
    p.add_argument("science", type=Path, nargs="?", help="science image (FITS)")
    p.add_argument("template", type=Path, nargs="?", help="template image (FITS)")
    p.add_argument("--out", type=Path, help="difference Exposure to write (FITS)")
    p.add_argument("--sources", type=Path, help="DIA source table to write (.ecsv, .fits, ...)")
    p.add_argument("--method", choices=("al", "zogy"), default="al", help="method (al)")
    p.add_argument(
        "--threshold", type=_positive, default=5.0, help="detection threshold in sigma (5)"
    )
    p.add_argument(
        "--convolve",
        choices=("auto", "template", "science", "preconvolve"),
        default="auto",
        help="AL: image to convolve (auto: the sharper one)",
    )
    p.add_argument("--no-decorrelate", action="store_true", help="AL: skip decorrelation")
    p.add_argument("--gain", type=_positive, help="gain e-/ADU of both images (header GAIN)")
    p.add_argument("--read-noise", type=_nonneg, help="read noise in e- of both images")
    p.add_argument("--sky", type=_nonneg, help="sky level (ADU) already subtracted, both images")
    p.add_argument("--template-gain", type=_positive, help="gain of the template only")
    p.add_argument("--template-read-noise", type=_nonneg, help="read noise of the template only")
    p.add_argument("--template-sky", type=_nonneg, help="subtracted sky of the template only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_repo_mode(p)
    p.set_defaults(func=run)


def _add_repo_mode(p: argparse.ArgumentParser) -> None:
    from skydm.cli.run import add_run_options

    group = p.add_argument_group(
        "over a repository",
        "with --repo (and no files): difference the calexps selected by --where against the "
        "repository's coadds (the diffim task of `skydm run ap`)",
    )
    add_run_options(group, repo_required=False, quiet=False)


def _run_repo(args: argparse.Namespace) -> int:
    from skydm.cli.run import run_and_report
    from skydm.errors import UserError

    if args.science is not None or args.out is not None:
        raise UserError("give either SCIENCE TEMPLATE --out DIFF.fits or --repo, not both")
    args.config = [
        f"diffim.method={args.method}",
        f"diffim.threshold={args.threshold}",
        *args.config,
    ]
    return run_and_report(("diffim",), args)


def run(args: argparse.Namespace) -> int:
    """Handler of ``skydm diffim``."""
    if args.repo is not None:
        return _run_repo(args)
    if args.science is None or args.template is None or args.out is None:
        from skydm.errors import UserError

        raise UserError("give SCIENCE TEMPLATE --out DIFF.fits, or --repo R [--where ...]")
    from skydm.diffim import NoiseModel, detect_dia_sources, subtract
    from skydm.errors import BadFileError
    from skydm.image import read_exposure

    science = read_exposure(args.science)
    template = read_exposure(args.template)
    sci_noise = NoiseModel(gain=args.gain, read_noise=args.read_noise, sky=args.sky)
    tmp_noise = NoiseModel(
        gain=args.template_gain if args.template_gain is not None else args.gain,
        read_noise=(
            args.template_read_noise if args.template_read_noise is not None else args.read_noise
        ),
        sky=args.template_sky if args.template_sky is not None else args.sky,
    )
    result = subtract(
        science,
        template,
        method=args.method,
        convolve=args.convolve,
        decorrelate=not args.no_decorrelate,
        science_noise=sci_noise,
        template_noise=tmp_noise,
        quiet=args.quiet,
    )
    for note in result.notes:
        print(f"skydm diffim: note: {note}", file=sys.stderr)
    table = detect_dia_sources(result, threshold=args.threshold)
    result.difference.write(args.out)
    if args.sources is not None:
        try:
            table.write(args.sources, overwrite=True)
        except (OSError, ValueError) as exc:
            raise BadFileError(args.sources, f"cannot write the source table: {exc}") from exc
    n_flag = int(table["flagged"].sum()) if len(table) else 0
    print(
        f"{args.out}: {args.method} difference (convolved {result.convolved}, flux ratio "
        f"{result.flux_ratio:.4f}); {len(table)} DIA sources at {args.threshold:g} sigma "
        f"({n_flag} flagged)" + (f" -> {args.sources}" if args.sources else "")
    )
    return 0
