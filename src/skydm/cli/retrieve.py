"""``skydm retrieve``: give back archived raws byte for byte and processed datasets as FITS."""

from __future__ import annotations

import argparse
from pathlib import Path

# Library parameter -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {"where": "where"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``retrieve`` command."""
    p = subparsers.add_parser(
        "retrieve",
        help="write archived raws (byte for byte) and processed datasets to a directory",
        description=(
            "Write datasets of a repository as files in --out: raws exactly as they were "
            "ingested (a multi-extension raw is rebuilt byte for byte when all its detectors "
            "are selected, else each detector's file is written), other dataset types as "
            "their FITS files. Every raw of the repository when no --type/--where is given. "
            "Existing files are refused unless --overwrite."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (created)")
    p.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    p.add_argument("--type", default=None, metavar="T", help="dataset type (default: raw)")
    p.add_argument(
        "--where",
        default=None,
        metavar="EXPR",
        help="data-ID expression, e.g. \"band = 'r' AND detector IN (1, 2)\"",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm retrieve``: one line per file written, then a summary."""
    from skydm.archive.retrieve import retrieve
    from skydm.config import Settings
    from skydm.progress import Progress
    from skydm.repo import Repository
    from skydm.repo.where import parse_where

    settings = Settings.from_env()
    where = parse_where(args.where)
    root = args.repo if args.repo is not None else settings.repo
    with Repository.open(root, create=False, registry_url=settings.registry_url) as repo:
        report = retrieve(
            repo,
            args.out,
            dataset_type=args.type,
            where=where,
            overwrite=args.overwrite,
            progress=Progress("retrieve", quiet=args.quiet),
        )
    for path, item in report.written:
        ids = ", ".join(str(r.data_id) for r in item.refs)
        print(f"{item.kind}: {path} <- {ids}")
    print(f"{len(report.written)} file(s), {report.bytes} bytes, written to {args.out}")
    return 0
