"""``skydm color``: an outreach colour image of three bands' coadds, with AVM metadata."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``color`` command."""
    p = subparsers.add_parser(
        "color",
        help="make a colour PNG/JPEG/TIFF of three bands' coadds (asinh stretch, AVM)",
        description=(
            "Make an outreach colour image of one sky cell from the coadds of three bands "
            "(red, green, blue in the order given), with an asinh (Lupton) stretch whose "
            "black level is each band's sky and whose linear range is 10 sky sigmas unless "
            "--stretch is given. The WCS is embedded as AVM metadata, so that planetarium "
            "and outreach software can place the picture on the sky."
        ),
    )
    p.add_argument("--repo", type=Path, default=None, help="repository (default: $SKYDM_REPO)")
    p.add_argument("--bands", required=True, help="three bands, red first: e.g. i,r,g")
    p.add_argument("--skycell", default=None, help="sky cell (default: the one all bands share)")
    p.add_argument(
        "--type", default="coadd", help="dataset type of the images (coadd, template...)"
    )
    p.add_argument("--q", type=float, default=8.0, help="asinh softening Q (8)")
    p.add_argument("--stretch", type=float, default=None, help="linear range (image units)")
    p.add_argument(
        "--out", type=Path, default=Path("color.png"), help=".png, .jpg or .tif (color.png)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm color``."""
    from skydm.cli._checks import check_output, existing_repository
    from skydm.config import Settings
    from skydm.errors import BadValueError, UserError
    from skydm.image.color import FORMATS, color_from_planes, lupton_params, write_color
    from skydm.repo import Repository

    root = existing_repository(args.repo)  # a mistyped --repo first: no repository there
    if args.out.suffix.lower() not in FORMATS:
        raise BadValueError("--out", str(args.out), "a file name ending .png, .jpg or .tif")
    bands = [b.strip() for b in args.bands.split(",") if b.strip()]
    if len(bands) != 3:
        raise BadValueError("--bands", args.bands, "three bands separated by commas, red first")
    check_output(args.out)
    settings = Settings.from_env()
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        refs = {b: repo.query(dataset_type=args.type, band=b) for b in bands}
        cells = set.intersection(*({r.data_id.skycell for r in refs[b]} for b in bands))
        cells.discard(None)
        if args.skycell is not None:
            cells &= {args.skycell}
        if len(cells) != 1:
            have = ", ".join(f"{b}: {len(refs[b])}" for b in bands)
            raise UserError(
                f"{root}: {len(cells)} sky cells have a {args.type} in all of {args.bands} "
                f"({args.type} datasets per band: {have}); "
                + ("give one with --skycell" if cells else "make the coadds first")
            )
        cell = cells.pop()
        exposures = [
            repo.get_exposure(
                args.type, next(r.data_id for r in refs[b] if r.data_id.skycell == cell)
            )
            for b in bands
        ]
    shapes = {e.shape for e in exposures}
    if len(shapes) != 1:
        raise UserError(f"sky cell {cell}: the three {args.type}s differ in shape ({shapes})")
    planes = (exposures[0].image, exposures[1].image, exposures[2].image)
    params = lupton_params(planes, q=args.q, stretch=args.stretch)
    rgb = color_from_planes(planes, params)
    write_color(args.out, rgb, exposures[0].wcs)
    print(
        f"{args.out}: {rgb.shape[1]} x {rgb.shape[0]} pixels of sky cell {cell} "
        f"(R={bands[0]}, G={bands[1]}, B={bands[2]}; stretch {params.stretch:.4g}, Q {params.q:g})"
        + (", with AVM" if exposures[0].wcs is not None else ", no WCS: no AVM")
    )
    return 0
