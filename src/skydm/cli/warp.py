"""``skydm warp --repo R``: calexps -> warps on the sky grid (the ``warp`` task)."""

from __future__ import annotations

import argparse
from typing import Any

from skydm.cli.run import add_run_options, run_and_report


def register(subparsers: Any) -> None:
    """Add the ``warp`` command."""
    p = subparsers.add_parser(
        "warp",
        help="warp a repository's calexps onto the sky cells they overlap (the warp task)",
        description=(
            "Run the warp task (calexp -> one warp per sky cell it overlaps; set the grid "
            "with -c cell_size_deg=... -c pixel_scale=...) on the calexps selected by --where, "
            "as `skydm run` does: resumable, failures named, locally or on Dask."
        ),
    )
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm warp``."""
    return run_and_report(("warp",), args)
