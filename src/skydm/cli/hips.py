"""``skydm hips``: HiPS 1.0 trees of the repository's coadds, for Aladin and ``/hips/``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``hips`` command."""
    p = subparsers.add_parser(
        "hips",
        help="build or update HiPS trees (FITS and PNG/JPEG tiles) of the coadds",
        description=(
            "Build a HiPS 1.0 tree of the repository's coadds for each band (every band "
            "with a coadd unless --band is given): 512 x 512 FITS tiles at the order the "
            "coadd pixel scale calls for, grey PNG tiles, Norder3/Allsky, Moc.fits and "
            "properties; and a colour tree (PNG and JPEG, Lupton asinh stretch) when "
            "three bands or more have coadds. Incremental: only tiles touched by new, "
            "changed or removed coadds are rebuilt. `skydm serve` serves <repo>/hips at /hips/."
        ),
    )
    p.add_argument("--repo", type=Path, default=None, help="repository (default: $SKYDM_REPO)")
    p.add_argument(
        "--band", action="append", default=None, help="band to build (repeatable; default all)"
    )
    p.add_argument("--out", type=Path, default=None, help="directory of the trees (<repo>/hips)")
    p.add_argument(
        "--workers", type=int, default=None, help="threads resampling tiles (CPU count, at most 8)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm hips``."""
    import os

    from skydm.config import Settings
    from skydm.errors import BadValueError
    from skydm.image.hips import build_repository_hips
    from skydm.progress import Progress
    from skydm.repo import Repository

    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    if workers < 1:
        raise BadValueError("--workers", args.workers, "a positive number of threads")
    settings = Settings.from_env()
    root = args.repo if args.repo is not None else settings.repo
    bands = None
    if args.band:
        bands = [b.strip() for item in args.band for b in item.split(",") if b.strip()]
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        out = args.out if args.out is not None else repo.root / "hips"
        result = build_repository_hips(
            repo,
            out,
            bands=bands,
            workers=workers,
            progress=Progress("hips tiles", 0, quiet=args.quiet),
        )
    for band, report in result.bands.items():
        print(
            f"{out / band}: order {report.order}, {report.tiles_total} tiles; "
            f"{report.tiles_written} rebuilt, {report.tiles_removed} removed, "
            f"{report.lower_written} lower-order tiles ({report.seconds:.1f} s)"
        )
    if result.color_bands:
        print(
            f"{out / 'color'}: {'/'.join(result.color_bands)} as R/G/B, "
            f"{result.color_tiles} tiles written"
        )
    return 0
