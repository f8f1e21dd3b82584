"""Entry point of the ``skydm`` command.

Each command group lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a handler
``(args) -> int``.  Handlers import the library lazily so that ``skydm --help``
is fast and a missing extra only matters for the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from skydm import __version__
from skydm.errors import SkydmError

COMMAND_MODULES = [
    "sim",
    "ingest",
    "instrument",
    "datasets",
    "retrieve",
    "verify",
    "cutout",
    "color",
    "hips",
    "diffim",
    "coadd",
    "alerts",
    "catalog",
    "query",
    "serve",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="skydm",
        description="Survey data management: archive, differencing, coadds, alerts, catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"skydm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"skydm.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skydm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except SkydmError as exc:
        print(f"skydm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"skydm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
