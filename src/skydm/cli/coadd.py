"""``skydm coadd``: coadd warps given as files, or build a template from a repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

METHODS = ("compare", "mean", "median", "clipped")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
# Library parameter -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {
    "pixel_scale": "pixel_scale",
    "cell_size_deg": "cell_size",
    "cell_size": "cell_size",
    "skycell": "skycell",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``coadd`` command."""
    p = subparsers.add_parser(
        "coadd",
        help="coadd warps with artefact rejection (CompareWarp), or build a template",
        description=(
            "Coadd warps (skydm Exposure files on one sky cell's pixel grid) into COADD, "
            "rejecting transient artefacts (satellite trails, cosmic rays, asteroids, ghosts) "
            "with CompareWarp while keeping variable sources; or, with --repo, warp a band's "
            "calexps onto a sky cell, coadd them and store the result as a 'template'."
        ),
    )
    p.add_argument("warps", nargs="*", type=Path, help="warp files on one grid")
    p.add_argument("--out", type=Path, help="coadd Exposure to write (FITS)")
    p.add_argument("--method", choices=METHODS, default="compare", help="assembly (compare)")
    p.add_argument("--repo", type=Path, help="build a template from this repository's calexps")
    p.add_argument("--skycell", help="sky cell id (e.g. c12_34); default: the cell at the "
                   "centre of the first calexp")  # fmt: skip
    p.add_argument("--band", help="band of the visits to coadd (with --repo)")
    p.add_argument(
        "--pixel-scale", type=float, help="grid pixel scale, arcsec (default 0.2, with --repo)"
    )
    p.add_argument("--cell-size", type=float, help="grid cell side, degrees (default 0.1)")
    p.add_argument(
        "--parents", action="store_true", help="create missing parent directories of --out"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_where_mode(p)
    p.set_defaults(func=run)


def _add_where_mode(p: argparse.ArgumentParser) -> None:
    from skydm.cli.run import add_run_options

    group = p.add_argument_group(
        "over a repository, as the pipeline does",
        "with --repo and no --band: warp the calexps selected by --where onto the sky cells "
        "they overlap and coadd each cell and band (the warp and coadd tasks of `skydm run drp`)",
    )
    add_run_options(group, repo=False, quiet=False)  # --repo serves the template mode too


def _run_tasks(args: argparse.Namespace) -> int:
    from skydm.cli.run import run_and_report

    if args.method != "compare":
        args.config = [f"coadd.method={args.method}", *args.config]
    if args.pixel_scale is not None:
        args.config = [f"pixel_scale={args.pixel_scale}", *args.config]
    if args.cell_size is not None:
        args.config = [f"cell_size_deg={args.cell_size}", *args.config]
    return run_and_report(("warp", "coadd"), args)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm coadd``."""
    from skydm.cli._checks import check_output
    from skydm.errors import UsageError
    from skydm.progress import Progress

    if args.repo is not None and args.band is None and not args.warps:
        return _run_tasks(args)
    if args.repo is not None:
        return _from_repo(args)
    if not args.warps:
        raise UsageError(
            "give warp files to coadd (skydm coadd WARP... --out COADD.fits) or --repo"
        )
    if args.out is None:
        raise UsageError("--out COADD.fits is required when coadding warp files")
    check_output(args.out, parents=args.parents, suffixes=FITS_SUFFIXES)
    from skydm.coadd import assemble_coadd

    bar = Progress(f"coadd ({args.method})", quiet=args.quiet)
    coadd = assemble_coadd(args.warps, args.method, progress=bar)
    coadd.write(args.out)
    _summary(coadd, args.out, len(args.warps))
    return 0


def _from_repo(args: argparse.Namespace) -> int:
    from skydm.cli._checks import check_output, existing_repository
    from skydm.coadd.template import build_template, default_grid
    from skydm.errors import UsageError, UserError
    from skydm.progress import Progress
    from skydm.repo import Repository

    if args.warps:
        raise UsageError("give either warp files or --repo, not both")
    root = existing_repository(args.repo)
    if not args.band:
        raise UsageError("--band is required with --repo")
    if args.out is not None:
        check_output(args.out, parents=args.parents, suffixes=FITS_SUFFIXES)
    grid = default_grid(args.pixel_scale, args.cell_size)
    with Repository.open(root, create=False) as repo:
        skycell = args.skycell
        if skycell is None:
            refs = repo.query(dataset_type="calexp", band=args.band)
            if not refs:
                raise UserError(f"{args.repo} holds no calexp in band {args.band!r}")
            exp = repo.get_exposure("calexp", refs[0].data_id)
            wcs = exp.require_wcs("choosing a sky cell")
            ra, dec = wcs.pixel_to_world_values((exp.shape[1] - 1) / 2, (exp.shape[0] - 1) / 2)
            skycell = grid.cell_containing(float(ra), float(dec)).id
            print(f"sky cell: {skycell}", file=sys.stderr)
        bar = Progress("warping", quiet=args.quiet)
        coadd, ref = build_template(repo, skycell, args.band, grid=grid, progress=bar)
    if args.out is not None:
        coadd.write(args.out)
    _summary(coadd, ref.path, int(coadd.meta.get("NEPOCHS", 0)))
    return 0


def _summary(coadd: object, path: Path, n: int) -> None:
    import numpy as np

    from skydm.image import Exposure, Mask
    from skydm.progress import plural

    assert isinstance(coadd, Exposure)
    clipped = int(np.count_nonzero(coadd.msk & np.uint32(Mask.CLIPPED)))
    empty = int(np.count_nonzero(coadd.msk & np.uint32(Mask.NO_DATA)))
    print(
        f"{path}: {coadd.shape[1]}x{coadd.shape[0]} coadd of {plural(n, 'warp')} "
        f"({coadd.meta.get('COADD')}), {clipped} pixels with clipped inputs, {empty} without data"
    )
