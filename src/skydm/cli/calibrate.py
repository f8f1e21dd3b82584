"""``skydm calibrate --repo R``: raws -> calexps, a thin layer over the ``calibrate`` task."""

from __future__ import annotations

import argparse
from typing import Any

from skydm.cli.run import add_run_options, run_and_report


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` command."""
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate a repository's raws into calexps (the calibrate task)",
        description=(
            "Run the calibrate task (raw -> calexp: saturation and bad-pixel masks, background, "
            "variance, PSF) on the raws selected by --where, as `skydm run` does: resumable, "
            "failures named, locally or on Dask."
        ),
    )
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm calibrate``."""
    return run_and_report(("calibrate",), args)
