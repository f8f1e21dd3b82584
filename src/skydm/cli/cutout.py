"""``skydm cutout``: cut a region out of a repository image (the same code as SODA)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``cutout`` command."""
    p = subparsers.add_parser(
        "cutout",
        help="cut a region out of a stored image (raw, calexp, diff, coadd...)",
        description=(
            "Cut a region of the sky out of one image of a repository, reading only the "
            "compressed tiles it needs. The result is a FITS file with the image, variance and "
            "mask planes (only the image for a raw), the WCS shifted to the cutout and the "
            "original's metadata. --id takes the image's ID as the SIA service and "
            "ivoa.ObsCore give it (ivo://skydm/<type>?<instrument>/<band>/<visit>/<detector>)."
        ),
    )
    p.add_argument("--repo", type=Path, default=None, help="repository (default: $SKYDM_REPO)")
    p.add_argument("--id", required=True, help="the image's ID (ivo://skydm/calexp?...)")
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument(
        "--circle", nargs=3, type=float, metavar=("RA", "DEC", "RADIUS"), help="degrees"
    )
    shape.add_argument("--polygon", metavar="'RA1 DEC1 RA2 DEC2 ...'", help="degrees")
    shape.add_argument(
        "--range",
        nargs=4,
        type=float,
        metavar=("RA1", "RA2", "DEC1", "DEC2"),
        help="an RA/Dec box (degrees)",
    )
    p.add_argument("--out", type=Path, required=True, help="FITS file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm cutout``."""
    from skydm.cli._checks import check_output, existing_repository
    from skydm.config import Settings
    from skydm.image.datasets import cutout, parse_dataset_id
    from skydm.image.regions import Circle, Range, Region, parse_polygon
    from skydm.repo import Repository
    from skydm.repo.atomic import atomic_write_bytes

    settings = Settings.from_env()
    root = existing_repository(args.repo)  # a mistyped --repo first: no repository there
    check_output(args.out)
    dataset_type, data_id = parse_dataset_id(args.id, name="--id")
    region: Region
    if args.circle is not None:
        region = Circle(*args.circle)
    elif args.range is not None:
        region = Range(*args.range)
    else:
        region = parse_polygon(args.polygon)
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        result = cutout(repo, dataset_type, data_id, region)
    atomic_write_bytes(args.out, result.to_bytes())
    box = result.box
    print(
        f"{args.out}: {box.x1 - box.x0} x {box.y1 - box.y0} pixels of {args.id} "
        f"(columns {box.x0}-{box.x1 - 1}, rows {box.y0}-{box.y1 - 1}), "
        f"{len(result.planes)} plane(s)"
    )
    return 0
